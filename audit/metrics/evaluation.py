""":func:`evaluate`, which scores a model on a benchmark's splits with the metrics of
:data:`audit.metrics.table.METRICS`, and the retain-only model's reference numbers.

:func:`evaluate` plans the passes the requested metrics need, runs each once (one
:class:`~audit.metrics.passes.AnswerPool` for every answer / paraphrase / perturbed answer /
option, one greedy generation per distinct question), and derives every metric from those
numbers. It returns long-form records ``{"metric", "split", "value"}`` (the caller adds
``model``, ``attack``, ``setting``, ``seed``) and a per-question ``pandas.DataFrame``.

Splits: ``forget``, ``retain``, ``holdout`` and one per utility set (``world_facts``,
``real_authors``); which metric applies where is tabled in :mod:`audit.metrics.table`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from audit.metrics import mia
from audit.metrics.muse import MUSE_METRICS, muse_auc, muse_table, score_muse
from audit.metrics.passes import AnswerPool, greedy_generate, model_max_length, ragged_index
from audit.metrics.table import FAST_METRICS, METRICS, needs_pass
from audit.metrics.types import Reference, Scored, SplitScores, compute_metrics
from unlearn.data.benchmarks import is_text_row, load_benchmark
from unlearn.data.format import encode_rows, pad_id_of
from unlearn.data.format import prompt_format as as_format
from unlearn.errors import BasinError, require
from unlearn.loading import load_model
from unlearn.registry import lookup
from unlearn.scoring import answer_stats

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
    available = _benchmark_splits(benchmark)
    names = [n for n, (_, rows) in available.items() if rows] if splits is None else list(dict.fromkeys(splits))
    return [n for n in names if n in available and available[n][1] and all(is_text_row(r) for r in available[n][1])]


def score_texts(model, tokenizer, rows: Sequence[dict], max_length: int = TEXT_TOKENS) -> dict[str, np.ndarray]:
    """Per passage: ``nll``, the mean negative log-likelihood of its tokens (every token after the
    first, up to ``max_length``), and ``prob`` = exp(-nll), the per-token probability: the same
    normalisation as a QA answer's ``prob``, over the whole passage."""
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
        if needs_pass(needs, "truth", kind) and has_fields:
            key = "answer" if kind == "utility" else "paraphrased_answer"
            s.correct = pool.add_many(qs, [r[key] for r in rows])
            s.wrong = ragged_index([pool.add_many([r["question"]] * len(r["perturbed_answer"]),
                                                  r["perturbed_answer"]) for r in rows])
        if needs_pass(needs, "options", kind):
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
      ``tokenizer`` may be None; see :func:`unlearn.loading.load_model`).
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
    names, explicit = _metric_names(metrics, strict, generate, batch_size, max_new_tokens, k)
    fmt = as_format(prompt_format)
    model, tokenizer = load_model(model, tokenizer)
    bench = load_benchmark(benchmark)
    splits = None if splits is None else list(splits)
    reference = _reference(retain_stats, names, bench, dict(
        tokenizer=tokenizer, benchmark=bench, batch_size=batch_size, k=k, max_length=max_length,
        strict=False, muse_options=muse_options, prompt_format=fmt))

    texts = text_splits(bench, splits)   # plain-text passages: prob / nll over the whole text
    if texts:
        qa = [n for n, (_, rows) in _benchmark_splits(bench).items() if rows] if splits is None else splits
        splits = [n for n in qa if n not in texts]
    pool = AnswerPool(tokenizer, max_length or model_max_length(model), fmt)
    planned = plan(pool, bench, names, splits)
    pool.run(model, batch_size)
    _generate(model, tokenizer, planned, names, max_new_tokens, batch_size, fmt)
    muse_names = [m for m in names if m in MUSE_METRICS]
    muse = None
    if getattr(bench, "muse", None) is not None and muse_names:
        options = {"batch_size": min(batch_size, 8), **(muse_options or {})}
        muse = score_muse(model, tokenizer, bench.muse, muse_names, reference=reference.muse_auc,
                          k=k, max_length=max_length, **options)
    scored = Scored(pool, planned, float(k), reference, muse=muse)

    text_metrics = [m for m in ("prob", "nll") if m in names] if texts else []
    records, frames = _text_records(model, tokenizer, bench, texts, text_metrics, max_length)
    computed, by_metric = compute_metrics(METRICS, names, scored, explicit=explicit, where=bench.name,
                                          may_be_empty=text_metrics)
    records += computed
    for name, s in planned.items():
        columns = {}
        for m in names:
            if m not in MUSE_METRICS:
                columns.update(by_metric.get(m, {}).get(name, {}))
        frames.append(pd.DataFrame({"split": name, "row": np.arange(len(s.rows), dtype=np.int64),
                                    "question": [r["question"] for r in s.rows], **columns}))
    if muse is not None:
        frames.append(muse_table(muse, {m: c for m, c in by_metric.items() if m in MUSE_METRICS}))
    table = pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=["split", "row", "question"])
    return records, table


