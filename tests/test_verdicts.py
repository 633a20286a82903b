"""Verdicts that cannot mislead: one test per defect of the verdict layer, on hand-set records.

Every number below is set by hand (``analysis.synthetic.comparison_records``), so the expected
verdicts, intervals and p-values are derived here from the definitions, not read off the code.
The default world: original forget 0.95 (0.95 under every attack), gold (retain-only) 0.05
everywhere, retain 0.95 for every model, so the clean original-gold gap is 0.9.
"""

from __future__ import annotations

import dataclasses
import json
import math
from itertools import combinations

import numpy as np
import pytest
from scipy import stats

from analysis.card import worst_cases
from analysis.load import load_records
from analysis.synthetic import comparison_records
from analysis.verdicts import Claim, evaluate, evaluate_claims, verdict_table

Q = ("quantize", "rtn-4bit")
SNAP = ("quantize", "rtn-4bit-snapback")

# hybrid recovers clearly less than adam under 4-bit: recovery_gold = (u - 0.05) / 0.9
GOOD = {"adam": {"clean": [0.05, 0.06, 0.04], "attacked": {Q: [0.50, 0.55, 0.45]}},
        "hybrid": {"clean": [0.05, 0.05, 0.06], "attacked": {Q: [0.20, 0.22, 0.18]}}}

QUANT_CLAIM = Claim("q", "hybrid recovers less than adam under 4-bit", a="hybrid", b="adam",
                    attack="quantize", metric="prob", split="forget", quantity="recovery")


def frame(arms=GOOD, **kw):
    return load_records(comparison_records(arms, **kw))


def with_(arms, name, **fields):
    out = {k: dict(v) for k, v in arms.items()}
    out[name] = {**out[name], **fields}
    return out


# ---------------------------------------------------------------------------------------------
# defect 1: controls are never attack settings; only like settings are pooled


def test_snapback_control_is_never_pooled_into_a_quantization_verdict():
    # the control makes the hybrid look like it recovered everything; averaged in, it flips the verdict
    arms = {"adam": {**GOOD["adam"], "attacked": {**GOOD["adam"]["attacked"], SNAP: [0.05, 0.06, 0.04]}},
            "hybrid": {**GOOD["hybrid"], "attacked": {**GOOD["hybrid"]["attacked"], SNAP: 0.9}}}
    v = evaluate(frame(arms), QUANT_CLAIM)
    assert v.verdict == "reproduced"
    assert v.settings == ("rtn-4bit",)
    assert verdict_table([v])["settings"].iloc[0] == "rtn-4bit"


def test_noise_scales_are_not_pooled():
    n1, n3 = ("noise", "scale=0.01"), ("noise", "scale=0.03")
    arms = {"adam": {"clean": [0.05, 0.06, 0.04], "attacked": {n1: [0.30, 0.35, 0.25], n3: [0.60, 0.62, 0.58]}},
            "hybrid": {"clean": [0.05, 0.05, 0.06], "attacked": {n1: [0.10, 0.12, 0.08], n3: [0.40, 0.43, 0.37]}}}
    claim = Claim("n", "hybrid recovers less under noise", a="hybrid", b="adam", attack="noise",
                  metric="prob", split="forget", quantity="recovery_gold")
    v = evaluate(frame(arms), claim)
    assert v.verdict == "inconclusive"
    assert "scale=0.01" in v.reason and "scale=0.03" in v.reason and "not pooled" in v.reason
    one = evaluate(frame(arms), Claim("n3", "x", a="hybrid", b="adam", attack="noise", metric="prob",
                                      split="forget", quantity="recovery_gold", x=0.03))
    assert one.verdict == "reproduced" and one.settings == ("scale=0.03",)
    assert one.mean_a == pytest.approx((0.40 - 0.05) / 0.9)


def test_card_worst_case_is_never_a_control():
    arms = {"hybrid": {**GOOD["hybrid"], "attacked": {**GOOD["hybrid"]["attacked"], SNAP: 0.9}}}
    worst = worst_cases(frame(arms), "prob", ["forget"])
    row = worst[worst["attack"] == "quantize"].iloc[0]
    assert row["setting"] == "rtn-4bit"
    assert row["recovery"] == pytest.approx(np.mean([(u - c) / (0.95 - c) for u, c in
                                                     zip([0.20, 0.22, 0.18], [0.05, 0.05, 0.06])]))


