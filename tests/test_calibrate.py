"""Matched-forgetting calibration: the search finds the lr known in closed form, the pipeline keeps
calibration and evaluation seeds apart, refuses bad input before writing, resumes from its
records, and its file drives unlearn / sweep; the frontier plot reads the records."""

from __future__ import annotations

import json
import math

import pytest

from basin.calibrate import (CalibrationConfig, Probe, calibrate, calibrated_fields, choose, load_calibration,
                             make_target, search_lr)
from unlearn.errors import BasinError

C = 0.1          # forget(lr, steps) = F0 exp(-lr steps / C): lr* = C ln(F0 / t) / steps
F0, GOLD = 0.9, 0.1


def analytic(steps: int = 1, retain=lambda lr, steps: lr):
    calls = []

    def measure(lr: float) -> Probe:
        calls.append(lr)
        return Probe(lr, steps, F0 * math.exp(-lr * steps / C), retain(lr, steps))
    return measure, calls


# ----------------------------------------------------------------------------- the search


@pytest.mark.parametrize("method", ["bisect", "interpolate"])
def test_search_finds_the_closed_form_lr(method):
    target = make_target("halfway", F0, GOLD, tolerance=0.005)      # t = 0.5
    assert target.value == pytest.approx(0.5)
    measure, calls = analytic()
    s = search_lr(measure, target, start=1e-4, lr_range=(1e-6, 10.0), max_probes=20, method=method)
    assert s.hit is not None and s.reason == "in band"
    # the band 0.5 +- 0.005 maps to lr in [C ln(0.9/0.505), C ln(0.9/0.495)] = [0.05779, 0.05978]
    assert C * math.log(F0 / 0.505) <= s.hit.lr <= C * math.log(F0 / 0.495)
    assert s.hit.lr == pytest.approx(C * math.log(F0 / 0.5), rel=0.02)
    assert len(calls) == len(s.probes) <= 20
    # bracketing by x4 from 1e-4: 1e-4 ... 0.0256 under, 0.1024 over (6 probes), then splits
    assert calls[:6] == pytest.approx([1e-4 * 4 ** k for k in range(6)])


def test_interpolation_is_exact_when_forget_is_linear_in_log_lr():
    # f = 1 - log10(lr / 1e-4) / 2 hits 0.5 at lr = 1e-3; regula falsi on log lr lands on it at once
    target = make_target("0.5", original=1.0, gold=0.0, tolerance=1e-6)
    probes = []

    def measure(lr):
        probes.append(lr)
        return Probe(lr, 1, 1 - math.log10(lr / 1e-4) / 2, 0.0)

    s = search_lr(measure, target, start=1e-4, lr_range=(1e-6, 1.0), method="interpolate")
    assert probes[:3] == pytest.approx([1e-4, 4e-4, 1.6e-3])   # under, under, over
    assert len(probes) == 4 and s.hit.lr == pytest.approx(1e-3, rel=1e-9)
    bis = []
    search_lr(lambda lr: bis.append(lr) or Probe(lr, 1, 1 - math.log10(lr / 1e-4) / 2, 0.0), target,
              start=1e-4, lr_range=(1e-6, 1.0), max_probes=40, method="bisect")
    assert len(bis) > 10      # plain bisection needs ~log2(width / band) splits for the same band


