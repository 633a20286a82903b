"""WMDP / MMLU-style multiple choice: lm-eval in-process on a local YAML task over a fixture file,
and basin's own scorer, which must pick exactly the options lm-eval's ``acc`` picks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.metrics import lmeval
from unlearn.errors import BasinError

pytest.importorskip("lm_eval", reason="needs basin[real] (lm-eval)")

FIXTURE = Path(__file__).parent / "fixtures" / "lmeval" / "mc4.jsonl"
DESCRIPTION = "The following are multiple choice questions (with answers) about everyday facts.\n\n"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Both styles of the fixture task, written once (datasets' cache inside the same folder)."""
    folder = tmp_path_factory.mktemp("lmeval_tasks")
    lmeval.write_mc_task(folder, "basin_mc4", FIXTURE, description=DESCRIPTION)
    lmeval.write_mc_task(folder, "basin_mc4_text", FIXTURE, style="text")
    return folder


@pytest.fixture()
def hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf"


def _lm_eval_scores(results, task):
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples])


@pytest.mark.parametrize("style,task", [("letters", "basin_mc4"), ("text", "basin_mc4_text")])
def test_basin_scorer_picks_what_lm_eval_acc_picks(micro_tokenizer, tasks, hf_home, style, task):
    from unlearn.models import build_model, init_weights

    model = build_model("micro", micro_tokenizer, torch.Generator().manual_seed(0))
    init_weights(model, torch.Generator().manual_seed(1), std=0.3)   # opinions that vary by question
    rows = lmeval.read_mc_rows(FIXTURE)
    description = DESCRIPTION if style == "letters" else ""
    records, results = lmeval.run_lmeval(model, micro_tokenizer, task, include_path=tasks,
                                         batch_size=8, log_samples=True)
    theirs = lmeval.lmeval_choices(results, task)
    ours, acc = lmeval.mc_predictions(model, micro_tokenizer, rows, description=description, style=style,
                                      batch_size=5)
    assert len(set(ours.tolist())) >= 3                               # not a constant answer
    assert (ours == theirs).all()
    assert {r["metric"]: r["value"] for r in records}["lmeval_acc"] == pytest.approx(acc)
    scores = lmeval.score_choices(model, micro_tokenizer, rows, description=description, style=style)
    assert scores == pytest.approx(_lm_eval_scores(results, task), abs=1e-4)
    # the prompt lm-eval built is basin's rendering
    first = sorted(results["samples"][task], key=lambda s: s["doc_id"])[0]["arguments"][0]
    assert first[0] == lmeval.render_mc_prompt(rows[0], description, style)
    assert (tasks / "hf_datasets").is_dir()                           # datasets' cache kept local


def test_random_model_is_at_chance(micro_model, micro_tokenizer, tasks, hf_home):
    rows = lmeval.read_mc_rows(FIXTURE)
    assert np.bincount([r["answer"] for r in rows]).tolist() == [10, 10, 10, 10]  # balanced letters
    records, _ = lmeval.run_lmeval(micro_model, micro_tokenizer, ["basin_mc4"], include_path=tasks)
    acc = {r["metric"]: r["value"] for r in records}["lmeval_acc"]
    assert 0.1 <= acc <= 0.45
    _, ours = lmeval.mc_predictions(micro_model, micro_tokenizer, rows, description=DESCRIPTION)
    assert ours == pytest.approx(acc)


def test_encode_pair_moves_trailing_space_and_handles_empty_context(micro_tokenizer):
    tok = micro_tokenizer
    ctx, cont = lmeval.encode_pair(tok, "Answer: ", "blue")
    assert ctx == tok.encode("Answer:") and ctx + cont == tok.encode("Answer: blue")
    ctx, cont = lmeval.encode_pair(tok, "", "blue sky")
    assert ctx == [tok.bos_token_id] and cont == tok.encode("blue sky", add_special_tokens=False)


