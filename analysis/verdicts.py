"""Verdicts on the paper's claims, from per-seed numbers and confidence intervals.

A :class:`Claim` names two series (A and B: optimizer names, or ``original`` / ``retain`` for the
reference models), an attack, a metric, a split, the quantity compared and the claimed direction
(A ``less`` or ``greater`` than B). :func:`evaluate` collects one number per seed for A and for B
and compares them with Welch's t-test (unequal variances):

    diff = mean(A) - mean(B);  se = sqrt(s_A^2/n_A + s_B^2/n_B)
    df = se^4 / ((s_A^2/n_A)^2/(n_A - 1) + (s_B^2/n_B)^2/(n_B - 1))   (Welch-Satterthwaite)
    CI = diff +- t_{1 - alpha/2, df} * se

and decides:

- ``reproduced``: the CI lies entirely on the claimed side of 0;
- ``not reproduced``: the CI lies entirely on the other side of 0 (the opposite holds);
- ``inconclusive``: the CI contains 0, or A or B has fewer than ``min_seeds`` seeds, or the
  records needed are missing; the reason says which.

Nothing here searches settings, metrics or seeds for a favourable result: a claim fixes all of them
before the numbers are read, and every claim's verdict is reported, whatever it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.tables import latest_step, per_seed, recovery_per_seed

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
QUANTITIES = ("value", "delta", "recovery", "recovery_gold")
REFERENCE_ROLES = {"original": "original", "retain": "retain", "retain-only": "retain"}


@dataclass(frozen=True)
class Claim:
    """One testable claim, fixed before any number is read.

    - ``name``: short identifier; ``text``: the claim in words.
    - ``a``, ``b``: optimizer names (or ``original`` / ``retain``) compared as A vs B.
    - ``attack``: ``none`` for the clean models, else the attack's name.
    - ``metric``, ``split``: which records (``split`` None: the metric's only split).
    - ``direction``: ``less`` (the claim says A < B) or ``greater`` (A > B).
    - ``quantity``: ``value`` (the metric after the attack), ``delta`` (after minus clean, same
      seed), ``recovery`` or ``recovery_gold`` (see :func:`analysis.tables.recovery_per_seed`).
    - ``setting``: one setting of the attack; None: per seed, the mean over all of the attack's
      settings present for both A and B (a fixed, pre-declared reduction, never the best one).
    - ``objective``: restrict to one objective (None: all; then A and B must each have one).
    - ``alpha``: 1 - confidence of the interval (0.05 -> 95% CI); ``min_seeds``: the fewest seeds
      per side for a verdict other than inconclusive.
    """

    name: str
    text: str
    a: str
    b: str
    attack: str
    metric: str
    split: str | None = "forget"
    direction: str = "less"
    quantity: str = "value"
    setting: str | None = None
    objective: str | None = None
    alpha: float = 0.05
    min_seeds: int = 2

    def __post_init__(self):
        if self.direction not in ("less", "greater"):
            raise ValueError(f"claim {self.name!r}: direction must be 'less' or 'greater', "
                             f"got {self.direction!r}")
        if self.quantity not in QUANTITIES:
            raise ValueError(f"claim {self.name!r}: quantity must be one of {', '.join(QUANTITIES)}, "
                             f"got {self.quantity!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"claim {self.name!r}: alpha must be in (0, 1), got {self.alpha!r}")


@dataclass
class Verdict:
    """The outcome of one claim; ``diff`` = mean(A) - mean(B) with its (1 - alpha) Welch CI."""

    claim: Claim
    verdict: str
    reason: str
    n_a: int = 0
    n_b: int = 0
    mean_a: float = math.nan
    mean_b: float = math.nan
    diff: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    dof: float = math.nan
    values_a: list = field(default_factory=list)
    values_b: list = field(default_factory=list)

    def row(self) -> dict:
        c = asdict(self.claim)
        return {"claim": c.pop("name"), "verdict": self.verdict, "text": c.pop("text"), **c,
                "n_a": self.n_a, "n_b": self.n_b, "mean_a": self.mean_a, "mean_b": self.mean_b,
                "diff": self.diff, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "p_value": self.p_value, "dof": self.dof, "reason": self.reason}


# Claims of "Downgrade to Upgrade" (arXiv 2510.00761) in testable form. Optimizer names follow
# basin's registry; the demo can append its own Claim objects.
PAPER_CLAIMS: list[Claim] = [
    Claim("hybrid-vs-adam-relearn",
          "Hybrid FO-ZO unlearning recovers less forgotten knowledge than Adam under relearning "
          "(held-out forget items).",
          a="hybrid", b="adam", attack="relearn", metric="prob", split="forget_unseen",
          quantity="recovery"),
    Claim("hybrid-vs-adam-quantize",
          "Hybrid FO-ZO unlearning recovers less forgotten knowledge than Adam under weight "
          "quantization.",
          a="hybrid", b="adam", attack="quantize", metric="prob", split="forget", quantity="recovery"),
    Claim("zo-vs-adam-relearn",
          "Zeroth-order unlearning (ZO-Adam) recovers less forgotten knowledge than Adam under "
          "relearning (held-out forget items).",
          a="zo-adam", b="adam", attack="relearn", metric="prob", split="forget_unseen",
          quantity="recovery"),
    Claim("signadam-vs-adam-relearn",
          "Compressed unlearning (signAdam) recovers less forgotten knowledge than Adam under "
          "relearning (held-out forget items).",
          a="signadam", b="adam", attack="relearn", metric="prob", split="forget_unseen",
          quantity="recovery"),
    Claim("hybrid-utility",
          "Hybrid FO-ZO unlearning keeps more model utility than ZO-Adam unlearning.",
          a="hybrid", b="zo-adam", attack="none", metric="model_utility", split=None,
          direction="greater"),
]


# ---------------------------------------------------------------------------------------------
# statistics


def welch(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> dict:
    """Welch's two-sample comparison of mean(a) - mean(b).

    Returns ``diff, se, dof, ci_low, ci_high, p_value``. Needs two or more values per side. When
    both samples have zero spread the CI collapses to ``diff`` (dof and p NaN unless diff = 0).
    """
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "se": 0.0, "dof": math.nan, "ci_low": diff, "ci_high": diff,
                "p_value": 1.0 if diff == 0 else 0.0}
    dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(stats.t.ppf(1 - alpha / 2, dof)) * se
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return {"diff": diff, "se": se, "dof": float(dof), "ci_low": diff - half, "ci_high": diff + half,
            "p_value": p}


def decide(ci_low: float, ci_high: float, direction: str) -> tuple[str, str]:
    """Verdict and reason from the CI of mean(A) - mean(B) and the claimed direction."""
    claimed = "below" if direction == "less" else "above"
    interval = f"[{ci_low:.3g}, {ci_high:.3g}]"
    if (direction == "less" and ci_high < 0) or (direction == "greater" and ci_low > 0):
        return REPRODUCED, f"the CI of A - B {interval} lies entirely {claimed} 0, as claimed"
    if (direction == "less" and ci_low > 0) or (direction == "greater" and ci_high < 0):
        other = "above" if claimed == "below" else "below"
        return NOT_REPRODUCED, f"the CI of A - B {interval} lies entirely {other} 0: the opposite holds"
    return INCONCLUSIVE, f"the CI of A - B {interval} contains 0: no difference resolved at these seeds"


# ---------------------------------------------------------------------------------------------
# collecting per-seed values


def _select(df: pd.DataFrame, who: str, objective: str | None) -> pd.DataFrame:
    if who in REFERENCE_ROLES:
        return df[df["role"] == REFERENCE_ROLES[who]]
    sub = df[(df["role"] == "unlearned") & (df["optimizer"].str.lower() == who.lower())]
    if objective is not None:
        sub = sub[sub["objective"] == objective]
    return sub


def _resolve_split(df: pd.DataFrame, claim: Claim) -> tuple[str | None, str | None]:
    """(split, problem)."""
    if claim.split is not None:
        return claim.split, None
    splits = sorted(set(df.loc[(df["metric"] == claim.metric) & (df["attack"] == claim.attack), "split"]))
    if len(splits) > 1:
        return None, f"metric {claim.metric!r} has several splits ({', '.join(splits)}); name one"
    return (splits[0] if splits else None), None


def seed_values(df: pd.DataFrame, claim: Claim, who: str,
                settings: Iterable[str] | None = None) -> pd.Series:
    """One number per seed of ``who`` for ``claim`` (index: seed), see :class:`Claim`."""
    split, _ = _resolve_split(df, claim)
    if claim.quantity in ("value",):
        sub = _select(latest_step(df), who, claim.objective)
        sub = sub[(sub["attack"] == claim.attack) & (sub["metric"] == claim.metric) & (sub["split"] == split)]
        seeds = per_seed(sub, ["objective", "optimizer", "setting"]).rename(columns={"value": "q"})
    else:
        if who in REFERENCE_ROLES:
            return pd.Series(dtype=float)
        rec = recovery_per_seed(df, metrics=[claim.metric], splits=[split])
        rec = rec[(rec["attack"] == claim.attack) & (rec["optimizer"].str.lower() == who.lower())]
        if claim.objective is not None:
            rec = rec[rec["objective"] == claim.objective]
        seeds = rec.rename(columns={claim.quantity: "q"})
    if claim.setting is not None:
        seeds = seeds[seeds["setting"] == claim.setting]
    elif settings is not None:
        seeds = seeds[seeds["setting"].isin(list(settings))]
    if seeds.empty:
        return pd.Series(dtype=float)
    objectives = set(seeds["objective"]) if "objective" in seeds else set()
    if len(objectives) > 1:
        raise _Mixed(f"{who} has runs with several objectives ({', '.join(sorted(objectives))}); "
                     "set the claim's objective")
    return seeds.groupby("seed")["q"].mean().dropna()


class _Mixed(Exception):
    pass


def _settings(df: pd.DataFrame, claim: Claim, who: str) -> set[str]:
    sub = _select(df, who, claim.objective)
    return set(sub.loc[(sub["attack"] == claim.attack) & (sub["metric"] == claim.metric), "setting"])


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(df: pd.DataFrame, claim: Claim) -> Verdict:
    """The verdict on one claim (see the module docstring for the rule)."""
    split, problem = _resolve_split(df, claim)
    if problem:
        return Verdict(claim, INCONCLUSIVE, problem)
    if split is None:
        return Verdict(claim, INCONCLUSIVE, f"no {claim.metric!r} records under attack {claim.attack!r}")
    shared = None
    if claim.setting is None and claim.attack != "none":
        shared = _settings(df, claim, claim.a) & _settings(df, claim, claim.b)
        if not shared:
            return Verdict(claim, INCONCLUSIVE, _missing(df, claim, split))
    try:
        va = seed_values(df, claim, claim.a, shared)
        vb = seed_values(df, claim, claim.b, shared)
    except _Mixed as err:
        return Verdict(claim, INCONCLUSIVE, str(err))
    base = dict(n_a=int(va.size), n_b=int(vb.size),
                mean_a=float(va.mean()) if va.size else math.nan,
                mean_b=float(vb.mean()) if vb.size else math.nan,
                values_a=[float(v) for v in va], values_b=[float(v) for v in vb])
    if va.size == 0 or vb.size == 0:
        return Verdict(claim, INCONCLUSIVE, _missing(df, claim, split, va.size, vb.size), **base)
    if va.size < claim.min_seeds or vb.size < claim.min_seeds:
        return Verdict(claim, INCONCLUSIVE,
                       f"too few seeds for a confidence interval ({claim.a}: {va.size}, {claim.b}: "
                       f"{vb.size}; need at least {claim.min_seeds} each)", **base)
    w = welch(va, vb, claim.alpha)
    verdict, reason = decide(w["ci_low"], w["ci_high"], claim.direction)
    if w["se"] == 0:
        reason += " (every seed gave the same number on both sides: the CI has zero width)"
    return Verdict(claim, verdict, reason, diff=w["diff"], ci_low=w["ci_low"], ci_high=w["ci_high"],
                   p_value=w["p_value"], dof=w["dof"], **base)


def _missing(df, claim: Claim, split, n_a: int = 0, n_b: int = 0) -> str:
    what = f"{claim.quantity} of {claim.metric!r} on {split!r} under attack {claim.attack!r}"
    if claim.setting:
        what += f" at setting {claim.setting!r}"
    lacking = [w for w, n in ((claim.a, n_a), (claim.b, n_b)) if n == 0]
    if claim.quantity in ("recovery", "recovery_gold"):
        what += " (needs the clean unlearned model and the original model under the same attack"
        what += " and the retain-only model too)" if claim.quantity == "recovery_gold" else ")"
    return f"no usable records of {what} for {' and '.join(lacking) or 'A and B'}"


def evaluate_claims(df: pd.DataFrame, claims: Iterable[Claim] = PAPER_CLAIMS) -> list[Verdict]:
    """The verdict on every claim, in order."""
    return [evaluate(df, c) for c in claims]


def verdict_table(verdicts: Iterable[Verdict]) -> pd.DataFrame:
    """One row per verdict: claim, verdict, text, the claim's fields, n, means, diff, CI, p, reason."""
    return pd.DataFrame([v.row() for v in verdicts])
