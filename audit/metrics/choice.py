"""Multiple-choice accuracy and the latent-knowledge margin: both compare the likelihood the model
gives the correct answer with the likelihood it gives wrong ones, from numbers already scored.

- Multiple choice (as WMDP / MMLU score it through lm-eval's log-likelihood requests, and TOFU's
  ``real_authors.json`` / ``world_facts.json`` rows with ``option1..4``): each option is scored as
  the answer continuation of the question in basin's prompt format (`` option<eos>``, EOS
  included, exactly how answers are scored everywhere else); the prediction is the option with
  the highest *length-normalised* log-likelihood, the mean token log-probability (log p_norm).
  Normalising stops long options from losing only for being long (lm-eval's ``acc_norm``
  normalises by bytes; basin normalises by tokens, the unit every other basin metric uses).
  Ties go to the first option (``argmax``), so a model that scores all options equally is right
  exactly when the label is option 0; random options keep that at chance.
- Latent-knowledge margin (basin's DESIGN section 5 diagnostic): per question,
  mean token log p(correct) - mean token log p(wrong), the wrong answers being the
  ``perturbed_answer`` rows: the same template as the paraphrased answer with a wrong value, so
  wording cancels and only the value counts. With several wrong answers the margin is the mean
  over them, which equals -log R for TOFU's truth ratio R; unlike TOFU's forget aggregation
  min(R, 1/R) it keeps the *sign*, so it shows knowledge that leans towards the truth even when
  probability and exact match have collapsed. ``margin_win`` is the fraction of questions with a
  positive margin (the correct answer beats the geometric mean of the wrong ones).
"""

from __future__ import annotations

import numpy as np


def choose(option_scores) -> np.ndarray:
    """Index of the best option per question. ``option_scores`` [n, k] mean token log-probs;
    NaN marks a missing option (rows may have fewer options)."""
    s = np.asarray(option_scores, dtype=np.float64)
    return np.where(np.isnan(s), -np.inf, s).argmax(axis=-1)


def mc_correct(option_scores, labels) -> np.ndarray:
    """Per question 1.0 where the highest-scoring option is the labelled one, else 0.0."""
    return (choose(option_scores) == np.asarray(labels)).astype(np.float64)


def mc_accuracy(option_scores, labels) -> float:
    """Multiple-choice accuracy: the mean of :func:`mc_correct`."""
    return float(np.mean(mc_correct(option_scores, labels)))


def margins(logp_correct, logp_wrong) -> np.ndarray:
    """Per-question latent-knowledge margin: logp_correct [n] - mean over j of logp_wrong [n, m]
    (mean token log-probs; NaN entries of ``logp_wrong`` are ignored)."""
    wrong = np.asarray(logp_wrong, dtype=np.float64)
    return np.asarray(logp_correct, dtype=np.float64) - np.nanmean(wrong, axis=-1)


def margin_win_rate(margin_values) -> float:
    """Fraction of questions where the correct answer wins (margin > 0)."""
    return float(np.mean(np.asarray(margin_values) > 0))
