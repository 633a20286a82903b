"""Verdicts on the paper's claims, from per-seed numbers, stated conditions and corrected tests.

A :class:`Claim` fixes, before any number is read: two arms (A and B: optimizer names, ``original``
/ ``retain`` for the reference models, or B = None to compare A with a constant ``than``), an
attack and the settings it pools, a metric and split, the quantity compared (``value``, ``delta``,
``recovery``, ``recovery_gold``, ``barrier``), and either a direction (A ``less`` or ``greater``
than B) or an equivalence band (``kind="equivalence"``, tested by TOST). Every claim's verdict is
reported, whatever it is; nothing here searches settings, metrics or seeds for a favourable one.

What a verdict compares (DESIGN section 9, "sound comparisons"):

1. **Units.** An arm is one recipe: an optimizer at one set of config fields (``recipe`` column of
   :mod:`analysis.load`: lr, steps, a hash of every other field). An optimizer run at several
   recipes is never pooled; the claim picks one (``a_lr`` / ``b_lr``) or the verdict is
   inconclusive and names them.
2. **Settings.** Controls (``-snapback``) are never attack settings. Only settings of one strength
   (the same numeric axis ``x``: 4-bit RTN and NF4 at 4 bits) are pooled, by the per-seed mean;
   ``x`` names the strength (``"strongest"``: the most relearning steps, the fewest bits), else
   all the attack's settings must share one. The verdict lists the settings it pooled.
3. **Conditions.** A comparison under an attack (relearning, quantization, ...) gives a verdict
   only if (:class:`Bands`, all stated parameters): both arms forgot to within a band of each
   other (TOST on the clean forget metric), each is within a distance of the gold (retain-only)
   model, the attack's ceiling is non-empty (the attacked original still knows the forget set),
   and neither arm's retain utility is lower than the other's by more than a margin. Bands are
   fractions of the clean original-gold gap of the forget metric, so they read the same for any
   metric. On ``forget_unseen`` (the facts a relearning attack did not train on, a different set
   for each attack seed) the references must also have been attacked with every arm's attack
   seed, so that they are measured on the same facts. A loss barrier between two unlearned models
   (a basin claim) is judged under the same forgetting, gold-distance and utility conditions for
   the path's two ends, in answer probability (:data:`FORGET_METRIC`): a barrier between a model
   that forgot and one that did not, or one that was destroyed, says nothing about basins. A
   claim that an attack undoes one arm's unlearning tests ``brought_back``, what the attack itself
   added beyond what it gives the gold model (see :class:`Claim`). A failed condition makes the
   verdict inconclusive and the reason names it.
4. **Tests.** Where both arms are unlearned runs with the same seeds (same seed = same batch order
   and relearning subset), the per-seed difference d_i = A_i - B_i is tested (paired t:
   mean(d) +- t_{1-alpha/2, n-1} sd(d)/sqrt(n)); otherwise Welch's t (unequal variances,
   Welch-Satterthwaite dof); against a constant, the one-sample t. Beside it, an exact
   permutation test (sign flips of d for paired or one-sample data, all relabelings for two
   samples) with its smallest attainable p: 1/2^n one-sided for n pairs (0.125 at n = 3), and
   1/C(n_a + n_b, n_a) for two samples (0.05 at 3 vs 3), so with three seeds an exact test can
   never reach p < 0.05 paired and only just reaches it unpaired. Past 65,536 patterns (17 or more
   pairs) seeded random patterns stand in for the enumeration. It is reported, not used by the
   verdict. A zero-width interval (every seed the same) gives no verdict.
5. **Multiplicity.** :func:`evaluate_claims` applies Holm's step-down correction to the p-values
   of all claims tested in one report: sorted p_(1) <= ... <= p_(k), adjusted
   p~_(i) = max_{j <= i} min(1, (k - j + 1) p_(j)).

Decisions: a difference claim is ``reproduced`` when the Holm-adjusted p < alpha and A - B lies on
the claimed side, ``not reproduced`` when it lies on the other side, else ``inconclusive``. An
equivalence claim is ``reproduced`` when TOST's adjusted p < alpha (the (1 - 2 alpha) interval lies
within +-band), ``not reproduced`` when the (1 - alpha) interval lies entirely outside the band.
Each row reports n, the test, the quantity, the settings, the recipes and the conditions checked,
with recovery, ``recovery_gold`` and the latent margin of both arms beside the compared quantity.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from itertools import combinations, product
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.names import DESCENDING_ATTACKS
from analysis.tables import (PATH_ATTACKS, REFERENCES, TRAJECTORY, join_notes, lacks_records, latest_step,
                             model_rows, recovery_per_seed)
from unlearn.records import is_control

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
QUANTITIES = ("value", "delta", "recovery", "recovery_gold", "brought_back", "barrier")
KINDS = ("difference", "equivalence")
BAND_OF = ("absolute", "gap", "b")
REFERENCE_ROLES = {"original": "original", "retain": "retain", "retain-only": "retain"}
LR_PICKS = ("highest", "lowest")
FORGET_METRIC = "prob"    # where a claim's own metric is not a forget metric (a barrier), forgetting is judged in it
CONNECTED_BARRIER = 0.1  # nats of retain NLL: a path whose barrier stays below this is "connected"
ZERO_SPREAD = 1e-12      # a standard error below this (relative to the values) is zero: rounding, not spread
EXACT_LIMIT = 1 << 16     # the most relabelings an exact permutation test enumerates


@dataclass(frozen=True)
class Bands:
    """The stated conditions of a comparison under an attack (module docstring, point 3).

    - ``forget_equivalence``: the clean forget metrics of A and B must be shown equivalent (TOST
      at the claim's alpha) within +- this fraction of the clean original-gold gap |o - r|;
    - ``gold_distance``: each arm's mean clean forget metric within this fraction of |o - r| of the
      level the arms were calibrated to (either side: forgetting far past it is over-forgetting);
      that level is o + ``target`` (r - o): the gold model's for ``target`` 1, halfway for 0.5, so
      a cell calibrated to halfway is judged against halfway, not against the gold model;
    - ``stopped``: every run was stopped where its clean forget answer probability reached the
      target (``UnlearnConfig.stop_at``), so that level is set by the design, and a claim about it
      (attack ``none``, metric ``prob``, a forget split) is inconclusive rather than trivially true;
    - ``min_ceiling``: at every pooled setting, (attacked original - attacked gold) must be at
      least this fraction of the clean gap (the attack leaves knowledge to recover);
    - ``utility_margin``: the lower arm's retain utility may fall at most this fraction below
      the higher arm's (point estimates of the means);
    - ``utility``: (metric, split) pairs tried in order for utility (split ``""``: any).
    """

    forget_equivalence: float = 0.1
    gold_distance: float = 0.15
    min_ceiling: float = 0.5
    utility_margin: float = 0.05
    utility: tuple = (("model_utility", ""), ("prob", "retain"))
    target: float = 1.0
    stopped: bool = False

    def __post_init__(self):
        if not 0 <= self.target <= 1:
            raise ValueError(f"Bands.target = {self.target!r}: the calibration target is the fraction of the "
                             "original-gold gap travelled, in [0, 1] (1: the gold model, 0.5: halfway)")

    def target_name(self) -> str:
        """The calibration level in words, for the condition texts."""
        if self.target == 1:
            return "the gold model"
        return "halfway" if self.target == 0.5 else f"the target ({self.target:g} of the way to the gold model)"


@dataclass(frozen=True)
class Claim:
    """One testable claim, fixed before any number is read (see the module docstring).

    - ``name``: short identifier, one definition per name; ``text``: the claim in words.
    - ``a``, ``b``: optimizer names (or ``original`` / ``retain``); ``b`` None: A against ``than``.
    - ``attack``: ``none`` for the clean models, else the attack's name.
    - ``metric``, ``split``: which records (``split`` None: the metric's only split).
    - ``quantity``: ``value`` (the metric after the attack), ``delta`` (after minus clean, same
      seed), ``recovery`` / ``recovery_gold`` / ``brought_back`` (:func:`analysis.tables.recovery_per_seed`)
      or ``barrier`` (the loss barrier the audit recorded, metric ``barrier``, for the interpolation
      path between ``path_from`` and A). A claim that an attack brings one arm's knowledge back
      (``b`` None, ``direction`` greater) is refused on ``recovery_gold``, which also counts what
      unlearning left before the attack; it tests ``brought_back`` (or ``delta``, ``recovery``).
    - ``kind``: ``difference`` (``direction``: A ``less`` or ``greater`` than B) or
      ``equivalence`` (|A - B| < ``band``; ``band_of``: ``absolute``, ``gap`` = a fraction of the
      clean original-gold gap of the metric, ``b`` = a fraction of |mean B|).
    - ``setting``: one setting; else ``x``: the settings of one strength (a number, or
      ``"strongest"``); else all of the attack's settings, which must share one strength.
    - ``a_lr``, ``b_lr``: pick the arm's recipe by learning rate (a number, ``"highest"`` or
      ``"lowest"``); None: the arm must have a single recipe.
    - ``objective``: restrict to one objective (None: each arm must have one).
    - ``alpha``: 1 - confidence (0.05: 95% intervals); ``min_seeds``: fewest seeds per side.
    - ``references``: for ``recovery`` / ``recovery_gold``, the original and gold model's levels
      pooled over their seeds (``pooled``) or each unlearned seed's own pair (``paired``, where a
      study fits one pair per seed).
    """

    name: str
    text: str
    a: str
    b: str | None
    attack: str
    metric: str
    split: str | None = "forget"
    direction: str = "less"
    quantity: str = "value"
    kind: str = "difference"
    setting: str | None = None
    x: float | str | None = None
    a_lr: float | str | None = None
    b_lr: float | str | None = None
    than: float = 0.0
    band: float | None = None
    band_of: str = "absolute"
    path_from: str | None = None
    objective: str | None = None
    alpha: float = 0.05
    min_seeds: int = 2
    references: str = "pooled"

    def __post_init__(self):
        def bad(what):
            raise ValueError(f"claim {self.name!r}: {what}")
        if self.direction not in ("less", "greater"):
            bad(f"direction must be 'less' or 'greater', got {self.direction!r}")
        if self.quantity not in QUANTITIES:
            bad(f"quantity must be one of {', '.join(QUANTITIES)}, got {self.quantity!r}")
        if self.kind not in KINDS:
            bad(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "equivalence" and not (self.band and self.band > 0):
            bad("an equivalence claim needs a band > 0")
        if self.band_of not in BAND_OF:
            bad(f"band_of must be one of {', '.join(BAND_OF)}, got {self.band_of!r}")
        if isinstance(self.x, str) and self.x != "strongest":
            bad(f"x must be a number or 'strongest', got {self.x!r}")
        for pick in (self.a_lr, self.b_lr):
            if isinstance(pick, str) and pick not in LR_PICKS:
                bad(f"a_lr / b_lr must be a number, 'highest' or 'lowest', got {pick!r}")
        if (self.quantity == "barrier") != (self.path_from is not None):
            bad("quantity 'barrier' and path_from go together (the path from path_from to a)")
        if not 0 < self.alpha < 1:
            bad(f"alpha must be in (0, 1), got {self.alpha!r}")
        if self.b is None and self.quantity == "recovery_gold" and self.direction == "greater" \
                and self.attack != "none":
            bad("recovery_gold > than counts the knowledge unlearning left before the attack as brought back "
                "by it (a model stopped short of the gold level passes with no attack effect at all); test "
                "what the attack itself changed: quantity 'brought_back' (its rise beyond the gold model's), "
                "'delta' or 'recovery'")
        if self.references not in REFERENCES:
            bad(f"references must be 'pooled' or 'paired', got {self.references!r}")

    def arms(self) -> tuple[str, ...]:
        """The optimizer names this claim needs runs of (references excluded)."""
        return tuple(w for w in (self.a, self.b, self.path_from) if w and w not in REFERENCE_ROLES)


@dataclass
class Verdict:
    """The outcome of one claim: ``diff`` = mean(A) - mean(B) (or - ``than``) with its interval."""

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
    p_holm: float = math.nan
    dof: float = math.nan
    test: str = ""
    paired: bool = False
    perm_p: float = math.nan
    perm_p_min: float = math.nan
    perm_text: str = ""
    settings: tuple = ()
    split: str = ""
    recipe_a: str = ""
    recipe_b: str = ""
    conditions: str = ""
    band: float = math.nan
    beside: dict = field(default_factory=dict)
    values_a: list = field(default_factory=list)
    values_b: list = field(default_factory=list)

    def row(self) -> dict:
        c = asdict(self.claim)
        return {"claim": c.pop("name"), "verdict": self.verdict, "text": c.pop("text"), **c,
                "settings": "+".join(self.settings), "recipe_a": self.recipe_a, "recipe_b": self.recipe_b,
                "test": self.test, "paired": self.paired, "n_a": self.n_a, "n_b": self.n_b,
                "mean_a": self.mean_a, "mean_b": self.mean_b, "diff": self.diff, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "dof": self.dof, "p_value": self.p_value, "p_holm": self.p_holm,
                "permutation": self.perm_text, "perm_p": self.perm_p, "perm_p_min": self.perm_p_min,
                "band_abs": self.band, "conditions": self.conditions,
                **{k: self.beside.get(k, math.nan) for k in BESIDE}, "reason": self.reason}


BESIDE = ("recovery_a", "recovery_b", "recovery_gold_a", "recovery_gold_b", "margin_a", "margin_b",
          "margin_clean_a", "margin_clean_b")


# ---------------------------------------------------------------------------------------------
# the claim table (one definition per name)

_RELEARN = dict(attack="relearn", metric="prob", split="forget_unseen", x="strongest", quantity="recovery_gold")
_QUANT4 = dict(attack="quantize", metric="prob", split="forget", x=4, quantity="recovery_gold")

# Claims of "Downgrade to Upgrade" (arXiv 2510.00761) in testable form, named once each. basin's
# zeroth-order representative is AdaZO (zo-adam does not move the tiny model: docs/paper_index.md);
# its N-bit compression is qadam. Robustness claims compare recovery_gold (the attacked model's
# position between the attacked gold model, 0, and the attacked original, 1), whose denominator
# does not depend on how deep an arm forgot; recovery and the latent margin are reported beside.
# Two arms matched in forgetting start from the same position, so their recovery_gold difference is
# the attacks' difference; one arm alone ("undone by") is judged on brought_back, the attack's own
# rise beyond what it gives the gold model (analysis.tables.recovery_per_seed).
PAPER_CLAIMS: list[Claim] = [
    Claim("adam-undone-by-quantize",
          "Adam's unlearning is undone by 4-bit quantization: quantizing raises the unlearned model's "
          "knowledge of the forget set by more than it raises the gold model's (brought_back > 0, in "
          "fractions of the clean original-gold gap).",
          a="adam", b=None, direction="greater", **{**_QUANT4, "quantity": "brought_back"}),
    Claim("adam-undone-by-relearn",
          "Adam's unlearning is undone by relearning: relearning raises the unlearned model's knowledge "
          "of held-out forget items by more than it raises the gold model's (brought_back > 0, in "
          "fractions of the clean original-gold gap).",
          a="adam", b=None, direction="greater", **{**_RELEARN, "quantity": "brought_back"}),
    Claim("zo-vs-adam-relearn",
          "Zeroth-order unlearning (AdaZO) recovers less forgotten knowledge than Adam under relearning.",
          a="adazo", b="adam", **_RELEARN),
    Claim("zo-vs-adam-quantize",
          "Zeroth-order unlearning (AdaZO) recovers less forgotten knowledge than Adam under 4-bit "
          "quantization.", a="adazo", b="adam", **_QUANT4),
    Claim("signadam-vs-adam-relearn",
          "Compressed unlearning (signAdam) recovers less forgotten knowledge than Adam under relearning.",
          a="signadam", b="adam", **_RELEARN),
    Claim("signadam-vs-adam-quantize",
          "Compressed unlearning (signAdam) recovers less forgotten knowledge than Adam under 4-bit "
          "quantization.", a="signadam", b="adam", **_QUANT4),
    Claim("qadam-vs-adam-relearn",
          "N-bit compressed unlearning (qAdam) recovers less forgotten knowledge than Adam under relearning.",
          a="qadam", b="adam", **_RELEARN),
    Claim("qadam-vs-adam-quantize",
          "N-bit compressed unlearning (qAdam) recovers less forgotten knowledge than Adam under 4-bit "
          "quantization.", a="qadam", b="adam", **_QUANT4),
    Claim("hybrid-vs-adam-relearn",
          "Hybrid FO-ZO unlearning recovers less forgotten knowledge than Adam under relearning.",
          a="hybrid", b="adam", **_RELEARN),
    Claim("hybrid-vs-adam-quantize",
          "Hybrid FO-ZO unlearning recovers less forgotten knowledge than Adam under 4-bit quantization.",
          a="hybrid", b="adam", **_QUANT4),
    Claim("sophia-vs-adam-relearn",
          "Second-order unlearning (Sophia) is the least robust: it recovers more forgotten knowledge than "
          "Adam under relearning.", a="sophia", b="adam", direction="greater", **_RELEARN),
    Claim("sophia-vs-adam-quantize",
          "Second-order unlearning (Sophia) is the least robust: it recovers more forgotten knowledge than "
          "Adam under 4-bit quantization.", a="sophia", b="adam", direction="greater", **_QUANT4),
    Claim("zo-basin-not-connected",
          f"Zeroth-order unlearning (AdaZO) lands in a basin not linearly connected to Adam's: the retain "
          f"NLL barrier on the straight path between the two exceeds {CONNECTED_BARRIER} nats.",
          a="adazo", b=None, attack="interpolate", metric="barrier", split="retain", quantity="barrier",
          path_from="adam", than=CONNECTED_BARRIER, direction="greater"),
    Claim("signadam-basin-connected",
          f"Compressed unlearning (signAdam) stays in Adam's basin: the retain NLL barrier on the straight "
          f"path between the two is below {CONNECTED_BARRIER} nats.",
          a="signadam", b=None, attack="interpolate", metric="barrier", split="retain", quantity="barrier",
          path_from="adam", than=CONNECTED_BARRIER, direction="less"),
    Claim("hybrid-keeps-adam-forgetting",
          "Hybrid FO-ZO unlearning forgets as much as Adam (TOST: clean forget probability within 10% of "
          "the original-gold gap).",
          a="hybrid", b="adam", attack="none", metric="prob", split="forget", kind="equivalence",
          band=0.1, band_of="gap"),
    Claim("hybrid-keeps-adam-retain",
          "Hybrid FO-ZO unlearning keeps Adam's retain knowledge (TOST: retain probability within 5% of "
          "Adam's).",
          a="hybrid", b="adam", attack="none", metric="prob", split="retain", kind="equivalence",
          band=0.05, band_of="b"),
    Claim("hybrid-keeps-adam-utility",
          "Hybrid FO-ZO unlearning keeps Adam's model utility (TOST: within 5% of Adam's).",
          a="hybrid", b="adam", attack="none", metric="model_utility", split=None, kind="equivalence",
          band=0.05, band_of="b"),
    Claim("adam-higher-lr-quantize",
          "A higher learning rate makes Adam's unlearning more robust to 4-bit quantization (the highest "
          "lr run recovers less than the lowest).",
          a="adam", b="adam", a_lr="highest", b_lr="lowest", **_QUANT4),
]


def claims_for(optimizers: Iterable[str], claims: Sequence[Claim] = PAPER_CLAIMS) -> list[Claim]:
    """The claims whose optimizer arms were all run (references are always available)."""
    have = {o.lower() for o in optimizers}
    return [c for c in claims if all(w.lower() in have for w in c.arms())]


# ---------------------------------------------------------------------------------------------
# statistics


def welch(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> dict:
    """Welch's two-sample comparison of mean(a) - mean(b).

    Returns ``diff, se, dof, ci_low, ci_high, p_value`` (two-sided). Needs two or more values per
    side. With zero spread on both sides (up to rounding, :data:`ZERO_SPREAD`) ``se`` is 0 and dof,
    CI and p are NaN.
    """
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se <= ZERO_SPREAD * (1 + max(np.abs(a).max(), np.abs(b).max())):
        return {"diff": diff, "se": 0.0, "dof": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "p_value": math.nan}
    dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    return _t_result(diff, se, float(dof), alpha)


def one_sample(d: Sequence[float], alpha: float = 0.05) -> dict:
    """Student's one-sample t on mean(d) (the paired test when d = A - B per seed):
    mean(d) +- t_{1-alpha/2, n-1} sd(d)/sqrt(n). Zero spread: ``se`` 0 and NaN interval."""
    d = np.asarray(d, float)
    diff = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(d.size))
    if se <= ZERO_SPREAD * (1 + np.abs(d).max()):
        return {"diff": diff, "se": 0.0, "dof": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "p_value": math.nan}
    return _t_result(diff, se, float(d.size - 1), alpha)


def _t_result(diff: float, se: float, dof: float, alpha: float) -> dict:
    half = float(stats.t.ppf(1 - alpha / 2, dof)) * se
    return {"diff": diff, "se": se, "dof": dof, "ci_low": diff - half, "ci_high": diff + half,
            "p_value": float(2 * stats.t.sf(abs(diff) / se, dof))}


def tost_p(diff: float, se: float, dof: float, band: float) -> float:
    """Two one-sided tests of |true diff| < band: max(P(T >= (diff + band)/se), P(T <= (diff - band)/se))."""
    return float(max(stats.t.sf((diff + band) / se, dof), stats.t.cdf((diff - band) / se, dof)))


def permutation(a: Sequence[float], b: Sequence[float] | None, direction: str,
                paired: bool, draws: int = 100_000, seed: int = 0) -> tuple[float, float, str]:
    """Permutation test of mean(a) - mean(b) (``b`` None: of mean(a), against 0).

    Paired (``a`` holds the differences, ``b`` None): sign flips; two samples: relabelings of the
    pooled values. Up to :data:`EXACT_LIMIT` patterns, all are enumerated (exact); beyond, ``draws``
    random patterns from ``numpy.random.default_rng(seed)`` stand in for them, with the p-value
    (hits + 1) / (draws + 1), which never understates the exact p in expectation (Phipson & Smyth
    2010, "Permutation p-values should never be zero"). Returns (one-sided p in the claimed
    ``direction``, the smallest p the test can give, a description).
    """
    a = np.asarray(a, float)
    pooled = a if b is None else np.concatenate([a, np.asarray(b, float)])
    n_a = a.size
    count = 2 ** n_a if b is None else math.comb(pooled.size, n_a)
    kind = (f"sign-flip permutation ({'paired, ' if paired else ''}n={n_a})" if b is None
            else f"two-sample permutation ({n_a} vs {pooled.size - n_a})")
    observed = float(a.mean()) if b is None else float(a.mean() - pooled[n_a:].mean())
    if count <= EXACT_LIMIT:
        stats_ = _all_patterns(pooled, n_a, b is None)
        what, extra = f"exact {kind}", 0
    else:
        stats_ = _random_patterns(pooled, n_a, b is None, draws, np.random.default_rng(seed))
        of = f"{count:.3g}" if count < 1e300 else "more than 1e300"   # a float cannot hold a larger count
        what, extra = f"{kind}, {draws} random patterns of {of} (seed {seed})", 1
    tol = 1e-12 * max(1.0, float(np.abs(stats_).max()))
    hits = int((stats_ <= observed + tol).sum() if direction == "less" else (stats_ >= observed - tol).sum())
    p = (hits + extra) / (stats_.size + extra)
    p_min = 1.0 / (stats_.size + extra)
    return p, p_min, (f"{what}: one-sided p = {p:.3g}; smallest attainable p = {p_min:.3g}"
                      + (" (cannot reach 0.05)" if p_min > 0.05 else ""))


def _all_patterns(pooled: np.ndarray, n_a: int, signs: bool) -> np.ndarray:
    """The statistic under every sign flip (``signs``) or every split of ``pooled`` into n_a and the rest."""
    if signs:
        return np.array(list(product((1.0, -1.0), repeat=n_a))) @ pooled / n_a
    total, n_b = pooled.sum(), pooled.size - n_a
    return np.array([pooled[list(idx)].sum() / n_a - (total - pooled[list(idx)].sum()) / n_b
                     for idx in combinations(range(pooled.size), n_a)])


def _random_patterns(pooled: np.ndarray, n_a: int, signs: bool, draws: int, rng: np.random.Generator,
                     chunk: int = 10_000) -> np.ndarray:
    """The statistic under ``draws`` uniformly random sign flips or relabelings, drawn in chunks."""
    total, n_b, out = pooled.sum(), pooled.size - n_a, []
    for start in range(0, draws, chunk):
        size = min(chunk, draws - start)
        if signs:
            out.append(rng.choice((1.0, -1.0), size=(size, n_a)) @ pooled / n_a)
        else:
            first = rng.permuted(np.broadcast_to(pooled, (size, pooled.size)), axis=1)[:, :n_a].sum(axis=1)
            out.append(first / n_a - (total - first) / n_b)
    return np.concatenate(out)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of the finite p-values (NaN stays NaN, and does not count)."""
    p = np.asarray(p_values, float)
    out = np.full(p.size, math.nan)
    idx = [i for i in np.argsort(p, kind="stable") if np.isfinite(p[i])]
    k, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (k - rank) * p[i]))
        out[i] = running
    return out.tolist()