def _metric_names(metrics, strict: bool, generate: bool, batch_size, max_new_tokens, k) -> tuple[list[str], bool]:
    """Check :func:`evaluate`'s options; return the metric names to compute and whether they were
    asked for by name (then one that cannot be computed is refused)."""
    require(isinstance(batch_size, int) and batch_size >= 1,
            f"batch_size must be a positive whole number, got {batch_size!r}")
    require(isinstance(max_new_tokens, int) and max_new_tokens >= 1,
            f"max_new_tokens must be a positive whole number, got {max_new_tokens!r}")
    require(isinstance(k, (int, float)) and 0 < k <= 1, f"k must be in (0, 1], got {k!r}")
    explicit = metrics is not None and strict
    names = list(METRICS) if metrics is None else [m for m in dict.fromkeys(metrics)]
    for m in names:
        lookup(METRICS, m, "metric")
    if not generate:
        slow = [m for m in names if m not in FAST_METRICS]
        require(not (explicit and slow), f"{', '.join(slow)} need(s) generation; drop them or "
                                         "pass generate=True")
        names = [m for m in names if m in FAST_METRICS]
    return names, explicit


def _reference(retain_stats, names: list[str], bench, kwargs: dict) -> Reference:
    """The retain-only model's numbers that the metrics ``names`` need (scored here when
    ``retain_stats`` is the model itself, on only what they need)."""
    wants = {"forget_quality", "privleak", "privleak_pp", "muse_privleak"} & set(names)
    mia_ok = bool(bench.forget and bench.holdout)
    metrics = [m for m, want in (("truth_ratio", "forget_quality" in wants),
                                 ("mink_auc", mia_ok and "privleak" in wants),
                                 ("minkpp_auc", mia_ok and "privleak_pp" in wants),
                                 ("muse_auc", getattr(bench, "muse", None) is not None and "muse_privleak" in wants))
               if want]
    kwargs = dict(kwargs, metrics=metrics, splits=["forget", "holdout"] if mia_ok else ["forget"])
    return _as_reference(retain_stats if wants else None, kwargs)


def _generate(model, tokenizer, planned: dict[str, SplitScores], names: list[str], max_new_tokens: int,
              batch_size: int, fmt=None) -> None:
    """One greedy answer per distinct question of the splits whose metrics decode (ROUGE, model
    utility), prompted in ``fmt``, stored on each split as ``generations``."""
    needs = set().union(*(METRICS[m].needs for m in names))
    to_generate = [s for s in planned.values() if needs_pass(needs, "generate", s.kind)]
    if not to_generate:
        return
    questions = list(dict.fromkeys(r["question"] for s in to_generate for r in s.rows))
    answers = dict(zip(questions, greedy_generate(model, tokenizer, questions, max_new_tokens, batch_size, fmt)))
    for s in to_generate:
        s.generations = [answers[r["question"]] for r in s.rows]


def _text_records(model, tokenizer, bench, texts: list[str], metrics: list[str], max_length) -> tuple[list, list]:
    """Records and per-passage tables of the plain-text splits ``texts`` (``prob`` / ``nll``)."""
    records, frames = [], []
    for name in texts if metrics else []:
        rows = _benchmark_splits(bench)[name][1]
        values = score_texts(model, tokenizer, rows, min(max_length or TEXT_TOKENS, model_max_length(model)))
        records += [{"metric": m, "split": name, "value": float(values[m].mean())} for m in metrics]
        frames.append(pd.DataFrame({"split": name, "row": np.arange(len(rows), dtype=np.int64),
                                    "text": [r["text"][:200] for r in rows], **{m: values[m] for m in metrics}}))
    return records, frames
