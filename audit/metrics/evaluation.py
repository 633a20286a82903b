"""The metric registry and :func:`evaluate`, which scores a model on a benchmark's splits.

:func:`evaluate` plans the passes the requested metrics need, runs each once (one
:class:`~audit.metrics.passes.AnswerPool` for every answer / paraphrase / perturbed answer /
option, one greedy generation per distinct question), and derives every metric from those
numbers. It returns long-form records ``{"metric", "split", "value"}`` (the caller adds
``model``, ``attack``, ``setting``, ``seed``) and a per-question ``pandas.DataFrame``.

Splits: ``forget``, ``retain``, ``holdout`` and one per utility set (``world_facts``,
``real_authors``). Which metrics apply where:

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

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from audit.metrics import choice, mia, tofu
from audit.metrics.passes import AnswerPool, greedy_generate, model_max_length, ragged_index
from unlearn.errors import BasinError, require
from unlearn.registry import lookup

UTILITY_SPLIT = "utility"  # the split name model_utility is reported under
CORE_SPLITS = ("forget", "retain", "holdout")


# ----------------------------------------------------------------------------- scored numbers

@dataclass
class SplitScores:
    """Indices into the pool (and generations) for one split's rows."""

    name: str
    kind: str                          # forget / retain / holdout / utility
    rows: list[dict]
    answer: np.ndarray                 # [n] pool index of (question, answer)
    correct: np.ndarray | None = None  # [n] paraphrased answer (utility sets: the answer)
    wrong: np.ndarray | None = None    # [n, m] perturbed answers, -1 where a row has fewer
    mc_rows: np.ndarray | None = None  # positions of the rows with options
    options: np.ndarray | None = None  # [n_mc, k] option indices, -1 where fewer
    labels: np.ndarray | None = None   # [n_mc]
    generations: list[str] | None = None
    tokens: bool = False               # answer tokens kept (membership inference)


@dataclass
class Reference:
    """What forget quality and PrivLeak need from the retain-only model."""

    truth_ratio: np.ndarray | None = None  # per-question R on the forget split
    mink_auc: float | None = None
    minkpp_auc: float | None = None
    muse_auc: float | None = None          # MUSE's whole-text AUC (muse_privleak's AUC_retrain)


@dataclass
class Scored:
    pool: AnswerPool
    splits: dict[str, SplitScores]
    k: float = mia.DEFAULT_K
    reference: Reference = field(default_factory=Reference)


