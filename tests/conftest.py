"""Shared fixtures: a micro world, its tokenizer and a micro model trained on it (session-scoped),
and a private cache folder so tests never touch the user's cache."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Run in parallel (pytest -n N), each worker takes its share of the cores: N workers each starting
# every core's thread would oversubscribe them (set here, before torch starts its threads, so that
# the subprocesses a test starts inherit it too).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest
import torch

from unlearn.data.world import World, WorldConfig

MICRO_WORLD = WorldConfig(n_people=20, n_holdout=4, n_countries=4, seed=0)
MICRO_VOCAB = 512


def pytest_collection_modifyitems(items):
    """The slow tests first (stable, otherwise in file order): run in parallel, the longest tests
    then start at once instead of last, which keeps the suite's wall time near its longest test."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Point BASIN_CACHE at a temporary folder for the whole session."""
    old = os.environ.get("BASIN_CACHE")
    os.environ["BASIN_CACHE"] = str(tmp_path_factory.mktemp("basin-cache"))
    yield
    if old is None:
        os.environ.pop("BASIN_CACHE", None)
    else:
        os.environ["BASIN_CACHE"] = old


@pytest.fixture(scope="session")
def micro_world() -> World:
    return World(MICRO_WORLD)


@pytest.fixture(scope="session")
def micro_tokenizer(micro_world):
    from unlearn.tokenizer import train_tokenizer, world_training_texts

    return train_tokenizer(world_training_texts(micro_world), vocab_size=MICRO_VOCAB)


@pytest.fixture()
def micro_model(micro_tokenizer):
    """A freshly initialised (untrained) micro Llama."""
    from unlearn.models import build_model

    return build_model("micro", micro_tokenizer, torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def trained_micro(micro_world, micro_tokenizer):
    """(model, tokenizer, fit result): a micro Llama that has memorised the micro world's people
    and utility facts. Treat it as read-only (deep-copy before changing it)."""
    from unlearn.build import training_rows
    from unlearn.data.format import encode_rows
    from unlearn.models import build_model
    from unlearn.pretrain import FitConfig, fit

    model = build_model("micro", micro_tokenizer, torch.Generator().manual_seed(0))
    examples = encode_rows(micro_tokenizer, training_rows(micro_world, "full"))
    result = fit(model, micro_tokenizer, examples,
                 FitConfig(max_steps=400, batch_size=16, lr=5e-3, warmup_steps=20, eval_every=50,
                           target_prob=0.95), progress=False)
    return model, micro_tokenizer, result


@pytest.fixture(scope="session")
def start_model(trained_micro, tmp_path_factory) -> str:
    """The trained micro model saved as a checkpoint folder (what a sweep or a study starts from)."""
    model, tok, _ = trained_micro
    folder = tmp_path_factory.mktemp("start") / "micro"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


class NanFromCall:
    """Gradient ascent whose forget loss turns NaN from its ``n``-th call on (a diverging objective),
    for tests that patch ``unlearn.train.make_objective`` with it."""

    needs_reference = False

    def __init__(self, n: int):
        from unlearn.objectives import make_objective

        self.inner, self.n, self.calls = make_objective("ga"), n, 0

    def prepare(self, ref, batch):
        return {}

    def __call__(self, model, batch, prep):
        self.calls += 1
        return {"forget": self.inner(model, batch, prep)["forget"] * (float("nan") if self.calls >= self.n else 1.0)}
