"""analysis: loading and validating records, confidence intervals, recovery, verdicts, cards.

Everything here runs on synthetic records; no model is built."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import tables, verdicts
from analysis.card import audit_card
from analysis.load import load_frame, load_records, parse_plane, parse_setting_x, save_frame
from analysis.names import optimizer_tier
from analysis.synthetic import synthetic_records, write_synthetic_runs
from analysis.verdicts import Claim, evaluate, welch


def rec(model="m", attack="none", setting="", metric="prob", value=0.5, split="forget", seed=0, **kw):
    return {"model": model, "attack": attack, "setting": setting, "metric": metric, "value": value,
            "split": split, "seed": seed, **kw}


# ---------------------------------------------------------------------------------------------
# load


def test_missing_field_is_rejected_with_the_record_and_field_named():
    good = rec()
    bad = {k: v for k, v in rec(model="broken").items() if k != "metric"}
    with pytest.raises(ValueError) as err:
        load_records([good, bad])
    text = str(err.value)
    assert "record 1" in text and "'metric'" in text and "broken" in text


@pytest.mark.parametrize("field,value,expected", [
    ("value", "0.5", "a number"), ("value", True, "a number"), ("seed", 1.5, "an integer"),
    ("model", "", "a non-empty string"), ("role", "teacher", "one of"), ("x", "ten", "a number"),
])
def test_bad_field_is_rejected(field, value, expected):
    with pytest.raises(ValueError, match=rf"field '{field}' must be {expected}"):
        load_records([rec(**{field: value})])


def test_bad_line_in_a_run_folder_names_file_and_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps(rec(seed=0)), json.dumps({"model": "m", "value": 1}), json.dumps(rec(seed=1))]
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"records.jsonl line 2: missing fields"):
        load_records(run)


def test_torn_last_line_is_skipped_and_null_value_is_nan(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").write_text(json.dumps(rec(value=None)) + "\n" + '{"model": "m", "att')
    df = load_records(run)
    assert len(df) == 1 and math.isnan(df["value"].iloc[0])


def test_config_fields_are_joined_and_folder_names_the_run(tmp_path):
    folders = write_synthetic_runs(tmp_path, synthetic_records(("adam", "hybrid"), (0, 1), basins=False))
    raw = (tmp_path / "synthetic-adam-s1" / "records.jsonl").read_text()
    assert '"optimizer"' not in raw  # the optimizer must come from config.json
    df = load_records(folders)
    adam = df[df["run"] == "synthetic-adam-s1"]
    assert set(adam["optimizer"]) == {"adam"} and set(adam["objective"]) == {"npo"}
    assert set(adam["lr"]) == {1e-5} and set(adam["seed"]) == {1}
    assert set(df.loc[df["role"] == "original", "label"]) == {"original"}
    assert set(df.loc[df["role"] == "retain", "label"]) == {"retain-only"}
    assert list(df.columns[:19]) == ["model", "attack", "setting", "metric", "value", "split", "seed", "role",
                                     "optimizer", "objective", "run", "step", "attack_seed", "x", "y", "lr",
                                     "recipe", "label", "source"]
    # one recipe over the seeds; the synthetic config holds no steps
    assert len(set(df.loc[df["optimizer"] == "adam", "recipe"])) == 1 and adam["recipe"].iloc[0].startswith("lr=1e-05 cfg=")


def test_settings_give_numeric_axes():
    assert parse_setting_x("steps=20") == 20
    assert parse_setting_x("alpha=0.3") == 0.3
    assert parse_setting_x("rtn-4bit-g128") == 4
    assert parse_setting_x("scale=1e-3") == 0.001
    assert parse_setting_x("nf4") == 4 and parse_setting_x("bf16") == 16
    assert math.isnan(parse_setting_x("gptq"))
    assert parse_plane("x=0.5,y=-0.25") == (0.5, -0.25)
    df = load_records([rec(attack="plane", setting="x=0.5,y=0.25", metric="loss")])
    assert (df["x"].iloc[0], df["y"].iloc[0]) == (0.5, 0.25)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_frames_round_trip(tmp_path, suffix):
    df = load_records(synthetic_records(("adam",), (0, 1), basins=False))
    back = load_frame(save_frame(df, tmp_path / f"records{suffix}"))
    assert len(back) == len(df)
    for col in ("model", "attack", "setting", "optimizer", "role", "label"):
        assert list(back[col]) == list(df[col]), col
    np.testing.assert_allclose(back["value"], df["value"])
    np.testing.assert_allclose(back["x"], df["x"], equal_nan=True)
    assert back["seed"].dtype == np.int64


def test_a_saved_frame_keeps_the_tier_of_each_arm(tmp_path):
    # an arm whose label names no optimizer sorts in its recorded tier, as the records it came from did
    df = load_records(synthetic_records(("adam",), (0,), basins=False))
    df = df.assign(optimizer=df["optimizer"].replace("adam", "adam-arm-x7"), tier="compressed")
    path = save_frame(df, tmp_path / "records.csv")
    assert optimizer_tier("adam-arm-x7") == "other"
    load_frame(path)
    assert optimizer_tier("adam-arm-x7") == "compressed"


# ---------------------------------------------------------------------------------------------
# confidence intervals


def test_ci_hand_checked_and_matches_scipy():
    ci = tables.mean_ci([1.0, 2.0, 3.0])
    # hand: s = 1, sem = 1/sqrt(3), t_{0.975, 2} = 4.302653 -> half-width 2.484138
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(2.0)
    assert ci["ci_half"] == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((-0.484138, 4.484138), abs=1e-6)
    values = [0.31, 0.27, 0.45, 0.38, 0.29]
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    ci = tables.mean_ci(values)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)


def test_ci_is_nan_for_one_seed_and_nan_values_are_dropped():
    one = tables.mean_ci([0.4, float("nan")])
    assert one["n"] == 1 and one["mean"] == 0.4 and math.isnan(one["ci_low"]) and math.isnan(one["ci_half"])
    assert tables.mean_ci([])["n"] == 0


def test_summary_counts_seeds_not_rows():
    rows = [rec(optimizer="adam", seed=0, value=0.2), rec(optimizer="adam", seed=0, value=0.4),
            rec(optimizer="adam", seed=1, value=0.5)]
    s = tables.summarize(load_records(rows))
    assert len(s) == 1 and s["n"].iloc[0] == 2
    assert s["mean"].iloc[0] == pytest.approx((0.3 + 0.5) / 2)


def test_latest_step_keeps_final_measurement():
    rows = [rec(optimizer="adam", step=10, value=0.9), rec(optimizer="adam", step=100, value=0.1)]
    s = tables.summarize(load_records(rows))
    assert s["mean"].iloc[0] == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------
# recovery


def _recovery_records(o_attack=0.8):
    out = []
    for role, clean, attacked in (("original", 0.9, o_attack), ("retain", 0.1, 0.2)):
        out += [rec(model=role, role=role, value=clean),
                rec(model=role, role=role, attack="quantize", setting="rtn-4bit", value=attacked)]
    for seed, clean, attacked in ((0, 0.1, 0.45), (1, 0.2, 0.5)):
        out += [rec(model=f"u{seed}", optimizer="adam", seed=seed, value=clean),
                rec(model=f"u{seed}", optimizer="adam", seed=seed, attack="quantize", setting="rtn-4bit",
                    value=attacked)]
    return out


def test_recovery_on_a_hand_made_example():
    per = tables.recovery_per_seed(load_records(_recovery_records()))
    assert list(per["seed"]) == [0, 1]
    # seed 0: (0.45 - 0.1) / (0.8 - 0.1) = 0.5; gold: (0.45 - 0.2) / (0.8 - 0.2) = 0.416667
    # seed 1: (0.5 - 0.2) / (0.8 - 0.2) = 0.5;   gold: (0.5 - 0.2) / (0.8 - 0.2) = 0.5
    assert list(per["recovery"]) == pytest.approx([0.5, 0.5])
    assert list(per["recovery_gold"]) == pytest.approx([0.25 / 0.6, 0.5])
    assert list(per["residual_gold"]) == pytest.approx([0.0, 0.125])  # (u_clean - 0.1) / 0.8
    # brought back: the rise (0.35, 0.3) over the clean gap 0.8, less the gold model's rise 0.1 / 0.8
    assert list(per["brought_back"]) == pytest.approx([0.35 / 0.8 - 0.125, 0.3 / 0.8 - 0.125])
    assert list(per["delta"]) == pytest.approx([0.35, 0.3])
    summary = tables.recovery_table(load_records(_recovery_records()))
    row = summary.iloc[0]
    assert row["recovery"] == pytest.approx(0.5) and row["recovery_n"] == 2
    assert row["recovery_gold"] == pytest.approx((0.25 / 0.6 + 0.5) / 2)


def test_recovery_against_each_seeds_own_references():
    """references="paired": each seed is measured against its own original and gold model, which is
    the pooled computation on that seed's records alone; a seed without its own pair gets NaN."""
    rows = _recovery_records()
    per_seed_refs = []
    for seed, (o_clean, r_clean, o_attack, r_attack) in enumerate(((0.9, 0.1, 0.8, 0.2), (0.95, 0.05, 0.7, 0.3))):
        for role, clean, attacked in (("original", o_clean, o_attack), ("retain", r_clean, r_attack)):
            per_seed_refs += [{**r, "seed": seed, "value": v} for r, v in zip(
                [r for r in rows if r.get("role") == role], (clean, attacked))]
    records = [r for r in rows if r.get("role") not in ("original", "retain")] + per_seed_refs
    df = load_records(records)
    paired = tables.recovery_per_seed(df, references="paired")
    # gold: seed 0 (0.45 - 0.2) / (0.8 - 0.2), seed 1 (0.5 - 0.3) / (0.7 - 0.3); pooled refs 0.75 / 0.25
    assert list(paired["recovery_gold"]) == pytest.approx([0.25 / 0.6, 0.2 / 0.4])
    assert list(paired["recovery"]) == pytest.approx([0.35 / 0.7, 0.3 / 0.5])
    assert list(paired["residual_gold"]) == pytest.approx([0.0 / 0.8, 0.15 / 0.9])
    by_hand = pd.concat([tables.recovery_per_seed(df[df["seed"] == s]) for s in (0, 1)], ignore_index=True)
    np.testing.assert_allclose(paired["recovery_gold"], by_hand["recovery_gold"])
    pooled = tables.recovery_per_seed(df)
    assert list(pooled["recovery_gold"]) == pytest.approx([0.2 / 0.5, 0.25 / 0.5])
    lone = tables.recovery_per_seed(df[~((df["seed"] == 1) & (df["role"] != "unlearned"))], references="paired")
    assert np.isfinite(lone["recovery_gold"].iloc[0]) and np.isnan(lone["recovery_gold"].iloc[1])
    assert "no original-model record" in lone["note"].iloc[1]
    with pytest.raises(ValueError, match="'pooled' or 'paired'"):
        tables.recovery_per_seed(df, references="own")