# ---------------------------------------------------------------------------------------------
# defect 2: degenerate comparisons are inconclusive, naming the failed condition


@pytest.mark.parametrize("case,arms,refs,needle", [
    # the hybrid never forgot (0.70 against adam's 0.05): nothing to compare
    ("forget band", with_(GOOD, "hybrid", clean=[0.70, 0.72, 0.69], attacked={Q: [0.75, 0.78, 0.74]}), {},
     "forgotten to within"),
    # both forgot alike, but far from the gold model (0.35 against 0.05 = a third of the gap)
    ("gold distance", {"adam": {"clean": [0.35, 0.36, 0.34], "attacked": {Q: [0.70, 0.72, 0.68]}},
                       "hybrid": {"clean": [0.35, 0.35, 0.36], "attacked": {Q: [0.45, 0.47, 0.43]}}}, {},
     "from the gold"),
    # 4-bit kills the original's facts by itself: the attacked original is at 0.10, the floor at 0.05
    ("empty ceiling", with_(with_(GOOD, "adam", attacked={Q: [0.09, 0.095, 0.085]}), "hybrid",
                            attacked={Q: [0.06, 0.065, 0.066]}),
     {"original": {"attacked": {Q: 0.10}}}, "ceiling"),
    # the hybrid lost a third of its retain knowledge
    ("utility", with_(GOOD, "hybrid", retain=[0.60, 0.62, 0.64]), {}, "utility"),
])
def test_degenerate_comparison_is_inconclusive_and_names_the_condition(case, arms, refs, needle):
    v = evaluate(frame(arms, **refs), QUANT_CLAIM)
    assert v.verdict == "inconclusive", case
    assert needle in v.reason, v.reason
    assert evaluate(frame(GOOD), QUANT_CLAIM).verdict == "reproduced"  # the sound comparison passes


def test_condition_bands_are_explicit_parameters():
    from analysis.verdicts import Bands

    loose = Bands(utility_margin=0.5)
    arms = with_(GOOD, "hybrid", retain=[0.60, 0.62, 0.64])
    assert evaluate(frame(arms), QUANT_CLAIM, bands=loose).verdict == "reproduced"
    row = verdict_table([evaluate(frame(arms), QUANT_CLAIM)]).iloc[0]
    assert "utility" in row["conditions"] and "0.05" in row["conditions"]


def test_gold_distance_is_measured_from_the_cells_calibration_target():
    """Arms calibrated halfway (0.50 = 0.95 - 0.5 x 0.9) are judged against halfway: far from the
    gold model (0.5 of the gap) but on target; and arms at the gold level are too far from halfway."""
    from analysis.verdicts import Bands

    half = {"adam": {"clean": [0.50, 0.51, 0.49], "attacked": {Q: [0.80, 0.82, 0.78]}},
            "hybrid": {"clean": [0.50, 0.50, 0.51], "attacked": {Q: [0.60, 0.62, 0.58]}}}
    assert evaluate(frame(half), QUANT_CLAIM).verdict == "inconclusive"       # default: the gold model
    v = evaluate(frame(half), QUANT_CLAIM, bands=Bands(target=0.5))
    assert v.verdict == "reproduced", v.reason
    assert "halfway" in v.conditions and "0.500" in v.conditions              # the level it was judged from
    g = evaluate(frame(GOOD), QUANT_CLAIM, bands=Bands(target=0.5))
    assert g.verdict == "inconclusive" and "from halfway" in g.reason          # 0.05 is 0.5 of the gap past it
    with pytest.raises(ValueError, match="fraction of the original-gold gap"):
        Bands(target=1.5)


def test_a_forget_level_set_by_stopping_each_run_is_not_a_finding():
    """Where every run stopped at the target, "forgets as much" is true by construction: the
    equivalence claim on the clean forget level is inconclusive, attacks are judged as before."""
    from analysis.verdicts import PAPER_CLAIMS, Bands

    keeps = next(c for c in PAPER_CLAIMS if c.name == "hybrid-keeps-adam-forgetting")
    assert evaluate(frame(GOOD), keeps).verdict == "reproduced"              # the same records, not stopped
    v = evaluate(frame(GOOD), keeps, bands=Bands(stopped=True))
    assert v.verdict == "inconclusive" and "matched by design" in v.reason
    assert evaluate(frame(GOOD), QUANT_CLAIM, bands=Bands(stopped=True)).verdict == "reproduced"


