"""Negative Preference Optimization (NPO), Zhang et al. 2024, arXiv 2404.05868.

    L_NPO = -(2 / beta) * E_f[ log sigmoid( -beta * (log pi_theta(y|x) - log pi_ref(y|x)) ) ]
            + gamma * NLL_r  (or KL to the reference on retain)

with pi_ref the model before unlearning and log pi the *sequence* log-likelihood of the answer
(MUSE's code applies it to raw logits, a known deviation we do not copy). At log-ratio 0 the
forget term equals (2/beta) log 2. The reference log-likelihoods are computed once per batch in
:meth:`NPO.prepare`, outside any zeroth-order closure, so ZO probes do not pay for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearn.errors import require_number
from unlearn.objectives.common import RetainTerm, sequence_logprob


def npo_loss(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """-(2/beta) * mean log sigmoid(-beta * (logp - logp_ref))."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref)).mean()


class NPO:
    """NPO on the forget answers (+ gamma * retain term); beta = 0.1 as in the paper."""

    needs_reference = True

    def __init__(self, beta: float = 0.1, gamma: float = 1.0, retain: str = "nll"):
        require_number("NPO beta", beta, 0, low_open=True)
        self.beta = beta
        self.retain = RetainTerm(retain, gamma)

    @torch.no_grad()
    def prepare(self, ref_model, batch) -> dict:
        logp_ref, _ = sequence_logprob(ref_model, batch["forget"])
        return {"logp_ref": logp_ref.float(), **self.retain.prepare(ref_model, batch["retain"])}

    def __call__(self, model, batch, prep) -> dict:
        logp, _ = sequence_logprob(model, batch["forget"])
        return {"forget": npo_loss(logp, prep["logp_ref"], self.beta),
                "retain": self.retain(model, batch["retain"], prep)}
