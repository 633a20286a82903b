"""The types every metric shares: what :func:`audit.metrics.evaluate` scores (:class:`Scored`, one
:class:`SplitScores` per split, the retain-only model's :class:`Reference`), what a metric returns
(:class:`Result`) and the self-describing :class:`Metric` of the registry
(:data:`audit.metrics.table.METRICS`); and :func:`compute_metrics`, the one loop that turns a
:class:`Scored` into long-form records."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from audit.metrics.mia import DEFAULT_K
from audit.metrics.passes import AnswerPool
from unlearn.errors import BasinError

UTILITY_SPLIT = "utility"  # the split name model_utility is reported under
CORE_SPLITS = ("forget", "retain", "holdout")


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
    """Everything a metric's ``compute`` reads: the scored answer pool, each split's indices into
    it, the Min-K% fraction, the retain-only model's numbers and, on MUSE benchmarks, MUSE's own
    passes (:class:`audit.metrics.muse.MuseScores`)."""

    pool: AnswerPool | None
    splits: dict[str, SplitScores]
    k: float = DEFAULT_K
    reference: Reference = field(default_factory=Reference)
    muse: Any = None


@dataclass
class Result:
    split: str
    value: float
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # per-question values


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``compute(scored) -> [Result]`` (empty when it does not apply).

    It describes itself, so that nothing downstream re-derives facts from its name:

    - ``higher_is_better`` reads the metric as a measure of what the model knows or can do, as on
      retain and utility sets; on the forget split unlearning pushes the other way (e.g. lower
      prob). ``None`` where the ideal is a reference value instead: an AUC at the retain-only
      model's (about 0.5), PrivLeak at 0.
    - ``knowledge``: whether a higher value means the model knows *more* (``True`` for prob,
      ``False`` for nll, ``None`` where the value is no such measure, e.g. forget quality);
      recovery and worst cases are read along this direction.
    - ``label``: how tables and figures name it.
    """

    name: str
    description: str
    higher_is_better: bool | None
    compute: Callable[[Scored], list[Result]]
    # passes: answer, truth (paraphrase / perturbed answers), options, generate (greedy answers),
    # tokens (forget and holdout answer tokens); "truth:retain,utility" limits a pass to kinds
    needs: frozenset = frozenset()
    unavailable: str = ""            # why it may not apply (shown when asked for explicitly)
    knowledge: bool | None = None    # a higher value means more knowledge (None: no such reading)
    label: str = ""                  # for tables and figures

    def describe(self) -> dict:
        """What a report needs to know of this metric, as JSON (written into audit manifests)."""
        return {"label": self.label, "higher_is_better": self.higher_is_better, "knowledge": self.knowledge}


def compute_metrics(table: dict[str, Metric], names: Iterable[str], scored: Scored, *, explicit: bool,
                    where: str, may_be_empty: Iterable[str] = ()) -> tuple[list[dict], dict]:
    """Run each metric of ``names`` (from ``table``) on ``scored``.

    Returns the long-form records ``{"metric", "split", "value"}`` (NaN values, per-question
    columns only, give no record) and the per-question columns as ``{metric: {split: {column:
    array}}}``. With ``explicit`` a metric that returns nothing is refused, naming ``where`` and
    why (except those in ``may_be_empty``)."""
    records: list[dict] = []
    columns: dict[str, dict] = {}
    skip = set(may_be_empty)
    for name in names:
        results = table[name].compute(scored)
        if explicit and not results and name not in skip:
            why = table[name].unavailable or "no scored split has what it needs"
            raise BasinError(f"metric {name!r} cannot be computed on {where}: {why}")
        for res in results:
            if not math.isnan(res.value):
                records.append({"metric": name, "split": res.split, "value": float(res.value)})
            columns.setdefault(name, {}).setdefault(res.split, {}).update(res.columns)
    return records, columns