def test_unseen_facts_need_references_attacked_with_every_arms_attack_seed():
    """forget_unseen is a different set of facts for each attack seed (the relearning subset).
    References relearned only under attack seed 0 are measured on other facts than seeds 1-2's
    runs: the comparison is inconclusive and names it; with every seed's references it passes."""
    R = ("relearn", "steps=5")
    arms = {"adam": {"clean": [0.05, 0.06, 0.04], "attacked": {R: [0.50, 0.55, 0.45]}},
            "hybrid": {"clean": [0.05, 0.05, 0.06], "attacked": {R: [0.20, 0.22, 0.18]}}}
    claim = Claim("r", "hybrid recovers less than adam under relearning", a="hybrid", b="adam", attack="relearn",
                  metric="prob", split="forget_unseen", quantity="recovery_gold")
    records = [{**r, "attack_seed": r["seed"]} for r in comparison_records(arms)]
    assert evaluate(load_records(records), claim).verdict == "reproduced"
    first_only = [r for r in records if not (r["role"] != "unlearned" and r["split"] == "forget_unseen"
                                             and r["attack_seed"] != 0)]
    v = evaluate(load_records(first_only), claim)
    assert v.verdict == "inconclusive" and "unseen facts" in v.reason and "lacks [1, 2]" in v.reason, v.reason
    # on the whole forget set the facts do not depend on the attack seed: no such condition
    whole = evaluate(load_records(first_only), dataclasses.replace(claim, split="forget"))
    assert whole.verdict == "reproduced" and "unseen facts" not in whole.conditions


# ---------------------------------------------------------------------------------------------
# defect 3: runs at different settings are never pooled


def test_runs_at_different_learning_rates_are_never_pooled():
    arms = {"adam": {**GOOD["adam"], "lr": 2e-5},
            "hybrid@5e-5": {**GOOD["hybrid"], "lr": 5e-5},
            "hybrid@7e-5": {**GOOD["hybrid"], "lr": 7e-5, "attacked": {Q: [0.24, 0.26, 0.22]}}}
    df = frame(arms)
    v = evaluate(df, QUANT_CLAIM)
    assert v.verdict == "inconclusive" and "lr=5e-05" in v.reason and "lr=7e-05" in v.reason
    pinned = Claim("q7", "x", a="hybrid", b="adam", attack="quantize", metric="prob", split="forget",
                   quantity="recovery_gold", a_lr=7e-5)
    v7 = evaluate(df, pinned)
    assert v7.verdict == "reproduced" and "lr=7e-05" in v7.recipe_a
    assert v7.mean_a == pytest.approx((np.mean([0.24, 0.26, 0.22]) - 0.05) / 0.9)


def _run_folder(root, name, seed, optimizer_args, lr=1e-3):
    folder = root / name
    (folder / "model").mkdir(parents=True)
    config = {"model": "world:tiny", "benchmark": "world:forget10", "objective": "npo",
              "objective_args": {"beta": 0.1}, "optimizer": "hybrid", "optimizer_args": optimizer_args,
              "lr": lr, "steps": 60, "batch_size": 8, "seed": seed, "device": "cpu", "eval_every": 60}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "records.jsonl").write_text("")
    return folder


def test_recipe_includes_optimizer_args_and_reaches_audit_folders(tmp_path):
    runs = [_run_folder(tmp_path / "runs", f"h{i}-s0", 0, {"n_fo": 10, "n_zo": n}) for i, n in enumerate((10, 5))]
    audits = []
    for run in runs:
        audit = tmp_path / "audits" / run.name
        audit.mkdir(parents=True)
        (audit / "config.json").write_text(json.dumps({"kind": "audit", "model": str(run)}))
        rec = {"model": run.name, "attack": "none", "setting": "", "metric": "prob", "value": 0.1,
               "split": "forget", "seed": 0, "optimizer": "hybrid", "objective": "npo", "role": "unlearned"}
        (audit / "records.jsonl").write_text(json.dumps(rec) + "\n")
        audits.append(audit)
    df = load_records(audits)
    assert df["lr"].tolist() == [1e-3, 1e-3]
    recipes = df["recipe"].tolist()
    assert recipes[0] != recipes[1] and all(r.startswith("lr=0.001 steps=60 cfg=") for r in recipes)
    # the seed, the device and bookkeeping fields do not change the recipe
    other = _run_folder(tmp_path / "more", "h0-s1", 1, {"n_fo": 10, "n_zo": 10})
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "device": "cuda", "eval_every": 5}))
    (other / "records.jsonl").write_text(json.dumps({"model": "m", "attack": "none", "setting": "", "metric": "prob",
                                                     "value": 0.1, "split": "forget", "seed": 1}) + "\n")
    assert load_records(other)["recipe"].iloc[0] == recipes[0]


