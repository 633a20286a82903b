"""The audit runner: relearning brings knowledge back, the audited model is never modified,
records carry roles for ceilings and floors, bad inputs fail cleanly."""

import copy

import pytest
import torch

from audit.attacks.relearn import relearn, relearn_subset
from audit.runner import AuditConfig, audit
from basin.cli import main
from unlearn.data.benchmarks import Benchmark
from unlearn.data.format import encode_rows
from unlearn.errors import BasinError
from unlearn.models import build_model, weights_hash
from unlearn.scoring import answer_stats
from unlearn.train import UnlearnConfig, unlearn


@pytest.fixture(scope="module")
def micro_bench(micro_world):
    forget, retain = micro_world.split(0.25)
    return Benchmark("micro:forget25", forget, retain, micro_world.holdout, {"world_facts": micro_world.utility})


@pytest.fixture(scope="module")
def unlearned_micro(trained_micro, micro_bench):
    model, tok, _ = trained_micro
    import unlearn.train as train

    real = train.load_benchmark
    train.load_benchmark = lambda name: micro_bench
    try:
        result = unlearn(UnlearnConfig(objective="npo", optimizer="adam", lr=1e-3, steps=25, batch_size=4,
                                       eval_every=0, save_every=0),
                         model=copy.deepcopy(model), tokenizer=tok, progress=False)
    finally:
        train.load_benchmark = real
    return result.model


def _forget_prob(model, tok, rows):
    return answer_stats(model, encode_rows(tok, rows), tok.pad_token_id).p_norm.mean().item()


def test_relearning_brings_forgotten_answers_back(trained_micro, unlearned_micro, micro_bench):
    _, tok, _ = trained_micro
    before_hash = weights_hash(unlearned_micro)
    before = _forget_prob(unlearned_micro, tok, micro_bench.forget)
    subset = set(relearn_subset(len(micro_bench.forget), 0.5, seed=0))
    unseen = [r for i, r in enumerate(micro_bench.forget) if i not in subset]
    unseen_before = _forget_prob(unlearned_micro, tok, unseen)
    probs = {}
    for setting, x, attacked in relearn(unlearned_micro, tokenizer=tok, forget_rows=micro_bench.forget,
                                        steps=(0, 10, 30), size=0.5, lr=3e-3, seed=0):
        probs[setting] = _forget_prob(attacked, tok, micro_bench.forget)
    assert probs["steps=0"] == pytest.approx(before, abs=1e-6)
    assert before < 0.2 and probs["steps=30"] > before + 0.3, (before, probs)
    assert weights_hash(unlearned_micro) == before_hash
    assert unseen_before < 0.2


