"""Plain-text corpora (MUSE's raw texts, RMU's WMDP corpora) as benchmarks, and RMU trained on them.

basin's loop encodes text rows with ``unlearn.data.format.encode_text`` (tokens of the passage,
every one a label)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unlearn.data.benchmarks import is_text_row, load_benchmark, text_benchmark
from unlearn.data.format import encode_rows
from unlearn.data.muse import load_muse
from unlearn.errors import BasinError

FIXTURES = Path(__file__).parent / "fixtures" / "muse"


def test_text_benchmark_rows_limits_and_errors():
    bench = text_benchmark("t", ["a long enough passage", {"text": "tiny"}, "another passage here"],
                           [{"text": "retain passage"}], min_chars=10, max_rows=5)
    assert bench.forget == [{"text": "a long enough passage"}, {"text": "another passage here"}]
    assert bench.retain == [{"text": "retain passage"}] and bench.holdout == []
    assert all(is_text_row(r) for r in bench.forget) and not is_text_row({"question": "q", "text": "t"})
    assert len(text_benchmark("t", ["x"] * 10, [], max_rows=3).forget) == 3
    with pytest.raises(BasinError, match="forget row 1"):
        text_benchmark("t", ["ok", {"title": "no text"}], [])


def test_wmdp_corpus_family_reads_local_jsonl(tmp_path, monkeypatch):
    for kind, texts in (("forget", ["cyber passage one " * 5, "short"]), ("retain", ["retain passage " * 5])):
        (tmp_path / f"cyber-{kind}-corpus.jsonl").write_text(
            "\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    bench = load_benchmark("wmdp-corpus:cyber", path=tmp_path)
    assert [len(r["text"]) for r in bench.forget] == [90] and len(bench.retain) == 1  # < 50 chars dropped
    monkeypatch.setenv("WMDP_CORPORA_DIR", str(tmp_path))
    with pytest.raises(BasinError, match="lacks bio-forget-corpus.jsonl, bio-retain-corpus.jsonl"):
        load_benchmark("wmdp-corpus:bio")
    monkeypatch.delenv("WMDP_CORPORA_DIR")
    with pytest.raises(BasinError, match="WMDP_CORPORA_DIR"):
        load_benchmark("wmdp-corpus:cyber")
    with pytest.raises(BasinError, match="not one of bio, cyber"):
        load_benchmark("wmdp-corpus:chem", path=tmp_path)


def test_rmu_unlearns_a_text_corpus(micro_model, micro_tokenizer):
    import unlearn.train as loop
    from unlearn.data.format import collate
    from unlearn.objectives.rmu import RMU, hidden_after_layer

    data = load_muse("news", path=FIXTURES)
    bench = text_benchmark("muse-text:news", data.raw["forget"], data.raw["retain1"])
    before = {k: v.clone() for k, v in micro_model.state_dict().items()}
    layer, c = 1, 20.0
    forget = collate(encode_rows(micro_tokenizer, bench.forget), micro_tokenizer.pad_token_id)
    control = RMU(layer=layer, c=c)._control(micro_model.config.hidden_size)

    def forget_error(model):
        with torch.no_grad():
            h = hidden_after_layer(model, forget, layer).float()
        mask = forget["attention_mask"].bool()
        return float(((h - control) ** 2).mean(-1)[mask].mean())

    start = forget_error(micro_model)
    result = loop.unlearn(model=micro_model, tokenizer=micro_tokenizer, benchmark=bench, objective="rmu",
                     objective_args={"layer": layer, "c": c, "alpha": 10.0}, optimizer="adam", lr=2e-2,
                     steps=30, batch_size=2, eval_every=0, save_every=0, progress=False)
    model = result.model
    assert forget_error(model) < 0.5 * start                    # forget activations pushed to c u/|u|
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith("mlp.down_proj.weight") for k in changed)


def test_audit_of_a_text_corpus_scores_passages_and_lm_eval(micro_model, micro_tokenizer, tmp_path):
    """RMU's setting in an audit: the forget / retain sets are WMDP-style passages (scored as text:
    per-token NLL and probability over the passage), utility comes from an MMLU-style lm-eval task."""
    pytest.importorskip("lm_eval")
    from audit.metrics import evaluate
    from audit.metrics.evaluation import score_texts
    from audit.metrics.lmeval import write_mc_task
    from audit.runner import AuditConfig, audit

    data = load_muse("news", path=FIXTURES)
    for kind, texts in (("forget", data.raw["forget"]), ("retain", data.raw["retain1"])):
        (tmp_path / f"cyber-{kind}-corpus.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    bench = load_benchmark("wmdp-corpus:cyber", path=tmp_path)
    # the text score is the model's own loss on the passage (HF's mean over shifted tokens)
    one = bench.forget[0]["text"]
    ids = micro_tokenizer(one, return_tensors="pt")["input_ids"][:, :128]
    with torch.no_grad():
        loss = micro_model(input_ids=ids, labels=ids).loss.item()
    got = score_texts(micro_model, micro_tokenizer, bench.forget[:1], max_length=128)
    assert got["nll"][0] == pytest.approx(loss, rel=1e-4) and got["prob"][0] == pytest.approx(torch.tensor(-loss).exp().item(), rel=1e-4)
    records, table = evaluate(micro_model, micro_tokenizer, bench, metrics=["prob", "nll"])
    assert {(r["metric"], r["split"]) for r in records} == {(m, s) for m in ("prob", "nll") for s in ("forget", "retain")}
    assert set(table.split) == {"forget", "retain"} and "text" in table
    with pytest.raises(BasinError, match="truth_ratio"):
        evaluate(micro_model, micro_tokenizer, bench, metrics=["truth_ratio"])
    tasks = write_mc_task(tmp_path / "tasks", "mmlu_like", Path(__file__).parent / "fixtures" / "lmeval" / "mc4.jsonl")
    config = AuditConfig(benchmark="wmdp-corpus:cyber", benchmark_args={"path": str(tmp_path)},
                         attacks=("relearn", "quantize"), metrics=("prob", "nll"), score_references=False,
                         attack_args={"relearn": {"steps": (5,), "size": 0.5, "lr": 3e-3},
                                      "quantize": {"methods": ("rtn",), "bits": (4,)}},
                         lmeval={"tasks": ["mmlu_like"], "include_path": str(tasks)})
    df = audit(micro_model, micro_tokenizer, config=config, progress=False)
    nll = df[(df.metric == "nll") & (df.split == "forget")].set_index("attack")["value"]
    assert nll["relearn"] < nll["none"]                     # relearning on passages lowers their NLL
    assert set(df[df.metric == "lmeval_acc"].attack) == {"none", "relearn", "quantize"}