def test_choice_is_the_least_retain_loss_over_step_counts():
    # retain loss lr * steps^2: the matched lr is C ln(F0/t) / steps, so its loss grows with steps
    target = make_target("halfway", F0, GOLD, tolerance=0.005)
    searches = []
    for steps in (2, 8):
        measure, _ = analytic(steps, retain=lambda lr, steps: lr * steps ** 2)
        searches.append(search_lr(measure, target, start=1e-3, lr_range=(1e-6, 10.0), max_probes=20, steps=steps))
    best, matched = choose([p for s in searches for p in s.probes], target)
    assert matched and best.steps == 2
    assert best.lr == pytest.approx(C * math.log(F0 / 0.5) / 2, rel=0.02)
    # with retain loss lr alone the longer run wins (the same forgetting at a quarter of the lr)
    searches = [search_lr(analytic(steps)[0], target, start=1e-3, lr_range=(1e-6, 10.0), max_probes=20, steps=steps)
                for steps in (2, 8)]
    assert choose([p for s in searches for p in s.probes], target)[0].steps == 8
    # an in-band grid point with less retain loss beats the search's hit; out-of-band ones never do
    extra = [Probe(0.2, 2, 0.503, 1e-9), Probe(0.3, 2, 0.9, 0.0)]
    assert choose([p for s in searches for p in s.probes] + extra, target)[0] == extra[0]


def test_an_unreachable_target_stops_at_the_range_and_is_unmatched():
    target = make_target("gold", F0, GOLD, tolerance=0.01)
    measure, calls = analytic(retain=lambda lr, steps: 0.0)
    # forget at lr_max = 0.01 is 0.9 e^-0.1 = 0.814, far above the gold level 0.1
    s = search_lr(measure, target, start=1e-4, lr_range=(1e-5, 1e-2), max_probes=8)
    assert s.hit is None and "largest lr" in s.reason and calls[-1] == pytest.approx(1e-2)
    assert len(calls) == 5                                    # 1e-4, 4e-4, 1.6e-3, 6.4e-3, 1e-2
    best, matched = choose(s.probes, target)
    assert not matched and best.lr == pytest.approx(1e-2)


def test_a_diverged_probe_counts_as_overshoot():
    target = make_target("halfway", F0, GOLD, tolerance=0.005)

    def measure(lr):   # any lr above 0.08 blows up
        return Probe(lr, 1, math.nan if lr > 0.08 else F0 * math.exp(-lr / C), lr)

    s = search_lr(measure, target, start=1e-3, lr_range=(1e-6, 10.0), max_probes=20)
    assert s.hit is not None and s.hit.lr == pytest.approx(C * math.log(1.8), rel=0.02)


def test_targets():
    assert make_target("gold", 0.9, 0.1).value == pytest.approx(0.1)
    assert make_target("gap=0.25", 0.9, 0.1).value == pytest.approx(0.7)
    t = make_target("halfway", 0.9, 0.1)
    assert t.value == pytest.approx(0.5) and t.tolerance == pytest.approx(0.08)     # 0.1 x the gap
    nll = make_target("halfway", original=0.2, gold=3.0, sign=-1)                   # NLL: higher = forgotten
    assert nll.value == pytest.approx(1.6) and nll.gap(2.0) < 0 < nll.gap(1.0)
    for bad in ("0.95", "0.05", "gap=1.5", "halfwy"):
        with pytest.raises(BasinError):
            make_target(bad, 0.9, 0.1)
    with pytest.raises(BasinError, match="retain-only"):
        make_target("halfway", 0.9, None)
    assert make_target("0.3", 0.9, None, tolerance=0.01).value == 0.3     # absolute: only below the original


# ----------------------------------------------------------------------------- the pipeline


class FakeProber:
    """The Prober interface on the closed-form model: forget prob F0 exp(-lr steps / C)."""

    keys = tuple((m, s) for m in ("prob", "nll") for s in ("forget", "retain", "world_facts"))
    original, gold = "original", "gold"

    def __init__(self):
        self.calls = []

    def _scores(self, forget: float, retain: float) -> dict:
        p = {"forget": forget, "retain": retain, "world_facts": retain}
        return {(m, s): (p[s] if m == "prob" else -math.log(p[s])) for m, s in self.keys}

    def score(self, model):
        return self._scores(F0, 0.95) if model == "original" else self._scores(GOLD, 0.95)

    def run(self, name, lr, steps, seed):
        self.calls.append((name, lr, steps, seed))
        scale = 1.0 if name == "adam" else 0.5                    # signadam forgets at half the rate
        return self._scores(F0 * math.exp(-scale * lr * steps / C), 0.95 - lr * steps), 0.25