def test_recovery_does_not_depend_on_the_metric_direction():
    flipped = [{**r, "value": -3 * r["value"] + 1, "metric": "nll"} for r in _recovery_records()]
    a = tables.recovery_per_seed(load_records(_recovery_records()))
    b = tables.recovery_per_seed(load_records(flipped))
    np.testing.assert_allclose(a["recovery"], b["recovery"])
    np.testing.assert_allclose(a["recovery_gold"], b["recovery_gold"])


def test_recovery_is_nan_with_a_reason_when_the_denominator_vanishes():
    # the attacked original (0.2) equals the attacked gold model (0.2): nothing left to recover
    per = tables.recovery_per_seed(load_records(_recovery_records(o_attack=0.2)))
    assert per["recovery_gold"].isna().all()
    assert all("recovery_gold undefined" in n for n in per["note"])
    # without an original model there is no ceiling
    no_ref = [r for r in _recovery_records() if r.get("role") != "original"]
    per = tables.recovery_per_seed(load_records(no_ref))
    assert per["recovery"].isna().all() and all("no original-model record" in n for n in per["note"])


def test_recovery_is_undefined_where_the_attack_leaves_too_little_to_recover():
    # the attacked original (0.25) sits 0.15 / 0.8 of the clean gap above seed 0's clean level
    # (0.1) but only 0.05 / 0.8 = 0.0625 above seed 1's (0.2): below 0.1 of the gap, seed 1's
    # ratio (0.5 - 0.2) / (0.25 - 0.2) = 6 would read as "600% came back" out of a 0.05 denominator
    records = _recovery_records(o_attack=0.25)
    per = tables.recovery_per_seed(load_records(records))
    assert per["recovery"].iloc[0] == pytest.approx(0.35 / 0.15)
    assert np.isnan(per["recovery"].iloc[1]) and "too little left to recover" in per["note"].iloc[1]
    assert "too little left" not in per["note"].iloc[0]
    # the positions against the gold model and what the attack brought back are still measured
    assert per["recovery_gold"].iloc[1] == pytest.approx((0.5 - 0.2) / (0.25 - 0.2))
    assert per["brought_back"].iloc[1] == pytest.approx(0.3 / 0.8 - 0.125)
    # the threshold is the caller's, and the rule does not depend on the metric's direction
    loose = tables.recovery_per_seed(load_records(records), ill_conditioned=0.05)
    assert loose["recovery"].iloc[1] == pytest.approx(6.0)
    flipped = [{**r, "value": -2 * r["value"] + 1, "metric": "nll"} for r in records]
    np.testing.assert_allclose(tables.recovery_per_seed(load_records(flipped))["recovery"], per["recovery"])
    # the summary over seeds keeps the defined seed and says why the other is left out
    row = tables.recovery_table(load_records(records)).iloc[0]
    assert row["recovery_n"] == 1 and "too little left to recover" in row["note"]