# ---------------------------------------------------------------------------------------------
# arms, settings, per-seed values


class _Inconclusive(Exception):
    """A claim that cannot be tested: the message says why."""


def _resolve_split(df: pd.DataFrame, claim: Claim) -> str:
    if claim.split is not None:
        return claim.split
    splits = sorted(set(df.loc[(df["metric"] == claim.metric), "split"]))
    if len(splits) > 1:
        raise _Inconclusive(f"metric {claim.metric!r} has several splits ({', '.join(splits)}); name one")
    if not splits:
        raise _Inconclusive(f"no {claim.metric!r} records")
    return splits[0]


@dataclass
class _Arm:
    who: str
    rows: pd.DataFrame       # the arm's rows (one recipe) or the reference's rows
    recipe: str = ""
    reference: bool = False


def _lr_of(recipe: str) -> float:
    m = re.match(r"lr=([^ ]+)", recipe or "")
    return float(m.group(1)) if m else math.nan


def _arm(df: pd.DataFrame, claim: Claim, who: str, pick, exclude: str | None = None) -> _Arm:
    if who in REFERENCE_ROLES:
        return _Arm(who, df[df["role"] == REFERENCE_ROLES[who]], reference=True)
    # evaluations logged during training are not about the finished model (and a run folder whose
    # audit could not be traced back to it would otherwise add a second recipe)
    rows = df[(df["role"] == "unlearned") & (df["optimizer"].str.lower() == who.lower())
              & ~df["attack"].isin(TRAJECTORY)]
    if claim.quantity == "barrier":   # a barrier claim reads its paths from df; the arm is the end's own records
        rows = rows[~rows["attack"].isin(PATH_ATTACKS)]
    if claim.objective is not None:
        rows = rows[rows["objective"] == claim.objective]
    if rows.empty:
        raise _Inconclusive(f"no records of {who}" + (f" with objective {claim.objective}" if claim.objective else "")
                            + (" (a barrier between two unlearned models is judged only where both ends forgot "
                               "alike: their clean records are needed)" if claim.quantity == "barrier" else ""))
    objectives = sorted(set(rows["objective"]))
    if len(objectives) > 1:
        raise _Inconclusive(f"{who} has runs with several objectives ({', '.join(objectives)}); set the "
                            "claim's objective")
    recipes = sorted(set(rows["recipe"]), key=lambda r: (_lr_of(r), r))
    if isinstance(pick, str):
        lrs = [_lr_of(r) for r in recipes if r != exclude and np.isfinite(_lr_of(r))]
        if not lrs:
            raise _Inconclusive(f"{who} has one recipe ({recipes[0] or 'no learning rate recorded'}); the claim "
                                "compares two learning rates" if len(recipes) == 1 or exclude else
                                f"no learning rate recorded for {who}")
        target = (max if pick == "highest" else min)(lrs)
        chosen = [r for r in recipes if r != exclude and _lr_of(r) == target]
    elif pick is not None:
        chosen = [r for r in recipes if np.isclose(_lr_of(r), float(pick), rtol=1e-9, atol=0)]
        if not chosen:
            raise _Inconclusive(f"no {who} run at lr={float(pick):g} (runs: {'; '.join(recipes)})")
    else:
        chosen = recipes
    if len(chosen) > 1:
        raise _Inconclusive(f"{who} has runs at several settings ({'; '.join(chosen)}); runs at different "
                            "settings are never pooled: name one with the claim's a_lr / b_lr")
    return _Arm(who, rows[rows["recipe"] == chosen[0]], recipe=chosen[0])