class SeedSensitiveProber(FakeProber):
    """Seed 1001's batch order forgets at 1.5 x the rate of seed 1000's."""

    def run(self, name, lr, steps, seed):
        return super().run(name, lr * (1.5 if seed == 1001 else 1.0), steps, seed)


def _config(out, **kw):
    return CalibrationConfig(**{"out": str(out), "unlearn": {"benchmark": "world:forget10", "objective": "npo"},
                                "optimizers": {"adam": {}, "signadam": {"start": 1e-3}}, "steps": (10,),
                                "target": "halfway", "tolerance": 0.005, "lr_range": (1e-5, 1.0),
                                "max_probes": 12, "seeds": (1000, 1001), "evaluation_seeds": (0, 1, 2),
                                "grid": (1e-4, 1e-3), **kw})


def test_pipeline_writes_probes_and_settings_and_resumes(tmp_path):
    from unlearn.records import read_records

    out = tmp_path / "cal"
    prober = FakeProber()
    result = calibrate(_config(out), prober=prober, log=lambda _: None)
    adam, sign = result["optimizers"]["adam"], result["optimizers"]["signadam"]
    assert adam["matched"] and sign["matched"]
    assert adam["lr"] == pytest.approx(C * math.log(1.8) / 10, rel=0.02)          # 0.005878
    assert sign["lr"] == pytest.approx(2 * C * math.log(1.8) / 10, rel=0.02)      # half the rate: twice the lr
    assert abs(adam["forget"] - 0.5) <= 0.005 and result["target"]["value"] == pytest.approx(0.5)
    assert result["calibration_seeds"] == [1000, 1001] and result["evaluation_seeds"] == [0, 1, 2]
    assert json.loads((out / "calibration.json").read_text()) == result
    records = read_records(out / "records.jsonl")
    # distinct (optimizer, lr): the search's and the grid's (signadam starts at the grid's 1e-3: reused)
    n_probes = sum(len(set(e["searches"][0]["lrs"]) | {1e-4, 1e-3}) for e in (adam, sign))
    assert len(prober.calls) == 2 * n_probes                                  # x 2 seeds
    assert {c[3] for c in prober.calls} == {1000, 1001}
    probes = [r for r in records if r["setting"] != "reference"]
    assert len(probes) == 6 * len(prober.calls) and {r["attack"] for r in records} == {"calibrate"}
    one = next(r for r in probes if r["optimizer"] == "adam" and r["lr"] == adam["lr"] and r["split"] == "forget"
               and r["metric"] == "prob")
    assert one["steps"] == 10 and one["seconds"] == 0.25 and one["phase"] == "search" and one["x"] == one["lr"]
    assert {r["role"] for r in records if r["setting"] == "reference"} == {"original", "retain"}

    # a finished calibration is returned as it is, without a probe
    again = FakeProber()
    assert calibrate(_config(out), prober=again, log=lambda _: None) == result and again.calls == []
    # an interrupted one (records cut mid-way, a torn last line) runs only the missing probes
    lines = (out / "records.jsonl").read_text().splitlines()
    keep = 12 + 6 * 7 + 3                                   # references, 7 probe-seeds, half of the 8th
    (out / "records.jsonl").write_text("\n".join(lines[:keep]) + "\n" + lines[keep][:40])
    (out / "manifest.json").unlink()
    (out / "calibration.json").unlink()
    resumed = FakeProber()
    assert calibrate(_config(out), prober=resumed, log=lambda _: None) == result
    assert len(resumed.calls) == len(prober.calls) - 7
    assert len(read_records(out / "records.jsonl")) == len(records)
    # another calibration in the same folder is refused, also one whose probes would train otherwise
    with pytest.raises(BasinError, match="different settings"):
        calibrate(_config(out, target="gold"), prober=FakeProber(), log=lambda _: None)
    with pytest.raises(BasinError, match="different settings"):
        calibrate(_config(out, unlearn={"benchmark": "world:forget10", "objective": "npo", "batch_size": 4}),
                  prober=FakeProber(), log=lambda _: None)
    # fields every probe overrides (evaluation, checkpoints, seed) do not make it another calibration
    same = {"benchmark": "world:forget10", "objective": "npo", "eval_every": 4, "save_every": 8}
    assert calibrate(_config(out, unlearn=same), prober=FakeProber(), log=lambda _: None) == result


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "cal"
    with pytest.raises(BasinError, match="did you mean 'adam'"):
        _config(out, optimizers={"adma": {}})
    with pytest.raises(BasinError, match="both calibration and evaluation seeds"):
        _config(out, seeds=(0, 1000), evaluation_seeds=(0, 1, 2))
    with pytest.raises(BasinError, match="set by the calibration"):
        _config(out, unlearn={"lr": 1e-3})
    with pytest.raises(BasinError, match="outside the reachable range"):
        calibrate(_config(out, target="0.95"), prober=FakeProber(), log=lambda _: None)
    with pytest.raises(BasinError, match="outside the reachable range"):
        calibrate(_config(out, target="0.05"), prober=FakeProber(), log=lambda _: None)
    assert not out.exists()


