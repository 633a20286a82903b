"""Tables from the tidy record frame: means with 95% confidence intervals over seeds, and recovery.

Definitions used throughout:

- *Per-seed value*: records are first reduced to one number per seed (the mean of the rows that
  share every grouping key and the seed, at the last recorded training ``step``), so a seed with
  several rows never counts more than once.
- *Mean and 95% CI over seeds*: with per-seed values v_1..v_n, mean = sum(v)/n,
  s = sample standard deviation (ddof = 1), sem = s / sqrt(n), and the two-sided 95% Student-t
  interval mean +- t_{0.975, n-1} * sem (``scipy.stats.t.ppf``). For n = 1 the CI is NaN: one seed
  says nothing about seed-to-seed spread.
- *Recovery* (see :func:`recovery_per_seed`): how much of the forgotten knowledge an attack brings
  back, measured against the *original* model under the same attack (ceiling) and the
  *retain-only* gold model under the same attack (floor), as DESIGN section 5 asks.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.names import DESCENDING_ATTACKS, KNOWLEDGE_SIGN, attack_rank, optimizer_rank
from unlearn.errors import require

REFERENCES = ("pooled", "paired")   # recovery_per_seed's references: over their seeds, or each seed's own pair
GROUP_KEYS = ("objective", "optimizer", "label", "role", "attack", "setting", "x", "metric", "split")
# what identifies an unlearning recipe across seeds: runs that differ in any config field other
# than the seed (lr, steps, optimizer or objective arguments: the ``recipe`` column of
# analysis.load) are different units and are never pooled
UNIT_KEYS = ("objective", "optimizer", "recipe")
CONFIDENCE = 0.95
# attacks that walk a path between several models rather than attack one model
PATH_ATTACKS = ("interpolate", "plane")
TRAJECTORY = ("training", "calibrate")  # evaluations during unlearning / calibration probes: not attacks


def knowledge_sign(metric: str) -> int | None:
    """+1 if a higher ``metric`` means more knowledge of the scored answers, -1 if lower does, None if
    neither holds (truth ratio, forget quality, AUCs: "worst case" then falls back to the mean over
    settings). The records' own description decides (:mod:`analysis.names`)."""
    return KNOWLEDGE_SIGN.get(metric)


# ---------------------------------------------------------------------------------------------
# confidence intervals


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> dict:
    """Mean, Student-t confidence interval and n of the finite values.

    Returns ``{"mean", "std", "sem", "ci_low", "ci_high", "ci_half", "n"}``. With n = 0 everything
    is NaN (n = 0); with n = 1 the spread and the CI are NaN. Example: values 1, 2, 3 give mean 2,
    s = 1, sem = 1/sqrt(3) = 0.57735, t_{0.975, 2} = 4.302653, half-width 2.484138, CI
    [-0.484138, 4.484138].
    """
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    nan = math.nan
    if n == 0:
        return {"mean": nan, "std": nan, "sem": nan, "ci_low": nan, "ci_high": nan, "ci_half": nan, "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "std": nan, "sem": nan, "ci_low": nan, "ci_high": nan, "ci_half": nan, "n": 1}
    std = float(v.std(ddof=1))
    sem = std / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    return {"mean": mean, "std": std, "sem": sem, "ci_low": mean - half, "ci_high": mean + half,
            "ci_half": half, "n": n}


# ---------------------------------------------------------------------------------------------
# reductions


def model_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows about single finished models: everything except :data:`PATH_ATTACKS` (paths between
    models) and :data:`TRAJECTORY` (evaluations during unlearning)."""
    return df[~df["attack"].isin(PATH_ATTACKS + TRAJECTORY)]


def latest_step(df: pd.DataFrame) -> pd.DataFrame:
    """Keep, for every measured quantity, only the rows at its last recorded training step.

    A quantity is (run, model, role, attack, setting, metric, split, seed); rows without a
    ``step`` are kept. Trajectories logged during unlearning thus never inflate a final table.
    """
    if "step" not in df.columns or df["step"].isna().all():
        return df
    keys = ["run", "model", "role", "attack", "setting", "metric", "split", "seed"]
    last = df.groupby(keys, dropna=False)["step"].transform("max")
    keep = df["step"].isna() | last.isna() | (df["step"] == last)
    return df.loc[keep]


def per_seed(df: pd.DataFrame, keys: Sequence[str] = GROUP_KEYS) -> pd.DataFrame:
    """One row per (keys..., seed): the mean value of the rows sharing them (at the last step)."""
    keys = [k for k in keys if k in df.columns]
    df = latest_step(df)
    return (df.groupby(keys + ["seed"], dropna=False, sort=True)["value"].mean()
            .reset_index())


def summarize(df: pd.DataFrame, keys: Sequence[str] = GROUP_KEYS, value: str = "value",
              confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Mean, 95% CI and number of seeds per group of ``keys``.

    ``df`` is the tidy record frame (reduced per seed first, see :func:`per_seed`) or any frame
    with ``keys``, ``seed`` and ``value`` columns already one row per seed. Columns: keys, then
    ``mean, std, sem, ci_low, ci_high, ci_half, n`` (n = number of seeds with a finite value).
    """
    keys = [k for k in keys if k in df.columns]
    if value == "value" and {"run", "model"} <= set(df.columns):
        df = per_seed(df, keys)
    rows = []
    for key, group in df.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **mean_ci(group[value], confidence)})
    cols = keys + ["mean", "std", "sem", "ci_low", "ci_high", "ci_half", "n"]
    return pd.DataFrame(rows, columns=cols)