@dataclass
class Result:
    split: str
    value: float
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # per-question values


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``compute(scored) -> [Result]`` (empty when it does not apply).

    ``higher_is_better`` reads the metric as a measure of what the model knows or can do, as on
    retain and utility sets; on the forget split unlearning pushes the other way (e.g. lower prob).
    ``None`` where the ideal is a reference value instead: an AUC at the retain-only model's
    (about 0.5), PrivLeak at 0.
    """

    name: str
    description: str
    higher_is_better: bool | None
    compute: Callable[[Scored], list[Result]]
    # passes: answer, truth (paraphrase / perturbed answers), options, generate (greedy answers),
    # tokens (forget and holdout answer tokens); "truth:retain,utility" limits a pass to kinds
    needs: frozenset = frozenset()
    unavailable: str = ""            # why it may not apply (shown when asked for explicitly)


# ----------------------------------------------------------------------------- per-split numbers

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

METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("prob", "TOFU Probability: mean p_norm(answer) = P(a|q)^(1/|a|); utility sets: "
           "p_norm(a) / (p_norm(a) + sum p_norm(perturbed)) [TOFU, arXiv 2401.06121]",
           True, _compute_prob, frozenset({"answer", "truth:utility"})),
    Metric("nll", "mean token negative log-likelihood of the answer (EOS included)",
           False, _compute_nll, frozenset({"answer"})),
    Metric("exact_match", "teacher-forced exact match: every answer token is the argmax",
           True, _compute_exact, frozenset({"answer"})),
    Metric("rouge", "ROUGE-L recall (stemmed) of the greedy answer vs the answer [TOFU]",
           True, _compute_rouge, frozenset({"generate"}), "it needs generation"),
    Metric("truth_ratio", "TOFU Truth Ratio R = geo-mean p_norm(perturbed) / p_norm(paraphrase): "
           "forget mean min(R,1/R), retain/utility mean max(0,1-R) [TOFU]",
           True, _compute_truth_ratio, frozenset({f"truth:forget,{_U}"}), _TRUTH),
    Metric("forget_quality", "TOFU Forget Quality: KS-test p-value of forget truth ratios vs the "
           "retain-only model's [TOFU]", True, _compute_forget_quality, frozenset({"truth:forget"}),
           _REF),
    Metric("model_utility", "TOFU Model Utility: harmonic mean of prob, rouge, truth_ratio over "
           "retain and every utility set [TOFU]", True, _compute_model_utility,
           frozenset({"answer", f"truth:{_U}", f"generate:{_U}"}),
           "it needs the retain or a utility split"),
    Metric("mink_auc", "AUC of the Min-K% (K=40%) score, forget (members) vs holdout (ideal: the "
           "retain-only model's, about 0.5) [Min-K%, arXiv 2310.16789]", None,
           _auc_metric("mink"), frozenset({"tokens"}), _HOLDOUT),
    Metric("minkpp_auc", "AUC of the Min-K%++ score, forget vs holdout (ideal about 0.5) "
           "[Min-K%++, arXiv 2404.02936]", None, _auc_metric("minkpp"), frozenset({"tokens"}),
           _HOLDOUT),
    Metric("privleak", "MUSE PrivLeak: (AUC - AUC_retain) / AUC_retain * 100 with Min-K%, MUSE's AUC "
           "convention (forget 0, holdout 1): 0 is ideal, -100 = forget set fully recognised "
           "[MUSE, arXiv 2407.06460]", None, _privleak_metric("mink"),
           frozenset({"tokens"}), f"{_HOLDOUT}; {_REF}"),
    Metric("privleak_pp", "PrivLeak with the Min-K%++ score (0 is ideal) [MUSE; Min-K%++]", None,
           _privleak_metric("minkpp"), frozenset({"tokens"}), f"{_HOLDOUT}; {_REF}"),
    Metric("mc_accuracy", "multiple-choice accuracy: the option with the highest mean token "
           "log-likelihood", True, _compute_mc, frozenset({"options"}),
           "its rows need options and label"),
    Metric("margin", "latent-knowledge margin: mean token log p(correct) - log p(wrong of the same "
           "template), mean over questions (= -log truth ratio)", True, _compute_margin,
           frozenset({"truth"}), _TRUTH),
    Metric("margin_win", "fraction of questions where the correct answer beats the wrong ones "
           "(margin > 0)", True, _compute_margin_win, frozenset({"truth"}), _TRUTH),
]}


def _needs(needs: set, name: str, kind: str) -> bool:
    """Whether a pass ``name`` runs on a split of ``kind``: ``needs`` holds ``name`` (every split)
    or ``name:kind1,kind2`` (only those kinds)."""
    return name in needs or any(n.startswith(name + ":") and kind in n.split(":", 1)[1].split(",")
                                for n in needs)


# MUSE's metrics (audit/metrics/muse.py) run their own passes (raw-text prompts, whole-text
# membership scores, :func:`audit.metrics.muse.score_muse`) on a benchmark that carries MUSE's
# data (muse:news, muse:books); :func:`evaluate` runs them when asked, and on any other benchmark
# they return nothing.
def _muse_metric(name: str):
    def compute(scored):
        from audit.metrics import muse

        return muse.COMPUTE[name](scored)
    return compute


_MUSE = "it runs on muse:news / muse:books only"
METRICS.update({m.name: m for m in [
    Metric("verbmem", "MUSE VerbMem: mean ROUGE-L F1 of the 128-token greedy continuation of a forget "
           "excerpt vs its true continuation (first 128 tokens) [MUSE, arXiv 2407.06460]", True,
           _muse_metric("verbmem"), frozenset({"generate:muse"}), _MUSE),
    Metric("knowmem", "MUSE KnowMem: mean ROUGE-L F1 of the 32-token greedy answer after few-shot QA "
           "prompts, forget and retain [MUSE]", True, _muse_metric("knowmem"),
           frozenset({"generate:muse"}), _MUSE),
    Metric("muse_auc", "AUC of Min-K% (K=40%) on whole texts, forget labelled 0 and holdout 1 "
           "(memorised: near 0; retrained: about 0.5) [MUSE]", None, _muse_metric("muse_auc"),
           frozenset({"muse"}), _MUSE),
    Metric("muse_privleak", "MUSE PrivLeak: (muse_auc - AUC_retrain) / AUC_retrain * 100 (0 ideal; "
           "negative: under-unlearned, positive: over-unlearned) [MUSE]", None,
           _muse_metric("muse_privleak"), frozenset({"muse"}), f"{_MUSE}, with the retain-only model's AUC"),
]})


# Every metric that needs no generation (ROUGE, model utility, VerbMem and KnowMem decode greedily).
FAST_METRICS = tuple(name for name, m in METRICS.items()
                     if not any(n.split(":")[0] == "generate" for n in m.needs))
MUSE_METRICS = ("verbmem", "knowmem", "muse_auc", "muse_privleak")


# ----------------------------------------------------------------------------- planning the passes

def _benchmark_splits(benchmark) -> dict[str, tuple[str, list[dict]]]:
    out = {"forget": ("forget", benchmark.forget), "retain": ("retain", benchmark.retain),
           "holdout": ("holdout", benchmark.holdout)}
    for name, rows in benchmark.utility.items():
        require(name not in out, f"utility set name {name!r} clashes with a core split")
        out[name] = ("utility", rows)
    return out


TEXT_TOKENS = 512   # a plain-text passage is scored on its first TEXT_TOKENS tokens


def text_splits(benchmark, splits: Sequence[str] | None) -> list[str]:
    """The asked-for splits (default: every non-empty one) whose rows are plain-text passages, as
    RMU's WMDP corpora are: they have no question, so they are scored as text, not as QA."""
    from unlearn.data.benchmarks import is_text_row

    available = _benchmark_splits(benchmark)
    names = [n for n, (_, rows) in available.items() if rows] if splits is None else list(dict.fromkeys(splits))
    return [n for n in names if n in available and available[n][1] and all(is_text_row(r) for r in available[n][1])]


