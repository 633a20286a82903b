"""Per-example answer log-likelihoods: the one quantity training, objectives and metrics share.

For an example with answer tokens a_1..a_T (EOS included) after prompt x:

    log pi(a | x) = sum_t log p(a_t | x, a_<t)          (sequence log-likelihood)
    p_norm(a | x) = exp(log pi(a | x) / T)               (TOFU's length-normalised probability)

Exact match is teacher-forced: every answer token is the argmax at its position. That is the same
as "greedy decoding reproduces the answer and then stops", because greedy decoding follows the
argmax and would emit exactly those tokens.

Shared prefixes (:func:`shared_prefix_logits`): attention is causal, so the keys and values of
the prompt positions of x do not depend on the answer a. Every answer scored under one question
(answer, paraphrase, perturbed answers, options) therefore reuses one run of its prompt: the
prompt's key/value cache is copied across the answers' batch and only answer tokens run per
answer, with the same numbers as running each prompt + answer whole (up to float rounding),
as in prefix-sharing inference (Juravsky et al. 2024, Hydragen, arXiv 2402.05099).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from unlearn.data.format import IGNORE, Example
from unlearn.errors import require


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


PADDING_SIDES = ("right", "left")


def prefix_cut(example: Example) -> int:
    """Where an example splits into a shareable prefix and the tail that must be run per example:
    one before its first scored position f (the first t >= 1 whose label is not ignored), so the
    tail's first token is the one whose logits predict label f; ``len - 1`` when nothing is
    scored (the tail is then one unscored token). For :func:`~unlearn.data.format.encode_qa`
    examples the prefix is the prompt without its last token, the same for every answer of a
    question."""
    labels = example.labels
    first = next((t for t in range(1, len(labels)) if labels[t] != IGNORE), len(labels))
    return max(first - 1, 0)


def _pad(rows: Sequence[Sequence[int]], value: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [n, width], mask [n, width])`` of ragged rows padded on ``side``."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        out[i, cols] = torch.tensor(list(r), dtype=torch.long)
        mask[i, cols] = 1
    return out, mask


def _question_batches(prefixes: Sequence[tuple[int, ...]], tails: Sequence[int], batch_size: int
                      ) -> list[list[tuple[int, ...]]]:
    """Distinct prefixes, longest first, in batches of at most ``batch_size``; an empty prefix
    (plain text: nothing to share) never shares a batch with a non-empty one."""
    longest: dict[tuple[int, ...], int] = {}
    for p, n in zip(prefixes, tails):
        longest[p] = max(longest.get(p, 0), n)
    keys = sorted(longest, key=lambda p: (-len(p), -longest[p]))
    out: list[list[tuple[int, ...]]] = []
    for p in keys:
        if out and len(out[-1]) < batch_size and (len(p) > 0) == (len(out[-1][0]) > 0):
            out[-1].append(p)
        else:
            out.append([p])
    return out


def _select(cache, rows: torch.Tensor, cols: slice, config):
    """A new ``DynamicCache`` holding ``cache``'s batch rows ``rows`` (repeats allowed) and
    sequence positions ``cols``; ``cache`` is left as it was."""
    from transformers import DynamicCache

    return DynamicCache([(layer.keys[rows][:, :, cols], layer.values[rows][:, :, cols])
                         for layer in cache.layers], config=config)


@torch.no_grad()
def shared_prefix_logits(model, examples: Sequence[Example], pad_id: int, batch_size: int = 64,
                         padding_side: str = "right"):
    """Run every example through ``model`` with its prefix (:func:`prefix_cut`) computed once per
    distinct prefix; yield ``(rows, logits [b, C, V], labels [b, C])`` per batch of tails, where
    ``rows`` are indices into ``examples`` and ``token_logprobs(logits, labels)`` gives exactly the
    scored positions the full sequences would (teacher forcing is causal, so a position's logits
    depend only on the tokens up to it).

    The prefixes of up to ``batch_size`` questions are padded on ``padding_side`` and run once,
    keeping their keys/values; their tails, sorted by length, run in chunks of ``batch_size`` on
    a copy of the cache rows they need (cut to the chunk's longest prefix), with attention masks
    ``[prefix mask | tail mask]`` and position ids continuing each row's own prefix, so padding in
    the middle changes nothing. Memory: one question batch's cache plus one chunk's copy."""
    require(padding_side in PADDING_SIDES,
            f"padding_side must be one of {', '.join(PADDING_SIDES)}, got {padding_side!r}")
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    cuts = [prefix_cut(e) for e in examples]
    prefixes = [tuple(e.input_ids[:c]) for e, c in zip(examples, cuts)]
    tails = [len(e.input_ids) - c for e, c in zip(examples, cuts)]
    members: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prefixes):
        members.setdefault(p, []).append(i)
    for batch in _question_batches(prefixes, tails, batch_size):
        lengths = torch.tensor([len(p) for p in batch])
        cache = prefix_mask = None
        if lengths.max() > 0:
            ids, prefix_mask = _pad(batch, pad_id, padding_side)
            positions = (prefix_mask.cumsum(-1) - 1).clamp_min(0)
            cache = model(input_ids=ids.to(device), attention_mask=prefix_mask.to(device),
                          position_ids=positions.to(device), use_cache=True, logits_to_keep=1).cache
        width = int(lengths.max())
        todo = sorted(((q, i) for q, p in enumerate(batch) for i in members[p]), key=lambda t: -tails[t[1]])
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            q = torch.tensor([t[0] for t in chunk])
            rows = [t[1] for t in chunk]
            ids, mask = _pad([examples[i].input_ids[cuts[i]:] for i in rows], pad_id, "right")
            labels, _ = _pad([examples[i].labels[cuts[i]:] for i in rows], IGNORE, "right")
            positions = lengths[q, None] + torch.arange(ids.shape[1])
            past = None
            keep = int(lengths[q].max())
            if keep > 0:
                cols = slice(width - keep, width) if padding_side == "left" else slice(0, keep)
                past = _select(cache, q.to(device), cols, config)
                mask = torch.cat([prefix_mask[q][:, cols], mask], dim=1)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), cache=past, use_cache=past is not None).logits
            yield rows, logits, labels.to(device)


@torch.no_grad()
def answer_stats(model, examples: Sequence[Example], pad_id: int, batch_size: int = 64,
                 padding_side: str = "right", on_batch=None) -> AnswerStats:
    """Score every example's answer under ``model`` (eval mode, no gradients); examples sharing a
    prompt run it once (:func:`shared_prefix_logits`). ``on_batch(rows, logits, labels, logp,
    mask)``, if given, sees each batch of tails as well (per-token scores)."""
    was_training = model.training
    model.eval()
    logprob, length, exact = (torch.zeros(len(examples)) for _ in range(3))
    try:
        for rows, logits, labels in shared_prefix_logits(model, examples, pad_id, batch_size, padding_side):
            logp, mask = token_logprobs(logits, labels)
            hits = (logits[:, :-1].argmax(-1) == labels[:, 1:]) | ~mask
            idx = torch.tensor(rows)
            logprob[idx] = logp.sum(-1).float().cpu()
            length[idx] = mask.sum(-1).float().cpu()
            exact[idx] = hits.all(-1).float().cpu()
            if on_batch is not None:
                on_batch(rows, logits, labels, logp, mask)
    finally:
        model.train(was_training)
    return AnswerStats(logprob, length, exact)
