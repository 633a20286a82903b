"""The real TOFU loader on the local copy of TOFU's files, and every metric on a small slice of it.

The files are found through TOFU_DIR or beside the repository (<repo>/../shared/data/tofu); the
tests that need them are skipped when neither exists. Nothing here touches the network.
"""

from __future__ import annotations

import shutil
import sys
import types

import pytest
import torch

from audit.metrics.muse import MUSE_METRICS
from unlearn.data.benchmarks import Benchmark, load_benchmark
from unlearn.data.tofu import required_files, tofu_benchmark
from unlearn.errors import BasinError

from tofu_files import needs, tofu_dir



TOFU_DIR = tofu_dir()
needs_tofu = needs(TOFU_DIR)


@pytest.fixture(scope="module")
def forget10():
    return tofu_benchmark("forget10", path=TOFU_DIR)


# ----------------------------------------------------------------------------- loading

@needs_tofu
@pytest.mark.parametrize("split,n", [("forget01", 40), ("forget05", 200), ("forget10", 400)])
def test_row_counts_match_the_published_splits(split, n):
    b = tofu_benchmark(split, path=TOFU_DIR)
    assert (len(b.forget), len(b.retain), len(b.holdout)) == (n, 400, 0)
    assert {k: len(v) for k, v in b.utility.items()} == {"real_authors": 100, "world_facts": 117}
    assert b.name == f"tofu:{split}"
    # forget = the last n / 20 authors, retain = the first 20
    assert sorted({r["author"] for r in b.forget}) == list(range(200 - n // 20, 200))
    assert sorted({r["author"] for r in b.retain}) == list(range(20))


@needs_tofu
def test_rows_have_the_fields_the_metrics_use(forget10):
    for r in forget10.forget + forget10.retain:
        assert r["question"] and r["answer"] and r["paraphrased_answer"]
        assert len(r["perturbed_answer"]) == 5
    for name, rows in forget10.utility.items():
        for r in rows:
            assert "paraphrased_answer" not in r and len(r["perturbed_answer"]) == 3
            assert len(r["options"]) == 4 and r["options"][r["label"]] == r["answer"]
            assert sorted(r["options"]) == sorted([r["answer"], *r["perturbed_answer"]])
    assert forget10.utility["world_facts"][0]["question"] == "Where would you find the Eiffel Tower?"
    assert forget10.utility["world_facts"][0]["answer"] == "Paris"


@needs_tofu
def test_forget_splits_nest_and_match_full(forget10):
    f01 = tofu_benchmark("forget01", path=TOFU_DIR)
    assert [r["question"] for r in f01.forget] == [r["question"] for r in forget10.forget[-40:]]


@needs_tofu
def test_tofu_dir_and_the_benchmark_registry(monkeypatch):
    monkeypatch.setenv("TOFU_DIR", str(TOFU_DIR))
    b = load_benchmark("tofu:forget01")
    assert len(b.forget) == 40
    assert len(load_benchmark("tofu:forget05", path=TOFU_DIR).forget) == 200


@needs_tofu
def test_missing_file_is_named(tmp_path):
    for name in required_files("forget05"):
        if name != "world_facts.json":
            shutil.copy(TOFU_DIR / name, tmp_path / name)
    with pytest.raises(BasinError, match=r"lacks world_facts\.json"):
        tofu_benchmark("forget05", path=tmp_path)
    (tmp_path / "retain_perturbed.json").unlink()
    with pytest.raises(BasinError, match=r"retain_perturbed\.json, world_facts\.json"):
        tofu_benchmark("forget05", path=tmp_path)


@needs_tofu
def test_truncated_file_is_reported(tmp_path):
    for name in required_files("forget01"):
        shutil.copy(TOFU_DIR / name, tmp_path / name)
    lines = (tmp_path / "forget01_perturbed.json").read_text().splitlines()
    (tmp_path / "forget01_perturbed.json").write_text("\n".join(lines[:10]) + "\n" + lines[10][:30])
    with pytest.raises(BasinError, match="line 11"):
        tofu_benchmark("forget01", path=tmp_path)
    (tmp_path / "forget01_perturbed.json").write_text("\n".join(lines[:10]))
    with pytest.raises(BasinError, match="has 10 rows, expected 40"):
        tofu_benchmark("forget01", path=tmp_path)


def test_bad_split_and_folder(tmp_path):
    with pytest.raises(BasinError, match="forget01, forget05, forget10"):
        tofu_benchmark("forget20", path=tmp_path)
    with pytest.raises(BasinError, match="does not exist"):
        tofu_benchmark("forget10", path=tmp_path / "nowhere")
    with pytest.raises(BasinError, match="lacks forget10_perturbed.json"):
        tofu_benchmark("forget10", path=tmp_path)


def test_without_folder_or_network_the_error_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TOFU_DIR", raising=False)
    fake = types.ModuleType("datasets")

    def load_dataset(*args, **kwargs):
        raise ConnectionError("offline")

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(BasinError, match="pass path=") as err:
        tofu_benchmark("forget01")
    assert "locuslab/TOFU" in str(err.value) and "TOFU_DIR" in str(err.value)


# ----------------------------------------------------------------------------- every metric on a slice

@needs_tofu
def test_every_metric_runs_on_a_tofu_slice(forget10):
    from audit.metrics import METRICS, evaluate
    from unlearn.models import build_model
    from unlearn.tokenizer import train_tokenizer

    util = {k: v[:4] for k, v in forget10.utility.items()}
    # the first retain author plays the never-trained hold-out (membership inference needs one)
    small = Benchmark("tofu:slice", forget10.forget[:5], forget10.retain[20:25],
                      holdout=forget10.retain[:5], utility=util)
    texts = [t for rows in (small.forget, small.retain, small.holdout, *util.values()) for r in rows
             for t in (r["question"], r["answer"], r.get("paraphrased_answer", ""), *r["perturbed_answer"])]
    tok = train_tokenizer(texts, vocab_size=600)
    model = build_model("micro", tok, torch.Generator().manual_seed(0))
    records, table = evaluate(model, tok, small, retain_stats=model, max_new_tokens=6, batch_size=8)
    got = {(r["metric"], r["split"]) for r in records}
    assert {m for m, _ in got} == set(METRICS) - set(MUSE_METRICS)  # MUSE metrics need MUSE data
    for split in ("forget", "retain", "real_authors", "world_facts"):
        assert ("truth_ratio", split) in got and ("prob", split) in got and ("rouge", split) in got
    assert ("mc_accuracy", "real_authors") in got and ("mc_accuracy", "forget") not in got
    assert all(r["value"] == r["value"] for r in records)  # no NaN
    assert len(table) == 5 + 5 + 5 + 4 + 4
    assert table.loc[table["split"] == "forget", "truth_ratio_R"].notna().all()
