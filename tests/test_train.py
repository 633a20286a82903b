"""The unlearning loop: it forgets, it is deterministic, it resumes bit-identically, it stops on NaN."""

import copy
import json

import pytest
import torch

from basin.cli import main
from unlearn.data.benchmarks import Benchmark
from unlearn.data.format import encode_rows
from unlearn.errors import BasinError
from unlearn.models import weights_hash
from unlearn.scoring import answer_stats
from unlearn.train import UnlearnConfig, batch_indices, unlearn


@pytest.fixture()
def micro_bench(micro_world):
    forget, retain = micro_world.split(0.1)
    return Benchmark("micro:forget10", forget, retain, micro_world.holdout, {"world_facts": micro_world.utility})


@pytest.fixture()
def patched_bench(monkeypatch, micro_bench):
    import unlearn.train as train

    monkeypatch.setattr(train, "load_benchmark", lambda name: micro_bench)
    return micro_bench


def _run(trained_micro, tmp_path=None, **kw):
    model, tok, _ = trained_micro
    cfg = dict(objective="npo", optimizer="adam", lr=1e-3, steps=12, batch_size=4, eval_every=6,
               save_every=4, seed=0)
    cfg.update(kw)
    return unlearn(UnlearnConfig(**cfg), model=copy.deepcopy(model), tokenizer=tok,
                   out=tmp_path, progress=False)


def test_npo_adam_forgets_and_keeps_retain(trained_micro, patched_bench):
    model, tok, _ = trained_micro
    result = _run(trained_micro, steps=20)
    pad = tok.pad_token_id
    before = answer_stats(model, encode_rows(tok, patched_bench.forget), pad).p_norm.mean()
    after = answer_stats(result.model, encode_rows(tok, patched_bench.forget), pad).p_norm.mean()
    retain_after = answer_stats(result.model, encode_rows(tok, patched_bench.retain), pad).p_norm.mean()
    assert before > 0.9 and after < 0.3 and retain_after > 0.6, (before, after, retain_after)
    steps = sorted({r["step"] for r in result.records if r["split"] != "optimizer"})
    assert steps == [0, 6, 12, 18, 20]
    rms = [r for r in result.records if r["metric"] == "update_rms"]
    assert [r["step"] for r in rms] == list(range(1, 21))   # one optimizer record per step
    assert 0.5 < rms[0]["value"] <= 1.0  # Adam's first step: |m^/sqrt(v^)| = 1 where g != 0, else 0


def test_sophia_run_records_its_clip_fraction_every_step(trained_micro, patched_bench):
    result = _run(trained_micro, optimizer="sophia", steps=3, eval_every=0, save_every=0,
                  optimizer_args={"k": 1})
    clip = [r for r in result.records if r["metric"] == "sophia_clip_fraction"]
    assert [r["step"] for r in clip] == [1, 2, 3]
    assert all(0.0 <= r["value"] <= 1.0 and r["split"] == "optimizer" for r in clip)
    assert clip[0]["value"] > 0  # with gamma 0.01 the first step clips coordinates


def test_same_seed_same_weights_other_seed_other_weights(trained_micro, patched_bench):
    a, b = _run(trained_micro), _run(trained_micro)
    c = _run(trained_micro, seed=1)
    assert weights_hash(a.model) == weights_hash(b.model) != weights_hash(c.model)


@pytest.mark.parametrize("optimizer", ["adam", "hybrid"])
def test_resume_after_interruption_is_bit_identical(trained_micro, patched_bench, tmp_path, monkeypatch, optimizer):
    extra = {"optimizer_args": {"n_fo": 3, "n_zo": 3}} if optimizer == "hybrid" else {}
    whole = _run(trained_micro, tmp_path / "whole", optimizer=optimizer, **extra)

    import unlearn.train as train

    real = train.evaluate_progress

    def crash_at_step_12(*a, **k):  # the evaluation at step 12 happens after the step-8 checkpoint
        if a[4] == 12:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "evaluate_progress", crash_at_step_12)
    with pytest.raises(KeyboardInterrupt):
        _run(trained_micro, tmp_path / "resumed", optimizer=optimizer, **extra)
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "trainer.json").read_text())["step"] == 8
    monkeypatch.setattr(train, "evaluate_progress", real)
    resumed = _run(trained_micro, tmp_path / "resumed", optimizer=optimizer, **extra)
    assert weights_hash(resumed.model) == weights_hash(whole.model)
    lines = (tmp_path / "resumed" / "records.jsonl").read_text().splitlines()
    assert lines == (tmp_path / "whole" / "records.jsonl").read_text().replace('"whole"', '"resumed"').splitlines()
    assert not (tmp_path / "resumed" / "checkpoint").exists()