def _strongest(attack: str, xs: Iterable[float]) -> float:
    xs = [x for x in xs if np.isfinite(x)]
    return (min if attack in DESCENDING_ATTACKS else max)(xs)


def _settings(claim: Claim, split: str, arms: Sequence[_Arm]) -> tuple[str, ...]:
    """The attack settings pooled (see the module docstring, point 2)."""
    if claim.attack == "none" or claim.quantity == "barrier":
        return ()
    present = None
    xs: dict[str, float] = {}
    for arm in arms:
        sub = arm.rows[(arm.rows["attack"] == claim.attack) & (arm.rows["metric"] == claim.metric)
                       & (arm.rows["split"] == split)]
        xs.update(zip(sub["setting"], sub["x"]))
        have = {s for s in sub["setting"] if not is_control(s)}
        present = have if present is None else present & have
    present = present or set()
    names = " and ".join(a.who for a in arms)
    if not present:
        raise _Inconclusive(f"no {claim.attack!r} records of {claim.metric!r} on {split!r} shared by {names}"
                            + (" (controls such as -snapback are never attack settings)" if xs else ""))
    if claim.setting is not None:
        if is_control(claim.setting):
            raise _Inconclusive(f"{claim.setting!r} is a control, not an attack setting")
        if claim.setting not in present:
            raise _Inconclusive(f"setting {claim.setting!r} of {claim.attack!r} not measured for {names}")
        return (claim.setting,)
    if claim.x == "strongest":
        if not any(np.isfinite(xs[s]) for s in present):
            raise _Inconclusive(f"the settings of {claim.attack!r} ({', '.join(sorted(present))}) have no "
                                "numeric strength; name one")
        target = _strongest(claim.attack, (xs[s] for s in present))
        return tuple(sorted(s for s in present if xs[s] == target))
    if claim.x is not None:
        chosen = tuple(sorted(s for s in present if np.isclose(xs[s], float(claim.x))))
        if not chosen:
            raise _Inconclusive(f"no {claim.attack!r} setting at strength {claim.x:g} for {names} "
                                f"(settings: {', '.join(sorted(present))})")
        return chosen
    strengths = {xs[s] if np.isfinite(xs[s]) else s for s in present}
    if len(strengths) > 1:
        raise _Inconclusive(f"the settings of {claim.attack!r} ({', '.join(sorted(present))}) have different "
                            "strengths and are not pooled; name one with the claim's setting or x")
    return tuple(sorted(present))