def test_calibrated_fields_set_lr_and_check_seed_and_setting(tmp_path):
    calibrate(_config(tmp_path / "cal"), prober=FakeProber(), log=lambda _: None)
    cal = load_calibration(tmp_path / "cal")
    fields = calibrated_fields({"optimizer": "signadam", "seed": 0}, tmp_path / "cal" / "calibration.json")
    assert fields["lr"] == cal["optimizers"]["signadam"]["lr"] and fields["steps"] == 10
    assert fields["objective"] == "npo" and fields["benchmark"] == "world:forget10"
    with pytest.raises(BasinError, match="seed 1001 was used to calibrate"):
        calibrated_fields({"optimizer": "adam", "seed": 1001}, cal)
    with pytest.raises(BasinError, match="objective"):
        calibrated_fields({"optimizer": "adam", "seed": 0, "objective": "ga"}, cal)
    with pytest.raises(BasinError, match="did you mean"):
        calibrated_fields({"optimizer": "adamm", "seed": 0}, cal)
    cal["optimizers"]["adam"]["matched"] = False
    with pytest.raises(BasinError, match="did not reach"):
        calibrated_fields({"optimizer": "adam", "seed": 0}, cal)
    with pytest.raises(BasinError, match="not a calibration"):
        load_calibration(tmp_path / "cal" / "config.json")


def test_frontier_reads_the_probe_records(tmp_path):
    from analysis import plots
    from analysis.load import load_records
    from analysis.report import plan_figures
    from analysis.tables import model_rows

    calibrate(_config(tmp_path / "cal"), prober=FakeProber(), log=lambda _: None)
    df = load_records(tmp_path / "cal")
    assert model_rows(df).empty                         # probes are not attacks on finished models
    pts = plots.frontier_points(df)
    adam = pts[pts["series"] == "adam"]
    assert adam["lr"].is_monotonic_increasing and (adam["n"] == 2).all()
    # closed form: forget falls and retain prob (0.95 - 10 lr) falls with lr: every point is on the front
    assert adam["pareto"].all() and adam.loc[adam["lr"] == 1e-3, "y"].item() == pytest.approx(0.94)
    refs = pts[pts["role"] != "unlearned"].set_index("series")
    assert refs.loc["original", "x"] == pytest.approx(F0) and refs.loc["retain-only", "x"] == pytest.approx(GOLD)
    fig = plots.unlearning_frontier(df)
    assert len(fig.axes) == 2
    assert "frontier" in [stem for stem, _, _ in plan_figures(df)]