def test_stop_at_ends_the_run_at_the_first_evaluation_that_reaches_the_level(trained_micro, patched_bench, tmp_path):
    """stop_at: the run ends at the first evaluation whose forget probability is at or below the
    level, with the weights of a run of exactly that many steps, and says so in its manifest."""
    whole = _run(trained_micro, steps=12, eval_every=2, save_every=0)
    forget = {r["step"]: r["value"] for r in whole.records if r["metric"] == "prob" and r["split"] == "forget"}
    first = next(k for k in sorted(forget) if k > 0 and forget[k] < forget[0] - 0.05)  # a step that forgot
    level = forget[first]
    assert all(forget[k] > level for k in forget if k < first) and first < 12, forget
    stopped = _run(trained_micro, tmp_path / "stop", steps=12, eval_every=2, save_every=0, stop_at=level)
    assert max(r["step"] for r in stopped.records) == first
    assert json.loads((tmp_path / "stop" / "manifest.json").read_text())["steps_taken"] == first
    assert weights_hash(stopped.model) == weights_hash(_run(trained_micro, steps=first, eval_every=2,
                                                            save_every=0).model)
    again = _run(trained_micro, tmp_path / "stop", steps=12, eval_every=2, save_every=0, stop_at=level)
    assert weights_hash(again.model) == weights_hash(stopped.model)      # a finished run is reused
    never = _run(trained_micro, tmp_path / "never", steps=4, eval_every=2, save_every=0, stop_at=0.0)
    assert max(r["step"] for r in never.records) == 4                    # the budget ends it
    assert json.loads((tmp_path / "never" / "manifest.json").read_text())["steps_taken"] == 4
    with pytest.raises(BasinError, match="eval_every"):
        UnlearnConfig(stop_at=0.3, eval_every=0)
    with pytest.raises(BasinError, match="stop_at"):
        UnlearnConfig(stop_at=1.5)


def test_stop_rows_checks_the_stop_on_those_forget_rows_alone(trained_micro, patched_bench, tmp_path):
    """stop_rows: each evaluation also records the mean answer probability of those forget rows
    (split forget_stop; by hand from answer_stats at step 0), and the stop is checked on it."""
    model, tok, _ = trained_micro
    rows = [0, 2, 3]
    whole = _run(trained_micro, steps=12, eval_every=2, save_every=0, stop_at=0.0, stop_rows=[3, 0, 2, 0])
    probs = answer_stats(model, encode_rows(tok, patched_bench.forget), tok.pad_token_id).p_norm
    sub = {r["step"]: r["value"] for r in whole.records if r["split"] == "forget_stop"}
    assert sub[0] == pytest.approx(float(probs[rows].mean()), abs=1e-6)
    assert sub[0] != pytest.approx(float(probs.mean()), abs=1e-3)           # a different mean than all rows
    first = next(k for k in sorted(sub) if k > 0 and sub[k] < sub[0] - 0.05)
    stopped = _run(trained_micro, tmp_path / "stop", steps=12, eval_every=2, save_every=0, stop_at=sub[first],
                   stop_rows=rows)
    assert json.loads((tmp_path / "stop" / "manifest.json").read_text())["steps_taken"] == first
    with pytest.raises(BasinError, match="stop_at is not set"):
        UnlearnConfig(stop_rows=[0])
    with pytest.raises(BasinError, match="forget row indices"):
        UnlearnConfig(stop_at=0.3, eval_every=2, stop_rows=[])
    with pytest.raises(BasinError, match=f"{len(patched_bench.forget)} forget rows"):
        _run(trained_micro, steps=2, eval_every=2, stop_at=0.3, stop_rows=[len(patched_bench.forget)])


