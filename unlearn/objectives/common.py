"""Pieces every objective shares: answer NLL, sequence log-likelihoods, the retain term.

Notation (TOFU-style data): a batch of (x, y) with prompt x and answer y (EOS included);
log pi(y|x) = sum_t log p(y_t | x, y_<t) is the sequence log-likelihood of the answer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearn.errors import require, require_number
from unlearn.scoring import token_logprobs


def answer_nll(model, batch) -> torch.Tensor:
    """Mean token NLL of the answers (the standard fine-tuning loss, prompt masked)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp, mask = token_logprobs(logits, batch["labels"])
    return -logp.sum() / mask.sum().clamp_min(1)


def sequence_logprob(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log pi(y|x) [B], |y| [B])`` for every example of the batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp, mask = token_logprobs(logits, batch["labels"])
    return logp.sum(-1), mask.sum(-1)


@torch.no_grad()
def reference_logits(ref_model, batch) -> torch.Tensor:
    return ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def kl_to_reference(model, batch, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(pi_ref || pi) per answer token, averaged over answer tokens (open-unlearning's
    GradDiff-KL retain term)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = (batch["labels"][:, 1:] != -100).float()
    logp = F.log_softmax(logits[:, :-1].float(), -1)
    logq = F.log_softmax(ref_logits[:, :-1], -1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


RETAIN_KINDS = ("nll", "kl")


class RetainTerm:
    """gamma * NLL_r (retain answers' NLL) or gamma * KL(pi_ref || pi) on the retain answers."""

    def __init__(self, kind: str = "nll", gamma: float = 1.0):
        require(kind in RETAIN_KINDS, f"retain term must be one of {RETAIN_KINDS}, got {kind!r}")
        require_number("retain weight gamma", gamma, 0)
        self.kind, self.gamma = kind, gamma

    def prepare(self, ref_model, retain_batch) -> dict:
        if self.kind == "kl" and self.gamma > 0:
            return {"retain_ref_logits": reference_logits(ref_model, retain_batch)}
        return {}

    def __call__(self, model, retain_batch, prep) -> torch.Tensor:
        if self.gamma == 0:
            return torch.zeros(())
        if self.kind == "nll":
            return self.gamma * answer_nll(model, retain_batch)
        return self.gamma * kl_to_reference(model, retain_batch, prep["retain_ref_logits"])
