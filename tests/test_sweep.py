"""basin sweep: a grid becomes named, idempotent jobs; the local and the Ray engine give the same
runs bit for bit, in the record format basin report reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from analysis.load import load_records
from basin.sweep import SweepConfig, job_name, partner_dir, plan_jobs, run_sweep, sweep_sources, switch_engine
from conftest import MICRO_WORLD
from basin.cli import main
from unlearn.errors import BasinError
from unlearn.records import recipe_of

WORLD_ARGS = {"n_people": MICRO_WORLD.n_people, "n_holdout": MICRO_WORLD.n_holdout,
              "n_countries": MICRO_WORLD.n_countries, "seed": MICRO_WORLD.seed}


def sweep_spec(start_model, out, **kw) -> SweepConfig:
    """Two optimizers x two seeds of the micro model, four NPO steps each, audited with 4-bit RTN."""
    return SweepConfig(**{
        "out": str(out),
        "unlearn": {"model": start_model, "benchmark": "world:forget10", "benchmark_args": WORLD_ARGS,
                    "objective": "npo", "steps": 4, "batch_size": 4, "eval_every": 4, "save_every": 0,
                    "device": "cpu"},
        "grid": {"optimizer": ["adam", "signadam"], "seed": [0, 1]},
        "recipes": {"adam": {"lr": 1e-3}, "signadam": {"lr": 3e-4}},
        "audit": {"attacks": ["quantize"], "attack_args": {"quantize": {"methods": ["rtn"], "bits": [4]}},
                  "metrics": ["prob"], "max_retain": 20, "device": "cpu"},
        **kw})


def test_plan_names_recipes_and_errors(start_model, tmp_path):
    jobs = plan_jobs(sweep_spec(start_model, tmp_path))
    assert [j.name for j in jobs] == ["adam-s0", "adam-s1", "signadam-s0", "signadam-s1"]
    assert [j.unlearn["lr"] for j in jobs] == [1e-3, 1e-3, 3e-4, 3e-4]
    assert [j.audit["score_references"] for j in jobs] == [True, False, False, False]
    assert jobs[0].original == start_model and jobs[0].audit["benchmark_args"] == WORLD_ARGS
    assert job_name({"objective": "npo", "lr": 1e-4, "seed": 2}) == "npo-lr0.0001-s2"
    assert (jobs[1].run_dir, jobs[1].audit_dir) == (str(tmp_path / "runs" / "adam-s1"), str(tmp_path / "audits" / "adam-s1"))
    for job in jobs:   # what carrying a work folder relies on: each folder names its partner
        assert partner_dir(job.run_dir) == Path(job.audit_dir) and partner_dir(job.audit_dir) == Path(job.run_dir)
    assert partner_dir("w/smollm2/runs/npo-gold/adam-s1") == Path("w/smollm2/audits/npo-gold/adam-s1")
    assert partner_dir("w/runs/x/audits/y") == Path("w/runs/x/runs/y")   # the innermost one
    assert partner_dir("study/smollm2/paths/npo-gold/adam-s1") is None
    with pytest.raises(BasinError, match="did you mean 'ray'"):
        sweep_spec(start_model, tmp_path, engine="rey")
    with pytest.raises(BasinError, match="unknown config field"):
        plan_jobs(sweep_spec(start_model, tmp_path, grid={"optimiser": ["adam"]}))
    with pytest.raises(BasinError, match="did you mean 'adam'"):
        plan_jobs(sweep_spec(start_model, tmp_path, grid={"optimizer": ["adma"]}))
    assert not (tmp_path / "runs").exists()


def test_an_engine_given_on_the_command_line_keeps_the_files_options_only_for_that_engine():
    # a spec written for Ray (num_cpus per job) run with --engine local: Ray's options are dropped
    # (the local engine takes none and would refuse them); with --engine ray they stay
    assert switch_engine("ray", {"num_cpus": 1}, "local") == ("local", {})
    assert switch_engine("ray", {"num_cpus": 1}, "ray") == ("ray", {"num_cpus": 1})
    assert switch_engine("local", {}, "ray") == ("ray", {})
    with pytest.raises(BasinError, match="unknown sweep engine 'rya'"):
        switch_engine("ray", {}, "rya")


def test_local_and_ray_engines_give_the_same_runs(start_model, tmp_path):
    pytest.importorskip("ray")
    local = run_sweep(sweep_spec(start_model, tmp_path / "local"), progress=False)
    assert [r["name"] for r in local] == ["adam-s0", "adam-s1", "signadam-s0", "signadam-s1"]
    df = load_records(sweep_sources(sweep_spec(start_model, tmp_path / "local")))
    mine = df[df.role == "unlearned"]
    assert set(mine.optimizer) == {"adam", "signadam"} and set(mine.seed) == {0, 1}
    assert {"training", "none", "quantize"} <= set(df.attack)
    # a rerun reuses every finished run and audit
    again = run_sweep(sweep_spec(start_model, tmp_path / "local"), progress=False)
    assert not any(r["audited"] for r in again)

    spec = sweep_spec(start_model, tmp_path / "ray", engine="ray", grid={"optimizer": ["adam", "signadam"], "seed": [1]},
                 engine_args={"num_cpus": 1})
    remote = run_sweep(spec, progress=False)
    assert [r["name"] for r in remote] == ["adam-s1", "signadam-s1"]
    for name in ("adam-s1", "signadam-s1"):
        a = load_file(tmp_path / "local" / "runs" / name / "model" / "model.safetensors")
        b = load_file(tmp_path / "ray" / "runs" / name / "model" / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
        la = [json.loads(x)["value"] for x in (tmp_path / "local" / "audits" / name / "records.jsonl").open()
              if json.loads(x)["role"] == "unlearned"]
        lb = [json.loads(x)["value"] for x in (tmp_path / "ray" / "audits" / name / "records.jsonl").open()
              if json.loads(x)["role"] == "unlearned"]
        assert la == pytest.approx(lb, abs=1e-6)


def test_cli_sweep_writes_a_report(start_model, tmp_path, capsys):
    import yaml

    spec = sweep_spec(start_model, tmp_path / "cli", grid={"optimizer": ["adam"], "seed": [0]})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in spec.__dict__.items()}))
    assert main(["sweep", str(path), "--report", "--quiet"]) == 0
    assert (tmp_path / "cli" / "report" / "index.html").exists()
    # the audit's records carry the audited run's recipe (lr, steps, config hash), references none
    run = json.loads((tmp_path / "cli" / "runs" / "adam-s0" / "config.json").read_text())
    recs = [json.loads(x) for x in (tmp_path / "cli" / "audits" / "adam-s0" / "records.jsonl").open()]
    assert {r["recipe"] for r in recs if r["role"] == "unlearned"} == {recipe_of(run)}
    assert recipe_of(run).startswith("lr=0.001 steps=")
    assert {r.get("recipe") for r in recs if r["role"] != "unlearned"} <= {None}
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\ngrids: {}\n")
    assert main(["sweep", str(bad)]) == 2
    assert "unknown sweep field(s) grids" in capsys.readouterr().err


def test_a_sweep_that_cannot_fit_on_the_disk_is_refused_before_any_run(start_model, tmp_path, monkeypatch,
                                                                       trained_micro):
    from collections import namedtuple

    from basin import sweep as sweep_module

    weights = 4 * sum(p.numel() for p in trained_micro[0].parameters())   # float32 bytes of one model
    need = 4 * weights + 6 * weights      # four models to write + one running job's checkpoint swap
    usage = namedtuple("usage", "total used free")
    free = {"bytes": need - 1}
    monkeypatch.setattr(sweep_module.shutil, "disk_usage", lambda path: usage(0, 0, free["bytes"]))
    spec = sweep_spec(start_model, tmp_path / "out", engine="local")
    spec.unlearn["save_every"] = 2                          # a checkpoint halfway: its swap needs room
    with pytest.raises(BasinError, match=r"not enough disk space: the 4 runs still to do .* free space"):
        run_sweep(spec, progress=False)
    assert not (tmp_path / "out" / "runs").exists()
    jobs = plan_jobs(spec)
    spec.unlearn["save_every"] = 0                          # no checkpoints: only the models
    free["bytes"] = 4 * weights
    sweep_module.check_space(plan_jobs(spec))
    free["bytes"] = need
    sweep_module.check_space(jobs)                          # exactly enough: accepted
    free["bytes"] = need - weights                          # one run finished: one model less to write
    finished = tmp_path / "out" / "runs" / jobs[0].name
    (finished / "model").mkdir(parents=True)
    (finished / "model" / "config.json").write_text("{}")
    (finished / "manifest.json").write_text("{}")
    sweep_module.check_space(jobs)
    with pytest.raises(BasinError, match="the 3 runs still to do"):
        sweep_module.check_space(jobs, workers=2)           # two running at once need a second swap