def test_frontier_of_a_sweep_over_lr_reads_each_run_s_last_evaluation():
    from analysis import plots
    from analysis.load import load_records

    records = []
    for lr, forget, retain in ((1e-4, 0.8, 0.99), (1e-3, 0.3, 0.9), (1e-2, 0.2, 0.5)):
        for seed in (0, 1):
            run = f"adam-lr{lr}-s{seed}"
            for step, f in ((0, 0.99), (10, forget + 0.01 * seed)):   # the step-0 evaluation is left out
                records += [{"model": run, "run": run, "attack": "training", "setting": f"step={step}", "x": step,
                             "step": step, "seed": seed, "optimizer": "adam", "lr": lr, "metric": "prob",
                             "split": split, "value": v} for split, v in (("forget", f), ("retain", retain))]
    pts = plots.frontier_points(load_records(records), attack="training")
    assert pts["lr"].tolist() == [1e-4, 1e-3, 1e-2] and (pts["n"] == 2).all()
    assert pts["x"].tolist() == pytest.approx([0.805, 0.305, 0.205])
    assert pts["pareto"].all()


def test_pareto_front_by_hand():
    # x: forget (less better), y: kept (more better); (0.3, 0.5) is beaten by (0.2, 0.6)
    front = plots_pareto([0.1, 0.2, 0.3, 0.4, math.nan], [0.2, 0.6, 0.5, 0.9, 1.0])
    assert front.tolist() == [True, True, False, True, False]


def plots_pareto(x, y):
    from analysis.plots import pareto_front

    return pareto_front(x, y)


# ----------------------------------------------------------------------------- on the micro world model


@pytest.fixture()
def folders(trained_micro, micro_model, tmp_path):
    model, tok, _ = trained_micro
    root = tmp_path / "models"
    model.save_pretrained(root / "start")
    tok.save_pretrained(root / "start")
    micro_model.save_pretrained(root / "floor")          # never trained: a floor for the gold level
    tok.save_pretrained(root / "floor")
    return root