# ---------------------------------------------------------------------------------------------
# defect 4: a zero-width interval gives no verdict


def _values_frame(a_values, b_values, a_seeds=None, b_seeds=None, metric="prob", split="forget"):
    rows = []
    for opt, values, seeds in (("hybrid", a_values, a_seeds), ("adam", b_values, b_seeds)):
        for seed, v in zip(seeds or range(len(values)), values):
            rows.append({"model": f"{opt}{seed}", "attack": "none", "setting": "", "metric": metric, "value": v,
                         "split": split, "seed": seed, "optimizer": opt, "role": "unlearned"})
    return rows


CLEAN_CLAIM = Claim("c", "hybrid has a lower forget prob than adam", a="hybrid", b="adam", attack="none",
                    metric="prob", split="forget")


def test_zero_width_interval_is_inconclusive():
    v = evaluate(load_records(_values_frame([0.1, 0.1, 0.1], [0.5, 0.5, 0.5])), CLEAN_CLAIM)
    assert v.verdict == "inconclusive" and "zero width" in v.reason


# ---------------------------------------------------------------------------------------------
# defect 5: statistics


def test_paired_difference_where_seeds_pair_the_runs():
    a, b = [0.27, 0.46, 0.67], [0.30, 0.50, 0.70]  # a shared seed effect; hybrid lower on every seed
    v = evaluate(load_records(_values_frame(a, b)), CLEAN_CLAIM)
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert v.test == "paired t" and v.verdict == "reproduced"
    assert (v.ci_low, v.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert v.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    # the exact sign-flip test: all 3 differences negative -> one-sided p = 1/8, its floor
    assert v.perm_p == pytest.approx(1 / 8) and v.perm_p_min == pytest.approx(1 / 8)
    # unpaired (different seeds): Welch, and an exact two-sample permutation test whose floor is 1/20
    u = evaluate(load_records(_values_frame(a, b, b_seeds=[3, 4, 5])), CLEAN_CLAIM)
    assert u.test == "Welch t" and u.verdict == "inconclusive"
    assert u.p_value == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    greater = sum(np.mean(s) - np.mean([x for x in a + b if x not in s]) <= np.mean(a) - np.mean(b) + 1e-12
                  for s in map(list, combinations(a + b, 3)))
    assert u.perm_p == pytest.approx(greater / 20) and u.perm_p_min == pytest.approx(0.05)
    row = verdict_table([u]).iloc[0]
    assert row["n_a"] == 3 and row["n_b"] == 3 and row["test"] == "Welch t"
    assert "smallest attainable" in row["permutation"] and "0.05" in row["permutation"]


def test_permutation_beyond_enumeration_draws_random_patterns(monkeypatch):
    """Past EXACT_LIMIT the sign-flip and two-sample tests draw random patterns (seeded) and agree
    with scipy's exact test within Monte Carlo error; (hits + 1) / (draws + 1) never reaches 0."""
    from analysis import verdicts
    rng = np.random.default_rng(3)
    d = rng.normal(-0.3, 1.0, size=12)
    x, y = rng.normal(0.4, 1.0, size=7), rng.normal(0.0, 1.0, size=7)
    ref_paired = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="less",
                                        n_resamples=np.inf).pvalue
    ref_two = stats.permutation_test((x, y), lambda u, v: np.mean(u) - np.mean(v), permutation_type="independent",
                                     alternative="greater", n_resamples=np.inf).pvalue
    exact = verdicts.permutation(d, None, "less", True)
    assert exact[0] == pytest.approx(ref_paired, rel=1e-9) and exact[1] == 2.0 ** -12 and "exact" in exact[2]
    assert verdicts.permutation(x, y, "greater", False)[0] == pytest.approx(ref_two, rel=1e-9)
    monkeypatch.setattr(verdicts, "EXACT_LIMIT", 16)   # force the random branch on the same data
    drawn = verdicts.permutation(d, None, "less", True, draws=40_000, seed=1)
    assert abs(drawn[0] - ref_paired) < 4 * math.sqrt(ref_paired * (1 - ref_paired) / 40_000) + 1 / 40_001
    assert drawn[1] == pytest.approx(1 / 40_001) and "40000 random patterns" in drawn[2]
    assert drawn == verdicts.permutation(d, None, "less", True, draws=40_000, seed=1)   # same seed, same bits
    assert drawn[0] != verdicts.permutation(d, None, "less", True, draws=40_000, seed=2)[0]
    two = verdicts.permutation(x, y, "greater", False, draws=40_000, seed=1)
    assert abs(two[0] - ref_two) < 4 * math.sqrt(ref_two * (1 - ref_two) / 40_000) + 1 / 40_001
    # every difference on the claimed side: no random pattern reaches it, so p is the floor, not 0
    assert verdicts.permutation(np.full(30, -1.0), None, "less", True, draws=1000)[0] == pytest.approx(1 / 1001)