def format_ci(mean: float, half: float, n: int, digits: int = 3) -> str:
    """``"0.512 ± 0.031 (n=3)"``; ``"0.512 (n=1)"`` when the CI is undefined; ``""`` when no mean."""
    if mean is None or not np.isfinite(mean):
        return ""
    if half is None or not np.isfinite(half):
        return f"{mean:.{digits}f} (n={int(n)})"
    return f"{mean:.{digits}f} ± {half:.{digits}f} (n={int(n)})"


def format_interval(mean: float, low: float, high: float, digits: int = 2) -> str:
    """``"0.45 [0.42, 0.48]"``; ``"0.45 (1 seed)"`` without a CI; ``""`` without a mean."""
    if mean is None or not np.isfinite(mean):
        return ""
    if low is None or not np.isfinite(low):
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _column_key(attack: str, x: float, setting: str):
    xs = x if np.isfinite(x) else math.inf
    return (attack_rank(attack), -xs if attack in DESCENDING_ATTACKS and np.isfinite(x) else xs, setting)


def wide(summ: pd.DataFrame, cell: str, rows: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Spread a long summary (columns ``rows``, attack, setting, x, ``cell``) into a wide table:
    rows ordered original, retain-only, then optimizers by tier; columns (attack, setting) with the
    clean model first, attacks in :data:`analysis.names.ATTACK_ORDER`, settings weak to strong."""
    rows = list(rows)
    if summ.empty:
        return pd.DataFrame()
    cols = sorted(dict.fromkeys(zip(summ["attack"], summ["x"], summ["setting"])),
                  key=lambda c: _column_key(*c))
    col_order = list(dict.fromkeys((a, s) for a, _, s in cols))
    row_order = sorted(dict.fromkeys(tuple(r) for r in summ[rows].itertuples(index=False)),
                       key=lambda r: _row_rank(r[0]) + tuple(r[1:]))
    table = summ.pivot_table(index=rows, columns=["attack", "setting"], values=cell, aggfunc="first")
    table = table.reindex(columns=pd.MultiIndex.from_tuples(col_order, names=["attack", "setting"]))
    table = table.reindex(index=pd.MultiIndex.from_tuples(row_order, names=rows)
                          if len(rows) > 1 else pd.Index([r[0] for r in row_order], name=rows[0]))
    return table.fillna("")


def pivot(df: pd.DataFrame, metric: str, split: str, *, rows: Sequence[str] | None = None,
          digits: int = 3, show_n: str | bool = "auto") -> pd.DataFrame:
    """A readable wide table for one metric and split: rows = series (original, retain-only, then
    optimizers by tier; qualified by objective when there are several), columns = (attack,
    setting) with the clean model first, cells = ``mean ± CI half-width`` with ``(n=seeds)``
    appended when ``show_n`` is True, or ``"auto"`` and the seed count differs between cells
    (the table's ``attrs["n"]`` holds the count when it is the same everywhere)."""
    sub = df[(df["metric"] == metric) & (df["split"] == split)]
    if sub.empty:
        return pd.DataFrame()
    if rows is None:
        rows = _series_rows(sub[sub["role"] == "unlearned"])
    summ = summarize(sub, keys=tuple(dict.fromkeys(GROUP_KEYS + tuple(rows))))
    same_n = summ["n"].nunique() == 1
    with_n = show_n is True or (show_n == "auto" and not same_n)
    summ["cell"] = [format_ci(m, h, n, digits) if with_n else format_ci(m, h, n, digits).rsplit(" (n=", 1)[0]
                    for m, h, n in zip(summ["mean"], summ["ci_half"], summ["n"])]
    table = wide(summ, "cell", rows)
    table.attrs["n"] = int(summ["n"].iloc[0]) if same_n else None
    return table


def recovery_pivot(rec: pd.DataFrame, metric: str, split: str, *, column: str = "recovery",
                   digits: int = 2) -> pd.DataFrame:
    """:func:`recovery_table` spread wide for one metric and split: rows = optimizers by tier,
    columns = (attack, setting), cells = ``mean [95% CI]`` of ``column`` (``recovery`` or
    ``recovery_gold``)."""
    sub = rec[(rec["metric"] == metric) & (rec["split"] == split)]
    if sub.empty:
        return pd.DataFrame()
    sub = sub.assign(label=sub["optimizer"].where(sub["optimizer"] != "", "(no optimizer)"))
    sub = sub.assign(cell=[format_interval(m, lo, hi, digits) for m, lo, hi in
                           zip(sub[column], sub[f"{column}_ci_low"], sub[f"{column}_ci_high"])])
    return wide(sub, "cell", _series_rows(sub))


def _series_rows(unlearned: pd.DataFrame) -> tuple[str, ...]:
    """Row keys of a wide table: the label, plus the objective when there are several, plus the
    recipe when an optimizer was run at several (runs at different settings never share a row)."""
    rows = ["label"]
    if unlearned["objective"].nunique() > 1:
        rows.append("objective")
    if "recipe" in unlearned.columns and (unlearned.groupby(["objective", "optimizer"])["recipe"].nunique() > 1).any():
        rows.append("recipe")
    return tuple(rows)


def _row_rank(label: str):
    if label == "original":
        return ((-2, 0, ""), label)
    if label == "retain-only":
        return ((-1, 0, ""), label)
    return (optimizer_rank(label), label)


# ---------------------------------------------------------------------------------------------
# recovery


def recovery_per_seed(df: pd.DataFrame, *, unit: Sequence[str] = UNIT_KEYS,
                      metrics: Iterable[str] | None = None,
                      splits: Iterable[str] | None = ("forget", "forget_unseen"),
                      min_gap: float = 1e-6, ill_conditioned: float = 0.1,
                      references: str = "pooled") -> pd.DataFrame:
    """Recovery of forgotten knowledge per unlearned seed, attack, setting, metric and split.

    For one metric m on one split (any metric where the original scores differently from the gold
    model; the ratios below do not change if m is replaced by a*m + b, so they work the same for
    "higher = more knowledge" metrics such as probability and "lower = more knowledge" ones such as
    NLL), one attack A at one setting s and one unlearned seed:

    - ``u_clean``  = m(unlearned, no attack), same seed (at its last step)
    - ``u_attack`` = m(unlearned, A at s), same seed
    - ``o_attack`` = m(original, A at s): the *ceiling*, what the attack leaves of the knowledge
      when nothing was unlearned (mean over the original's seeds)
    - ``r_attack`` = m(retain-only, A at s): the *floor*, what the attack produces from a model
      that never saw the forget data (mean over its seeds)
    - ``o_clean``, ``r_clean``: the same references without attack

    ``references="paired"`` takes each reference from the unlearned seed's own original and gold
    model (reference records of the same seed: a study that fits one pair per seed) instead of
    the mean over the references' seeds; a seed without its own pair gets NaN and a note.

    ``recovery`` = (u_attack - u_clean) / (o_attack - u_clean): the fraction of the gap between the
    clean unlearned model and the attacked original that the attack closes. 0 = nothing came back,
    1.0 = the attacked unlearned model knows as much as the attacked original (all knowledge back),
    negative = the attack erased even more.

    ``recovery_gold`` = (u_attack - r_attack) / (o_attack - r_attack): where the attacked unlearned
    model sits between the attacked gold model (0) and the attacked original (1). Values at or below
    0 mean "no more knowledge than a model that never saw the forget data under the same attack".
    ``residual_gold`` = (u_clean - r_clean) / (o_clean - r_clean) is the same position before the
    attack; so a model that unlearning left 0.1 of the gap above the gold model, and that the attack
    leaves alone, has ``recovery_gold`` 0.1 although nothing came back.

    ``brought_back`` = (u_attack - u_clean) / g - max(0, (r_attack - r_clean) / g), with the clean gap
    g = o_clean - r_clean: what the attack itself added to the unlearned model, less what the same
    attack gives the gold model where it gives it anything (relearning teaches a model that never
    saw the forget facts something about them too). A gold model that the attack damages is not
    credited to the unlearned one, and the attacked original, whose loss under the attack would
    rescale a position between the attacked references, does not enter. 0 = the attack brought
    nothing back; 1 = it brought back the whole gap.

    Guards: a ratio is NaN when the reference it needs is missing or its denominator is within
    ``min_gap`` of 0 (the attacked original is no different from the clean unlearned model, or
    from the attacked gold model: there is no knowledge to recover, so the ratio is undefined); the
    ``note`` column says which. ``recovery`` is also NaN when the attacked original holds less than
    ``ill_conditioned`` times the clean gap more than the clean unlearned model (a model that never
    forgot, or an attack that took the original down to the unlearned model's level): its
    denominator is then noise, and a 0.03 rise over a 0.005 denominator would read as "600% came
    back". When the attacked ceiling-floor gap |o_attack - r_attack| is below
    ``ill_conditioned`` times the clean gap |o_clean - r_clean|, the attack by itself erased most of
    the original's knowledge; the ratios are then noisy and ``note`` says so.

    Interpolation and plane records (:data:`PATH_ATTACKS`) are paths between models, not attacks
    on one model, and are left out.

    Returns one row per (unit..., attack, setting, x, metric, split, seed) with ``u_clean,
    u_attack, o_attack, r_attack, o_clean, r_clean, delta (= u_attack - u_clean), recovery,
    recovery_gold, residual_gold, brought_back, note``.
    """
    require(references in REFERENCES, f"references must be 'pooled' or 'paired', not {references!r}")
    unit = [k for k in unit if k in df.columns]
    base = latest_step(model_rows(df))
    if metrics is not None:
        base = base[base["metric"].isin(list(metrics))]
    if splits is not None:
        base = base[base["split"].isin(list(splits))]
    if base.empty:
        return pd.DataFrame(columns=_RECOVERY_COLUMNS(unit))
    unl = base[base["role"] == "unlearned"]
    by_seed = ["seed"] if references == "paired" else []
    ref_keys = ["attack", "setting", "metric", "split"] + by_seed
    refs = {role: _reference_means(base[base["role"] == role], ref_keys) for role in ("original", "retain")}
    clean_refs = {role: _reference_means(base[(base["role"] == role) & (base["attack"] == "none")],
                                         ["metric", "split"] + by_seed) for role in ("original", "retain")}
    clean = (unl[unl["attack"] == "none"].groupby(unit + ["metric", "split", "seed"], dropna=False)["value"]
             .mean().rename("u_clean").reset_index())
    attacked = (unl[unl["attack"] != "none"]
                .groupby(unit + ["attack", "setting", "metric", "split", "seed"], dropna=False)
                .agg(u_attack=("value", "mean"), x=("x", "first")).reset_index())
    if attacked.empty:
        return pd.DataFrame(columns=_RECOVERY_COLUMNS(unit))
    out = attacked.merge(clean, on=unit + ["metric", "split", "seed"], how="left")
    # The snap-back control Q(W_o) + (W_u - W_o) of a reference model is Q(W_o) itself, so a
    # "<setting>-snapback" row is measured against the references under "<setting>".
    out["ref_setting"] = out["setting"].astype(str).str.replace(r"-snapback$", "", regex=True)
    for role, col in (("original", "o_attack"), ("retain", "r_attack")):
        ref = refs[role].rename(columns={"ref": col, "setting": "ref_setting"})
        out = out.merge(ref, on=["attack", "ref_setting", "metric", "split"] + by_seed, how="left")
    out = out.drop(columns="ref_setting")
    for role, col in (("original", "o_clean"), ("retain", "r_clean")):
        out = out.merge(clean_refs[role].rename(columns={"ref": col}), on=["metric", "split"] + by_seed, how="left")
    out["delta"] = out["u_attack"] - out["u_clean"]
    results = [_recovery_row(r, min_gap, ill_conditioned) for r in out.itertuples(index=False)]
    out["recovery"] = [r[0] for r in results]
    out["recovery_gold"] = [r[1] for r in results]
    out["residual_gold"] = [r[2] for r in results]
    out["brought_back"] = [r[3] for r in results]
    out["note"] = [r[4] for r in results]
    return out[_RECOVERY_COLUMNS(unit)].sort_values(unit + ["attack", "x", "setting", "metric", "split", "seed"],
                                                    na_position="last").reset_index(drop=True)


def _RECOVERY_COLUMNS(unit):  # noqa: N802 - a constant that depends on the unit keys
    return list(unit) + ["attack", "setting", "x", "metric", "split", "seed", "u_clean", "u_attack",
                         "o_attack", "r_attack", "o_clean", "r_clean", "delta", "recovery",
                         "recovery_gold", "residual_gold", "brought_back", "note"]


def _reference_means(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean of a reference model's per-seed values, per keys (``keys`` may hold ``seed`` itself)."""
    if df.empty:
        return pd.DataFrame(columns=keys + ["ref"])
    seeds = df.groupby(list(dict.fromkeys(keys + ["seed"])), dropna=False)["value"].mean().reset_index()
    return seeds.groupby(keys, dropna=False)["value"].mean().rename("ref").reset_index()


def safe_ratio(num: float, den: float, min_gap: float) -> float:
    """num / den, or NaN when either is missing or |den| <= min_gap."""
    if not (np.isfinite(num) and np.isfinite(den)) or abs(den) <= min_gap:
        return math.nan
    return float(num / den)


# the notes of recovery_per_seed that say a record is missing (the rest say why a ratio is undefined)
MISSING_NOTES = ("no clean (attack none) record for this unlearned seed",
                 "no original-model record under this attack and setting (no ceiling)",
                 "no retain-only record under this attack and setting (no gold floor)")


def join_notes(notes: Iterable) -> str:
    """The distinct non-empty notes, in order, joined by "; "."""
    return "; ".join(dict.fromkeys(n for n in notes if isinstance(n, str) and n))


def lacks_records(notes: str) -> bool:
    """Whether a recovery note (or several joined by "; ") says a record is missing."""
    return any(m in notes for m in MISSING_NOTES)


def _recovery_row(r, min_gap: float, ill_conditioned: float) -> tuple[float, float, float, float, str]:
    notes = [m for m, v in zip(MISSING_NOTES, (r.u_clean, r.o_attack, r.r_attack)) if not np.isfinite(v)]
    rec = safe_ratio(r.u_attack - r.u_clean, r.o_attack - r.u_clean, min_gap)
    clean_gap = r.o_clean - r.r_clean
    left = safe_ratio(r.o_attack - r.u_clean, clean_gap, min_gap)  # what the attack leaves to recover
    if np.isfinite(r.o_attack) and np.isfinite(r.u_clean) and abs(r.o_attack - r.u_clean) <= min_gap:
        notes.append("attacked original equals the clean unlearned model: nothing to recover, "
                     "recovery undefined")
    elif np.isfinite(left) and left < ill_conditioned:
        rec = math.nan
        notes.append(f"the attacked original (the ceiling) knows less than {ill_conditioned:g} of the clean "
                     "gap more than the clean unlearned model: too little left to recover for the recovery "
                     "ratio (recovery_gold and brought_back still apply)")
    gold = safe_ratio(r.u_attack - r.r_attack, r.o_attack - r.r_attack, min_gap)
    gap = r.o_attack - r.r_attack
    if np.isfinite(gap) and abs(gap) <= min_gap:
        notes.append("attacked original equals the attacked gold model: the attack erased the "
                     "knowledge itself, recovery_gold undefined")
    residual = safe_ratio(r.u_clean - r.r_clean, clean_gap, min_gap)
    gold_gain = float(np.maximum(0.0, safe_ratio(r.r_attack - r.r_clean, clean_gap, min_gap)))  # NaN stays NaN
    brought = safe_ratio(r.u_attack - r.u_clean, clean_gap, min_gap) - gold_gain
    if (np.isfinite(gap) and np.isfinite(clean_gap) and abs(gap) > min_gap
            and abs(gap) < ill_conditioned * abs(clean_gap)):
        notes.append(f"the attack alone erased most of the original's knowledge (ceiling-floor gap "
                     f"{gap:.3g} vs {clean_gap:.3g} clean): ratios are noisy")
    return rec, gold, residual, brought, "; ".join(notes)


def recovery_table(df: pd.DataFrame, *, unit: Sequence[str] = UNIT_KEYS, **kwargs) -> pd.DataFrame:
    """Recovery summarised over seeds: per (unit..., attack, setting, x, metric, split) the mean,
    95% CI and n of ``recovery`` and ``recovery_gold`` (see :func:`recovery_per_seed`), the mean
    ``delta``, the references, and the notes that apply."""
    seeds = recovery_per_seed(df, unit=unit, **kwargs)
    unit = [k for k in unit if k in seeds.columns]
    keys = unit + ["attack", "setting", "x", "metric", "split"]
    rows = []
    for key, g in seeds.groupby(keys, dropna=False, sort=False):
        rec, gold = mean_ci(g["recovery"]), mean_ci(g["recovery_gold"])
        rows.append({**dict(zip(keys, key)),
                     "recovery": rec["mean"], "recovery_ci_low": rec["ci_low"],
                     "recovery_ci_high": rec["ci_high"], "recovery_n": rec["n"],
                     "recovery_gold": gold["mean"], "recovery_gold_ci_low": gold["ci_low"],
                     "recovery_gold_ci_high": gold["ci_high"],
                     "residual_gold": float(np.nanmean(g["residual_gold"])) if g["residual_gold"].notna().any() else math.nan,
                     "delta": float(g["delta"].mean()), "u_clean": float(g["u_clean"].mean()),
                     "u_attack": float(g["u_attack"].mean()), "o_attack": float(g["o_attack"].mean()),
                     "r_attack": float(g["r_attack"].mean()), "n_seeds": int(g["seed"].nunique()),
                     "note": join_notes(g["note"])})
    return pd.DataFrame(rows)