def _refs(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["role"] != "unlearned"]


def _recovery(df: pd.DataFrame, arm: _Arm, claim: Claim, split: str, settings) -> pd.DataFrame:
    rec = recovery_per_seed(pd.concat([arm.rows, _refs(df)]), metrics=[claim.metric], splits=[split],
                            references=claim.references)
    return rec[(rec["attack"] == claim.attack) & rec["setting"].isin(list(settings))]


def _per_seed_mean(frame: pd.DataFrame, column: str) -> pd.Series:
    """Per seed, the mean over settings of the per-setting value (each setting counts once)."""
    if frame.empty:
        return pd.Series(dtype=float)
    per = frame.groupby(["seed", "setting"])[column].mean()
    return per.groupby(level="seed").mean().dropna()


def _metric_seeds(rows: pd.DataFrame, attack: str, metric: str, split: str, settings=()) -> pd.Series:
    sub = latest_step(model_rows(rows))
    sub = sub[(sub["attack"] == attack) & (sub["metric"] == metric) & (sub["split"] == split)]
    if settings:
        sub = sub[sub["setting"].isin(list(settings))]
    return _per_seed_mean(sub, "value")


def _path_arms(df: pd.DataFrame, claim: Claim, a: _Arm) -> list[_Arm] | None:
    """The two unlearned arms at the ends of a barrier claim's path (A and ``path_from``), whose
    forgetting and retain utility must match for the barrier to compare basins rather than a model
    that forgot with one that did not (or one destroyed); None when ``path_from`` is a reference model."""
    if claim.path_from in REFERENCE_ROLES:
        return None
    return [a, _arm(df, claim, claim.path_from, None)]