def test_permutation_floor_is_met_when_groups_separate():
    v = evaluate(load_records(_values_frame([0.1, 0.2, 0.3], [0.5, 0.6, 0.7], b_seeds=[3, 4, 5])), CLEAN_CLAIM)
    assert v.perm_p == pytest.approx(0.05) and v.verdict == "reproduced"


def test_holm_correction_across_the_claims_of_one_report():
    rows = []
    diffs = {"m1": [-0.30, -0.31, -0.29], "m2": [-0.05, -0.03, -0.07], "m3": [-0.01, 0.02, -0.02]}
    base = [0.5, 0.6, 0.7]
    for metric, d in diffs.items():
        rows += _values_frame([b + x for b, x in zip(base, d)], base, metric=metric)
    df = load_records(rows)
    claims = [Claim(m, m, a="hybrid", b="adam", attack="none", metric=m, split="forget") for m in diffs]
    out = evaluate_claims(df, claims)
    raw = [stats.ttest_rel([b + x for b, x in zip(base, d)], base).pvalue for d in diffs.values()]
    assert [v.p_value for v in out] == pytest.approx(raw, rel=1e-9)
    order = np.argsort(raw)
    holm, running = [0.0] * 3, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * raw[i]))
        holm[i] = running
    assert [v.p_holm for v in out] == pytest.approx(holm, rel=1e-9)
    assert raw[1] < 0.05 < holm[1]  # m2 is significant alone, not after the correction
    assert out[0].verdict == "reproduced" and out[1].verdict == "inconclusive" and "Holm" in out[1].reason
    assert evaluate(df, claims[1]).verdict == "reproduced"  # alone, one claim: no correction


# ---------------------------------------------------------------------------------------------
# defect 6: recovery against the gold model, and the latent margin beside it


def test_verdict_reports_recovery_gold_and_margin_beside_recovery():
    arms = {"adam": {**GOOD["adam"], "margin": [0.4, 0.5, 0.6], "margin_attacked": {Q: [1.0, 1.1, 1.2]}},
            "hybrid": {**GOOD["hybrid"], "margin": [0.3, 0.3, 0.3], "margin_attacked": {Q: [0.5, 0.6, 0.7]}}}
    claim = Claim("g", "x", a="hybrid", b="adam", attack="quantize", metric="prob", split="forget",
                  quantity="recovery_gold")
    v = evaluate(frame(arms), claim)
    row = verdict_table([v]).iloc[0]
    assert row["quantity"] == "recovery_gold" and "recovery_gold" in v.reason
    assert row["recovery_gold_a"] == pytest.approx((0.20 - 0.05) / 0.9)
    assert row["recovery_gold_b"] == pytest.approx((0.50 - 0.05) / 0.9)
    assert row["recovery_b"] == pytest.approx(np.mean([(u - c) / (0.95 - c) for u, c in
                                                       zip([0.50, 0.55, 0.45], [0.05, 0.06, 0.04])]))
    assert row["margin_a"] == pytest.approx(0.6) and row["margin_b"] == pytest.approx(1.1)
    assert row["margin_clean_a"] == pytest.approx(0.3) and row["margin_clean_b"] == pytest.approx(0.5)


