"""The preregistered study: the committed file parses and names only registered things, bad study
files are refused with one clear error, the controls copy their arm's setting, and the noise of
``adam-noise`` is matched to the zeroth-order steps it controls for."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.verdicts import PAPER_CLAIMS
from basin.study import (StudyConfig, TiersRegime, check_study, control_setting, matched_noise_std, override_engine,
                         model_seeds, plan_tiers)
from basin.sweep import partner_dir
from unlearn.errors import BasinError

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_committed_study_files_parse_and_plan(path, tmp_path):
    config = StudyConfig.from_yaml(path)
    # every regime plans: every calibration, unlearn and audit config is built and checked
    assert check_study(StudyConfig(**{**_raw(path), "out": str(tmp_path / "report"), "work": str(tmp_path)})) == list(config.regimes)
    names = {c.name for c in config.claim_table()}
    assert set(config.claims) <= {c.name for c in PAPER_CLAIMS} and set(config.claims) <= names
    for name, regime in config.regimes.items():
        if isinstance(regime, TiersRegime):
            assert len(regime.seeds) >= 5
            # calibration seeds (and the calibration's models) are kept apart from the evaluation seeds
            assert not set(regime.calibration["seeds"]) & set(regime.seeds)
            if regime.vary_models:
                assert model_seeds(regime)["cal"] not in regime.seeds
        for claim in config.regime_claims(name):
            assert claim.alpha == config.alpha


def test_the_optimizer_tiers_study_has_the_issue_arms():
    config = StudyConfig.from_yaml(ROOT / "studies" / "optimizer_tiers.yaml")
    mini = config.regimes["miniature"]
    optimizers = {a["optimizer"] for a in {**mini.arms, **mini.controls}.values()}
    assert {"adam", "signadam", "qadam", "sophia", "zo-sgd", "adazo", "hybrid", "sam", "adam-noise",
            "hybrid-randsign"} <= optimizers
    ratios = {(a["optimizer_args"]["n_fo"], a["optimizer_args"]["n_zo"]) for a in mini.arms.values()
              if a["optimizer"] == "hybrid"}
    assert {(5, 15), (10, 10), (15, 5)} == ratios
    assert mini.arms["zo-sgd"]["optimizer_args"]["directions"] == "sphere"
    assert set(mini.objectives) == {"npo", "graddiff"}
    assert mini.vary_models and len(mini.seeds) >= 5


def _raw(path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _small() -> dict:
    data = _raw(ROOT / "studies" / "optimizer_tiers.yaml")
    data["regimes"] = {"miniature": data["regimes"]["miniature"]}
    return data


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["regimes"]["miniature"]["arms"]["adam"].update(optimizer="adamm"), "unknown optimizer of arm 'adam'"),
    (lambda d: d["regimes"]["miniature"].update(seeds=[0, 1, 2]), "at least 5"),
    (lambda d: d.update(claims=["hybrid-vs-adam-relern"]), "unknown claim"),
    (lambda d: d.update(correction="bonferoni"), "unknown multiple-comparison correction"),
    (lambda d: d["regimes"]["miniature"]["audit"]["attacks"].update(quantise={}), "unknown attack"),
    (lambda d: d["regimes"]["miniature"]["controls"]["adam-noise"].update(like="adan"), "unknown like of control"),
    (lambda d: d["regimes"]["miniature"].update(calibration_model_seed=0), "calibration_model_seed"),
    (lambda d: d["regimes"]["miniature"].update(kind="tier"), "unknown kind of regime"),
    (lambda d: d.update(alpha=5), r"alpha must be in \(0, 1\)"),
    (lambda d: d["study_claims"][0].update(quantity="recovry"), "quantity must be one of"),
    (lambda d: d["regimes"]["miniature"]["objectives"].update(npoo={}), "unknown objective"),
    (lambda d: d.update(bands={"forget_equivalance": 0.1}), "forget_equivalance"),
    (lambda d: d.update(colour="red"), "unknown study field"),
    (lambda d: d.update(bands={"target": 0.5}), "set per cell"),
    (lambda d: d.update(bands={"stopped": True}), "set per cell"),
    (lambda d: d["regimes"]["miniature"]["controls"]["adam-noise"].update(lr_factor=0), "lr_factor of control"),
    (lambda d: d["regimes"]["miniature"]["controls"]["adam-noise"].update(lr_factor="3"), "lr_factor of control"),
])
def test_bad_study_files_are_refused(edit, message):
    data = copy.deepcopy(_small())
    edit(data)
    with pytest.raises((BasinError, TypeError), match=message):
        StudyConfig(**data) if "colour" not in data else StudyConfig.from_yaml(_dump(data))


def _dump(data) -> str:
    import tempfile
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    yaml.safe_dump(data, f)
    f.close()
    return f.name


def test_engine_override_keeps_a_regimes_engine_options_only_for_its_own_engine():
    # a file written for Ray (num_cpus per job) runs with --engine local: Ray's options are dropped,
    # where before the local engine failed on num_cpus after the calibration had run
    data = copy.deepcopy(_small())
    data["regimes"]["miniature"].update(engine="ray", engine_args={"num_cpus": 1})
    config = StudyConfig(**data)
    override_engine(config, "ray")
    assert config.regimes["miniature"].engine_args == {"num_cpus": 1}
    override_engine(config, "local")
    regime = config.regimes["miniature"]
    assert (regime.engine, regime.engine_args) == ("local", {})
    with pytest.raises(BasinError, match="unknown sweep engine 'rya'"):
        override_engine(config, "rya")
    data["regimes"]["miniature"].update(engine="local")
    with pytest.raises(BasinError, match="num_cpus.*option of the local engine|option of the local engine"):
        StudyConfig(**data)


def test_a_control_copies_its_arm_and_keeps_only_the_options_its_optimizer_takes(tmp_path):
    regime = StudyConfig(**_small()).regimes["miniature"]
    settings = {"hybrid": {"lr": 2e-3, "steps": 60, "matched": True, "forget": 5.0,
                           "optimizer_args": {"n_fo": 10, "n_zo": 10, "zo_lr_scale": 0.1, "state": "separate"}},
                "adam": {"lr": 1e-3, "steps": 60, "matched": True, "forget": 5.1, "optimizer_args": {}}}
    randsign = control_setting(regime, "hybrid-randsign", settings)
    assert randsign["lr"] == 2e-3 and randsign["steps"] == 60 and randsign["control"]
    # hybrid-randsign has no `state` option: it is dropped, the rest is the hybrid's
    assert randsign["optimizer_args"] == {"n_fo": 10, "n_zo": 10, "zo_lr_scale": 0.1}
    noise = control_setting(regime, "adam-noise", settings, noise_std=0.25)
    assert noise["lr"] == 1e-3 and noise["optimizer_args"] == {"noise_std": 0.25}
    # lr_factor: the arm's setting at k x its lr, nothing else changed (the arm's own is untouched)
    regime.controls["adam-fast"] = {"optimizer": "adam", "like": "adam", "lr_factor": 3}
    fast = control_setting(regime, "adam-fast", settings)
    assert fast["lr"] == pytest.approx(3e-3) and fast["steps"] == 60 and fast["optimizer_args"] == {}
    assert settings["adam"]["lr"] == 1e-3


def test_matched_noise_std_equates_the_step_norms(tmp_path):
    # the hybrid's ZO steps had update_rms 2 and 4 (mean 3) at lr_ZO = 1e-3 x 0.5; Adam runs at 1e-4:
    # noise_std = 3 x 5e-4 / 1e-4 = 15; FO steps (rms 100) are ignored
    rows = [{"metric": "update_rms", "split": "optimizer", "phase": p, "value": v, "step": i}
            for i, (p, v) in enumerate([("fo", 100.0), ("zo", 2.0), ("zo", 4.0), ("fo", 100.0)])]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    setting = {"lr": 1e-3, "optimizer_args": {"zo_lr_scale": 0.5}}
    assert matched_noise_std(tmp_path, setting, lr=1e-4) == pytest.approx(15.0)
    # a pure ZO run (no phase) counts every step
    rows = [{**r, "phase": None} for r in rows[1:3]]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert matched_noise_std(tmp_path, {"lr": 1e-3, "optimizer_args": {}}, lr=1e-3) == pytest.approx(3.0)
    (tmp_path / "records.jsonl").write_text("")
    with pytest.raises(BasinError, match="no zeroth-order update_rms"):
        matched_noise_std(tmp_path, setting, lr=1e-4)


def test_the_plan_pairs_each_seed_with_its_own_models_and_attack_seed(tmp_path):
    regime = StudyConfig(**_small()).regimes["miniature"]
    plan = plan_tiers(regime, tmp_path)
    assert len(plan.calibrations) == len(regime.objectives) * len(regime.arms) * len(regime.calibration["targets"])
    setting = {"lr": 1e-3, "steps": 60, "optimizer_args": {}}
    jobs = [plan.job("npo", "gold", "adam", s, setting, references=False) for s in regime.seeds]
    assert len({j.original for j in jobs}) == len(regime.seeds)       # one original per seed
    assert len({j.retain for j in jobs}) == len(regime.seeds)
    for seed, job in zip(regime.seeds, jobs):
        assert job.unlearn["seed"] == seed and job.audit["seed"] == seed and job.unlearn["model"] == job.original
        assert job.run_dir == str(tmp_path / "runs" / "npo-gold" / f"adam-s{seed}")
        assert partner_dir(job.run_dir) == Path(job.audit_dir)          # what carrying the work folder relies on
    cal = next(iter(plan.calibrations.values()))
    assert cal.original not in {j.original for j in jobs}               # the calibration's own model
    path = plan.path_job("npo", "gold", "hybrid", 3, setting)
    assert path.audit["attack_args"]["interpolate"]["endpoint"].endswith("adam-s3")
    assert path.run_dir.endswith("hybrid-s3") and path.audit["attacks"] == ("interpolate",)


def test_stop_budget_stops_each_run_at_the_calibration_target(tmp_path):
    """stop_budget: every evaluation run (arms and the controls that copy them) gets the cell's
    calibrated target as stop_at and B x the calibrated steps, rounded up to a multiple of
    eval_every, as its budget; bad settings are refused."""
    data = _small()
    data["regimes"]["miniature"]["unlearn"] = {**data["regimes"]["miniature"].get("unlearn", {}), "eval_every": 4}
    data["regimes"]["miniature"]["stop_budget"] = 1.5
    data["regimes"]["miniature"]["calibration"]["metric"] = "prob"
    regime = StudyConfig(**data).regimes["miniature"]
    plan = plan_tiers(regime, tmp_path)
    setting = {"lr": 1e-3, "steps": 30, "optimizer_args": {}, "target": 0.37}
    job = plan.job("npo", "gold", "adam", regime.seeds[0], setting, references=False)
    assert job.unlearn["stop_at"] == 0.37 and job.unlearn["steps"] == 48       # 1.5 x 30 = 45 -> 48
    randsign = control_setting(regime, "hybrid-randsign", {**{"hybrid": {**setting, "optimizer_args": {}}}})
    assert randsign["target"] == 0.37
    plain = plan_tiers(StudyConfig(**_small()).regimes["miniature"], tmp_path / "p")
    assert plain.job("npo", "gold", "adam", 0, setting, references=False).unlearn["stop_at"] is None
    for edit, message in ((dict(stop_budget=0.5), "stop_budget must be"),
                          (dict(unlearn={"eval_every": 0}), "eval_every"),
                          (dict(unlearn={"eval_every": 4, "stop_at": 0.3}), "set per run"),
                          (dict(calibration={**data["regimes"]["miniature"]["calibration"], "metric": "nll"}),
                           "metric must be prob")):
        bad = copy.deepcopy(data)
        bad["regimes"]["miniature"].update(edit)
        with pytest.raises(BasinError, match=message):
            StudyConfig(**bad)


def test_stop_split_unseen_stops_each_run_on_the_rows_its_relearning_attack_leaves(tmp_path, monkeypatch):
    """stop_split: forget_unseen: each run's stop is checked on the forget rows its relearning
    attack (attack seed = the run's seed) does not train on, at the target's level on those rows
    (from the original's and gold model's per-row probabilities); seed_references: every seed's
    first audit scores the references under those attacks (the first pair's, under all)."""
    import basin.study as study
    import basin.sweep as sweep
    from audit.attacks.relearn import relearn_subset
    from basin.calibrate import CALIBRATION_FILE, KIND

    data = yaml.safe_load(SMOKE)
    mini = data["regimes"]["mini"]
    mini.update(vary_models=False, stop_budget=2, stop_split="forget_unseen", seed_references=["relearn"],
                calibration={**mini["calibration"], "metric": "prob", "targets": ["gold", "halfway"]})
    mini.pop("calibration_model_seed")
    mini.pop("paths")
    mini["controls"].pop("adam-noise")
    config = StudyConfig(**{**data, "out": str(tmp_path / "report"), "work": str(tmp_path / "work")})
    regime = config.regimes["mini"]
    folder = tmp_path / "work" / "mini"
    plan = plan_tiers(regime, folder)
    original, gold = plan.models["0"]
    o = [0.9, 0.8, 0.95, 0.7, 0.85, 0.6, 0.9, 0.75]
    g = [0.1, 0.3, 0.2, 0.4, 0.15, 0.25, 0.05, 0.35]
    folder.mkdir(parents=True)
    (folder / "forget-rows.json").write_text(json.dumps({original: o, gold: g}))
    setting = {"lr": 1e-3, "steps": 4, "optimizer_args": {}, "target": 0.2}
    for seed in (0, 1):
        unseen = [i for i in range(8) if i not in relearn_subset(8, 0.5, seed)]
        job = plan.job("npo", "gold", "adam", seed, setting, references=False)
        assert job.unlearn["stop_rows"] == unseen and len(unseen) == 4
        assert job.unlearn["stop_at"] == pytest.approx(sum(g[i] for i in unseen) / 4)
        half = plan.job("npo", "halfway", "adam", seed, setting, references=False).unlearn["stop_at"]
        assert half == pytest.approx(sum(o[i] + g[i] for i in unseen) / 8)
    assert plan.job("npo", "gold", "adam", 0, {**setting, "target": None}, references=False).unlearn["stop_rows"] is None

    def fake_calibrate(config, **_):
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        name = next(iter(config.optimizers))
        entry = {"lr": 2e-3, "steps": 4, "matched": True, "optimizer_args": {}, "forget": 0.2, "forget_per_seed": [0.2]}
        (out / CALIBRATION_FILE).write_text(json.dumps({"kind": KIND, "optimizers": {name: entry},
                                                        "target": {"value": 0.2}}))

    jobs = []
    monkeypatch.setattr(study, "build_models", lambda *a, **k: None)
    monkeypatch.setattr(study, "calibrate", fake_calibrate)
    monkeypatch.setitem(sweep.ENGINES, "local", lambda batch, **_: jobs.extend(batch) or [])
    study.run_study(config, progress=False, log=lambda *_: None)
    refs = {(j.name.split("/")[0], j.name.split("/")[1]): j.audit["score_references"] for j in jobs}
    assert refs[("npo-gold", "adam-s0")] is True and refs[("npo-gold", "adam-s1")] == ("relearn",)
    assert refs[("npo-gold", "hybrid-s1")] is False and refs[("npo-halfway", "adam-s1")] is False
    study.write_study(config, log=lambda *_: None)   # the calibration table has columns for the stop split
    rows = json.loads((tmp_path / "report" / "v1" / "summary.json").read_text())["calibration"]
    assert all("from gold (gap fraction) (forget_unseen)" in r and "forget, evaluation seeds" in r for r in rows)
    for edit, message in ((dict(stop_split="retain"), "did you mean"),
                          (dict(stop_budget=None), "stop_budget is not set"),
                          (dict(seed_references=["noise"]), "seed_references")):
        bad = copy.deepcopy(data)
        bad["regimes"]["mini"].update(edit)
        with pytest.raises(BasinError, match=message):
            StudyConfig(**bad)


def test_the_report_says_where_each_arms_runs_stopped(tmp_path):
    from basin.study import steps_taken

    for name, taken in (("adam-s0", 12), ("adam-s1", 20), ("adam-s2", None), ("hybrid-1to3-s0", 8)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({} if taken is None else {"steps_taken": taken}))
    assert steps_taken(tmp_path, "adam", 40) == "16 (12 to 20, n=2; budget 40)"
    assert steps_taken(tmp_path, "hybrid-1:3", 40) == "8 (8 to 8, n=1; budget 40)"
    assert steps_taken(tmp_path, "signadam", 40) is None


def test_the_command_reads_the_file_and_overrides_its_folders(tmp_path, monkeypatch):
    import dataclasses
    config = StudyConfig.from_yaml(ROOT / "studies" / "optimizer_tiers.yaml")
    moved = dataclasses.replace(config, out=str(tmp_path / "r"), work=str(tmp_path / "w"))
    assert moved.regimes == config.regimes and moved.work == str(tmp_path / "w")


SMOKE = """
name: smoke
version: 1
question: does the pipeline run end to end?
min_seeds: 2
claims: [hybrid-vs-adam-relearn, hybrid-keeps-adam-forgetting]
study_claims:
  - {name: hybrid-vs-randsign-relearn, text: t, a: hybrid, b: hybrid-randsign, attack: relearn, metric: prob,
     split: forget_unseen, x: strongest, quantity: recovery_gold}
regimes:
  mini:
    model: {size: micro, world: {n_people: 20, n_holdout: 4, n_countries: 4}, fit: {max_steps: 100, eval_every: 50}}
    benchmark: world:forget10
    seeds: [0, 1]
    vary_models: true
    calibration_model_seed: 1000
    objectives: {npo: {beta: 0.1, gamma: 1.0}}
    unlearn: {steps: 4, batch_size: 4, eval_every: 4, eval_max_rows: 8, save_every: 4}
    arms:
      adam: {optimizer: adam, start: 1.0e-3}
      hybrid: {optimizer: hybrid, optimizer_args: {n_fo: 1, n_zo: 1, zo_lr_scale: 0.1}, start: 1.0e-3}
    controls:
      hybrid-randsign: {optimizer: hybrid-randsign, like: hybrid}
      adam-noise: {optimizer: adam-noise, like: adam, noise_of: hybrid}
    calibration: {metric: nll, targets: [halfway], seeds: [1000], max_probes: 1, max_retain: 8}
    audit:
      max_retain: 8
      splits: [forget, retain]
      metrics: [prob, nll, margin]
      attacks:
        relearn: {steps: [1], size: 0.5, lr: 1.0e-3}
        quantize: {methods: [rtn], bits: [4]}
    paths: {from: adam, to: [hybrid]}
"""


@pytest.mark.slow
def test_a_study_runs_resumes_and_reports(tmp_path):
    from basin.study import run_study, write_study

    spec = tmp_path / "smoke.yaml"
    spec.write_text(SMOKE)
    config = StudyConfig(**{**yaml.safe_load(SMOKE), "out": str(tmp_path / "report"), "work": str(tmp_path / "work")})
    run_study(config, progress=False, log=lambda *_: None)
    work = tmp_path / "work" / "mini"
    runs = sorted(p.name for p in (work / "runs" / "npo-halfway").iterdir())
    assert runs == sorted(f"{a}-s{s}" for a in ("adam", "adam-noise", "hybrid", "hybrid-randsign") for s in (0, 1))
    settings = json.loads((work / "settings.json").read_text())["npo/halfway"]
    # the controls copy their arm's calibrated lr; adam-noise's noise is matched per seed
    assert settings["hybrid-randsign"]["lr"] == settings["hybrid"]["lr"]
    assert settings["adam-noise"]["lr"] == settings["adam"]["lr"]
    noise = json.loads((work / "runs" / "npo-halfway" / "adam-noise-s1" / "config.json").read_text())
    assert noise["optimizer_args"]["noise_std"] == pytest.approx(settings["adam-noise"]["noise_std_per_seed"]["1"])
    # seed i unlearns its own original model; the attack seed is the run's seed
    models = {json.loads((work / "runs" / "npo-halfway" / f"adam-s{s}" / "config.json").read_text())["model"]
              for s in (0, 1)}
    assert len(models) == 2
    assert (work / "paths" / "npo-halfway" / "adam-hybrid-s1" / "manifest.json").exists()
    # a rerun finds everything done: no file changes
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("records.jsonl")}
    run_study(config, progress=False, log=lambda *_: None)
    assert stamps == {p: p.stat().st_mtime_ns for p in work.rglob("records.jsonl")}
    index = write_study(config, source=spec, log=lambda *_: None)
    summary = json.loads((tmp_path / "report" / "v1" / "summary.json").read_text())
    assert {v["claim"] for v in summary["verdicts"]} == {"hybrid-vs-adam-relearn", "hybrid-keeps-adam-forgetting",
                                                         "hybrid-vs-randsign-relearn"}
    assert all(v["verdict"] in ("reproduced", "not reproduced", "inconclusive") for v in summary["verdicts"])
    assert {c["arm"] for c in summary["calibration"]} == {"adam", "hybrid", "hybrid-randsign", "adam-noise"}
    # beside each arm's calibrated level, where its evaluation seeds landed (the same metric)
    assert all(c["metric"] == "nll" and "n=2)" in c["forget, evaluation seeds"] for c in summary["calibration"])
    assert all(math.isfinite(c["from gold (gap fraction)"]) for c in summary["calibration"])
    page = index.read_text()
    assert "hybrid-vs-randsign-relearn" in page and "v1/mini-npo-halfway/index.html" in page
    assert (tmp_path / "report" / "v1" / "study.yaml").read_text() == SMOKE
    tables = tmp_path / "report" / "v1" / "mini-npo-halfway" / "tables"
    assert all((tables / f"{t}.csv.gz").exists() for t in ("records", "recovery", "recovery_per_seed", "summary"))
    # the derived per-seed and summary tables hold the claims' metrics; the records hold every metric
    claimed = {v["metric"] for v in summary["verdicts"]}
    assert set(pd.read_csv(tables / "summary.csv.gz")["metric"]) == claimed
    assert set(pd.read_csv(tables / "records.csv.gz")["metric"]) > claimed
    # a fresh checkout has the committed report but no runs: the report is rebuilt from its records,
    # with the same verdicts, and the calibration and compute the first report measured
    (tmp_path / "work").rename(tmp_path / "gone")
    logged = []
    write_study(config, source=spec, log=logged.append)
    again = json.loads((tmp_path / "report" / "v1" / "summary.json").read_text())
    assert any("rebuilt from" in m and "records.csv.gz" in m for m in logged)
    key = ("claim", "verdict", "diff", "ci_low", "ci_high", "p_value", "n_a")
    assert [tuple(v[k] for k in key) for v in again["verdicts"]] == [tuple(v[k] for k in key) for v in summary["verdicts"]]
    assert again["calibration"] == summary["calibration"] and again["compute"] == summary["compute"]
    assert again["progress"]["mini / npo-halfway"] == "8 of 8 runs audited; report rebuilt from the committed records"


def test_an_interrupted_calibration_shows_the_arms_it_calibrated(tmp_path, monkeypatch):
    """settings.json is written as each arm's calibration lands, so a report made while the
    others are still calibrating lists the finished arm and marks the rest "not calibrated yet"."""
    import basin.study as study
    from basin.calibrate import CALIBRATION_FILE, KIND

    calls = []

    def fake_calibrate(config, **_):   # the first arm calibrates; the process stops in the second
        if calls:
            raise KeyboardInterrupt
        calls.append(config)
        out = Path(config.out)
        out.mkdir(parents=True)
        entry = {"lr": 2e-3, "steps": 4, "matched": True, "optimizer_args": {}, "forget": 1.5,
                 "forget_per_seed": [1.5]}
        (out / CALIBRATION_FILE).write_text(json.dumps({"kind": KIND, "optimizers": {"adam": entry}}))

    monkeypatch.setattr(study, "build_models", lambda *a, **k: None)
    monkeypatch.setattr(study, "calibrate", fake_calibrate)
    config = StudyConfig(**{**yaml.safe_load(SMOKE), "out": str(tmp_path / "report"), "work": str(tmp_path / "work")})
    with pytest.raises(KeyboardInterrupt):
        study.run_study(config, progress=False, log=lambda *_: None)
    settings = json.loads((tmp_path / "work" / "mini" / "settings.json").read_text())["npo/halfway"]
    assert settings["adam"]["lr"] == 2e-3 and not settings["adam"].get("planned")
    assert settings["hybrid"].get("planned") and settings["hybrid-randsign"].get("planned")
    study.write_study(config, log=lambda *_: None)
    rows = {c["arm"]: c for c in json.loads((tmp_path / "report" / "v1" / "summary.json").read_text())["calibration"]}
    assert rows["adam"]["matched"] == "yes" and rows["adam"]["lr"] == 2e-3
    assert rows["hybrid"]["matched"] == rows["hybrid-randsign"]["matched"] == "not calibrated yet"
    assert rows["hybrid"]["lr"] is None


def test_an_arm_is_one_comparison_unit_across_its_seeds_models(tmp_path):
    """Seeds of one arm unlearn different fitted models (different config hashes); the study's
    frame gives them one recipe per arm, so the verdicts pool them, and keeps arms apart."""
    from analysis.study import load_arms

    def run(name, seed, model, optimizer="hybrid", args=None):
        folder = tmp_path / name
        folder.mkdir()
        config = {"optimizer": optimizer, "optimizer_args": args or {}, "lr": 1e-3, "steps": 60, "seed": seed,
                  "model": model, "objective": "npo"}
        (folder / "config.json").write_text(json.dumps(config))
        rows = [{"model": name, "attack": "none", "setting": "clean", "metric": "prob", "split": "forget",
                 "value": 0.1 * seed, "seed": seed, "role": "unlearned", "optimizer": optimizer, "objective": "npo"}]
        (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(folder)

    groups = [([run("h0", 0, "m0"), run("h1", 1, "m1")], {"arm": "hybrid"}),
              ([run("r0", 0, "m0", args={"n_fo": 5}), run("r1", 1, "m1", args={"n_fo": 5})], {"arm": "hybrid-1:3"})]
    df = load_arms(groups)
    recipes = df.groupby("optimizer")["recipe"].unique()
    assert list(recipes["hybrid"]) == ["lr=0.001 steps=60 arm=hybrid"]
    assert list(recipes["hybrid-1:3"]) == ["lr=0.001 steps=60 arm=hybrid-1:3"]


def test_regime_claims_default_to_the_study_lists():
    config = StudyConfig.from_yaml(ROOT / "studies" / "optimizer_tiers.yaml")
    mini = {c.name for c in config.regime_claims("miniature")}
    assert "adam-higher-lr-quantize" not in mini          # only the map names it
    assert {"hybrid-vs-adam-relearn", "hybrid-vs-randsign-relearn"} <= mini
    assert {c.name for c in config.regime_claims("regime-map-small")} == {"adam-undone-by-quantize",
                                                                          "adam-higher-lr-quantize"}


def test_map_claims_are_judged_per_grid_cell_with_one_holm_correction(tmp_path):
    """The map runs one optimizer at several (lr, steps): a claim judged on all of them at once
    would pool settings and be refused. grid_claims makes one claim per steps value for the
    learning-rate comparison and one per (lr, steps) cell for the others; each is then judged on
    its own runs (here synthetic ones, where the highest lr at 60 steps leaks less under 4-bit)."""
    from analysis.study import grid_claims, load_arms
    from analysis.verdicts import PAPER_CLAIMS, evaluate_claims

    wanted = {"adam-undone-by-quantize", "adam-higher-lr-quantize"}
    claims = grid_claims([c for c in PAPER_CLAIMS if c.name in wanted], "adam", [1e-4, 1e-3], [20, 60])
    by_name = {c.name: c for c in claims}
    assert set(by_name) == {"adam-higher-lr-quantize [20 steps]", "adam-higher-lr-quantize [60 steps]"} | {
        f"adam-undone-by-quantize [lr {lr}, {s} steps]" for lr in ("0.0001", "0.001") for s in (20, 60)}
    lr_claim = by_name["adam-higher-lr-quantize [60 steps]"]
    assert (lr_claim.a, lr_claim.b, lr_claim.a_lr, lr_claim.b_lr) == ("adam@60", "adam@60", "highest", "lowest")
    cell = by_name["adam-undone-by-quantize [lr 0.001, 20 steps]"]
    assert (cell.a, cell.b, cell.a_lr) == ("adam@20", None, 1e-3)

    groups = _grid_records(tmp_path, leaky={(1e-4, 20): 0.6, (1e-3, 20): 0.6, (1e-4, 60): 0.6, (1e-3, 60): 0.1})
    verdicts = {v.claim.name: v for v in evaluate_claims(load_arms(groups), claims)}
    assert len(verdicts) == 6
    for v in verdicts.values():
        assert "several settings" not in v.reason
    v60, v20 = verdicts["adam-higher-lr-quantize [60 steps]"], verdicts["adam-higher-lr-quantize [20 steps]"]
    assert v60.diff < -0.2 < v20.diff               # only at 60 steps does the highest lr leak less
    assert v60.p_holm >= v60.p_value                # Holm over all six tests
    assert "adam@60 (lr=0.001) - adam@60 (lr=0.0001)" in v60.reason


def _grid_records(tmp_path, leaky: dict, unforgotten=()) -> list:
    """Synthetic map records, one folder per (lr, steps) cell with its 4-bit leak share; the
    cells in ``unforgotten`` keep a clean forget probability of 0.9 (they never forgot)."""
    from analysis.study import grid_arm
    from analysis.synthetic import synthetic_records

    groups = []
    for (lr, steps), share in leaky.items():
        records = synthetic_records(["adam"], seeds=range(5), leak={"adam": share}, basins=False,
                                    rng_seed=int(lr * 1e4) + steps)
        for r in records:
            if r.get("role") == "unlearned":
                r.update(lr=lr, run=f"{r['run']}-lr{lr:g}-{steps}", model=f"{r['model']}-lr{lr:g}-{steps}")
                if (lr, steps) in unforgotten and r["metric"] == "prob" and r["split"] == "forget":
                    r["value"] = 0.9
        folder = tmp_path / f"lr{lr:g}-{steps}"
        folder.mkdir()
        (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        groups.append(([folder], {"steps": steps, "arm": grid_arm("adam", steps)}))
    return groups


def test_clean_levels_place_each_arm_between_the_gold_model_and_the_original(tmp_path):
    """clean_levels: per arm, the clean forget level over its seeds (mean, min, max, n) and its
    distance from the gold model in fractions of the original-gold gap, against a direct
    computation from the records."""
    import numpy as np
    import pandas as pd

    from analysis.study import clean_levels, load_arms
    from analysis.synthetic import synthetic_records

    records = synthetic_records(["adam", "signadam"], seeds=range(4), basins=False, rng_seed=3)
    for r in records:   # signadam: seed s forgets to 0.2 + 0.1 s
        if r.get("optimizer") == "signadam" and r["attack"] == "none" and r["split"] == "forget" and r["metric"] == "prob":
            r["value"] = 0.2 + 0.1 * r["seed"]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    levels = clean_levels(load_arms([([tmp_path / "r"], {})]), "prob").set_index("arm")
    rows = pd.DataFrame(records)
    clean = rows[(rows["attack"] == "none") & (rows["metric"] == "prob") & (rows["split"] == "forget")]
    original, gold = (clean.loc[clean["role"] == role, "value"].mean() for role in ("original", "retain"))
    sign = levels.loc["signadam"]
    assert (sign["n"], sign["min"], sign["max"]) == (4, pytest.approx(0.2), pytest.approx(0.5))
    assert sign["from_gold"] == pytest.approx((0.35 - gold) / (original - gold))
    adam = clean[(clean["role"] == "unlearned") & (clean["optimizer"] == "adam")]["value"]
    assert np.isclose(levels.loc["adam", "mean"], adam.mean())


def test_each_cell_is_judged_from_its_own_calibration_target():
    """cell_bands: a cell's gold-distance condition starts from its target: gold 1, halfway 0.5,
    gap=A A, and a level of the metric as its fraction of the cell's clean original-gold gap."""
    import pandas as pd

    from analysis.verdicts import Bands
    from basin.study import cell_bands

    df = pd.DataFrame([{"attack": "none", "metric": "prob", "split": "forget", "role": role, "value": v}
                       for role, v in (("original", 0.9), ("original", 0.7), ("retain", 0.2))])  # o 0.8, r 0.2
    bands = Bands(gold_distance=0.2)
    got = {t: cell_bands(bands, t, df, "prob").target for t in ("gold", "halfway", "gap=0.25", "0.35")}
    assert got == pytest.approx({"gold": 1.0, "halfway": 0.5, "gap=0.25": 0.25, "0.35": 0.75})
    assert cell_bands(bands, "halfway", df, "prob").gold_distance == 0.2      # the study's bands kept
    assert cell_bands(bands, "halfway", df.iloc[:0], "prob") == bands          # no references yet
    assert cell_bands(bands, "gold", df, "prob", stopped=True).stopped


def test_regime_map_cells_and_the_cells_that_never_forgot(tmp_path):
    """regime_map's per-cell numbers equal a direct computation from the records, and the map
    marks the recovery of a cell that never forgot (it measures what unlearning left)."""
    import numpy as np
    import pandas as pd

    from analysis.study import load_arms, plot_regime_map, regime_map

    cells = {(1e-4, 20): 0.6, (1e-3, 20): 0.2}
    df = load_arms(_grid_records(tmp_path, cells, unforgotten={(1e-4, 20)}))
    table = regime_map(df)
    assert list(zip(table["lr"], table["steps"], table["n"])) == [(1e-4, 20, 5), (1e-3, 20, 5)]
    rows = pd.DataFrame(json.loads(line) for f in tmp_path.glob("*/records.jsonl") for line in f.read_text().splitlines())
    for _, cell in table.iterrows():
        mine = rows[(rows["role"] == "unlearned") & (rows["lr"] == cell["lr"]) & (rows["split"] == "forget")
                    & (rows["metric"] == "prob")]
        clean = mine[mine["attack"] == "none"].set_index("seed")["value"]
        quant = mine[(mine["attack"] == "quantize") & (mine["setting"] == "rtn-4bit")].set_index("seed")["value"]
        assert np.isclose(cell["forget"], clean.mean()) and np.isclose(cell["delta"], (quant - clean).mean())
    fig = plot_regime_map(table)
    notes = [text.get_text() for text in fig.axes[3].texts]
    assert ["not\nforgotten" in s for s in notes] == [True, False]


def test_the_first_page_shows_what_an_attack_itself_brought_back(tmp_path):
    """An "undone by the attack" claim on recovery_gold counts what unlearning left too: its cell
    on the first page also shows the attack's own recovery; a two-arm comparison does not."""
    from analysis.study import verdict_matrix

    base = {"regime": "map", "objective": "npo", "target": "grid", "verdict": "reproduced", "diff": 0.019,
            "ci_low": 0.013, "ci_high": 0.025, "reason": "r", "text": "t", "quantity": "recovery_gold"}
    html = verdict_matrix([{"version": 1, "verdicts": [
        {**base, "claim": "adam-undone-by-quantize", "b": None, "recovery_a": 0.00015},
        {**base, "claim": "signadam-vs-adam-quantize", "a": "signadam", "b": "adam", "recovery_a": 0.00042},
        {**base, "claim": "never-forgot", "b": None, "recovery_a": -51.09, "diff": float("nan"),
         "verdict": "inconclusive", "reason": "far from the gold model"}]}])
    undone, versus = html.split("adam-undone-by-quantize</td>")[1], html.split("signadam-vs-adam-quantize</td>")[1]
    assert "the attack's own: 0.00015" in undone.split("</tr>")[0]
    assert "the attack" not in versus.split("</tr>")[0]
    # a two-arm difference names its arms, so its sign reads one way only
    assert "signadam − adam: 0.019 [0.013, 0.025]" in versus.split("</tr>")[0]
    assert "−" not in undone.split("</tr>")[0].split("<small>")[1]
    # a claim that was not tested (the model never forgot): no ill-conditioned "own" recovery
    assert "the attack" not in html.split("never-forgot</td>")[1].split("</tr>")[0]


def test_the_first_page_says_when_only_the_correction_kept_a_verdict_inconclusive():
    """An interval that excludes 0 beside "inconclusive" reads like a mistake unless the cell says
    that the test passed before Holm's correction and not after (version 17: p 0.020, Holm 0.255)."""
    from analysis.study import verdict_matrix

    base = {"regime": "miniature", "objective": "rmu", "target": "halfway", "text": "t", "a": "hybrid",
            "b": "adam", "verdict": "inconclusive", "reason": "r", "alpha": 0.05}
    cells = {"corrected-away": {"diff": -0.052, "ci_low": -0.091, "ci_high": -0.014, "p_value": 0.0196,
                                "p_holm": 0.2546},
             "contains-zero": {"diff": -0.006, "ci_low": -0.017, "ci_high": 0.004, "p_value": 0.16, "p_holm": 1.0},
             "passed": {"diff": -0.055, "ci_low": -0.078, "ci_high": -0.032, "p_value": 0.003, "p_holm": 0.027,
                        "verdict": "reproduced"}}
    html = verdict_matrix([{"version": 17, "verdicts": [{**base, "claim": c, **v} for c, v in cells.items()]}])
    row = {c: html.split(f"{c}</td>")[1].split("</tr>")[0] for c in cells}
    assert "p 0.0196; not after Holm's correction (0.255)" in row["corrected-away"]
    assert "Holm" not in row["contains-zero"] and "Holm" not in row["passed"]


def test_the_study_index_puts_the_newest_version_first(tmp_path):
    """The first page's answer table and the version sections run newest first, by number (v11
    before v2), so the latest evidence is not the last column of a wide table."""
    from analysis.study import write_index

    def version(n):
        return {"version": n, "folder": f"v{n}", "name": "tiers", "question": "q", "status": "",
                "verdicts": [{"regime": "mini", "objective": "npo", "target": "gold", "claim": "c",
                              "verdict": "inconclusive", "diff": float("nan"), "ci_low": float("nan"),
                              "ci_high": float("nan"), "reason": "retain utility", "text": "t", "n_a": 5,
                              "n_b": 5, "test": "", "p_value": float("nan"), "p_holm": float("nan")}]}

    html = write_index(tmp_path, [version(2), version(11), version(9)]).read_text()
    head = html.split("<th>claim</th>")[1].split("</tr>")[0]
    assert [head.index(f"v{n}: mini") for n in (11, 9, 2)] == sorted(head.index(f"v{n}: mini") for n in (11, 9, 2))
    assert [html.index(f'id="v{n}"') for n in (11, 9, 2)] == sorted(html.index(f'id="v{n}"') for n in (11, 9, 2))


@pytest.mark.parametrize("reason, short", [
    ("conditions for a sound comparison not met: adam within 0.15 of the gap from the gold model: clean prob 0.509 "
     "vs gold 0.408 is 0.41 of the gap from the gold model", "far from the gold model"),
    ("conditions for a sound comparison not met: adam within 0.15 of the gap from halfway: clean prob 0.2 vs target "
     "0.5 is 0.33 of the gap from halfway", "far from the target"),
    ("matched by design: every run stopped where its clean forget probability reached the target", "matched by design"),
    ("conditions for a sound comparison not met: the references were attacked on every arm's unseen facts (attack "
     "seeds [0, 1]): the original model lacks [1]", "references on other unseen facts"),
])
def test_the_first_page_names_the_failed_condition_in_a_few_words(reason, short):
    from analysis.study import _short_reason

    assert _short_reason(reason).startswith(short)


def test_versions_are_read_in_version_order_not_name_order(tmp_path):
    from analysis.study import read_summaries

    for version in (11, 2, 9):
        (tmp_path / f"v{version}").mkdir()
        (tmp_path / f"v{version}" / "summary.json").write_text(json.dumps({"version": version, "verdicts": []}))
    assert [s["version"] for s in read_summaries(tmp_path)] == [2, 9, 11]


def _verdict(claim, attack, quantity, diff, low, high, verdict="inconclusive", regime="mini"):
    return {"regime": regime, "objective": "npo", "target": "gold", "claim": claim, "attack": attack,
            "quantity": quantity, "verdict": verdict, "diff": diff, "ci_low": low, "ci_high": high,
            "reason": "r", "text": "t", "n_a": 5, "n_b": 5, "test": "Welch t", "p_value": 0.01, "p_holm": 0.02}


def test_the_first_page_draws_every_gap_claim_as_a_forest_plot(tmp_path):
    """The first page opens with one forest plot per attack: a line per (claim, cell) judged on a
    quantity in fractions of the gap with a finite interval (barriers, raw values and failed
    conditions left out), grouped by claim, newest version first, at the verdict's numbers."""
    from analysis.study import forest_rows, plot_claim_forest, write_index

    nan = float("nan")
    versions = [
        {"version": 2, "folder": "v2", "name": "tiers", "question": "q", "status": "", "verdicts": [
            _verdict("signadam-vs-adam-relearn", "relearn", "recovery_gold", -0.05, -0.08, -0.02, "reproduced"),
            _verdict("hybrid-vs-adam-relearn", "relearn", "recovery_gold", nan, nan, nan),        # a condition failed
            _verdict("signadam-basin-connected", "interpolate", "barrier", 0.1, 0.0, 0.2),        # not in gap units
            _verdict("adam-undone-by-quantize", "quantize", "brought_back", 0.01, -0.01, 0.03)]},
        {"version": 11, "folder": "v11", "name": "tiers", "question": "q", "status": "", "verdicts": [
            _verdict("signadam-vs-adam-relearn", "relearn", "recovery_gold", -0.03, -0.04, -0.01, "reproduced"),
            _verdict("adam-undone-by-relearn", "relearn", "brought_back", 0.4, 0.3, 0.5, "reproduced")]}]
    newest = versions[::-1]
    rows = forest_rows(newest, "relearn")
    assert list(zip(rows["claim"], rows["where"])) == [
        ("signadam-vs-adam-relearn", "v11: mini / npo / gold"), ("adam-undone-by-relearn", "v11: mini / npo / gold"),
        ("signadam-vs-adam-relearn", "v2: mini / npo / gold")]
    assert forest_rows(newest, "interpolate").empty and len(forest_rows(newest, "quantize")) == 1

    ax = plot_claim_forest(rows).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["signadam-vs-adam-relearn", "v11: mini / npo / gold", "v2: mini / npo / gold",
                      "adam-undone-by-relearn", "v11: mini / npo / gold"]
    drawn = [(tuple(line.get_xdata()), line.get_ydata()[0]) for line in ax.lines if len(line.get_xdata()) == 2
             and line.get_ydata()[0] == line.get_ydata()[1]]
    assert drawn == [((-0.04, -0.01), 1), ((-0.08, -0.02), 2), ((0.3, 0.5), 4)]
    # the x scale is labelled at the top as well as the bottom: a reader of the tall plot sees it at once
    ticks = ax.xaxis.get_major_ticks()
    assert any(t.label2.get_visible() for t in ticks) and any(t.label1.get_visible() for t in ticks)

    html = write_index(tmp_path, versions).read_text()
    assert (tmp_path / "figures" / "claims-relearn.png").exists() and (tmp_path / "figures" / "claims-relearn.svg").exists()
    assert not (tmp_path / "figures" / "claims-interpolate.png").exists()
    assert html.index("The answer so far") < html.index("figures/claims-relearn.png") < html.index("<th>claim</th>")
    # rebuilt without any 4-bit claim: its figure goes too, rather than staying beside a page that no longer shows it
    assert (tmp_path / "figures" / "claims-quantize.png").exists()
    versions[0]["verdicts"] = versions[0]["verdicts"][:1]
    html = write_index(tmp_path, versions).read_text()
    assert not (tmp_path / "figures" / "claims-quantize.png").exists() and "claims-quantize" not in html
