"""The embedded world: schema, split disjointness, determinism."""

import hashlib
import json

import pytest

from unlearn.data.benchmarks import load_benchmark
from unlearn.data.world import N_OPTIONS, N_PERTURBED, PERSON_FACTS, World, WorldConfig
from unlearn.errors import BasinError

FIELDS = {"question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer"}


def test_schema_matches_tofu(micro_world):
    for row in micro_world.people_rows + micro_world.holdout:
        assert FIELDS <= row.keys()
        assert len(row["perturbed_answer"]) == N_PERTURBED
        assert row["value"] in row["answer"] and row["value"] in row["paraphrased_answer"]
        # wrong answers are distinct, differ from the truth, and use the paraphrase's template
        assert len(set(row["perturbed_answer"])) == N_PERTURBED
        assert row["paraphrased_answer"] not in row["perturbed_answer"]
    assert len(micro_world.people_rows) == 20 * len(PERSON_FACTS)
    for row in micro_world.utility:
        assert len(row["options"]) == N_OPTIONS
        assert row["options"][row["label"]] == row["answer"]


def test_splits_are_disjoint_by_person():
    w = World(WorldConfig(n_people=100, n_holdout=10))
    for pct in (1, 5, 10):
        forget, retain = w.split(pct / 100)
        f, r = {x["person"] for x in forget}, {x["person"] for x in retain}
        h = {x["person"] for x in w.holdout}
        assert len(f) == pct and len(r) == 100 - pct and len(h) == 10
        assert not (f & r) and not (f & h) and not (r & h)
    # TOFU nesting: forget01 inside forget05 inside forget10
    f01, f05, f10 = (set(map(str, w.split(p)[0])) for p in (0.01, 0.05, 0.10))
    assert f01 < f05 < f10


def test_same_seed_same_bytes_other_seed_other_world():
    digest = lambda cfg: hashlib.sha256(World(cfg).to_json().encode()).hexdigest()  # noqa: E731
    assert digest(WorldConfig(n_people=30, seed=3)) == digest(WorldConfig(n_people=30, seed=3))
    assert digest(WorldConfig(n_people=30, seed=3)) != digest(WorldConfig(n_people=30, seed=4))
    files = json.loads(World(WorldConfig(n_people=30)).to_json())["files"]
    assert {"full", "holdout", "utility", "forget10", "retain90"} <= files.keys()


def test_values_are_not_guessable():
    """Birthplaces are drawn from a space far larger than the number of people."""
    w = World(WorldConfig(n_people=200))
    places = [r["value"] for r in w.people_rows if r["kind"] == "birthplace"]
    assert len(set(places)) >= 190


@pytest.mark.parametrize("kwargs", [dict(n_people=0), dict(n_holdout=-1), dict(n_people=1)])
def test_bad_world_config(kwargs):
    with pytest.raises(BasinError):
        WorldConfig(**kwargs)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, 0.001])
def test_bad_forget_fraction(fraction):
    with pytest.raises(BasinError, match="fraction"):
        World(WorldConfig(n_people=20)).split(fraction)


def test_benchmark_by_name():
    b = load_benchmark("world:forget05")
    assert len({r["person"] for r in b.forget}) == 5 and b.utility["world_facts"]
    with pytest.raises(BasinError, match="did you mean 'world'"):
        load_benchmark("wrld:forget05")