def test_recovery_gold_against_each_seeds_own_gold_model():
    """A claim with references="paired" places each seed between its own attacked original and
    gold model; the default pools them over their seeds. Here seed 2's gold model keeps 0.35
    under 4-bit, the others 0.05."""
    df = frame(gold={"attacked": {Q: [0.05, 0.05, 0.35]}})
    u = [0.50, 0.55, 0.45]                                   # adam under 4-bit, seeds 0-2
    claim = Claim("u", "x", a="adam", b=None, attack="quantize", metric="prob", split="forget",
                  quantity="recovery_gold", direction="less")
    pooled, paired = (evaluate(df, dataclasses.replace(claim, references=r)) for r in ("pooled", "paired"))
    assert pooled.mean_a == pytest.approx(np.mean([(x - 0.15) / (0.95 - 0.15) for x in u]))
    assert paired.mean_a == pytest.approx(np.mean([(x - g) / (0.95 - g) for x, g in zip(u, (0.05, 0.05, 0.35))]))
    with pytest.raises(ValueError, match="references must be 'pooled' or 'paired'"):
        dataclasses.replace(claim, references="own")


# ---------------------------------------------------------------------------------------------
# defect 7: one claim table, aligned with the paper, used by the demo


def test_one_definition_per_claim_name_and_the_demo_uses_it():
    from analysis import verdicts
    from basin.demo import DemoConfig

    names = [c.name for c in verdicts.PAPER_CLAIMS]
    assert len(names) == len(set(names))
    by_name = {c.name: c for c in verdicts.PAPER_CLAIMS}
    for claim in DemoConfig().claims() + DemoConfig.pretrained().claims():
        assert by_name[claim.name] is claim
    assert by_name["zo-vs-adam-relearn"].a == "adazo"
    assert {"adam-undone-by-quantize", "adam-undone-by-relearn", "zo-vs-adam-quantize", "signadam-vs-adam-quantize",
            "hybrid-vs-adam-relearn", "sophia-vs-adam-relearn", "zo-basin-not-connected", "signadam-basin-connected",
            "hybrid-keeps-adam-forgetting", "hybrid-keeps-adam-retain", "adam-higher-lr-quantize"} <= set(names)


def test_absolute_claim_adam_undone_by_quantization():
    from analysis.verdicts import PAPER_CLAIMS

    claim = next(c for c in PAPER_CLAIMS if c.name == "adam-undone-by-quantize")
    arms = {"adam": {"clean": [0.05, 0.06, 0.04], "attacked": {("quantize", "rtn-4bit-g128"): [0.50, 0.55, 0.45],
                                                             ("quantize", "nf4"): [0.40, 0.45, 0.35]}}}
    v = evaluate(frame(arms), claim)
    assert v.verdict == "reproduced" and v.settings == ("nf4", "rtn-4bit-g128") and v.test == "one-sample t"
    # brought back: the rise u - c over the clean gap 0.9 (the gold model gains nothing under 4-bit)
    per_seed = [((r - c) / 0.9 + (n - c) / 0.9) / 2
                for r, n, c in zip([0.50, 0.55, 0.45], [0.40, 0.45, 0.35], [0.05, 0.06, 0.04])]
    assert claim.quantity == "brought_back" and v.mean_a == pytest.approx(np.mean(per_seed))
    assert v.p_value == pytest.approx(stats.ttest_1samp(per_seed, 0.0).pvalue, rel=1e-9)


