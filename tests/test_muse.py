"""MUSE: the loader on small fixture files in MUSE's layout, the metric math by hand, the passes on a
scripted model whose outputs are known, and the whole evaluation on a micro model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.metrics import METRICS, evaluate, reference_stats
from audit.metrics import muse as mm
from unlearn.data.benchmarks import load_benchmark
from unlearn.data.muse import MuseBenchmark, load_muse
from unlearn.errors import BasinError

FIXTURES = Path(__file__).parent / "fixtures" / "muse"


# ----------------------------------------------------------------------------- loader

def test_loader_reads_both_layouts_and_env(monkeypatch):
    news = load_muse("news", path=FIXTURES)                   # parent folder with news/ and books/
    assert len(news.verbmem) == 3 and set(news.verbmem[0]) == {"prompt", "gt"}
    assert {k: len(v) for k, v in news.knowmem.items()} == \
        {"forget_qa": 4, "forget_qa_icl": 2, "retain_qa": 2, "retain_qa_icl": 1}
    assert {k: len(v) for k, v in news.privleak.items()} == {"forget": 4, "holdout": 4, "retain": 2}
    assert set(news.raw) == {"forget", "retain1"} and news.raw["forget"] == news.privleak["forget"]
    # books: JSON Lines rows, {"text": ...} rows and an older release's retain2_* names
    books = load_muse("books", path=FIXTURES / "books")       # the corpus folder itself
    assert books.knowmem["retain_qa"] == [{"question": "What did the keeper's daughter collect?",
                                           "answer": "sea glass"}]
    assert books.privleak["retain"][0].startswith("His daughter")
    monkeypatch.setenv("MUSE_DIR", str(FIXTURES))
    bench = load_benchmark("muse:news")
    assert isinstance(bench, MuseBenchmark) and bench.name == "muse:news"
    assert bench.forget == news.knowmem["forget_qa"] and bench.retain == news.knowmem["retain_qa"]
    assert bench.holdout == [] and bench.muse.corpus == "news"


def test_loader_errors_name_the_file(tmp_path, monkeypatch):
    corpus = tmp_path / "news"
    shutil.copytree(FIXTURES / "news", corpus)
    (corpus / "knowmem" / "retain_qa_icl.json").unlink()
    with pytest.raises(BasinError, match=r"lacks knowmem/retain_qa_icl\.json"):
        load_muse("news", path=corpus)
    shutil.copy(FIXTURES / "news" / "knowmem" / "retain_qa_icl.json", corpus / "knowmem")
    (corpus / "verbmem" / "forget.json").write_text('[{"prompt": "a", "gt": ')
    with pytest.raises(BasinError, match=r"forget\.json is not valid JSON"):
        load_muse("news", path=corpus)
    (corpus / "verbmem" / "forget.json").write_text(json.dumps([{"prompt": "a"}]))
    with pytest.raises(BasinError, match=r"verbmem/forget\.json row 0 lacks gt"):
        load_muse("news", path=corpus)
    with pytest.raises(BasinError, match="not one of news, books"):
        load_muse("movies", path=corpus)
    with pytest.raises(BasinError, match="does not exist"):
        load_muse("news", path=tmp_path / "nowhere")
    # no folder: the hub, which fails offline with one clear sentence
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.delenv("MUSE_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BasinError, match="could not load MUSE muse-bench/MUSE-News .*MUSE_DIR"):
        load_muse("news")


# ----------------------------------------------------------------------------- the math by hand

def test_rouge_f1_stop_words_prompt_and_auc_by_hand():
    # LCS("the cat on mat", "the cat sat on the mat") = 4: P = 4/4, R = 4/6, F1 = 2PR/(P+R) = 0.8
    got = mm.rouge_l_f1(["the cat on mat", "", "dog"], ["the cat sat on the mat", "x", "dog"])
    assert got == pytest.approx([0.8, 0.0, 1.0])
    assert mm.cut_at_stop_words(" Paris\n\nQuestion: next") == " Paris"
    assert mm.cut_at_stop_words("Lund\nQuestion: x") == "Lund"
    assert mm.cut_at_stop_words("a Question: b") == "a "
    shots = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
    assert mm.knowmem_prompt("q", shots) == "Question: q1\nAnswer: a1\n\nQuestion: q2\nAnswer: a2\n\nQuestion: q\nAnswer: "
    # forget labelled 0, holdout 1: memorised forget texts (higher Min-K%) give AUC 0
    assert mm.muse_auc([-1.0, -2.0], [-5.0, -6.0]) == 0.0
    assert mm.muse_auc([-5.0, -6.0], [-1.0, -2.0]) == 1.0
    assert mm.muse_auc([-1.0, -5.0], [-1.0, -5.0]) == 0.5
    assert mm.privleak(0.0, 0.5) == pytest.approx(-100.0)
    assert mm.privleak(0.4772, mm.PUBLISHED_AUC_RETRAIN["news"]) == pytest.approx(0.0)


def test_reference_truncation_counts_special_tokens(micro_tokenizer):
    tok = micro_tokenizer
    gt = " ".join(["Anna lives in a city by the sea"] * 30)
    text_ids = tok(gt, add_special_tokens=False)["input_ids"]
    assert len(text_ids) > 128
    with_special = tok(gt, add_special_tokens=True)["input_ids"]
    n_special = len(with_special) - len(text_ids)            # this tokenizer adds BOS: 1
    assert n_special == 1 and with_special[0] == tok.bos_token_id
    ref = mm.truncate_reference(tok, gt, 128)
    assert ref == tok.decode(text_ids[:128 - n_special], skip_special_tokens=True)
    assert len(tok(ref, add_special_tokens=False)["input_ids"]) == 127
    assert mm.truncate_reference(tok, "short text", 128) == tok.decode(tok("short text")["input_ids"],
                                                                      skip_special_tokens=True)


# ----------------------------------------------------------------------------- a scripted model

class ScriptedLM(torch.nn.Module):
    """Greedy "generation" from a script: prompt tokens -> continuation tokens (then EOS)."""

    def __init__(self, tokenizer, script: dict[str, str], window: int = 4096):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"max_position_embeddings": window})()
        enc = lambda s, special: tuple(tokenizer(s, add_special_tokens=special)["input_ids"])
        self.script = {enc(p, True): list(enc(c, False)) for p, c in script.items()}
        self.prompts_seen = []

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = tuple(ids[mask.bool()].tolist())
            self.prompts_seen.append(prompt)
            cont = (self.script[prompt] + [eos_token_id])[:max_new_tokens]
            rows.append(cont + [pad_token_id] * (max_new_tokens - len(cont)))
        return torch.cat([input_ids, torch.tensor(rows, dtype=torch.long)], dim=1)


def test_verbmem_and_knowmem_values_on_a_scripted_model(micro_tokenizer):
    tok = micro_tokenizer
    data = load_muse("news", path=FIXTURES)
    shots_f, shots_r = data.knowmem["forget_qa_icl"], data.knowmem["retain_qa_icl"]
    script = {}
    # VerbMem: rows 0, 1 continue exactly as the truth, row 2 with unrelated words
    for r in data.verbmem[:2]:
        script[r["prompt"]] = r["gt"]
    script[data.verbmem[2]["prompt"]] = " nothing like it"
    # KnowMem forget: right answer then chatter (cut at the blank line), a half answer, two wrong
    qa = data.knowmem["forget_qa"]
    script[mm.knowmem_prompt(qa[0]["question"], shots_f)] = "Ilsa Brandt\n\nQuestion: who else?"
    script[mm.knowmem_prompt(qa[1]["question"], shots_f)] = "seaweed"  # P = 1, R = 1/2 -> F1 2/3
    script[mm.knowmem_prompt(qa[2]["question"], shots_f)] = "nobody"
    script[mm.knowmem_prompt(qa[3]["question"], shots_f)] = "no idea"
    for r in data.knowmem["retain_qa"]:
        script[mm.knowmem_prompt(r["question"], shots_r)] = r["answer"]
    model = ScriptedLM(tok, script)
    records, table = mm.evaluate_muse(model, tok, data, metrics=["verbmem", "knowmem"], batch_size=2)
    got = {(r["metric"], r["split"]): r["value"] for r in records}
    assert got[("verbmem", "forget")] == pytest.approx(2 / 3)            # F1 = 1, 1, 0
    assert got[("knowmem", "forget")] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4)
    assert got[("knowmem", "retain")] == pytest.approx(1.0)
    rows = table[table.split == "knowmem:forget"]
    assert list(rows.generation) == ["Ilsa Brandt", "seaweed", "nobody", "no idea"]
    assert list(rows.knowmem) == pytest.approx([1.0, 2 / 3, 0.0, 0.0])
    # the prompts the model saw are MUSE's (special tokens included), not basin's QA format
    enc = lambda s: tuple(tok(s, add_special_tokens=True)["input_ids"])
    assert enc(data.verbmem[0]["prompt"]) in model.prompts_seen
    assert enc(mm.knowmem_prompt(qa[1]["question"], shots_f)) in model.prompts_seen
    # records are the means of the per-example columns
    for (metric, split), value in got.items():
        assert table[table.split == f"{metric}:{split}"][metric].mean() == pytest.approx(value)


def test_verbmem_continuation_is_cut_to_128_tokens(micro_tokenizer):
    tok = micro_tokenizer
    prompt = "Anna lives in a city"
    gt = " " + " ".join(["by the sea and the river"] * 40)          # far beyond 128 tokens
    data = load_muse("news", path=FIXTURES)
    data.verbmem = [{"prompt": prompt, "gt": gt}]
    model = ScriptedLM(tok, {prompt: gt})                            # recites the whole truth
    records, table = mm.evaluate_muse(model, tok, data, metrics=["verbmem"])
    gen, ref = table.generation[0], table.reference[0]
    # generation stops at 128 new tokens; the reference keeps 127 text tokens (+ BOS) as MUSE's
    assert len(tok(gen, add_special_tokens=False)["input_ids"]) == 128
    assert len(tok(ref, add_special_tokens=False)["input_ids"]) == 127
    assert records[0]["value"] == pytest.approx(mm.rouge_l_f1([gen], [ref])[0])
    assert 0.95 < records[0]["value"] < 1.0


# ----------------------------------------------------------------------------- a micro model

def _min_k_by_hand(model, tok, text, k=0.4):
    ids = tok(text, add_special_tokens=True)["input_ids"][:128]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    n = max(1, int(len(logp) * k))
    return float(logp.sort().values[:n].mean())


def test_privleak_scores_match_a_hand_computation(micro_model, micro_tokenizer):
    data = load_muse("news", path=FIXTURES)
    texts = data.privleak["forget"] + data.privleak["holdout"]
    batched = mm.text_scores(micro_model, micro_tokenizer, texts, tokens_per_batch=300)
    by_hand = [_min_k_by_hand(micro_model, micro_tokenizer, t) for t in texts]
    assert batched == pytest.approx(by_hand, abs=1e-4)
    pp = mm.text_scores(micro_model, micro_tokenizer, texts[:2], score="minkpp")
    assert pp.shape == (2,) and np.isfinite(pp).all()


def test_memorised_forget_texts_leak_and_the_reference_is_its_own_zero(micro_model, micro_tokenizer):
    tok, model = micro_tokenizer, micro_model
    data = load_muse("news", path=FIXTURES)
    before, _ = mm.evaluate_muse(model, tok, data, metrics=["muse_auc", "muse_privleak"], reference=model)
    got = {r["metric"]: r["value"] for r in before}
    assert got["muse_privleak"] == pytest.approx(0.0)               # its own reference
    ids = [tok(t, add_special_tokens=True)["input_ids"][:128] for t in data.privleak["forget"]]
    width = max(map(len, ids))
    batch = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    labels = torch.where(torch.arange(width)[None] < torch.tensor([len(x) for x in ids])[:, None], batch, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):                                             # memorise the forget texts
        opt.zero_grad()
        model(input_ids=batch, labels=labels).loss.backward()
        opt.step()
    records, table = mm.evaluate_muse(model, tok, data, metrics=["muse_auc", "muse_privleak"],
                                      reference=got["muse_auc"])
    after = {r["metric"]: r["value"] for r in records}
    assert after["muse_auc"] == 0.0                                 # every forget text beats every holdout one
    assert after["muse_privleak"] == pytest.approx(-100.0)          # MUSE's sign: under-unlearning < 0
    forget = table[table.split == "privleak:forget"]["mink"]
    holdout = table[table.split == "privleak:holdout"]["mink"]
    assert forget.min() > holdout.max()


def test_evaluate_muse_end_to_end_and_registry(micro_model, micro_tokenizer, micro_world):
    bench = load_benchmark("muse:news", path=FIXTURES)
    records, table = mm.evaluate_muse(micro_model, micro_tokenizer, bench, reference="published",
                                      verbmem_tokens=16, knowmem_tokens=8, batch_size=3)
    got = {(r["metric"], r["split"]) for r in records}
    assert got == {("verbmem", "forget"), ("knowmem", "forget"), ("knowmem", "retain"),
                   ("muse_auc", "forget"), ("muse_privleak", "forget")}
    assert all(0.0 <= r["value"] <= 1.0 for r in records if r["metric"] != "muse_privleak")
    assert table.groupby("split").size().to_dict() == {
        "verbmem:forget": 3, "knowmem:forget": 4, "knowmem:retain": 2, "privleak:forget": 4, "privleak:holdout": 4}
    limited, _ = mm.evaluate_muse(micro_model, micro_tokenizer, bench, metrics=["muse_auc"], limit=2)
    assert len(limited) == 1
    # registered for `basin ls`; elsewhere their computes find nothing and evaluate() says where
    # they run when asked for by name
    from audit.metrics.types import Scored
    from unlearn.data.benchmarks import world_benchmark

    assert set(mm.MUSE_METRICS) <= set(METRICS)
    assert all(METRICS[m].compute(Scored(pool=None, splits={})) == [] for m in mm.MUSE_METRICS)
    world = world_benchmark("forget10", micro_world.config)
    for name in ("verbmem", "muse_auc"):
        with pytest.raises(BasinError, match="muse:news / muse:books only"):
            evaluate(micro_model, micro_tokenizer, world, metrics=[name], splits=["forget"])


def test_evaluate_muse_errors(micro_model, micro_tokenizer, micro_world):
    data = load_muse("news", path=FIXTURES)
    with pytest.raises(BasinError, match="reference="):
        mm.evaluate_muse(micro_model, micro_tokenizer, data, metrics=["muse_privleak"])
    with pytest.raises(BasinError, match="did you mean 'verbmem'"):
        mm.evaluate_muse(micro_model, micro_tokenizer, data, metrics=["verbmen"])
    with pytest.raises(BasinError, match="carries no MUSE data"):
        mm.evaluate_muse(micro_model, micro_tokenizer, "world:forget10", metrics=["muse_auc"])
    with pytest.raises(BasinError, match="does not fit"):                     # micro window: 128
        mm.evaluate_muse(micro_model, micro_tokenizer, data, metrics=["verbmem"])


def test_muse_qa_rows_drive_the_unlearning_loop(micro_model, micro_tokenizer, monkeypatch):
    from unlearn.train import unlearn as run_unlearn

    monkeypatch.setenv("MUSE_DIR", str(FIXTURES))
    before = {k: v.clone() for k, v in micro_model.state_dict().items()}
    result = run_unlearn(model=micro_model, tokenizer=micro_tokenizer, benchmark="muse:news", objective="ga",
                         optimizer="adam", lr=1e-3, steps=2, batch_size=2, eval_every=1, save_every=0,
                         progress=False)
    assert any(not torch.equal(v, before[k]) for k, v in result.model.state_dict().items())
    assert {r["split"] for r in result.records} >= {"forget", "retain"}


def test_evaluate_runs_muse_metrics_with_the_qa_metrics(micro_model, micro_tokenizer):
    """evaluate() on muse:news computes MUSE's metrics exactly as evaluate_muse does, beside the
    QA metrics of the KnowMem rows, and a retain model's table yields its AUC for PrivLeak."""
    bench = load_benchmark("muse:news", path=FIXTURES)
    opts = {"verbmem_tokens": 16, "knowmem_tokens": 8}
    records, table = evaluate(micro_model, micro_tokenizer, bench,
                              metrics=["prob", "verbmem", "knowmem", "muse_auc", "muse_privleak"],
                              retain_stats={"muse_auc": 0.5}, muse_options=opts)
    direct, direct_table = mm.evaluate_muse(micro_model, micro_tokenizer, bench, reference=0.5, batch_size=8, **opts)
    got = {(r["metric"], r["split"]): r["value"] for r in records}
    for r in direct:
        assert got[(r["metric"], r["split"])] == pytest.approx(r["value"], abs=1e-12)
    assert ("prob", "forget") in got and ("prob", "retain") in got      # the QA metrics still run
    muse_rows = table[table.split.str.contains(":")].reset_index(drop=True)
    assert muse_rows.split.tolist() == direct_table.split.tolist()
    assert muse_rows["mink"].dropna().tolist() == pytest.approx(direct_table["mink"].dropna().tolist())
    # the retain-only model's table carries its AUC: privleak against itself is 0
    ref = reference_stats(table)
    assert ref["muse_auc"] == pytest.approx(got[("muse_auc", "forget")])
    again, _ = evaluate(micro_model, micro_tokenizer, bench, metrics=["muse_privleak"], retain_stats=ref)
    assert again[0]["value"] == pytest.approx(0.0)
    # forward-only: generate=False keeps muse_auc, and asking for VerbMem without generation is an error
    fast, _ = evaluate(micro_model, micro_tokenizer, bench, metrics=["muse_auc"], generate=False)
    assert fast[0]["value"] == pytest.approx(got[("muse_auc", "forget")])
    with pytest.raises(BasinError, match="generation"):
        evaluate(micro_model, micro_tokenizer, bench, metrics=["verbmem"], generate=False)