def test_task_files_and_errors(tmp_path, micro_model, micro_tokenizer):
    folder = lmeval.write_mc_task(tmp_path / "t", "mine", FIXTURE)
    text = (folder / "mine.yaml").read_text()
    assert str(FIXTURE.resolve()) in text and "cache_dir" in text   # absolute: runs from any directory
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(BasinError, match="row 0 must be"):
        lmeval.write_mc_task(tmp_path / "t", "bad", bad)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps({"question": "q", "choices": c, "answer": 0})
                               for c in (["a", "b"], ["a", "b", "c"])))
    with pytest.raises(BasinError, match="same number of choices"):
        lmeval.write_mc_task(tmp_path / "t", "mixed", mixed)
    with pytest.raises(BasinError, match="may only use"):
        lmeval.write_mc_task(tmp_path / "t", "bad name", FIXTURE)
    with pytest.raises(BasinError, match="not a folder"):
        lmeval.run_lmeval(micro_model, micro_tokenizer, "mine", include_path=tmp_path / "nowhere")
    with pytest.raises(BasinError, match="style"):
        lmeval.render_mc_prompt({"question": "q", "choices": ["a"]}, style="essay")


def test_audit_scores_every_attacked_model_with_lm_eval(micro_tokenizer, tasks, hf_home, tmp_path):
    """basin audit --lmeval-task: lm-eval runs in process on the clean model and on every attacked
    one; the number under 4-bit RTN is lm-eval's accuracy on that very quantized model."""
    from audit.attacks.quantize import quantize
    from audit.runner import AuditConfig, audit
    from unlearn.data.benchmarks import Benchmark
    from unlearn.models import build_model, init_weights

    model = build_model("micro", micro_tokenizer, torch.Generator().manual_seed(0))
    init_weights(model, torch.Generator().manual_seed(1), std=0.3)
    rows = [{"question": "Q?", "answer": "yes", "paraphrased_answer": "yes", "perturbed_answer": ["no"]}] * 2
    bench = Benchmark("tiny", rows, rows)
    config = AuditConfig(benchmark=bench, attacks=("quantize",), metrics=("prob",), score_references=False,
                         attack_args={"quantize": {"methods": ("rtn",), "bits": (2,)}},
                         lmeval={"tasks": ["basin_mc4"], "include_path": str(tasks)})
    df = audit(model, micro_tokenizer, config=config, progress=False)
    acc = df[df.metric == "lmeval_acc"].set_index("attack")["value"]
    assert set(acc.index) == {"none", "quantize"}
    clean, _ = lmeval.run_lmeval(model, micro_tokenizer, "basin_mc4", include_path=tasks)
    assert acc["none"] == pytest.approx(clean[0]["value"])
    (_, _, attacked), = list(quantize(model, methods=("rtn",), bits=(2,)))
    direct, _ = lmeval.run_lmeval(attacked, micro_tokenizer, "basin_mc4", include_path=tasks)
    assert acc["quantize"] == pytest.approx(direct[0]["value"])
    with pytest.raises(BasinError, match="did you mean 'limit'"):
        AuditConfig(lmeval={"tasks": ["mmlu"], "limt": 10})


def test_continuations_equal_whole_sequence_scores_and_long_inputs_are_cut_from_the_left(micro_model, micro_tokenizer):
    """Options sharing a context (run once) score as lm-eval scores each whole input; an input
    longer than the model keeps its last max_length + 1 tokens and feeds all but the last."""
    import torch

    tok, model = micro_tokenizer, micro_model.eval()
    context = "Question: What is the capital of the country where the river runs? Answer:"
    requests = [(context, " " + c) for c in ("blue", "the red one", "blue sky", "green")]

    def reference(ctx, cont, limit):
        c, x = lmeval.encode_pair(tok, ctx, cont)
        full = (c + x)[-(limit + 1):]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full[:-1]])).logits[0, -len(x):].float(), -1)
        target = torch.tensor(x)
        return float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())

    for limit in (512, 8):   # 8: every request is longer than the model and is cut
        sums, greedy = lmeval.continuation_logprobs(model, tok, requests, batch_size=3, max_length=limit)
        want = [reference(c, x, limit) for c, x in requests]
        assert sums == pytest.approx([w[0] for w in want], abs=1e-4)
        assert list(greedy) == [w[1] for w in want]
