"""Shared-prefix scoring: each question's prompt runs through the model once and every answer
scored under it (answer, paraphrase, perturbed answers, options) reuses its keys/values. The
numbers must be those of scoring every (prompt + answer) as its own sequence: checked here
against that reference on micro models (fast) and on SmolLM2-135M (slow, BASIN_SLOW=1)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.metrics import evaluate, token_stats
from audit.metrics.mia import token_zscores
from unlearn.cache import cache_root
from unlearn.data.benchmarks import Benchmark, load_benchmark, world_benchmark
from unlearn.data.format import IGNORE, collate, encode_answer, encode_qa, encode_text, pad_id_of
from unlearn.scoring import answer_stats, prefix_cut, token_logprobs

TOL = dict(rtol=1e-5, atol=1e-5)


@torch.no_grad()
def unshared(model, examples, pad_id, batch_size=64):
    """The reference: every example run whole (right-padded batches in the given order), as
    basin scored before prompts were shared."""
    model.eval()
    parts = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, mask = token_logprobs(logits, batch["labels"])
        hits = (logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) | ~mask
        parts.append((logp.sum(-1), mask.sum(-1).float(), hits.all(-1).float()))
    return [torch.cat(x) for x in zip(*parts)]


def qa_examples(tok, rows, max_length=128):
    """Every answer a TOFU-shaped row is scored with: answer, paraphrase, perturbed answers."""
    return [encode_qa(tok, r["question"], a, max_length) for r in rows
            for a in [r["answer"], r.get("paraphrased_answer", r["answer"]), *r.get("perturbed_answer", [])]]


def assert_same(got, want, nontrivial=True):
    logprob, length, exact = want
    torch.testing.assert_close(got.logprob, logprob, **TOL)
    torch.testing.assert_close(got.logprob / length.clamp_min(1), logprob / length.clamp_min(1), **TOL)
    assert torch.equal(got.length, length)
    assert torch.equal(got.exact, exact)
    if nontrivial:
        assert (length > 0).all() and (logprob < 0).all()


@pytest.fixture(scope="module")
def bench(micro_world):
    return world_benchmark("forget10", micro_world.config)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [3, 64])
def test_shared_prefix_equals_whole_sequences(trained_micro, bench, padding_side, batch_size):
    model, tok, _ = trained_micro
    examples = qa_examples(tok, bench.forget[:2] + bench.retain[:4])
    pad = pad_id_of(tok)
    want = unshared(model, examples, pad)
    got = answer_stats(model, examples, pad, batch_size=batch_size, padding_side=padding_side)
    assert_same(got, want)
    assert 0 < want[2].sum() < len(examples)  # some answers exactly right, some not


def test_each_shared_token_runs_once_and_batches_stay_bounded(micro_model, micro_tokenizer, bench):
    examples = qa_examples(micro_tokenizer, bench.forget[:2] + bench.retain[:3])
    shapes, real = [], []

    def seen(mod, args, kwargs, out):
        n = kwargs["input_ids"].shape[1]
        shapes.append(tuple(kwargs["input_ids"].shape))
        real.append(int(kwargs["attention_mask"][:, -n:].sum()))   # the new tokens, not the cache
    hook = micro_model.get_decoder().register_forward_hook(seen, with_kwargs=True)  # every pass runs the decoder
    try:
        answer_stats(micro_model, examples, pad_id_of(micro_tokenizer), batch_size=4)
    finally:
        hook.remove()
    prompts = {tuple(e.input_ids[:prefix_cut(e)]) for e in examples}
    assert len(prompts) == 5 and len(examples) == 35
    cut = [prefix_cut(e) for e in examples]
    assert all(e.labels[c + 1] != IGNORE and all(x == IGNORE for x in e.labels[:c + 1])
               for e, c in zip(examples, cut))
    assert max(b for b, _ in shapes) <= 4                       # bounded by the batch size
    # every prompt once; the tails at least once per distinct token prefix (the question's token
    # trie) and at most once per answer (short shared runs are copied into their branches)
    tails = {(tuple(e.input_ids[:c]), tuple(e.input_ids[c:k])) for e, c in zip(examples, cut)
             for k in range(c + 1, len(e.input_ids) + 1)}
    unshared_tails = sum(len(e.input_ids) - c for e, c in zip(examples, cut))
    assert sum(len(p) for p in prompts) + len(tails) <= sum(real) < sum(len(p) for p in prompts) + unshared_tails
    whole = sum(len(e.input_ids) for e in examples)
    assert sum(real) < 0.7 * whole
    assert sum(b * n for b, n in shapes) < 0.8 * whole          # padded tokens through the model


def test_eos_as_pad_and_the_answer_eos_is_scored(trained_micro, bench):
    model, tok, _ = trained_micro
    examples = qa_examples(tok, bench.forget[:2])
    want = unshared(model, examples, tok.eos_token_id)
    for pad in (tok.eos_token_id, pad_id_of(tok), 0):
        for side in ("right", "left"):
            assert_same(answer_stats(model, examples, pad, batch_size=5, padding_side=side), want)
    r = bench.forget[0]
    n = len(encode_answer(tok, r["answer"]))
    assert answer_stats(model, examples[:1], pad_id_of(tok)).length.item() == n  # answer + EOS


def test_truncation_inside_the_answer_and_inside_the_prompt(trained_micro, bench):
    model, tok, _ = trained_micro
    rows = bench.forget[:2] + bench.retain[:2]
    prompt_lengths = [prefix_cut(encode_qa(tok, r["question"], r["answer"])) + 1 for r in rows]
    limit = min(prompt_lengths) + 3            # the shortest prompt keeps 3 answer tokens
    examples = qa_examples(tok, rows, max_length=limit)
    cut_prompt = [encode_qa(tok, r["question"], r["answer"], max_length=min(prompt_lengths) - 2) for r in rows]
    examples = examples + cut_prompt
    pad = pad_id_of(tok)
    want = unshared(model, examples, pad)
    assert (want[1][:-len(rows)] <= 3).all() and (want[1][:-len(rows)] > 0).any()
    for side in ("right", "left"):
        got = answer_stats(model, examples, pad, batch_size=4, padding_side=side)
        assert_same(got, want, nontrivial=False)
    # a prompt cut before its answer scores nothing: log-likelihood 0, length 0, exact 1 (as before)
    assert (got.length[-len(rows):] == 0).all() and (got.exact[-len(rows):] == 1).all()


def test_plain_text_rows_mixed_with_questions(trained_micro, bench):
    model, tok, _ = trained_micro
    texts = [encode_text(tok, f"{r['question']} {r['answer']}") for r in bench.retain[:3]]
    examples = texts + qa_examples(tok, bench.retain[:2]) + texts[:1]
    pad = pad_id_of(tok)
    want = unshared(model, examples, pad)
    for side in ("right", "left"):
        assert_same(answer_stats(model, examples, pad, batch_size=4, padding_side=side), want)


def test_token_stats_keep_only_the_wanted_rows(trained_micro, bench):
    model, tok, _ = trained_micro
    examples = qa_examples(tok, bench.forget[:2])
    pad = pad_id_of(tok)
    keep = [i % 3 == 0 for i in range(len(examples))]
    stats, logps, zs = token_stats(model, examples, pad, batch_size=4, keep=keep)
    _, all_logps, all_zs = token_stats(model, examples, pad, batch_size=64)
    assert [x is not None for x in logps] == keep == [x is not None for x in zs]
    for i in np.flatnonzero(keep):
        torch.testing.assert_close(logps[i], all_logps[i], **TOL)
        torch.testing.assert_close(zs[i], all_zs[i], **TOL)
        # the reference: Min-K%++ z-scores from the whole sequence's logits
        batch = collate(examples[i:i + 1], pad)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        z, mask = token_zscores(logits, batch["labels"])
        torch.testing.assert_close(zs[i], z[mask], **TOL)
        assert abs(float(logps[i].sum()) - float(stats.logprob[i])) < 1e-4


def test_evaluate_scores_equal_whole_sequence_scores(trained_micro, bench):
    """prob, nll, exact match, truth ratio, margin and MC accuracy in evaluate come from the shared
    path and equal the numbers derived from whole-sequence scores."""
    model, tok, _ = trained_micro
    small = Benchmark("micro", bench.forget[:3], bench.retain[:3], [],
                      {"world_facts": bench.utility["world_facts"][:4]})
    real = []
    hook = model.get_decoder().register_forward_hook(lambda mod, args, kwargs, out: real.append(
        int(kwargs["attention_mask"][:, -kwargs["input_ids"].shape[1]:].sum())), with_kwargs=True)
    try:
        _, table = evaluate(model, tok, small, generate=False, batch_size=8,
                            metrics=["prob", "nll", "exact_match", "truth_ratio", "margin", "mc_accuracy"])
    finally:
        hook.remove()
    pad = pad_id_of(tok)

    def mean_logp(q, answers):
        lp, n, ex = unshared(model, [encode_qa(tok, q, a) for a in answers], pad)
        return (lp / n).double().numpy(), ex.double().numpy()

    rows = table[table["split"] == "forget"].reset_index()
    for i, r in enumerate(small.forget):
        (answer,), (exact,) = mean_logp(r["question"], [r["answer"]])
        (para,), _ = mean_logp(r["question"], [r["paraphrased_answer"]])
        wrong, _ = mean_logp(r["question"], r["perturbed_answer"])
        assert rows.loc[i, "nll"] == pytest.approx(-answer, abs=1e-5)
        assert rows.loc[i, "p_norm"] == pytest.approx(np.exp(answer), abs=1e-5)
        assert rows.loc[i, "exact_match"] == exact
        assert rows.loc[i, "margin"] == pytest.approx(para - wrong.mean(), abs=2e-5)
        assert rows.loc[i, "truth_ratio_R"] == pytest.approx(np.exp(wrong.mean() - para), rel=1e-4)
    facts = table[table["split"] == "world_facts"].reset_index()
    assert all(r.get("options") for r in small.utility["world_facts"])
    for i, r in enumerate(small.utility["world_facts"]):
        scores, _ = mean_logp(r["question"], r["options"])
        assert facts.loc[i, "mc_choice"] == int(np.argmax(scores))
    questions, pairs = set(), set()
    for split in (small.forget, small.retain, small.utility["world_facts"]):
        for r in split:
            questions.add(r["question"])
            answers = [r["answer"], *r.get("perturbed_answer", []), *(r.get("options") or [])]
            if split is not small.utility["world_facts"]:
                answers.append(r["paraphrased_answer"])
            pairs |= {(r["question"], a) for a in answers}
    # each prompt once, each distinct pair once, and tokens shared by answers that begin alike once
    encoded = [encode_qa(tok, q, a) for q, a in pairs]
    prompts = {tuple(e.input_ids[:prefix_cut(e)]) for e in encoded}
    assert len(prompts) == len(questions)
    tails = {(tuple(e.input_ids[:prefix_cut(e)]), tuple(e.input_ids[prefix_cut(e):k])) for e in encoded
             for k in range(prefix_cut(e) + 1, len(e.input_ids) + 1)}
    unshared_tails = sum(len(e.input_ids) - prefix_cut(e) for e in encoded)
    assert sum(len(p) for p in prompts) + len(tails) <= sum(real) < sum(len(p) for p in prompts) + unshared_tails


# ----------------------------------------------------------------------------- SmolLM2 (slow)

SLOW = os.environ.get("BASIN_SLOW") == "1"
USER_CACHE = cache_root()  # read before the session fixture points BASIN_CACHE elsewhere


def _smollm2() -> Path | None:
    from unlearn import hub

    folder = USER_CACHE / "models" / hub.SMOLLM2
    return folder if hub._is_complete(folder) else None


def _tofu_rows(n):
    from tests.test_tofu import TOFU_DIR

    if TOFU_DIR is None:
        return []
    return load_benchmark("tofu:forget10", path=TOFU_DIR).forget[:n]


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="set BASIN_SLOW=1 (needs the converted SmolLM2 checkpoint)")
def test_smollm2_shared_prefix_equals_whole_sequences():
    from unlearn.loading import load_model

    folder = _smollm2()
    if folder is None:
        pytest.skip("no converted SmolLM2 in the user's cache")
    model, tok = load_model(str(folder))
    rows = load_benchmark("world:forget10").forget[:3] + _tofu_rows(3)
    examples = qa_examples(tok, rows, max_length=512)
    pad = pad_id_of(tok)
    want = unshared(model, examples, pad, batch_size=16)
    for side, batch_size in (("right", 8), ("left", 64)):
        assert_same(answer_stats(model, examples, pad, batch_size=batch_size, padding_side=side), want, False)
    # truncation inside the answer on the real tokenizer
    short = qa_examples(tok, rows[:2], max_length=prefix_cut(examples[0]) + 4)
    assert_same(answer_stats(model, short, pad, batch_size=4), unshared(model, short, pad), False)


def test_the_radix_tree_shares_runs_of_four_tokens_or_more():
    from unlearn.scoring import _chunks, _radix

    nodes = []
    _radix({0: [1, 2, 3, 4, 5, 9], 1: [1, 2, 3, 4, 6, 9], 2: [1, 2, 7, 9], 3: [1, 2, 7, 9]}, 0, nodes)
    got = sorted((tuple(n.tokens), n.level, tuple(n.ends), n.parent >= 0) for n in nodes)
    # [1, 2] is shared by every answer but too short to run on its own: each branch carries it;
    # [1, 2, 3, 4] is shared by two and runs once; examples 2 and 3 are the same tokens
    assert got == [((1, 2, 3, 4), 1, (), False), ((1, 2, 7, 9), 1, (2, 3), False),
                   ((5, 9), 2, (0,), True), ((6, 9), 2, (1,), True)]
    # chunks: longest first, at most batch_size nodes, none shorter than 0.7 x the chunk's first
    lengths = [10, 9, 8, 7, 6, 3, 3, 3]
    fake = [type("N", (), {"tokens": [0] * n})() for n in lengths]
    assert _chunks(list(range(8)), fake, batch_size=3) == [[0, 1, 2], [3, 4], [5, 6, 7]]


def test_models_whose_logits_are_not_the_plain_output_layer_use_their_own_forward(trained_micro, bench, monkeypatch):
    import unlearn.scoring as scoring

    model, tok, _ = trained_micro
    assert scoring._split_head(model) is not None
    monkeypatch.setattr(model.config, "final_logit_softcapping", 30.0, raising=False)
    assert scoring._split_head(model) is None      # e.g. Gemma 2: logits are softcapped after the layer
    monkeypatch.delattr(model.config, "final_logit_softcapping")
    monkeypatch.setattr(scoring, "_split_head", lambda m: None)
    examples = qa_examples(tok, bench.forget[:2] + bench.retain[:2])
    pad = pad_id_of(tok)
    for side in ("right", "left"):
        assert_same(answer_stats(model, examples, pad, batch_size=4, padding_side=side), unshared(model, examples, pad))