def _path_ends(model: str) -> tuple[str, str] | None:
    for sep in ("<->", "->", "→", "|"):
        if sep in model:
            ends = [re.sub(r"-s\d+$", "", e.strip()).lower() for e in model.split(sep, 1)]
            return ends[0], ends[1]
    return None


def _barrier_seeds(df: pd.DataFrame, claim: Claim, split: str) -> pd.Series:
    """Per seed, the loss barrier the audit recorded (metric ``barrier``, one per path and split,
    ``audit.attacks.interpolate.loss_barrier`` on NLL) for the path between ``path_from`` and A."""
    sub = df[(df["attack"] == "interpolate") & (df["metric"] == claim.metric) & (df["split"] == split)]
    want = {claim.path_from.lower(), claim.a.lower()}
    sub = sub.loc[[set(_path_ends(m) or ()) == want for m in sub["model"]]]  # .loc: an empty mask keeps the columns
    return sub.groupby("seed")["value"].mean().dropna()


def _values(df: pd.DataFrame, claim: Claim, arm: _Arm, split: str, settings) -> pd.Series:
    if claim.quantity == "barrier":
        return _barrier_seeds(df, claim, split)
    if claim.quantity == "value":
        return _metric_seeds(arm.rows, claim.attack, claim.metric, split, settings)
    if arm.reference:
        raise _Inconclusive(f"{claim.quantity} is defined for unlearned models, not for the {arm.who} model")
    return _per_seed_mean(_recovery(df, arm, claim, split, settings), claim.quantity)


