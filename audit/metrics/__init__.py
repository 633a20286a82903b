"""Benchmark metrics of basin's audit: TOFU's, MUSE's membership-inference ones, multiple choice and
the latent-knowledge margin.

- :func:`evaluate` scores a model on a benchmark and returns long-form records and a per-question
  table; :data:`METRICS` maps each metric name to a :class:`Metric` (``description``,
  ``higher_is_better``, ``compute``), which ``basin ls`` lists.
- The math, as pure functions over per-question numbers: :mod:`audit.metrics.tofu` (probability,
  truth ratio, forget quality, model utility, ROUGE-L recall), :mod:`audit.metrics.mia` (Min-K%,
  Min-K%++, AUC, PrivLeak), :mod:`audit.metrics.choice` (multiple choice, margin).
- :mod:`audit.metrics.passes`: the model passes (answer scoring, greedy generation).
"""

from audit.metrics.choice import margin_win_rate, margins, mc_accuracy, mc_correct
from audit.metrics.evaluation import (FAST_METRICS, METRICS, Metric, Reference, evaluate, reference_stats,
                                    save_reference)
from audit.metrics.mia import DEFAULT_K, auc, min_k, privleak, token_zscores
from audit.metrics.passes import AnswerPool, greedy_generate, token_stats
from audit.metrics.tofu import (forget_quality, model_utility, normalised_probability, probability,
                                rouge_l_recall, truth_ratio, truth_ratio_score, truth_ratio_terms)

__all__ = [
    "METRICS", "FAST_METRICS", "Metric", "Reference", "evaluate", "reference_stats", "save_reference",
    "probability", "normalised_probability", "truth_ratio", "truth_ratio_terms", "truth_ratio_score",
    "forget_quality", "model_utility", "rouge_l_recall",
    "DEFAULT_K", "min_k", "token_zscores", "auc", "privleak",
    "mc_correct", "mc_accuracy", "margins", "margin_win_rate",
    "AnswerPool", "token_stats", "greedy_generate",
]