def score_texts(model, tokenizer, rows: Sequence[dict], max_length: int = TEXT_TOKENS) -> dict[str, np.ndarray]:
    """Per passage: ``nll``, the mean negative log-likelihood of its tokens (every token after the
    first, up to ``max_length``), and ``prob`` = exp(-nll), the per-token probability: the same
    normalisation as a QA answer's ``prob``, over the whole passage."""
    from unlearn.data.format import encode_rows, pad_id_of
    from unlearn.scoring import answer_stats

    stats = answer_stats(model, encode_rows(tokenizer, rows, max_length=max_length), pad_id_of(tokenizer))
    return {"nll": stats.mean_nll.double().numpy(), "prob": stats.p_norm.double().numpy()}


def plan(pool: AnswerPool, benchmark, metrics: Sequence[str],
         splits: Sequence[str] | None) -> dict[str, SplitScores]:
    """Add every pair the metrics need to ``pool``; return the splits' index arrays (empty splits
    are left out)."""
    available = _benchmark_splits(benchmark)
    if splits is None:
        names = [n for n, (_, rows) in available.items() if rows]
    else:
        names = list(dict.fromkeys(splits))
        for n in names:
            require(lookup(available, n, "split")[1], f"split {n!r} of {benchmark.name} has no rows")
    needs = set().union(*(METRICS[m].needs for m in metrics))
    mia_tokens = "tokens" in needs and "forget" in names and "holdout" in names
    out = {}
    for name in names:
        kind, rows = available[name]
        qs = [r["question"] for r in rows]
        tokens = mia_tokens and name in ("forget", "holdout")
        answers = pool.add_many(qs, [r["answer"] for r in rows], tokens=tokens)
        s = SplitScores(name, kind, rows, answers, tokens=tokens)
        has_fields = all(r.get("perturbed_answer") for r in rows) and \
            (kind == "utility" or all("paraphrased_answer" in r for r in rows))
        if _needs(needs, "truth", kind) and has_fields:
            key = "answer" if kind == "utility" else "paraphrased_answer"
            s.correct = pool.add_many(qs, [r[key] for r in rows])
            s.wrong = ragged_index([pool.add_many([r["question"]] * len(r["perturbed_answer"]),
                                                  r["perturbed_answer"]) for r in rows])
        if _needs(needs, "options", kind):
            mc = [i for i, r in enumerate(rows) if r.get("options") and r.get("label") is not None]
            if mc:
                s.mc_rows = np.array(mc, dtype=np.int64)
                s.options = ragged_index([pool.add_many([rows[i]["question"]] * len(rows[i]["options"]),
                                                        rows[i]["options"]) for i in mc])
                s.labels = np.array([int(rows[i]["label"]) for i in mc], dtype=np.int64)
        out[name] = s
    return out