def _beside(df: pd.DataFrame, claim: Claim, arms: Sequence[_Arm], split: str, settings) -> dict:
    """Recovery, recovery_gold and the latent margin of each arm, beside the compared quantity."""
    out = {}
    for arm, tag in zip(arms, ("a", "b")):
        if arm.reference or claim.quantity == "barrier":
            continue
        if claim.attack not in ("none",) + PATH_ATTACKS:
            rec = _recovery(df, arm, claim, split, settings)
            for q in ("recovery", "recovery_gold"):
                s = _per_seed_mean(rec, q)
                out[f"{q}_{tag}"] = float(s.mean()) if s.size else math.nan
            m = _metric_seeds(arm.rows, claim.attack, "margin", split, settings)
            out[f"margin_{tag}"] = float(m.mean()) if m.size else math.nan
        m = _metric_seeds(arm.rows, "none", "margin", split)
        out[f"margin_clean_{tag}"] = float(m.mean()) if m.size else math.nan
    return out


# ---------------------------------------------------------------------------------------------
# conditions (module docstring, point 3)


def _ref_mean(df: pd.DataFrame, role: str, attack: str, metric: str, split: str, settings=()) -> float:
    s = _metric_seeds(df[df["role"] == role], attack, metric, split, settings)
    return float(s.mean()) if s.size else math.nan


def _gap(df: pd.DataFrame, metric: str, split: str) -> tuple[float, float, float]:
    """(clean original, clean gold, their difference)."""
    o = _ref_mean(df, "original", "none", metric, split)
    r = _ref_mean(df, "retain", "none", metric, split)
    return o, r, o - r


def _conditions(df: pd.DataFrame, claim: Claim, arms: Sequence[_Arm], split: str, settings,
                bands: Bands, paired: bool, metric: str | None = None) -> tuple[list[str], list[str]]:
    """(every check as text, the failed ones) for a comparison under an attack, or between the two
    ends of a path (no settings: no ceiling); forgetting is judged in ``metric`` (default: the
    claim's)."""
    fsplit = split if split.startswith("forget") else "forget"
    metric = metric or claim.metric
    o, _, gap = _gap(df, metric, fsplit)
    if not (np.isfinite(gap) and abs(gap) > 1e-9):
        msg = (f"no clean original and gold (retain-only) {metric!r} on {fsplit!r} to check the conditions "
               "against")
        return [msg], [msg]
    checks, failed = [], []

    def check(ok: bool, text: str):
        checks.append(("ok: " if ok else "FAILED: ") + text)
        if not ok:
            failed.append(text)

    series = [_metric_seeds(arm.rows, "none", metric, fsplit) for arm in arms]
    if any(s.size == 0 for s in series):
        check(False, f"clean {metric!r} on {fsplit!r} missing for an arm")
        return checks, failed
    if len(arms) == 2:
        band = bands.forget_equivalence * abs(gap)
        a, b = series
        if paired and set(a.index) == set(b.index):
            t = one_sample((a - b.reindex(a.index)).to_numpy())
        else:
            t = welch(a, b)
        p = tost_p(t["diff"], t["se"], t["dof"], band) if t["se"] > 0 else math.nan  # no spread: not shown
        check(p < claim.alpha,
              f"both arms forgotten to within ±{band:.3g} ({bands.forget_equivalence:g} of the original-gold gap "
              f"{abs(gap):.3g}) of each other: clean {metric} {a.mean():.3f} vs {b.mean():.3f}, TOST p = {p:.3g}")
    level, where = o - bands.target * gap, bands.target_name()
    for arm, s in zip(arms, series):
        dist = abs(s.mean() - level) / abs(gap)
        check(dist <= bands.gold_distance,
              f"{arm.who} within {bands.gold_distance:g} of the gap from {where}: clean {metric} "
              f"{s.mean():.3f} vs {'gold' if bands.target == 1 else 'target'} {level:.3f} is {dist:.2f} of the gap "
              f"from {where}")
    if fsplit == "forget_unseen":
        subsets = _unseen_subsets(df, arms, claim.attack)
        if subsets is not None:
            check(*subsets)
    for setting in settings:
        oa = _ref_mean(df, "original", claim.attack, metric, fsplit, (setting,))
        ra = _ref_mean(df, "retain", claim.attack, metric, fsplit, (setting,))
        ceiling = (oa - ra) / gap
        check(np.isfinite(ceiling) and ceiling >= bands.min_ceiling,
              f"the attack's ceiling at {setting} is non-empty: attacked original {oa:.3f} vs attacked gold "
              f"{ra:.3f} = {ceiling:.2f} of the clean gap (needs ≥ {bands.min_ceiling:g})")
    if len(arms) == 2:
        for um, us in bands.utility:
            u = [_metric_seeds(arm.rows, "none", um, us) if us else
                 _metric_seeds(arm.rows, "none", um, _only_split(arm.rows, um)) for arm in arms]
            if all(x.size for x in u):
                ua, ub = (float(x.mean()) for x in u)
                drop = (max(ua, ub) - min(ua, ub)) / max(abs(ua), abs(ub)) if max(abs(ua), abs(ub)) else 0.0
                check(drop <= bands.utility_margin,
                      f"retain utility ({um}{' on ' + us if us else ''}) of the lower arm at most "
                      f"{bands.utility_margin:g} below the other's: {ua:.3f} vs {ub:.3f} ({drop:.2f} lower)")
                break
        else:
            check(False, "no retain utility records for both arms (model_utility, or prob on retain)")
    return checks, failed