def test_audit_records_roles_and_leaves_the_model_alone(trained_micro, unlearned_micro, micro_bench, tmp_path):
    model, tok, _ = trained_micro
    fingerprint = weights_hash(unlearned_micro)
    config = AuditConfig(benchmark=micro_bench, attacks=("relearn", "quantize", "interpolate"),
                         attack_args={"relearn": {"steps": (5,), "size": 0.5},
                                      "quantize": {"methods": ("rtn",), "bits": (4,)},
                                      "interpolate": {"points": 3}})
    df = audit(unlearned_micro, tok, original=model, retain=model, config=config, out=tmp_path / "a",
               progress=False, name="npo-adam")
    assert weights_hash(unlearned_micro) == fingerprint
    assert set(df.role) == {"unlearned", "original", "retain"}
    assert set(df.attack) == {"none", "relearn", "quantize", "interpolate"}
    assert {"forget_unseen", "weights"} <= set(df.split)
    assert set(df[df.attack == "interpolate"].setting) == {"a=0", "a=0.5", "a=1", "path"}
    clean = df[(df.attack == "none") & (df.metric == "prob") & (df.split == "forget")].set_index("role").value
    assert clean["original"] > 0.9 and clean["unlearned"] < 0.3
    lines = (tmp_path / "a" / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(df)
    # a rerun resumes: nothing is scored twice
    again = audit(unlearned_micro, tok, original=model, retain=model, config=config, out=tmp_path / "a",
                  progress=False, name="npo-adam")
    assert len((tmp_path / "a" / "records.jsonl").read_text().splitlines()) == len(lines) == len(again)


def test_references_can_be_attacked_by_some_attacks_only(trained_micro, unlearned_micro, micro_bench):
    """score_references=("relearn",): the references are scored clean and relearned, not quantized,
    with the same numbers as an audit that attacks them with everything."""
    model, tok, _ = trained_micro
    args = {"relearn": {"steps": (3,), "size": 0.5}, "quantize": {"methods": ("rtn",), "bits": (4,)}}

    def run(references):
        config = AuditConfig(benchmark=micro_bench, attacks=("relearn", "quantize"), attack_args=args,
                             metrics=("prob",), score_references=references, seed=3)
        return audit(unlearned_micro, tok, original=model, config=config, progress=False, name="npo-adam")

    some, every = run(("relearn",)), run(True)
    assert set(some[some.role == "original"].attack) == {"none", "relearn"}
    assert set(some[some.role == "unlearned"].attack) == {"none", "relearn", "quantize"}
    keys = ["role", "attack", "setting", "split", "metric"]
    pick = every[every.attack != "quantize"].set_index(keys).value.sort_index()
    assert some.set_index(keys).value.drop("quantize", level="attack").sort_index().equals(pick)
    with pytest.raises(BasinError, match="score_references"):
        run(("noise",))


def test_audit_bad_inputs(trained_micro, micro_tokenizer, micro_bench, tmp_path):
    model, tok, _ = trained_micro
    with pytest.raises(BasinError, match="did you mean 'relearn'"):
        audit(model, tok, config=AuditConfig(benchmark=micro_bench, attacks=("relaern",)), progress=False)
    with pytest.raises(BasinError, match="needs the original"):
        audit(model, tok, config=AuditConfig(benchmark=micro_bench, attacks=("interpolate",)), progress=False)
    other = build_model("tiny", micro_tokenizer, torch.Generator().manual_seed(0))
    with pytest.raises(BasinError):
        audit(model, tok, original=other, out=tmp_path / "mismatch",
              config=AuditConfig(benchmark=micro_bench, attacks=("interpolate",)), progress=False)
    assert not (tmp_path / "mismatch").exists()
    for attack, args in (("quantize", {"methods": ("nf4",), "bits": (3,)}), ("relearn", {"size": 10_000}),
                         ("relearn", {"optimizer": "adma"}), ("noise", {"scales": (0.1,), "colour": "pink"})):
        with pytest.raises(BasinError):
            audit(model, tok, out=tmp_path / "bad", progress=False,
                  config=AuditConfig(benchmark=micro_bench, attacks=(attack,), attack_args={attack: args}))
        assert not (tmp_path / "bad").exists(), attack


def test_cli_refuses_pickle_checkpoints(trained_micro, tmp_path, capsys):
    model, tok, _ = trained_micro
    folder = tmp_path / "pickled"
    folder.mkdir()
    model.config.to_json_file(folder / "config.json")
    tok.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert main(["audit", str(folder), "--attacks", "quantize", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "allow-pickle" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_audit_flatness_records_and_interpolation_from_another_model(trained_micro, unlearned_micro, micro_bench):
    from audit.attacks.interpolate import distance

    model, tok, _ = trained_micro
    endpoint = copy.deepcopy(unlearned_micro)
    with torch.no_grad():  # a second "unlearned" model a fixed step away from the first
        for p in endpoint.parameters():
            p.add_(0.01)
    config = AuditConfig(benchmark=micro_bench, attacks=("interpolate", "flatness"), score_references=False,
                         metrics=("nll", "prob"),
                         attack_args={"interpolate": {"points": 3, "endpoint": endpoint},
                                      "flatness": {"rho": (0.01,), "draws": 2, "probes": 2, "iters": 2,
                                                   "max_rows": 4, "batch_size": 4}})
    df = audit(unlearned_micro, tok, original=model, config=config, progress=False, name="npo-adam")
    path = df[(df.attack == "interpolate") & (df.setting == "path")].set_index(["metric", "split"]).value
    length = distance(endpoint, unlearned_micro)
    assert path[("distance", "weights")] == pytest.approx(length)
    assert length != pytest.approx(distance(model, unlearned_micro))  # the path starts at the endpoint
    for split in ("forget", "retain"):
        assert path[("barrier_per_distance", split)] == pytest.approx(path[("barrier", split)] / length)
    assert set(df[df.attack == "interpolate"].model) == {"endpoint->npo-adam"}
    # the a=0 point is the endpoint, not the original
    a0 = df[(df.attack == "interpolate") & (df.setting == "a=0") & (df.metric == "nll") & (df.split == "forget")]
    end_nll = answer_stats(endpoint, encode_rows(tok, micro_bench.forget), tok.pad_token_id).mean_nll.mean().item()
    assert a0.value.item() == pytest.approx(end_nll, rel=1e-5)
    flat = df[df.attack == "flatness"]
    assert set(flat.setting) == {"loss", "sharpness-tensor-0.01", "hutchinson-2", "power-2"}
    assert {"hessian_trace", "hessian_trace_se", "hessian_eig_max", "sharpness_mean", "sharpness_max"} <= set(flat.metric)
    assert set(flat.split) == {"forget", "retain"} and set(flat.role) == {"unlearned"}


def test_interpolation_pair_is_named_by_the_endpoints_run(tmp_path):
    import json

    from audit.runner import _model_label

    run = tmp_path / "adam-s1"
    (run / "model").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"optimizer": "adam", "seed": 1, "model": "world:tiny"}))
    assert _model_label(run) == "adam"                           # a run folder: its optimizer
    assert _model_label(tmp_path / "some-checkpoint") == "some-checkpoint"  # a plain folder: its name
