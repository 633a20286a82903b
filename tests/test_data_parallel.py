"""Data-parallel unlearning (accelerate, 2 CPU processes under torchrun) gives the weights of the
single-process run with the same grad_accum: first-order and zeroth-order steps alike."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import MICRO_WORLD
from unlearn.train import UnlearnConfig

WORLD_ARGS = {"n_people": MICRO_WORLD.n_people, "n_holdout": MICRO_WORLD.n_holdout,
              "n_countries": MICRO_WORLD.n_countries, "seed": MICRO_WORLD.seed}


def _config(model: str, **kw) -> UnlearnConfig:
    return UnlearnConfig(**{"model": model, "benchmark": "world:forget10", "benchmark_args": WORLD_ARGS,
                            "objective": "npo", "optimizer": "hybrid", "lr": 1e-3, "steps": 6, "batch_size": 4,
                            "grad_accum": 2, "eval_every": 3, "save_every": 0, "device": "cpu",
                            "optimizer_args": {"n_fo": 2, "n_zo": 2}, **kw})


def _launch(config: UnlearnConfig, tmp_path, out, processes: int = 2) -> subprocess.CompletedProcess:
    """`basin unlearn` in ``processes`` processes under torchrun (1: a plain process), one thread each
    so that both runs do their matrix products in the same order."""
    cfg = tmp_path / f"{out.name}.yaml"
    cfg.write_text(json.dumps({k: v for k, v in config.__dict__.items()}))   # JSON is YAML
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun is not on PATH")
    launcher = [torchrun, "--standalone", "--nproc_per_node", "2"] if processes == 2 else [sys.executable]
    return subprocess.run(launcher + ["-m", "basin", "unlearn", "--config", str(cfg), "--out", str(out),
                                      "--quiet"], capture_output=True, text=True, env=env, timeout=300)


def test_two_processes_match_one(micro_model, micro_tokenizer, tmp_path):
    folder = tmp_path / "start"
    micro_model.save_pretrained(folder)
    micro_tokenizer.save_pretrained(folder)
    config = _config(str(folder))
    for name, processes in (("single", 1), ("dp", 2)):
        done = _launch(config, tmp_path, tmp_path / name, processes)
        assert done.returncode == 0, done.stderr[-3000:]
    a = load_file(tmp_path / "single" / "model" / "model.safetensors")
    b = load_file(tmp_path / "dp" / "model" / "model.safetensors")
    start = load_file(folder / "model.safetensors")
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], start[k]) for k in a)               # it did train
    for k in a:                                                          # fo and zo steps alike
        assert torch.equal(b[k], a[k]), k                                 # bit for bit
    # one records file, from the first process, with the same evaluations
    recs, single = ([json.loads(line) for line in (tmp_path / n / "records.jsonl").read_text().splitlines()]
                    for n in ("dp", "single"))
    assert len(recs) == len(single) == 3 * 6                              # steps 0, 3, 6 x 2 splits x 3 metrics
    assert [r["value"] for r in recs] == pytest.approx([r["value"] for r in single], abs=1e-5)


def test_data_parallel_refuses_what_it_cannot_split(micro_model, micro_tokenizer, tmp_path):
    folder = tmp_path / "start"
    micro_model.save_pretrained(folder)
    micro_tokenizer.save_pretrained(folder)
    done = _launch(_config(str(folder), grad_accum=1), tmp_path, tmp_path / "bad")
    assert done.returncode != 0 and "must be a multiple of 2" in done.stderr
    done = _launch(_config(str(folder), optimizer="sophia", optimizer_args={}), tmp_path, tmp_path / "bad2")
    assert done.returncode != 0 and "does not run data parallel" in done.stderr
