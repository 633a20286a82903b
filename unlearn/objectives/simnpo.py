"""SimNPO, Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for
LLM Unlearning", arXiv 2410.07163. Reference-free and length-normalised:

    L_SimNPO = -(2 / beta) * E_f[ log sigmoid( -(beta / |y|) * log pi_theta(y|x) - delta ) ]
               + gamma * NLL_r

beta = 2.5 and delta = 0 follow the paper's TOFU setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearn.errors import require_number
from unlearn.objectives.common import RetainTerm, sequence_logprob


def simnpo_loss(logp: torch.Tensor, length: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """-(2/beta) * mean log sigmoid(-(beta/|y|) * logp - delta)."""
    return -(2.0 / beta) * F.logsigmoid(-(beta / length.clamp_min(1)) * logp - delta).mean()


class SimNPO:
    """SimNPO: length-normalised, reference-free NPO (+ gamma * retain term)."""

    needs_reference = False

    def __init__(self, beta: float = 2.5, delta: float = 0.0, gamma: float = 1.0, retain: str = "nll"):
        require_number("SimNPO beta", beta, 0, low_open=True)
        require_number("SimNPO delta", delta)
        self.beta, self.delta = beta, delta
        self.retain = RetainTerm(retain, gamma)
        self.needs_reference = retain == "kl"

    def prepare(self, ref_model, batch) -> dict:
        return self.retain.prepare(ref_model, batch["retain"])

    def __call__(self, model, batch, prep) -> dict:
        logp, length = sequence_logprob(model, batch["forget"])
        return {"forget": simnpo_loss(logp, length.float(), self.beta, self.delta),
                "retain": self.retain(model, batch["retain"], prep)}
