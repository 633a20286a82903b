"""Metrics on real models: the micro Llama (untrained, and trained until it has memorised the micro
world), through :func:`audit.metrics.evaluate` and the passes behind it."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from audit.metrics.muse import MUSE_METRICS
from audit.metrics import (FAST_METRICS, METRICS, AnswerPool, evaluate, greedy_generate, reference_stats,
                           save_reference, token_stats)
from audit.metrics.evaluation import plan
from unlearn.data.benchmarks import Benchmark, world_benchmark
from unlearn.data.format import encode_qa, pad_id_of
from unlearn.errors import BasinError
from unlearn.scoring import answer_stats


@pytest.fixture(scope="module")
def bench(micro_world):
    return world_benchmark("forget10", micro_world.config)


@pytest.fixture(scope="module")
def trained_eval(trained_micro, bench):
    """evaluate() of the trained micro model with every metric (short generations)."""
    model, tok, _ = trained_micro
    return evaluate(model, tok, bench, max_new_tokens=40, retain_stats=model)


def _value(records, metric, split):
    hits = [r["value"] for r in records if r["metric"] == metric and r["split"] == split]
    assert len(hits) == 1, (metric, split, records)
    return hits[0]


def test_token_stats_equal_answer_stats(micro_model, micro_tokenizer, bench):
    rows = bench.forget[:5] + bench.holdout[:4]
    examples = [encode_qa(micro_tokenizer, r["question"], r["answer"]) for r in rows]
    pad = pad_id_of(micro_tokenizer)
    want = answer_stats(micro_model, examples, pad, batch_size=4)
    got, logps, zs = token_stats(micro_model, examples, pad, batch_size=3)
    torch.testing.assert_close(got.logprob, want.logprob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.length, want.length)
    torch.testing.assert_close(got.exact, want.exact)
    assert [len(x) for x in logps] == want.length.int().tolist() == [len(z) for z in zs]
    torch.testing.assert_close(torch.stack([x.sum() for x in logps]), want.logprob, rtol=1e-5, atol=1e-5)
    assert all(x.dtype == torch.float32 for x in logps + zs)


def test_pool_scores_each_distinct_pair_once(micro_model, micro_tokenizer):
    seen = []
    hook = micro_model.get_decoder().register_forward_hook(   # every scoring pass runs the decoder
        lambda mod, args, kwargs, out: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        pool = AnswerPool(micro_tokenizer)
        a = pool.add_many(["Q1?", "Q1?", "Q2?"], ["A b", "A b", "A b"])
        b = pool.add_many(["Q1?"], ["A b"], tokens=True)
        assert a.tolist() == [0, 0, 1] and b.tolist() == [0]
        pool.run(micro_model, batch_size=8)
    finally:
        hook.remove()
    assert seen == [2, 2]  # the two distinct prompts once, then the two distinct pairs' answers
    values, mask = pool.padded_tokens([0])
    assert mask.sum() == len(pool.token_logp[0]) and values.dtype == torch.float32
    assert np.isnan(pool.p_norm(np.array([-1]))).all()


def test_batched_left_padded_generation_matches_one_at_a_time(trained_micro, bench):
    model, tok, _ = trained_micro
    rows = bench.forget[:4] + bench.holdout[:3] + bench.utility["world_facts"][:2]
    questions = [r["question"] for r in rows]
    batched = greedy_generate(model, tok, questions, max_new_tokens=30, batch_size=4)
    single = [greedy_generate(model, tok, [q], max_new_tokens=30)[0] for q in questions]
    assert batched == single
    # a memorised question is answered word for word, stopping at EOS
    assert batched[0] == bench.forget[0]["answer"]
    assert all(tok.eos_token not in g for g in batched)


def test_trained_model_knows_its_people_and_not_the_holdout(trained_eval):
    records, table = trained_eval
    for split in ("forget", "retain"):
        assert _value(records, "prob", split) > 0.9
        assert _value(records, "exact_match", split) > 0.9
        assert _value(records, "rouge", split) > 0.9
        assert _value(records, "margin_win", split) > 0.9
    assert _value(records, "prob", "holdout") < 0.1
    assert _value(records, "exact_match", "holdout") == 0.0
    assert 0.2 <= _value(records, "margin_win", "holdout") <= 0.8  # no preference for the truth
    assert _value(records, "mc_accuracy", "world_facts") >= 0.9
    assert _value(records, "prob", "world_facts") > 0.9
    assert _value(records, "truth_ratio", "retain") > 0.5
    assert _value(records, "truth_ratio", "forget") < 0.5  # knows the forget set: R far from 1
    assert _value(records, "mink_auc", "forget") > 0.9     # members recognised
    assert _value(records, "minkpp_auc", "forget") > 0.9
    assert 0.5 < _value(records, "model_utility", "utility") <= 1.0
    # its own reference: nothing to tell apart
    assert _value(records, "forget_quality", "forget") == pytest.approx(1.0)
    assert _value(records, "privleak", "forget") == pytest.approx(0.0)
    # every metric applies on this benchmark
    assert {r["metric"] for r in records} == set(METRICS) - set(MUSE_METRICS)  # MUSE metrics need MUSE data


def test_records_equal_means_of_per_example_columns(trained_eval, bench):
    records, table = trained_eval
    sizes = {"forget": len(bench.forget), "retain": len(bench.retain), "holdout": len(bench.holdout),
             "world_facts": len(bench.utility["world_facts"])}
    assert table.groupby("split").size().to_dict() == sizes
    checked = 0
    for r in records:
        if r["metric"] in table.columns and r["metric"] != "mc_accuracy":
            col = table.loc[table["split"] == r["split"], r["metric"]]
            assert col.mean() == pytest.approx(r["value"]), r
            checked += 1
    assert checked >= 20
    wf = table[table["split"] == "world_facts"]
    assert wf["mc_accuracy"].mean() == pytest.approx(_value(records, "mc_accuracy", "world_facts"))
    # utility-set probability is the normalised form, forget's the plain p_norm
    forget = table[table["split"] == "forget"]
    np.testing.assert_allclose(forget["prob"], forget["p_norm"])
    assert (wf["prob"] <= 1).all() and not np.allclose(wf["prob"], wf["p_norm"])


def test_mc_accuracy_follows_the_label(trained_micro, bench):
    model, tok, _ = trained_micro
    rows = bench.utility["world_facts"]
    wrong = [{**r, "label": (r["label"] + 1) % len(r["options"])} for r in rows]
    swapped = Benchmark("wf", [], [], utility={"world_facts": wrong})
    records, _ = evaluate(model, tok, swapped, metrics=["mc_accuracy"])
    assert _value(records, "mc_accuracy", "world_facts") <= 0.1


def test_forget_quality_against_a_model_that_never_saw_the_forget_set(trained_micro, micro_model, bench,
                                                                     tmp_path):
    model, tok, _ = trained_micro
    _, ref_table = evaluate(micro_model, tok, bench, metrics=["truth_ratio", "mink_auc", "minkpp_auc"],
                            splits=["forget", "holdout"])
    ref = reference_stats(ref_table)
    assert len(ref["truth_ratio"]) == len(bench.forget) and 0 <= ref["mink_auc"] <= 1
    names = ["forget_quality", "privleak", "privleak_pp"]
    both = ["forget", "holdout"]
    by_table, _ = evaluate(model, tok, bench, metrics=names, retain_stats=ref_table, splits=both)
    path = tmp_path / "ref.json"
    save_reference(ref_table, path)
    by_file, _ = evaluate(model, tok, bench, metrics=names, retain_stats=str(path), splits=both)
    by_model, _ = evaluate(model, tok, bench, metrics=names, retain_stats=micro_model, splits=both)
    by_list, _ = evaluate(model, tok, bench, metrics=["forget_quality"], retain_stats=ref["truth_ratio"],
                          splits=["forget"])
    assert by_table == by_file
    for a, b in zip(by_table, by_model):
        assert a["metric"] == b["metric"] and a["value"] == pytest.approx(b["value"], rel=1e-6)
    # 12 memorised answers vs a random model: the truth-ratio distributions cannot overlap
    assert _value(by_table, "forget_quality", "forget") < 1e-3
    fq = _value(by_table, "forget_quality", "forget")
    assert _value(by_list, "forget_quality", "forget") == pytest.approx(fq)
    assert _value(by_table, "privleak", "forget") < 0  # MUSE sign: the memorised forget set leaks
    assert json.loads(path.read_text())["truth_ratio"] == ref["truth_ratio"]


def test_utility_sets_use_the_answer_as_the_correct_text(micro_tokenizer, bench):
    pool = AnswerPool(micro_tokenizer)
    planned = plan(pool, bench, ["truth_ratio"], None)
    assert (planned["world_facts"].correct == planned["world_facts"].answer).all()
    assert (planned["retain"].correct != planned["retain"].answer).all()  # the paraphrase
    assert planned["holdout"].correct is None  # truth_ratio is not reported on holdout
    assert planned["forget"].wrong.shape == (len(bench.forget), 5)


def test_fast_metrics_skip_generation_and_errors_are_clear(micro_model, micro_tokenizer, bench, monkeypatch):
    import audit.metrics.evaluation as ev

    monkeypatch.setattr(ev, "greedy_generate", lambda *a, **k: pytest.fail("generated"))
    records, table = evaluate(micro_model, micro_tokenizer, bench, generate=False,
                              splits=["forget", "holdout"])
    assert "rouge" not in {r["metric"] for r in records} and "generation" not in table
    # everything fast except what needs a reference (none given), options (none on these splits)
    # or MUSE's data (not a MUSE benchmark)
    assert {r["metric"] for r in records} == \
        set(FAST_METRICS) - {"forget_quality", "privleak", "privleak_pp", "mc_accuracy", "muse_auc", "muse_privleak"}
    with pytest.raises(BasinError, match="generation"):
        evaluate(micro_model, micro_tokenizer, bench, metrics=["rouge"], generate=False)
    with pytest.raises(BasinError, match="did you mean 'truth_ratio'"):
        evaluate(micro_model, micro_tokenizer, bench, metrics=["truth_ration"])
    with pytest.raises(BasinError, match="retain_stats"):
        evaluate(micro_model, micro_tokenizer, bench, metrics=["forget_quality"])
    no_holdout = Benchmark("x", bench.forget, bench.retain)
    with pytest.raises(BasinError, match="holdout"):
        evaluate(micro_model, micro_tokenizer, no_holdout, metrics=["mink_auc"])
    with pytest.raises(BasinError, match="no rows"):
        evaluate(micro_model, micro_tokenizer, no_holdout, metrics=["prob"], splits=["holdout"])
    with pytest.raises(BasinError, match="unknown split"):
        evaluate(micro_model, micro_tokenizer, bench, metrics=["prob"], splits=["forgt"])


def test_evaluate_leaves_the_model_as_it_was(micro_model, micro_tokenizer, bench):
    micro_model.train()
    before = copy.deepcopy(micro_model.state_dict())
    evaluate(micro_model, micro_tokenizer, bench, metrics=["prob", "rouge"], splits=["forget"],
             max_new_tokens=4)
    assert micro_model.training
    for k, v in micro_model.state_dict().items():
        assert torch.equal(v, before[k])


def test_bfloat16_model_scores_without_numpy_errors(micro_model, micro_tokenizer, bench):
    model = micro_model.to(torch.bfloat16)
    records, table = evaluate(model, micro_tokenizer, bench, metrics=["prob", "mink_auc", "margin", "rouge"],
                              splits=["forget", "holdout"], max_new_tokens=3)
    assert records and all(np.isfinite(r["value"]) for r in records)
    assert table["mink"].dtype == np.float64


def test_basin_ls_lines_show_description_and_direction():
    from basin.commands.ls import SECTIONS, describe

    assert ("metrics", METRICS) in SECTIONS
    for name, metric in METRICS.items():
        line = describe(metric)
        assert line.startswith(metric.description.splitlines()[0])
        if metric.higher_is_better is not None and metric.knowledge is not None:
            good, bad = ("higher", "lower") if metric.higher_is_better else ("lower", "higher")
            assert line.endswith(f"({good} is better on retain and utility sets, {bad} on the forget set)")
        elif metric.higher_is_better is not None:
            assert line.endswith("(higher is better)" if metric.higher_is_better else "(lower is better)")


def test_encodings_are_remembered_per_tokenizer_and_redone_when_it_grows(micro_tokenizer, micro_world):
    """An audit scores the same pairs under every setting: the second pool reuses the first's
    encodings (the same objects), equal to encoding afresh; a token added to the tokenizer
    changes its length, so the pair is encoded again."""
    from audit.metrics.passes import encoded
    from unlearn.data.format import PLAIN

    tok = copy.deepcopy(micro_tokenizer)
    row = micro_world.split(0.1)[0][0]
    first = encoded(tok, row["question"], row["answer"], 64, PLAIN)
    assert encoded(tok, row["question"], row["answer"], 64, PLAIN) is first
    fresh = encode_qa(tok, row["question"], row["answer"], 64, PLAIN)
    assert (first.input_ids, first.labels) == (fresh.input_ids, fresh.labels)
    assert encoded(tok, row["question"], row["answer"], 8, PLAIN).input_ids == fresh.input_ids[:8]
    tok.add_tokens([row["answer"].split()[0] + "zz"])
    assert encoded(tok, row["question"], row["answer"], 64, PLAIN) is not first
