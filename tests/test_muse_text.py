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