def _unseen_subsets(df: pd.DataFrame, arms: Sequence[_Arm], attack: str) -> tuple[bool, str] | None:
    """(ok, text) of the condition that the references were attacked on every arm's unseen facts:
    ``forget_unseen`` under ``attack`` depends on the attack seed (the relearning subset), so the
    original's and the gold model's records must cover every attack seed the arms' records have.
    None where the records carry no attack seed (nothing to check)."""
    def seeds(rows: pd.DataFrame) -> set[int]:
        if "attack_seed" not in rows:
            return set()
        picked = rows.loc[(rows["split"] == "forget_unseen") & (rows["attack"] == attack), "attack_seed"]
        return {int(x) for x in picked.dropna()}

    need = set().union(*(seeds(arm.rows) for arm in arms))
    if not need:
        return None
    have = {role: seeds(df[df["role"] == role]) for role in ("original", "retain")}
    short = {role: sorted(need - got) for role, got in have.items() if need - got}
    text = (f"the references were attacked on every arm's unseen facts (attack seeds {sorted(need)})"
            + ("" if not short else ": " + "; ".join(f"the {'gold' if role == 'retain' else role} model lacks "
                                                        f"{seeds_}" for role, seeds_ in short.items())
               + ", so its unseen level is measured on other facts than the arms'"))
    return not short, text


def _only_split(rows: pd.DataFrame, metric: str) -> str:
    splits = sorted(set(rows.loc[rows["metric"] == metric, "split"]))
    return splits[0] if len(splits) == 1 else ""


# ---------------------------------------------------------------------------------------------
# evaluation


def _assess(df: pd.DataFrame, claim: Claim, bands: Bands) -> Verdict:
    """Everything but the multiplicity correction: a Verdict with verdict "" when tested."""
    v = Verdict(claim, INCONCLUSIVE, "")
    if bands.stopped and claim.attack == "none" and claim.metric == "prob" and (claim.split or "").startswith("forget"):
        v.reason = ("matched by design: every run stopped where its clean forget probability reached the target, "
                    "so equal forgetting says nothing here (how many steps each arm took does)")
        return v
    try:
        split = v.split = _resolve_split(df, claim)
        a = _arm(df, claim, claim.a, claim.a_lr)
        arms = [a]
        if claim.b is not None:
            same = claim.b.lower() == claim.a.lower()
            arms.append(_arm(df, claim, claim.b, claim.b_lr, exclude=a.recipe if same else None))
        v.recipe_a, v.recipe_b = a.recipe, arms[1].recipe if len(arms) == 2 else ""
        ends = _path_arms(df, claim, a) if claim.quantity == "barrier" else None
        v.settings = _settings(claim, split, arms)
        va = _values(df, claim, a, split, v.settings)
        vb = _values(df, claim, arms[1], split, v.settings) if len(arms) == 2 else None
    except _Inconclusive as err:
        v.reason = str(err)
        return v
    v.n_a, v.mean_a, v.values_a = int(va.size), _mean(va), [float(x) for x in va]
    if vb is not None:
        v.n_b, v.mean_b, v.values_b = int(vb.size), _mean(vb), [float(x) for x in vb]
    v.beside = _beside(df, claim, arms, split, v.settings)
    what = _what(claim, split, v.settings)
    if va.size == 0 or (vb is not None and vb.size == 0):
        lacking = [arm for arm, s in zip(arms, (va, vb)) if s is not None and s.size == 0]
        who, why = " and ".join(arm.who for arm in lacking), _undefined(df, claim, lacking, split, v.settings)
        v.reason = (f"{what} is undefined on every seed of {who}: {why}" if why
                    else f"no usable records of {what} for {who}" + _needs(claim))
        return v
    if va.size < claim.min_seeds or (vb is not None and vb.size < claim.min_seeds):
        v.reason = (f"too few seeds for an interval ({claim.a}: {va.size}"
                    + (f", {claim.b}: {vb.size}" if vb is not None else "") + f"; need {claim.min_seeds} each)")
        return v
    unlearned_pair = len(arms) == 2 and not any(arm.reference for arm in arms)
    v.paired = unlearned_pair and set(va.index) == set(vb.index)
    if (claim.attack not in ("none",) + PATH_ATTACKS and not a.reference) or ends:
        checks, failed = (_conditions(df, claim, ends, "forget", (), bands, True, metric=FORGET_METRIC) if ends
                          else _conditions(df, claim, arms, split, v.settings, bands, v.paired))
        v.conditions = "; ".join(checks)
        if failed:
            v.reason = "conditions for a sound comparison not met: " + "; ".join(failed) + f" ({what})"
            return v
    if vb is None:
        t, v.test = one_sample(va.to_numpy() - claim.than), "one-sample t"
        v.perm_p, v.perm_p_min, v.perm_text = permutation(va.to_numpy() - claim.than, None, claim.direction, False)
    elif v.paired:
        d = (va - vb.reindex(va.index)).to_numpy()
        t, v.test = one_sample(d), "paired t"
        v.perm_p, v.perm_p_min, v.perm_text = permutation(d, None, claim.direction, True)
    else:
        t, v.test = welch(va, vb, claim.alpha), "Welch t"
        v.perm_p, v.perm_p_min, v.perm_text = permutation(va.to_numpy(), vb.to_numpy(), claim.direction, False)
    if claim.kind == "equivalence":  # the permutation tests above test "no difference", not equivalence
        v.test = v.test.replace(" t", " TOST")
        v.perm_p = math.nan
        v.perm_text = (f"no permutation counterpart of TOST computed (a permutation test of these seeds "
                       f"cannot go below p = {v.perm_p_min:.3g})")
    v.diff, v.dof = t["diff"], t["dof"]
    if t["se"] == 0:  # zero spread, see welch / one_sample
        v.reason = (f"every seed gave the same number on both sides: the interval has zero width, which says "
                    f"nothing about seed-to-seed spread ({what})")
        v.ci_low = v.ci_high = v.diff
        return v
    t = _t_result(t["diff"], t["se"], t["dof"], claim.alpha)
    v.ci_low, v.ci_high = t["ci_low"], t["ci_high"]
    if claim.kind == "equivalence":
        v.band = _band(df, claim, split, v.mean_b)
        if not np.isfinite(v.band):
            v.reason = f"no clean original and gold {claim.metric!r} to set the band ({what})"
            return v
        v.p_value = tost_p(t["diff"], t["se"], t["dof"], v.band)
    else:
        v.p_value = t["p_value"]
    v.verdict = ""
    return v