def test_gradient_accumulation_matches_full_batch(trained_micro, patched_bench):
    # NPO without a retain term is a mean over examples, so two half-batches sum to the full batch
    npo = {"objective_args": {"gamma": 0.0}}
    a = _run(trained_micro, optimizer="sgd", lr=1e-2, steps=3, batch_size=4, grad_accum=1, **npo)
    b = _run(trained_micro, optimizer="sgd", lr=1e-2, steps=3, batch_size=4, grad_accum=2, **npo)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(trained_micro, patched_bench, tmp_path,
                                                               monkeypatch):
    import unlearn.train as train
    from conftest import NanFromCall

    monkeypatch.setattr(train, "make_objective", lambda name, **kw: NanFromCall(6))
    with pytest.raises(BasinError, match=r"became nan at step 6.*last good checkpoint \(step 4\)"):
        _run(trained_micro, tmp_path / "nan", optimizer="sgd", lr=1e-3, steps=12)
    assert (tmp_path / "nan" / "checkpoint" / "model.safetensors").exists()
    assert not (tmp_path / "nan" / "model").exists()


def test_batches_are_stateless_and_cover_each_epoch():
    first_epoch = [i for s in range(5) for i in batch_indices(s, 4, 20, seed=3, stream=0)]
    assert sorted(first_epoch) == list(range(20))
    assert batch_indices(7, 4, 20, 3, 0) == batch_indices(7, 4, 20, 3, 0)


def test_bad_config_and_cli_errors(tmp_path, capsys):
    with pytest.raises(BasinError, match="grad_accum"):
        UnlearnConfig(batch_size=4, grad_accum=3)
    with pytest.raises(BasinError, match="unknown config field"):
        UnlearnConfig.from_dict({"lrr": 1})
    assert main(["unlearn", "--objective", "nop", "--steps", "1", "--out", str(tmp_path / "x"),
                 "--model", "world:micro", "--quiet"]) == 2
    assert "did you mean 'npo'" in capsys.readouterr().err
    assert main(["unlearn", "--optimizer", "adma", "--steps", "1", "--out", str(tmp_path / "y"),
                 "--model", "world:micro", "--quiet"]) == 2
    assert "did you mean 'adam'" in capsys.readouterr().err
    assert main(["unlearn", "--stop-at", "0.3", "--eval-every", "0", "--steps", "1", "--out", str(tmp_path / "z"),
                 "--model", "world:micro", "--quiet"]) == 2
    assert "stop_at is checked at the evaluations" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_cli_unlearn_with_yaml_config_writes_a_run_folder(trained_micro, tmp_path, capsys):
    model, tok, _ = trained_micro
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {ckpt}\nbenchmark: world:forget10\nobjective: npo\noptimizer: signadam\n"
                   "lr: 1.0e-4\nsteps: 2\nbatch_size: 2\neval_every: 2\nsave_every: 0\n")
    out = tmp_path / "run"
    assert main(["unlearn", "--config", str(cfg), "--obj", "beta=0.2", "--seed", "3", "--out", str(out),
                 "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["optimizer"] == "signadam" and saved["seed"] == 3 and saved["objective_args"] == {"beta": 0.2}
    assert (out / "model" / "model.safetensors").exists() and (out / "manifest.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"torch", "transformers", "git", "wall_seconds", "device"} <= manifest.keys()
    assert "unlearned model:" in capsys.readouterr().out
    # the same folder with another config is refused, not overwritten
    assert main(["unlearn", "--config", str(cfg), "--seed", "4", "--out", str(out), "--quiet"]) == 2
    assert "different config" in capsys.readouterr().err
    # a level it cannot reach in the budget: it says so, and how to get there
    assert main(["unlearn", "--config", str(cfg), "--stop-at", "0", "--out", str(tmp_path / "stop"), "--quiet"]) == 0
    assert "did not reach forget prob 0: 2 of 2 steps; raise --steps or --lr" in capsys.readouterr().out