def test_recovery_flags_an_attack_that_erased_the_ceiling():
    per = tables.recovery_per_seed(load_records(_recovery_records(o_attack=0.25)))
    assert all("erased most of the original's knowledge" in n for n in per["note"])


def test_pivot_orders_references_first_and_formats_ci():
    df = load_records(synthetic_records(("hybrid", "adam"), (0, 1, 2), basins=False))
    table = tables.pivot(df, "prob", "forget")
    assert list(table.index) == ["original", "retain-only", "adam", "hybrid"]
    assert table.columns[0] == ("none", "")
    assert [c[0] for c in table.columns[1:5]] == ["relearn"] * 4
    assert table.attrs["n"] == 3 and " ± " in table.iloc[0, 0]
    quant = [s for a, s in table.columns if a == "quantize"]
    assert quant == ["rtn-8bit", "rtn-4bit", "rtn-3bit"]  # weak to strong


# ---------------------------------------------------------------------------------------------
# verdicts


def _two_optimizers(a_values, b_values):
    rows = [rec(model=f"a{i}", optimizer="hybrid", seed=i, value=v) for i, v in enumerate(a_values)]
    rows += [rec(model=f"b{i}", optimizer="adam", seed=i, value=v) for i, v in enumerate(b_values)]
    return load_records(rows)