# ----------------------------------------------------------------------------- references

def reference_stats(per_example: pd.DataFrame) -> dict:
    """The retain-only model's numbers forget quality and PrivLeak need, from the per-example table
    :func:`evaluate` returned for it: ``{"truth_ratio": [R on forget], "mink_auc", "minkpp_auc",
    "muse_auc"}``
    (keys whose columns are absent are left out). JSON-serialisable. The AUCs are only comparable
    with the unlearned model's if both tables used the same ``k``."""
    out: dict = {}
    forget = per_example[per_example["split"] == "forget"]
    holdout = per_example[per_example["split"] == "holdout"]
    if "truth_ratio_R" in per_example and forget["truth_ratio_R"].notna().any():
        out["truth_ratio"] = [float(x) for x in forget["truth_ratio_R"].dropna()]
    for kind in ("mink", "minkpp"):
        if kind in per_example and forget[kind].notna().any() and holdout[kind].notna().any():
            out[f"{kind}_auc"] = mia.auc(forget[kind].dropna(), holdout[kind].dropna())
    texts = {s: per_example[per_example["split"] == f"privleak:{s}"] for s in ("forget", "holdout")}
    if "mink" in per_example and all(len(t) and t["mink"].notna().any() for t in texts.values()):
        from audit.metrics.muse import muse_auc

        out["muse_auc"] = muse_auc(texts["forget"]["mink"].dropna(), texts["holdout"]["mink"].dropna())
    return out


def save_reference(per_example: pd.DataFrame, path: str | os.PathLike) -> dict:
    """Write :func:`reference_stats` of a retain-only model's table to a JSON file; return it."""
    ref = reference_stats(per_example)
    Path(path).write_text(json.dumps(ref, indent=1))
    return ref


