"""Per-example answer log-likelihoods: the one quantity training, objectives and metrics share.

For an example with answer tokens a_1..a_T (EOS included) after prompt x:

    log pi(a | x) = sum_t log p(a_t | x, a_<t)          (sequence log-likelihood)
    p_norm(a | x) = exp(log pi(a | x) / T)               (TOFU's length-normalised probability)

Exact match is teacher-forced: every answer token is the argmax at its position. That is the same
as "greedy decoding reproduces the answer and then stops", because greedy decoding follows the
argmax and would emit exactly those tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from unlearn.data.format import IGNORE, Example, collate


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the next-token labels and the mask of scored positions.

    ``logits`` [B, L, V] and ``labels`` [B, L] aligned as the model's input; position t predicts
    label t+1. Returns ``(logp [B, L-1], mask [B, L-1])`` in float32.
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def sequence_logprob(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(log pi(a|x) [B], answer length T [B])`` for a collated batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logp, mask = token_logprobs(out.logits, batch["labels"])
    return logp.sum(-1), mask.sum(-1)


@dataclass
class AnswerStats:
    """Per-example numbers (float32 tensors on CPU), one entry per example."""

    logprob: torch.Tensor   # log pi(a|x)
    length: torch.Tensor    # number of answer tokens T
    exact: torch.Tensor     # 1.0 where every answer token is the argmax

    @property
    def p_norm(self) -> torch.Tensor:
        return torch.exp(self.logprob / self.length.clamp_min(1))

    @property
    def mean_nll(self) -> torch.Tensor:
        return -self.logprob / self.length.clamp_min(1)


@torch.no_grad()
def answer_stats(model, examples: Sequence[Example], pad_id: int, batch_size: int = 64) -> AnswerStats:
    """Score every example's answer under ``model`` (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, mask = token_logprobs(logits, batch["labels"])
        hits = (logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) | ~mask
        parts.append((logp.sum(-1).cpu(), mask.sum(-1).float().cpu(), hits.all(-1).float().cpu()))
    model.train(was_training)
    logprob, length, exact = (torch.cat(x) for x in zip(*parts))
    return AnswerStats(logprob, length, exact)
