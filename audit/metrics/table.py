"""The metric registry, :data:`METRICS`: each TOFU / membership / multiple-choice / margin metric
as a :class:`~audit.metrics.types.Metric` whose ``compute`` derives it from the scored passes, plus
MUSE's metrics (:data:`audit.metrics.muse.MUSE_TABLE`). Which metric applies where:

==================  ================================================  ===========================
metric              splits                                            needs
==================  ================================================  ===========================
prob                all (utility sets: normalised over the wrong)     answer (+ perturbed)
nll, exact_match    all                                               answer
rouge               all                                               greedy generation
truth_ratio         forget, retain, utility sets                      paraphrase + perturbed
margin, margin_win  every split whose rows have perturbed answers     paraphrase + perturbed
mc_accuracy         splits whose rows have ``options`` / ``label``    every option
forget_quality      forget                                            retain-only model's R
model_utility       ``utility`` (summary of retain + utility sets)    prob, rouge, truth_ratio
mink_auc(_pp)       forget (forget vs holdout)                        answer tokens, holdout
privleak(_pp)       forget                                            + retain-only model's AUC
==================  ================================================  ===========================

For every per-question column named like a metric, the column's mean over a split is that
metric's value on the split.
"""

from __future__ import annotations

import math

import numpy as np

from audit.metrics import choice, mia, tofu
from audit.metrics.muse import MUSE_METRICS, MUSE_TABLE
from audit.metrics.types import UTILITY_SPLIT, Metric, Result, Scored, SplitScores

__all__ = ["METRICS", "FAST_METRICS", "MUSE_METRICS", "QA_METRICS", "describe_metrics", "needs_pass"]


def _truth_ok(s: SplitScores) -> bool:
    return s.correct is not None and s.wrong is not None


def _ratios(scored: Scored, s: SplitScores) -> np.ndarray:
    wrong_nll = scored.pool.nll(s.wrong)
    return tofu.truth_ratio(scored.pool.nll(s.correct), wrong_nll)


def _prob_terms(scored: Scored, s: SplitScores) -> np.ndarray | None:
    p = scored.pool.p_norm(s.answer)
    if s.kind != "utility":
        return p
    if s.wrong is None:
        return None
    return tofu.normalised_probability(p, np.nan_to_num(scored.pool.p_norm(s.wrong), nan=0.0))


def _compute_prob(scored):
    out = []
    for s in scored.splits.values():
        terms = _prob_terms(scored, s)
        if terms is not None:
            out.append(Result(s.name, float(np.mean(terms)),
                              {"prob": terms, "p_norm": scored.pool.p_norm(s.answer)}))
    return out


def _compute_nll(scored):
    return [Result(s.name, float(np.mean(v)), {"nll": v})
            for s in scored.splits.values() for v in [scored.pool.nll(s.answer)]]


def _compute_exact(scored):
    return [Result(s.name, float(np.mean(v)), {"exact_match": v})
            for s in scored.splits.values() for v in [scored.pool.exact_match(s.answer)]]


def _rouge_terms(s: SplitScores) -> np.ndarray:
    return tofu.rouge_l_recall(s.generations, [r["answer"] for r in s.rows])


def _compute_rouge(scored):
    return [Result(s.name, float(np.mean(v)), {"rouge": v, "generation": np.array(s.generations, dtype=object)})
            for s in scored.splits.values() if s.generations is not None for v in [_rouge_terms(s)]]


def _compute_truth_ratio(scored):
    out = []
    for s in scored.splits.values():
        if s.kind == "holdout" or not _truth_ok(s):
            continue
        r = _ratios(scored, s)
        terms = tofu.truth_ratio_terms(r, forget=s.kind == "forget")
        out.append(Result(s.name, float(np.mean(terms)), {"truth_ratio": terms, "truth_ratio_R": r}))
    return out


def _compute_forget_quality(scored):
    s = scored.splits.get("forget")
    ref = scored.reference.truth_ratio
    if s is None or not _truth_ok(s) or ref is None:
        return []
    return [Result("forget", tofu.forget_quality(_ratios(scored, s), ref))]


def _utility_parts(scored) -> list[float] | None:
    parts = []
    for s in scored.splits.values():
        if s.kind not in ("retain", "utility"):
            continue
        terms = _prob_terms(scored, s)
        if terms is None or s.generations is None or not _truth_ok(s):
            return None
        r = _ratios(scored, s)
        parts += [float(np.mean(terms)), float(np.mean(_rouge_terms(s))),
                  tofu.truth_ratio_score(r, forget=False)]
    return parts or None