def test_calibrate_unlearn_and_sweep_on_the_micro_model(folders, tmp_path, capsys):
    from conftest import MICRO_WORLD

    from basin.cli import main
    from basin.sweep import SweepConfig, plan_jobs

    world = [f"--benchmark-arg={k}={getattr(MICRO_WORLD, k)}" for k in ("n_people", "n_holdout", "n_countries", "seed")]
    out = tmp_path / "cal"
    argv = ["calibrate", "--model", str(folders / "start"), "--retain", str(folders / "floor"),
            "--benchmark", "world:forget10", *world, "--objective", "npo", "--optimizer", "adam",
            "--steps", "3", "--batch-size", "4", "--lr-range", "1e-4,0.1", "--start", "adam=1e-3",
            "--max-probes", "6", "--seeds", "1000", "--max-retain", "20", "--device", "cpu",
            "--target", "halfway", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    cal = json.loads((out / "calibration.json").read_text())
    adam, target = cal["optimizers"]["adam"], cal["target"]
    assert adam["matched"] and abs(adam["forget"] - target["value"]) <= target["tolerance"]
    assert target["original"] > 0.5 and target["gold"] < 0.05          # the trained model knows, the floor does not
    assert 1e-4 <= adam["lr"] <= 0.1 and adam["search_probes"] <= 6
    assert "adam" in capsys.readouterr().out
    # the same command again: nothing rerun, same file
    assert main(argv) == 0 and json.loads((out / "calibration.json").read_text()) == cal

    # basin unlearn --calibrated: the evaluation seed gets the calibrated lr; the calibration seed is refused
    assert main(["unlearn", "--calibrated", str(out), "--seed", "1000", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert main(["unlearn", "--calibrated", str(out), "--seed", "1000", "--lr", "1", "--out", str(tmp_path / "bad")]) == 2
    assert main(["unlearn", "--calibrated", str(out), "--seed", "0", "--quiet", "--device", "cpu",
                 "--eval-every", "3", "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["lr"] == adam["lr"] and saved["steps"] == 3 and saved["seed"] == 0
    # a sweep spec's calibrated: key sets lr and steps per optimizer and checks the seeds
    spec = SweepConfig(out=str(tmp_path / "sw"), unlearn={"model": str(folders / "start"), "steps": 50, "lr": 1.0,
                                                         **cal["unlearn"]},
                       grid={"optimizer": ["adam"], "seed": [0, 1]}, audit=None, calibrated=str(out))
    jobs = plan_jobs(spec)
    assert [(j.unlearn["lr"], j.unlearn["steps"]) for j in jobs] == [(adam["lr"], 3)] * 2
    with pytest.raises(BasinError, match="used to calibrate"):
        plan_jobs(SweepConfig(**{**spec.__dict__, "grid": {"optimizer": ["adam"], "seed": [1000]}}))
    with pytest.raises(BasinError, match="conflicts with calibrated"):
        SweepConfig(**{**spec.__dict__, "grid": {"optimizer": ["adam"], "lr": [1e-3]}})


def test_a_probe_whose_loss_diverges_scores_nan(folders, monkeypatch):
    import unlearn.train as train
    from basin.calibrate import Prober
    from conftest import MICRO_WORLD, NanFromCall

    world = {k: getattr(MICRO_WORLD, k) for k in ("n_people", "n_holdout", "n_countries", "seed")}
    config = CalibrationConfig(unlearn={"model": str(folders / "start"), "benchmark": "world:forget10",
                                        "benchmark_args": world, "objective": "ga", "batch_size": 4, "device": "cpu"},
                               optimizers={"sgd": {}}, steps=(3,), target="0.1", tolerance=0.05, max_retain=10)
    prober = Prober(config)
    clean, _ = prober.run("sgd", 1e-3, 3, 1000)
    assert all(math.isfinite(v) for v in clean.values()) and set(clean) == set(prober.keys)

    monkeypatch.setattr(train, "make_objective", lambda name, **kw: NanFromCall(2))
    scores, seconds = prober.run("sgd", 1e-3, 3, 1000)
    assert all(math.isnan(v) for v in scores.values()) and seconds > 0


def test_the_spread_over_calibration_seeds_is_kept_and_reported(tmp_path):
    """The match is on the mean over the calibration seeds: each seed's level at the chosen setting
    is kept, and seeds that disagree by more than the band's width (or a single seed) are reported."""
    from basin.calibrate import seed_spread, spread_warning

    logs = []
    result = calibrate(_config(tmp_path / "a", tolerance=0.01), prober=SeedSensitiveProber(), log=logs.append)
    adam = result["optimizers"]["adam"]
    lr = adam["lr"]
    expected = [F0 * math.exp(-k * lr * 10 / C) for k in (1.0, 1.5)]
    assert adam["forget_per_seed"] == pytest.approx(expected)
    spread = seed_spread(adam["forget_per_seed"])
    assert spread == pytest.approx(expected[0] - expected[1]) and spread > 0.02
    assert any(line.startswith("adam: the calibration seeds disagree by") for line in logs)
    # seeds that agree: no warning; one seed: the spread is unknown, and said so
    logs.clear()
    same = calibrate(_config(tmp_path / "b"), prober=FakeProber(), log=logs.append)
    assert seed_spread(same["optimizers"]["adam"]["forget_per_seed"]) == 0 and not any("disagree" in line for line in logs)
    one = calibrate(_config(tmp_path / "c", seeds=(1000,)), prober=FakeProber(), log=logs.append)
    assert seed_spread(one["optimizers"]["adam"]["forget_per_seed"]) is None
    assert any(line.startswith("adam: one calibration seed") for line in logs)
    assert spread_warning([0.5, 0.515], 0.01) == "" and "disagree by 0.03" in spread_warning([0.5, 0.53], 0.01)
    # sd of (0.5, 0.53) = 0.03 / sqrt(2) = 0.0212; (1.96 x 0.0212 / 0.01)^2 = 17.3 -> 18 seeds
    warning = spread_warning([0.5, 0.53], 0.01)
    assert "sd of 0.0212" in warning and "standard error of 0.015" in warning and "about 18 calibration seeds" in warning