CLAIM = Claim("t", "hybrid has a lower forget prob than adam", a="hybrid", b="adam", attack="none",
              metric="prob", split="forget", direction="less")


def test_verdict_clear_win_is_reproduced():
    v = evaluate(_two_optimizers([0.10, 0.11, 0.12], [0.50, 0.52, 0.49]), CLAIM)
    assert v.verdict == "reproduced" and v.ci_high < 0 and (v.n_a, v.n_b) == (3, 3)


def test_verdict_clear_loss_is_not_reproduced():
    v = evaluate(_two_optimizers([0.50, 0.52, 0.49], [0.10, 0.11, 0.12]), CLAIM)
    assert v.verdict == "not reproduced" and v.ci_low > 0


def test_verdict_overlapping_is_inconclusive():
    v = evaluate(_two_optimizers([0.1, 0.5, 0.3], [0.2, 0.4, 0.35]), CLAIM)
    assert v.verdict == "inconclusive" and v.ci_low < 0 < v.ci_high and "contains 0" in v.reason


def test_verdict_one_seed_is_inconclusive_with_reason():
    v = evaluate(_two_optimizers([0.1], [0.5, 0.6]), CLAIM)
    assert v.verdict == "inconclusive" and "too few seeds" in v.reason and math.isnan(v.ci_low)