def test_a_residual_left_by_unlearning_is_not_an_attack_undoing_it():
    """Unlearning stopped 0.1 of the gap above the gold model and 4-bit moves nothing: the quantized
    model still knows more than the quantized gold model (recovery_gold 0.1, CI above 0), but the
    attack brought nothing back. The "undone" claim tests brought_back and finds no change; the
    recovery_gold form of the claim is refused with the fix. Nor do the references' own changes
    under the attack count: a gold model and an original that 4-bit damages (which moves the
    unlearned model's position between them) or a gold model that relearning teaches."""
    from analysis.verdicts import PAPER_CLAIMS

    claim = next(c for c in PAPER_CLAIMS if c.name == "adam-undone-by-quantize")
    clean = [0.14, 0.15, 0.13]                     # (0.14 - 0.05) / 0.9 = 0.1 of the gap: within 0.15
    noise = [0.001, -0.002, 0.0005]
    arms = {"adam": {"clean": clean, "attacked": {("quantize", "nf4"): list(np.add(clean, noise))}}}
    v = evaluate(frame(arms), claim)
    assert v.mean_a == pytest.approx(np.mean(noise) / 0.9)
    assert v.beside["recovery_gold_a"] == pytest.approx((np.mean(clean) + np.mean(noise) - 0.05) / 0.9)
    assert v.verdict == "inconclusive" and v.ci_low < 0 < v.ci_high and "contains 0" in v.reason
    with pytest.raises(ValueError, match="brought_back"):
        dataclasses.replace(claim, quantity="recovery_gold")
    # the attack's own change, when there is one, is what the claim finds
    moved = {"adam": {"clean": clean, "attacked": {("quantize", "nf4"): [0.44, 0.50, 0.40]}}}
    assert evaluate(frame(moved), claim).verdict == "reproduced"
    # 4-bit damages both references: the unlearned model now sits (0.141 - 0.02) / 0.78 of the way
    # from the quantized gold model to the quantized original instead of 0.1, yet it gained nothing
    hurt = evaluate(frame(arms, original={"attacked": {("quantize", "nf4"): 0.80}},
                          gold={"attacked": {("quantize", "nf4"): 0.02}}), claim)
    assert hurt.beside["recovery_gold_a"] - 0.1 > 0.05
    assert hurt.mean_a == pytest.approx(np.mean(noise) / 0.9) and hurt.verdict == "inconclusive"
    # relearning teaches the gold model 0.1 of the unseen facts; adam gains the same and no more
    relearn = next(c for c in PAPER_CLAIMS if c.name == "adam-undone-by-relearn")
    r = ("relearn", "steps=30")
    taught = {"adam": {"clean": clean, "attacked": {r: list(np.add(clean, 0.1) + noise)}}}
    same = evaluate(frame(taught, gold={"attacked": {r: 0.15}}), relearn)
    assert same.mean_a == pytest.approx(np.mean(noise) / 0.9) and same.verdict == "inconclusive"


def test_equivalence_claim_uses_tost():
    from analysis.verdicts import PAPER_CLAIMS

    claim = next(c for c in PAPER_CLAIMS if c.name == "hybrid-keeps-adam-retain")
    a, b = [0.94, 0.95, 0.955], [0.95, 0.95, 0.96]
    v = evaluate(load_records(_values_frame(a, b, metric="prob", split="retain")), claim)
    d = np.subtract(a, b)
    band = claim.band * np.mean(b)
    se = d.std(ddof=1) / math.sqrt(3)
    p_tost = max(stats.t.sf((d.mean() + band) / se, 2), stats.t.cdf((d.mean() - band) / se, 2))
    assert v.test == "paired TOST" and v.p_value == pytest.approx(p_tost, rel=1e-9)
    assert v.verdict == "reproduced"
    far = evaluate(load_records(_values_frame([0.70, 0.72, 0.74], b, metric="prob", split="retain")), claim)
    assert far.verdict == "not reproduced"


def test_higher_learning_rate_claim_compares_two_adam_recipes():
    from analysis.verdicts import PAPER_CLAIMS

    claim = next(c for c in PAPER_CLAIMS if c.name == "adam-higher-lr-quantize")
    q = ("quantize", "rtn-4bit-g128")
    arms = {"adam@lo": {"clean": [0.05, 0.06, 0.04], "lr": 1e-5, "attacked": {q: [0.50, 0.55, 0.45]}},
            "adam@hi": {"clean": [0.05, 0.05, 0.06], "lr": 1e-4, "attacked": {q: [0.10, 0.12, 0.08]}}}
    v = evaluate(frame(arms), claim)
    assert "lr=0.0001" in v.recipe_a and "lr=1e-05" in v.recipe_b and v.verdict == "reproduced"
    one = evaluate(frame({"adam": arms["adam@lo"]}), claim)
    assert one.verdict == "inconclusive" and "one recipe" in one.reason