def _as_reference(source, model_kwargs: dict) -> Reference:
    """A :class:`Reference` from a model, a per-example table, a dict, a JSON file or a list of R."""
    if source is None:
        return Reference()
    if isinstance(source, Reference):
        return source
    if isinstance(source, torch.nn.Module):
        _, table = evaluate(source, **model_kwargs)
        return _as_reference(reference_stats(table), model_kwargs)
    if isinstance(source, pd.DataFrame):
        return _as_reference(reference_stats(source), model_kwargs)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        require(path.is_file(), f"retain_stats file {path} does not exist; save one with "
                                "audit.metrics.save_reference(per_example_of_retain_model, path)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise BasinError(f"retain_stats file {path} is not valid JSON ({err.msg})") from None
        return _as_reference(data, model_kwargs)
    if isinstance(source, dict):
        tr = source.get("truth_ratio")
        return Reference(None if tr is None else np.asarray(tr, dtype=np.float64),
                         source.get("mink_auc"), source.get("minkpp_auc"), source.get("muse_auc"))
    if isinstance(source, (list, tuple, np.ndarray)):
        return Reference(np.asarray(source, dtype=np.float64))
    raise BasinError(f"retain_stats of type {type(source).__name__} is not understood; pass the "
                     "retain-only model, its per-example table, a reference dict or a JSON file")


# ----------------------------------------------------------------------------- entry point

def evaluate(model, tokenizer, benchmark, metrics: Iterable[str] | None = None,
             retain_stats=None, batch_size: int = 32, max_new_tokens: int = 200,
             splits: Iterable[str] | None = None, k: float = mia.DEFAULT_K,
             max_length: int | None = None, generate: bool = True,
             strict: bool = True, muse_options: dict | None = None,
             prompt_format=None) -> tuple[list[dict], pd.DataFrame]:
    """Score ``model`` on ``benchmark``; return ``(records, per_example)``.

    - ``model``, ``tokenizer``: a model object and its tokenizer, or a name/folder (then
      ``tokenizer`` may be None; see :func:`unlearn.models.load_model`).
    - ``benchmark``: a :class:`~unlearn.data.benchmarks.Benchmark` or a name like ``world:forget10``.
    - ``metrics``: names from :data:`METRICS`; default all of them, skipping quietly those that do
      not apply (no reference, no holdout, no options). A metric asked for by name that cannot
      be computed raises :class:`~unlearn.errors.BasinError`.
    - ``generate=False`` skips greedy generation, the expensive part, and with it ``rouge`` and
      ``model_utility`` (:data:`FAST_METRICS` lists the rest).
    - ``retain_stats``: the retain-only model (scored here, with the same tokenizer and ``k``), its
      ``per_example`` table, a dict / JSON file from :func:`save_reference`, or a list of its
      per-question forget truth ratios. Needed by ``forget_quality`` and ``privleak*``.
    - ``splits``: which of ``forget``, ``retain``, ``holdout`` and the utility sets to score
      (default every non-empty one).
    - ``strict=False``: metrics asked for by name that do not apply to this benchmark or these
      splits are skipped quietly, as with ``metrics=None`` (the audit runner uses this).
    - ``max_new_tokens``: generation length for ROUGE (TOFU: 200); ``k``: the Min-K% fraction;
      ``max_length``: token limit of prompt + answer (default the model's position limit).
    - MUSE (``muse:news``, ``muse:books``): ``verbmem``, ``knowmem``, ``muse_auc`` and
      ``muse_privleak`` run MUSE's own passes (:func:`audit.metrics.muse.score_muse`; their
      per-example rows have splits ``verbmem:forget``, ``knowmem:forget`` ...); ``muse_privleak``
      takes AUC_retrain from ``retain_stats``. ``muse_options`` passes ``limit``,
      ``verbmem_tokens``, ``knowmem_tokens``, ``score`` and ``batch_size`` on to it.
    - ``prompt_format``: how questions and answers are laid out and tokenised (a preset name such
      as ``llama3-instruct``, a dict of fields or a :class:`~unlearn.data.format.PromptFormat`;
      default ``plain``); the scored pairs, the generation prompts and a retain-only model passed
      as ``retain_stats`` all use it. MUSE's passes keep MUSE's own prompts.

    Records are ``{"metric", "split", "value"}``; ``per_example`` has one row per (split, row)
    with ``question`` and the per-question columns (``prob``, ``p_norm``, ``nll``,
    ``exact_match``, ``rouge``, ``generation``, ``truth_ratio``, ``truth_ratio_R``, ``mink``,
    ``minkpp``, ``mc_accuracy``, ``mc_choice``, ``margin``, ``margin_win``) that were computed.
    """
    from unlearn.data.benchmarks import load_benchmark
    from unlearn.data.format import prompt_format as as_format
    from unlearn.models import load_model

    require(isinstance(batch_size, int) and batch_size >= 1,
            f"batch_size must be a positive whole number, got {batch_size!r}")
    require(isinstance(max_new_tokens, int) and max_new_tokens >= 1,
            f"max_new_tokens must be a positive whole number, got {max_new_tokens!r}")
    require(isinstance(k, (int, float)) and 0 < k <= 1, f"k must be in (0, 1], got {k!r}")
    explicit = metrics is not None and strict
    fmt = as_format(prompt_format)
    names = list(METRICS) if metrics is None else [m for m in dict.fromkeys(metrics)]
    for m in names:
        lookup(METRICS, m, "metric")
    if not generate:
        slow = [m for m in names if m not in FAST_METRICS]
        require(not (explicit and slow), f"{', '.join(slow)} need(s) generation; drop them or "
                                         "pass generate=True")
        names = [m for m in names if m in FAST_METRICS]
    model, tokenizer = load_model(model, tokenizer)
    bench = load_benchmark(benchmark)
    splits = None if splits is None else list(splits)

    muse_data = getattr(bench, "muse", None)
    wants_ref = {"forget_quality", "privleak", "privleak_pp", "muse_privleak"} & set(names)
    mia_ok = bool(bench.forget and bench.holdout)
    ref_metrics = [m for m, want in (("truth_ratio", "forget_quality" in wants_ref),
                                     ("mink_auc", mia_ok and "privleak" in wants_ref),
                                     ("minkpp_auc", mia_ok and "privleak_pp" in wants_ref),
                                     ("muse_auc", muse_data is not None and "muse_privleak" in wants_ref))
                   if want]
    ref_kwargs = dict(tokenizer=tokenizer, benchmark=bench, batch_size=batch_size, metrics=ref_metrics,
                      splits=["forget", "holdout"] if mia_ok else ["forget"], k=k, max_length=max_length,
                      strict=False, muse_options=muse_options, prompt_format=fmt)
    reference = _as_reference(retain_stats if wants_ref else None, ref_kwargs)

    texts = text_splits(bench, splits)   # plain-text passages: prob / nll over the whole text
    if texts:
        qa = [n for n, (_, rows) in _benchmark_splits(bench).items() if rows] if splits is None else splits
        splits = [n for n in qa if n not in texts]
    pool = AnswerPool(tokenizer, max_length or model_max_length(model), fmt)
    planned = plan(pool, bench, names, splits)
    pool.run(model, batch_size)
    needs = set().union(*(METRICS[m].needs for m in names))
    to_generate = [s for s in planned.values() if _needs(needs, "generate", s.kind)]
    if to_generate:
        questions = list(dict.fromkeys(r["question"] for s in to_generate for r in s.rows))
        generated = greedy_generate(model, tokenizer, questions, max_new_tokens, batch_size, fmt)
        answers = dict(zip(questions, generated))
        for s in to_generate:
            s.generations = [answers[r["question"]] for r in s.rows]
    muse_names = [m for m in names if m in MUSE_METRICS]
    if muse_data is not None and muse_names:
        from audit.metrics.muse import MuseScored, score_muse

        options = {"batch_size": min(batch_size, 8), **(muse_options or {})}
        muse = score_muse(model, tokenizer, muse_data, muse_names, reference=reference.muse_auc,
                          k=k, max_length=max_length, **options)
        scored = MuseScored(pool, planned, float(k), reference, muse=muse)
    else:
        scored = Scored(pool, planned, float(k), reference)

    records: list[dict] = []
    frames = []
    text_metrics = [m for m in ("prob", "nll") if m in names]
    for name in texts if text_metrics else []:
        rows = _benchmark_splits(bench)[name][1]
        values = score_texts(model, tokenizer, rows, min(max_length or TEXT_TOKENS, model_max_length(model)))
        records += [{"metric": m, "split": name, "value": float(values[m].mean())} for m in text_metrics]
        frames.append(pd.DataFrame({"split": name, "row": np.arange(len(rows), dtype=np.int64),
                                    "text": [r["text"][:200] for r in rows], **{m: values[m] for m in text_metrics}}))
    columns: dict[str, dict[str, np.ndarray]] = {name: {} for name in planned}
    muse_columns: dict[str, dict] = {}
    for m in names:
        results = METRICS[m].compute(scored)
        if explicit and not results and not (m in text_metrics and texts):
            why = METRICS[m].unavailable or "no scored split has what it needs"
            raise BasinError(f"metric {m!r} cannot be computed on {bench.name}: {why}")
        for res in results:
            if not math.isnan(res.value):
                records.append({"metric": m, "split": res.split, "value": float(res.value)})
            if m in MUSE_METRICS:
                muse_columns.setdefault(m, {}).setdefault(res.split, {}).update(res.columns)
            elif res.split in columns:
                columns[res.split].update(res.columns)
    for name, s in planned.items():
        frame = pd.DataFrame({"split": name, "row": np.arange(len(s.rows), dtype=np.int64),
                              "question": [r["question"] for r in s.rows], **columns[name]})
        frames.append(frame)
    if getattr(scored, "muse", None) is not None:
        from audit.metrics.muse import muse_table

        frames.append(muse_table(scored.muse, muse_columns))
    table = pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=["split", "row", "question"])
    return records, table

