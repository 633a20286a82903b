"""Membership inference: Min-K%, Min-K%++, AUC and MUSE's PrivLeak.

- Min-K% (Shi et al. 2024, arXiv 2310.16789): the mean of the K% lowest token log-probabilities
  log p(x_t | x_<t) of a text. Members (trained-on texts) have few very unlikely tokens, so a
  *higher* score means "more likely a member".
- Min-K%++ (Zhang et al. 2024, arXiv 2404.02936): the same selection applied to the standardised
  token score (log p(x_t | x_<t) - mu_t) / sigma_t, where mu_t and sigma_t^2 are the mean and
  variance of log p(z | x_<t) for z drawn from the model's own next-token distribution.
- AUC: the area under the ROC curve of a score that separates two sets, computed as the
  Mann-Whitney probability P(score(forget) > score(holdout)) + 0.5 P(tie) (average ranks).
  ``mink_auc`` reports this number (1 = the forget set is fully recognised, 0.5 = chance).
- PrivLeak (MUSE, Shi et al. 2024, arXiv 2407.06460): (AUC - AUC_ref) / AUC_ref * 100 with
  AUC_ref the retain-only model's. MUSE's AUC labels forget 0 and holdout 1, which is the
  complement 1 - P(forget > holdout); basin's ``privleak`` uses MUSE's convention so its numbers
  compare with MUSE's tables: 0 is ideal, about -100 means the forget set is still fully
  recognised (under-unlearning), positive values that it looks *less* familiar than unseen text
  (over-unlearning).

For TOFU-shaped rows basin scores the answer tokens (EOS included) given the question prompt,
the tokens every other metric scores. K = 40% by default, MUSE's setting, for both scores.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from unlearn.scoring import token_logprobs

DEFAULT_K = 0.4


def token_zscores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-K%++ (Zhang et al. 2024, arXiv 2404.02936) per-token scores ``(z [B, L-1], mask [B, L-1])``
    for logits aligned with labels as in :func:`unlearn.scoring.token_logprobs`:
    z_t = (log p(x_t) - mu_t) / sigma_t, mu_t = sum_z p(z) log p(z),
    sigma_t^2 = sum_z p(z) log p(z)^2 - mu_t^2 (float32; zero where the label is ignored).
    Only scored positions go through the vocabulary-wide moments (memory N x V, N answer tokens)."""
    picked, mask = token_logprobs(logits, labels)
    z = torch.zeros_like(picked)
    rows = logits[:, :-1][mask].float()                      # [N, V]: only the scored positions
    if rows.numel():
        logp = torch.log_softmax(rows, dim=-1)
        p = logp.exp()
        mu = (p * logp).sum(-1)
        z[mask] = zscores(picked[mask], mu, (p * logp.square()).sum(-1) - mu.square())
    return z, mask


def zscores(logp: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Min-K%++'s z_t = (log p(x_t) - mu_t) / sigma_t from the moments of each position's
    distribution (:func:`token_zscores`; :func:`unlearn.scoring.answer_stats` gives them)."""
    return (logp - mu) / var.clamp_min(1e-12).sqrt()


def min_k(scores: torch.Tensor, mask: torch.Tensor, k: float = DEFAULT_K) -> torch.Tensor:
    """Min-K% (Shi et al. 2024, arXiv 2310.16789) of each row: the mean of its int(k * T) lowest
    scored values, as Shi et al.'s code selects them (T = scored positions in the row; at least
    one is kept, so short answers score).
    ``scores`` [B, L] (log-probs for Min-K%, z-scores for Min-K%++), ``mask`` [B, L] bool.
    Returns float32 [B]; rows with no scored position give NaN.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    scores = scores.float()
    n = mask.sum(-1)
    keep = torch.floor(n.float() * k + 1e-6).clamp_min(1).long()
    ordered = torch.where(mask, scores, torch.full_like(scores, math.inf)).sort(dim=-1).values
    take = torch.arange(scores.shape[-1], device=scores.device)[None, :] < keep[:, None]
    total = torch.where(take, ordered, torch.zeros_like(ordered)).sum(-1)
    out = total / keep
    return torch.where(n > 0, out, torch.full_like(out, math.nan))


def auc(members, nonmembers) -> float:
    """ROC AUC of a score meant to be higher on ``members``: P(member > non-member), ties 1/2,
    from the Mann-Whitney U statistic with average ranks (no sklearn needed)."""
    a = np.asarray(members, dtype=np.float64)
    b = np.asarray(nonmembers, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("AUC needs at least one member and one non-member score")
    ranks = stats.rankdata(np.concatenate([a, b]))
    u = ranks[:a.size].sum() - a.size * (a.size + 1) / 2
    return float(u / (a.size * b.size))


def privleak(auc_value: float, auc_reference: float) -> float:
    """MUSE's PrivLeak (Shi et al. 2024, arXiv 2407.06460) in percent: (AUC - AUC_ref) / AUC_ref * 100."""
    if auc_reference < 0:
        raise ValueError(f"reference AUC must be in [0, 1], got {auc_reference}")
    if auc_reference == 0:  # degenerate reference: only "the same AUC" has a defined leak (none)
        return 0.0 if auc_value == 0 else math.nan
    return float((auc_value - auc_reference) / auc_reference * 100.0)