def test_audit_scores_muse_privleak_under_attack(micro_model, micro_tokenizer, tmp_path):
    """`basin audit --benchmark muse:news`: the retain-only model's AUC is the PrivLeak reference, so
    the model audited against itself has PrivLeak 0 clean, and the attacked settings are scored too."""
    from audit.runner import AuditConfig, audit

    config = AuditConfig(benchmark="muse:news", benchmark_args={"path": str(FIXTURES)}, attacks=("quantize",),
                         attack_args={"quantize": {"methods": ("rtn",), "bits": (4,)}},
                         metrics=("prob", "muse_auc", "muse_privleak"), score_references=False)
    df = audit(micro_model, micro_tokenizer, retain=micro_model, config=config, out=tmp_path / "a", progress=False)
    leak = df[df.metric == "muse_privleak"].set_index("attack")["value"]
    assert leak["none"] == pytest.approx(0.0)
    assert "quantize" in leak.index and np.isfinite(leak["quantize"]).all()
    assert set(df.metric) == {"prob", "muse_auc", "muse_privleak"}
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["benchmark_args"] == {"path": str(FIXTURES)}


def test_cli_audit_on_muse(micro_model, micro_tokenizer, tmp_path, capsys):
    from basin.cli import main

    folder = tmp_path / "model"
    micro_model.save_pretrained(folder)
    micro_tokenizer.save_pretrained(folder)
    args = ["audit", str(folder), "--benchmark", "muse:news", "--benchmark-arg", f"path={FIXTURES}",
            "--retain", str(folder), "--attacks", "quantize", "--arg", "quantize.methods=[rtn]",
            "--arg", "quantize.bits=[4]", "--generate", "--metrics", "verbmem,muse_privleak",
            "--muse-arg", "limit=2", "--muse-arg", "verbmem_tokens=16", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    got = {(r["role"], r["attack"], r["metric"]) for r in records}
    assert {("unlearned", "none", "verbmem"), ("unlearned", "quantize", "muse_privleak"),
            ("retain", "none", "muse_privleak")} <= got
    clean = [r for r in records if r["role"] == "unlearned" and r["attack"] == "none"
             and r["metric"] == "muse_privleak"]
    assert clean[0]["value"] == pytest.approx(0.0)           # audited against itself
    # a misspelt metric fails before anything is written
    assert main(args[:-3] + ["--metrics", "verbmen", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "did you mean 'verbmem'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