def test_basin_claims_read_the_barrier_between_two_unlearned_models():
    from analysis.verdicts import PAPER_CLAIMS

    claim = next(c for c in PAPER_CLAIMS if c.name == "zo-basin-not-connected")
    rows = []
    for seed, barrier in enumerate((0.5, 0.6, 0.7)):  # the audit's retain NLL barrier per path
        path = {"attack": "interpolate", "setting": "path", "metric": "barrier", "split": "retain", "seed": seed,
                "role": "unlearned", "optimizer": "adazo"}
        rows.append({**path, "model": f"adam-s{seed}->adazo-s{seed}", "value": barrier})
        rows.append({**path, "model": "original->adazo", "value": 0.01})  # not the path the claim reads
    ends = comparison_records({"adam": {"clean": [0.05, 0.06, 0.04]}, "adazo": {"clean": [0.05, 0.05, 0.06]}})
    v = evaluate(load_records(rows + ends), claim)
    assert v.values_a == pytest.approx([0.5, 0.6, 0.7]) and v.test == "one-sample t"
    assert v.p_value == pytest.approx(stats.ttest_1samp([0.5, 0.6, 0.7], 0.1).pvalue, rel=1e-9)
    assert v.verdict == "reproduced" and "ok: both arms forgotten to within" in v.conditions
    missing = evaluate(load_records([r for r in rows if r["model"].startswith("original")] + ends), claim)
    assert missing.verdict == "inconclusive" and "interpolation records between adam and adazo" in missing.reason


def test_a_barrier_to_a_model_that_did_not_forget_alike_says_nothing_about_basins():
    """A high barrier between Adam's selective model and a destroyed one (or one that never
    forgot) is the damage, not a second basin: the path's two ends must meet the conditions of any
    comparison (forgetting matched, near the target, retain utility within the margin)."""
    from analysis.verdicts import PAPER_CLAIMS

    claim = next(c for c in PAPER_CLAIMS if c.name == "zo-basin-not-connected")
    rows = [{"attack": "interpolate", "setting": "path", "metric": "barrier", "split": "retain", "seed": seed,
             "role": "unlearned", "optimizer": "adazo", "model": f"adam-s{seed}->adazo-s{seed}", "value": barrier}
            for seed, barrier in enumerate((2.1, 2.2, 2.3))]
    adam = {"clean": [0.05, 0.06, 0.04]}
    destroyed = evaluate(load_records(rows + comparison_records(
        {"adam": adam, "adazo": {"clean": [0.01, 0.01, 0.02], "retain": [0.02, 0.03, 0.01]}})), claim)
    assert destroyed.verdict == "inconclusive" and "retain utility" in destroyed.reason
    never = evaluate(load_records(rows + comparison_records({"adam": adam, "adazo": {"clean": [0.9, 0.92, 0.91]}})),
                     claim)
    assert never.verdict == "inconclusive" and "forgotten to within" in never.reason
    alone = evaluate(load_records(rows), claim)      # no clean records of the ends: nothing to judge them by
    assert alone.verdict == "inconclusive" and "no records of adazo" in alone.reason and "clean records" in alone.reason


def test_training_evaluations_do_not_add_a_recipe():
    # a run folder's training log carries the run's recipe; an audit whose run could not be traced
    # carries none: the two must not count as two settings of one optimizer
    rows = _values_frame([0.10, 0.11, 0.12], [0.50, 0.52, 0.49])
    rows += [{**r, "attack": "training", "setting": "step=60", "recipe": "lr=0.001 steps=60 cfg=0"} for r in rows]
    v = evaluate(load_records(rows), CLEAN_CLAIM)
    assert v.verdict == "reproduced" and v.recipe_a == ""


def test_a_ratio_undefined_on_every_seed_says_why_not_that_records_are_missing():
    # 4-bit leaves the original at 0.10, 0.05 above the arms' clean 0.05: every recovery ratio is
    # undefined; the references are all there, so "add references" would send the reader astray
    arms = with_(with_(GOOD, "adam", attacked={Q: [0.09, 0.095, 0.085]}), "hybrid", attacked={Q: [0.06, 0.065, 0.066]})
    v = evaluate(frame(arms, original={"attacked": {Q: 0.10}}), QUANT_CLAIM)
    assert v.verdict == "inconclusive"
    assert v.reason.startswith("recovery of 'prob' on 'forget' under quantize at rtn-4bit is undefined on every seed")
    assert "too little left to recover" in v.reason and "needs the" not in v.reason
    # without the original under the attack, the records are missing and the reason says what to add
    bare = frame(arms)
    bare = bare[~((bare["role"] == "original") & (bare["attack"] == "quantize"))]
    assert "needs the clean unlearned model, and the original" in evaluate(bare, QUANT_CLAIM).reason