def _compute_model_utility(scored):
    parts = _utility_parts(scored)
    return [] if parts is None else [Result(UTILITY_SPLIT, tofu.model_utility(parts))]


def _mia_columns(scored, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-example Min-K% (``kind="mink"``) or Min-K%++ (``"minkpp"``) scores on forget and holdout."""
    f, h = scored.splits.get("forget"), scored.splits.get("holdout")
    if f is None or h is None or not (f.tokens and h.tokens):
        return None
    out = []
    for s in (f, h):
        values, mask = scored.pool.padded_tokens(s.answer, "logp" if kind == "mink" else "z")
        out.append(mia.min_k(values, mask, scored.k).numpy().astype(np.float64))
    return out[0], out[1]


def _auc_metric(kind: str):
    def compute(scored):
        got = _mia_columns(scored, kind)
        if got is None:
            return []
        forget, holdout = got
        return [Result("forget", mia.auc(forget, holdout), {kind: forget}),
                Result("holdout", math.nan, {kind: holdout})]  # columns only, no record
    return compute


def _privleak_metric(kind: str):
    def compute(scored):
        ref = scored.reference.mink_auc if kind == "mink" else scored.reference.minkpp_auc
        got = _mia_columns(scored, kind)
        if got is None or ref is None:
            return []
        # MUSE's AUC labels forget 0 and holdout 1: the complement of P(forget > holdout)
        return [Result("forget", mia.privleak(1.0 - mia.auc(*got), 1.0 - ref))]
    return compute


def _compute_mc(scored):
    out = []
    for s in scored.splits.values():
        if s.options is None:
            continue
        option_scores = scored.pool.mean_logp(s.options)
        correct = choice.mc_correct(option_scores, s.labels)
        col = np.full(len(s.rows), np.nan)
        col[s.mc_rows] = correct
        picked = np.full(len(s.rows), np.nan)
        picked[s.mc_rows] = choice.choose(option_scores)
        out.append(Result(s.name, float(np.mean(correct)), {"mc_accuracy": col, "mc_choice": picked}))
    return out


def _margins(scored, s):
    return choice.margins(scored.pool.mean_logp(s.correct), scored.pool.mean_logp(s.wrong))


def _compute_margin(scored):
    return [Result(s.name, float(np.mean(m)), {"margin": m})
            for s in scored.splits.values() if _truth_ok(s) for m in [_margins(scored, s)]]


def _compute_margin_win(scored):
    return [Result(s.name, choice.margin_win_rate(m), {"margin_win": (m > 0).astype(np.float64)})
            for s in scored.splits.values() if _truth_ok(s) for m in [_margins(scored, s)]]


_REF = ("it needs the retain-only model: pass retain_stats= (the model, its per-example table "
        "or a saved reference JSON)")
_HOLDOUT = "it needs a benchmark with holdout rows and the forget and holdout splits"
_TRUTH = "its rows need perturbed_answer (and paraphrased_answer outside utility sets)"
_U = "retain,utility"

QA_METRICS: list[Metric] = [
    Metric("prob", "TOFU Probability: mean p_norm(answer) = P(a|q)^(1/|a|); utility sets: "
           "p_norm(a) / (p_norm(a) + sum p_norm(perturbed)) [TOFU, arXiv 2401.06121]",
           True, _compute_prob, frozenset({"answer", "truth:utility"}),
           knowledge=True, label="answer probability (per-token normalised)"),
    Metric("nll", "mean token negative log-likelihood of the answer (EOS included)",
           False, _compute_nll, frozenset({"answer"}),
           knowledge=False, label="NLL (nats per token)"),
    Metric("exact_match", "teacher-forced exact match: every answer token is the argmax",
           True, _compute_exact, frozenset({"answer"}),
           knowledge=True, label="exact match (fraction of answers)"),
    Metric("rouge", "ROUGE-L recall (stemmed) of the greedy answer vs the answer [TOFU]",
           True, _compute_rouge, frozenset({"generate"}), "it needs generation",
           knowledge=True, label="ROUGE-L recall"),
    Metric("truth_ratio", "TOFU Truth Ratio R = geo-mean p_norm(perturbed) / p_norm(paraphrase): "
           "forget mean min(R,1/R), retain/utility mean max(0,1-R) [TOFU]",
           True, _compute_truth_ratio, frozenset({f"truth:forget,{_U}"}), _TRUTH,
           knowledge=None, label="truth ratio"),
    Metric("forget_quality", "TOFU Forget Quality: KS-test p-value of forget truth ratios vs the "
           "retain-only model's [TOFU]", True, _compute_forget_quality, frozenset({"truth:forget"}),
           _REF,
           knowledge=None, label="forget quality (KS-test p-value)"),
    Metric("model_utility", "TOFU Model Utility: harmonic mean of prob, rouge, truth_ratio over "
           "retain and every utility set [TOFU]", True, _compute_model_utility,
           frozenset({"answer", f"truth:{_U}", f"generate:{_U}"}),
           "it needs the retain or a utility split",
           knowledge=None, label="model utility (harmonic mean)"),
    Metric("mink_auc", "AUC of the Min-K% (K=40%) score, forget (members) vs holdout (ideal: the "
           "retain-only model's, about 0.5) [Min-K%, arXiv 2310.16789]", None,
           _auc_metric("mink"), frozenset({"tokens"}), _HOLDOUT,
           knowledge=None, label="membership-inference AUC (Min-K%)"),
    Metric("minkpp_auc", "AUC of the Min-K%++ score, forget vs holdout (ideal about 0.5) "
           "[Min-K%++, arXiv 2404.02936]", None, _auc_metric("minkpp"), frozenset({"tokens"}),
           _HOLDOUT,
           knowledge=None, label="membership-inference AUC (Min-K%++)"),
    Metric("privleak", "MUSE PrivLeak: (AUC - AUC_retain) / AUC_retain * 100 with Min-K%, MUSE's AUC "
           "convention (forget 0, holdout 1): 0 is ideal, -100 = forget set fully recognised "
           "[MUSE, arXiv 2407.06460]", None, _privleak_metric("mink"),
           frozenset({"tokens"}), f"{_HOLDOUT}; {_REF}",
           knowledge=None, label="PrivLeak (%, Min-K%)"),
    Metric("privleak_pp", "PrivLeak with the Min-K%++ score (0 is ideal) [MUSE; Min-K%++]", None,
           _privleak_metric("minkpp"), frozenset({"tokens"}), f"{_HOLDOUT}; {_REF}",
           knowledge=None, label="PrivLeak (%, Min-K%++)"),
    Metric("mc_accuracy", "multiple-choice accuracy: the option with the highest mean token "
           "log-likelihood", True, _compute_mc, frozenset({"options"}),
           "its rows need options and label",
           knowledge=True, label="multiple-choice accuracy"),
    Metric("margin", "latent-knowledge margin: mean token log p(correct) - log p(wrong of the same "
           "template), mean over questions (= -log truth ratio)", True, _compute_margin,
           frozenset({"truth"}), _TRUTH,
           knowledge=True, label="latent margin (nats, correct - wrong)"),
    Metric("margin_win", "fraction of questions where the correct answer beats the wrong ones "
           "(margin > 0)", True, _compute_margin_win, frozenset({"truth"}), _TRUTH,
           knowledge=True, label="margin win rate (fraction correct > wrong)"),
]

METRICS: dict[str, Metric] = {m.name: m for m in [*QA_METRICS, *MUSE_TABLE.values()]}



# Every metric that needs no generation (ROUGE, model utility, VerbMem and KnowMem decode greedily).
FAST_METRICS = tuple(name for name, m in METRICS.items()
                     if not any(n.split(":")[0] == "generate" for n in m.needs))


def needs_pass(needs: set, name: str, kind: str) -> bool:
    """Whether a pass ``name`` runs on a split of ``kind``: ``needs`` holds ``name`` (every split)
    or ``name:kind1,kind2`` (only those kinds)."""
    return name in needs or any(n.startswith(name + ":") and kind in n.split(":", 1)[1].split(",")
                                for n in needs)


def describe_metrics(names) -> dict[str, dict]:
    """``{name: {"label", "higher_is_better", "knowledge"}}`` for the registered ``names``: what an
    audit writes into its manifest so that a report needs no table of its own."""
    return {n: METRICS[n].describe() for n in names if n in METRICS}