def _mean(s: pd.Series) -> float:
    return float(s.mean()) if s.size else math.nan


def _band(df: pd.DataFrame, claim: Claim, split: str, mean_b: float) -> float:
    if claim.band_of == "absolute":
        return float(claim.band)
    if claim.band_of == "b":
        return float(claim.band * abs(mean_b))
    return float(claim.band * abs(_gap(df, claim.metric, split)[2]))


def _what(claim: Claim, split: str, settings) -> str:
    text = f"{claim.quantity} of {claim.metric!r} on {split!r}"
    if claim.quantity == "barrier":
        return text + f" along the path {claim.path_from} <-> {claim.a}"
    if claim.attack != "none":
        text += f" under {claim.attack}" + (f" at {'+'.join(settings)}" if settings else "")
    return text


def _undefined(df: pd.DataFrame, claim: Claim, arms: Sequence[_Arm], split: str, settings) -> str:
    """Why a ratio is undefined where its records exist (the notes of recovery_per_seed), or ""."""
    if claim.quantity not in ("recovery", "recovery_gold", "brought_back") or any(arm.reference for arm in arms):
        return ""
    notes = join_notes(n for arm in arms for n in _recovery(df, arm, claim, split, settings)["note"])
    return "" if lacks_records(notes) else notes


def _needs(claim: Claim) -> str:
    if claim.quantity in ("recovery", "recovery_gold", "brought_back", "delta"):
        return (" (needs the clean unlearned model, and the original and retain-only models under the same "
                "attack)")
    if claim.quantity == "barrier":
        return f" (needs interpolation records between {claim.path_from} and {claim.a})"
    return ""


def _finish(v: Verdict, p_adjusted: float, k: int) -> Verdict:
    """Decide a tested claim from its Holm-adjusted p (module docstring)."""
    c = v.claim
    v.p_holm = p_adjusted
    what = _what(c, v.split, v.settings)
    interval = f"[{v.ci_low:.3g}, {v.ci_high:.3g}]"
    a, vs = c.a, c.b if c.b is not None else f"{c.than:g}"
    if c.b == c.a:                                  # one arm at two settings: name them by lr
        a, vs = (f"{c.a} ({m.group(0) if (m := re.match(r'lr=[^ ]+', r or '')) else r})"
                 for r in (v.recipe_a, v.recipe_b))
    stat = (f"{v.test}, n = {v.n_a}" + (f"/{v.n_b}" if c.b is not None else "")
            + f", p = {v.p_value:.3g}" + (f", Holm-adjusted over {k} claims {p_adjusted:.3g}" if k > 1 else ""))
    tail = f" ({what}; {stat}; {v.perm_text})"
    if c.kind == "equivalence":
        if p_adjusted < c.alpha:
            v.verdict, v.reason = REPRODUCED, f"{a} - {vs} is within ±{v.band:.3g}: equivalent by TOST" + tail
        elif v.ci_low > v.band or v.ci_high < -v.band:
            v.verdict, v.reason = NOT_REPRODUCED, (f"the {100 * (1 - c.alpha):g}% CI of {a} - {vs} {interval} "
                                                   f"lies outside ±{v.band:.3g}: they differ" + tail)
        else:
            v.verdict, v.reason = INCONCLUSIVE, (f"equivalence within ±{v.band:.3g} not shown (CI {interval})"
                                                 + (" after Holm's correction" if v.p_value < c.alpha else "") + tail)
        return v
    claimed = v.diff < 0 if c.direction == "less" else v.diff > 0
    side = "below" if c.direction == "less" else "above"
    if p_adjusted < c.alpha:
        if claimed:
            v.verdict, v.reason = REPRODUCED, (f"the CI of {a} - {vs} {interval} lies entirely {side} 0, as "
                                               "claimed" + tail)
        else:
            v.verdict, v.reason = NOT_REPRODUCED, (f"the CI of {a} - {vs} {interval} lies entirely on the other "
                                                   "side of 0: the opposite holds" + tail)
    elif v.p_value < c.alpha:
        v.verdict, v.reason = INCONCLUSIVE, (f"the CI of {a} - {vs} {interval} excludes 0, but not after Holm's "
                                             f"correction across {k} claims" + tail)
    else:
        v.verdict, v.reason = INCONCLUSIVE, (f"the CI of {a} - {vs} {interval} contains 0: no difference resolved "
                                             "at these seeds" + tail)
    return v


def evaluate(df: pd.DataFrame, claim: Claim, bands: Bands = Bands()) -> Verdict:
    """The verdict on one claim alone (no multiplicity correction)."""
    return evaluate_claims(df, [claim], bands)[0]


def evaluate_claims(df: pd.DataFrame, claims: Iterable[Claim] = PAPER_CLAIMS, bands: Bands = Bands()) -> list[Verdict]:
    """The verdict on every claim, in order, with Holm's correction across the claims tested."""
    out = [_assess(df, c, bands) for c in claims]
    tested = [v for v in out if v.verdict == ""]
    for v, p in zip(tested, holm([v.p_value for v in tested])):
        _finish(v, p, len(tested))
    return out


def verdict_table(verdicts: Iterable[Verdict]) -> pd.DataFrame:
    """One row per verdict: claim, verdict, text, the claim's fields, settings, recipes, test, n,
    means, diff, CI, p (raw and Holm), the permutation test, conditions, the quantities beside
    (recovery, recovery_gold, latent margin of each arm) and the reason."""
    return pd.DataFrame([v.row() for v in verdicts])