def test_verdict_missing_optimizer_is_inconclusive():
    claim = Claim("t", "x", a="zo-adam", b="adam", attack="none", metric="prob")
    v = evaluate(_two_optimizers([0.1, 0.2], [0.5, 0.6]), claim)
    assert v.verdict == "inconclusive" and "zo-adam" in v.reason


def test_welch_ci_matches_scipy():
    a, b = [0.1, 0.14, 0.12, 0.2], [0.3, 0.26, 0.41]
    w = welch(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert w["diff"] == pytest.approx(np.mean(a) - np.mean(b))


def test_paper_claims_follow_the_synthetic_effect_both_ways():
    # synthetic story: hybrid leaks less than adam -> reproduced; swapped -> not reproduced
    df = load_records(synthetic_records(("adam", "hybrid", "zo-adam"), (0, 1, 2), basins=False))
    out = {v.claim.name: v for v in verdicts.evaluate_claims(df)}
    assert out["hybrid-vs-adam-relearn"].verdict == "reproduced"
    assert out["signadam-vs-adam-relearn"].verdict == "inconclusive"  # no signadam records
    swapped = load_records(synthetic_records(("adam", "hybrid"), (0, 1, 2), basins=False,
                                             leak={"adam": 0.2, "hybrid": 0.6}))
    claim = next(c for c in verdicts.PAPER_CLAIMS if c.name == "hybrid-vs-adam-relearn")
    assert verdicts.evaluate(swapped, claim).verdict == "not reproduced"
    table = verdicts.verdict_table(out.values())
    assert {"claim", "verdict", "ci_low", "ci_high", "reason"} <= set(table.columns)


def test_claim_rejects_bad_direction():
    with pytest.raises(ValueError, match="direction"):
        Claim("x", "x", a="a", b="b", attack="none", metric="prob", direction="smaller")


# ---------------------------------------------------------------------------------------------
# audit card


def test_audit_card_names_worst_settings_in_plain_words():
    df = load_records(synthetic_records(("adam", "hybrid"), (0, 1, 2), basins=False))
    text = audit_card(df, optimizer="adam")
    assert text.startswith("## Audit card")
    assert "steps=100" in text and "rtn-3bit" in text  # worst settings of relearning and quantization
    assert "Do not treat this model as unlearned" in text
    assert "| relearning |" in text
    page = audit_card(df, optimizer="hybrid", fmt="html")
    assert page.startswith('<section class="card">') and "<table" in page
    one_seed = load_records(synthetic_records(("adam",), (0,), basins=False))
    assert "Only one seed" in audit_card(one_seed, optimizer="adam")


def test_audit_card_does_not_turn_a_model_that_never_forgot_into_a_percentage():
    # the unlearned model kept 0.79 of the original's 0.9 (clean gap 0.8 to the gold model's 0.1);
    # quantization leaves the original at 0.8: a 0.01 denominator, where a 0.02 rise would be "200%"
    rows = [rec(model=role, role=role, value=clean) for role, clean in (("original", 0.9), ("retain", 0.1))]
    rows += [rec(model=role, role=role, attack="quantize", setting="rtn-4bit", value=v)
             for role, v in (("original", 0.8), ("retain", 0.1))]
    for seed in (0, 1):
        rows += [rec(model=f"u{seed}", optimizer="adam", seed=seed, value=0.79),
                 rec(model=f"u{seed}", optimizer="adam", seed=seed, attack="quantize", setting="rtn-4bit",
                     value=0.81)]
    text = audit_card(load_records(rows), optimizer="adam")
    assert "Quantization: recovery is undefined at every setting tested" in text
    assert "too little left to recover" in text and "200%" not in text
    assert "add the original and retain-only references" not in text
