"""Benchmark metrics of basin's audit: TOFU's, MUSE's membership-inference ones, multiple choice and
the latent-knowledge margin.

- :func:`evaluate` (:mod:`audit.metrics.evaluation`) scores a model on a benchmark and returns
  long-form records and a per-question table; :data:`METRICS` (:mod:`audit.metrics.table`) maps
  each metric name to a self-describing :class:`Metric` (:mod:`audit.metrics.types`:
  ``description``, ``higher_is_better``, ``knowledge``, ``label``, ``compute``), which
  ``basin ls`` lists and audits write into their manifests.
- The math, as pure functions over per-question numbers: :mod:`audit.metrics.tofu` (probability,
  truth ratio, forget quality, model utility, ROUGE-L recall), :mod:`audit.metrics.mia` (Min-K%,
  Min-K%++, AUC, PrivLeak), :mod:`audit.metrics.choice` (multiple choice, margin).
- :mod:`audit.metrics.passes`: the model passes (answer scoring, greedy generation).
"""

from audit.metrics.choice import margin_win_rate, margins, mc_accuracy, mc_correct
from audit.metrics.evaluation import evaluate, reference_stats, save_reference
from audit.metrics.mia import DEFAULT_K, auc, min_k, privleak, token_zscores
from audit.metrics.passes import AnswerPool, greedy_generate, token_stats
from audit.metrics.table import FAST_METRICS, METRICS, describe_metrics
from audit.metrics.tofu import (forget_quality, model_utility, normalised_probability, probability,
                                rouge_l_recall, truth_ratio, truth_ratio_score, truth_ratio_terms)
from audit.metrics.types import Metric, Reference

__all__ = [
    "METRICS", "FAST_METRICS", "describe_metrics", "Metric", "Reference", "evaluate", "reference_stats", "save_reference",
    "probability", "normalised_probability", "truth_ratio", "truth_ratio_terms", "truth_ratio_score",
    "forget_quality", "model_utility", "rouge_l_recall",
    "DEFAULT_K", "min_k", "token_zscores", "auc", "privleak",
    "mc_correct", "mc_accuracy", "margins", "margin_win_rate",
    "AnswerPool", "token_stats", "greedy_generate",
]
