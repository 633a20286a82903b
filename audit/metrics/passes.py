"""The model passes behind every metric, each text scored once.

:class:`AnswerPool` collects every (question, answer text) pair a set of metrics needs (answers,
paraphrases, perturbed answers, multiple-choice options), scores each distinct pair once through
:func:`token_stats` and hands back per-pair arrays. The pairs of one question share its prompt,
which runs through the model once, and answers that begin alike share their common tokens
(:func:`unlearn.scoring.shared_prefix_scores`). Per-token scores are kept for the pairs membership inference needs.
Every pair scores the same tokens (the run's prompt format, answer plus EOS,
:func:`unlearn.data.format.encode_qa`). :func:`greedy_generate` produces the answers ROUGE
compares. Everything leaves torch as float32 before it becomes numpy.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np
import torch

from audit.metrics.mia import zscores
from unlearn.data.format import Example, PromptFormat, encode_prompt, encode_qa, pad_id_of, prompt_format
from unlearn.scoring import AnswerStats, answer_stats

DEFAULT_MAX_LENGTH = 512
ENCODED_MAX = 200_000   # pairs remembered per tokenizer (then forgotten at once)

_encoded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encoded(tokenizer, question: str, answer: str, max_length: int, fmt: PromptFormat) -> Example:
    """:func:`unlearn.data.format.encode_qa`, remembered per tokenizer object: an audit scores the
    same pairs under every attack setting, and tokenising them again would cost each evaluation
    a fixed share (about a tenth of a small model's). The tokenizer's length is part of the key,
    so adding tokens to it re-encodes. Callers must not modify the returned example."""
    cache = _encoded.setdefault(tokenizer, {})
    key = (question, answer, max_length, fmt, len(tokenizer))
    example = cache.get(key)
    if example is None:
        if len(cache) >= ENCODED_MAX:
            cache.clear()
        example = cache[key] = encode_qa(tokenizer, question, answer, max_length, fmt)
    return example


def model_max_length(model, default: int = DEFAULT_MAX_LENGTH) -> int:
    """Longest sequence to score: the model's ``max_position_embeddings`` if it has one."""
    return int(getattr(getattr(model, "config", None), "max_position_embeddings", None) or default)


def token_stats(model, examples: Sequence[Example], pad_id: int, batch_size: int = 32,
                keep: Sequence[bool] | None = None, padding_side: str = "right"
                ) -> tuple[AnswerStats, list[torch.Tensor | None], list[torch.Tensor | None]]:
    """:func:`unlearn.scoring.answer_stats` (each shared token run once) plus, per example, the
    answer's token log-probs and Min-K%++ z-scores (float32 1-D tensors, EOS included), in one
    pass. ``keep`` (default: all) marks the examples whose token scores are wanted; the others get
    ``None``."""
    keep = [True] * len(examples) if keep is None else list(keep)
    stats = answer_stats(model, examples, pad_id, batch_size, padding_side, tokens=keep)
    zs = [None if m is None else zscores(lp, *m) for lp, m in zip(stats.token_logp, stats.token_moments)]
    return stats, list(stats.token_logp), zs


class AnswerPool:
    """Distinct (question, answer) pairs to score once; :meth:`add` returns a pair's index."""

    def __init__(self, tokenizer, max_length: int = DEFAULT_MAX_LENGTH, fmt: PromptFormat | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.fmt = prompt_format(fmt)
        self.index: dict[tuple[str, str], int] = {}
        self.want_tokens: set[int] = set()
        self.scored = 0  # pairs scored so far (the pool can grow and be run again)
        self.logprob = np.zeros(0, dtype=np.float32)
        self.length = np.zeros(0, dtype=np.float32)
        self.exact = np.zeros(0, dtype=np.float32)
        self.token_logp: dict[int, torch.Tensor] = {}
        self.token_z: dict[int, torch.Tensor] = {}

    def add(self, question: str, answer: str, tokens: bool = False) -> int:
        key = (question, answer)
        i = self.index.setdefault(key, len(self.index))
        if tokens:
            if i < self.scored and i not in self.token_logp:
                raise RuntimeError("token scores requested for a pair already scored without them")
            self.want_tokens.add(i)
        return i

    def add_many(self, questions: Sequence[str], answers: Sequence[str], tokens: bool = False) -> np.ndarray:
        return np.array([self.add(q, a, tokens) for q, a in zip(questions, answers)], dtype=np.int64)

    def run(self, model, batch_size: int = 32) -> "AnswerPool":
        """Score every pair added since the last run, each question's prompt once
        (:func:`token_stats`)."""
        pairs = list(self.index)[self.scored:]
        if not pairs:
            return self
        ids = range(self.scored, self.scored + len(pairs))
        examples = [encoded(self.tokenizer, q, a, self.max_length, self.fmt) for q, a in pairs]
        keep = [i in self.want_tokens for i in ids]
        stats, logps, zs = token_stats(model, examples, pad_id_of(self.tokenizer), batch_size, keep)
        for i, lp, z, k in zip(ids, logps, zs, keep):
            if k:
                self.token_logp[i] = lp
                self.token_z[i] = z
        self.logprob = np.concatenate([self.logprob, stats.logprob.float().numpy()])
        self.length = np.concatenate([self.length, stats.length.float().numpy()])
        self.exact = np.concatenate([self.exact, stats.exact.float().numpy()])
        self.scored += len(pairs)
        return self

    # -- per-pair views (float64 numpy, NaN where an index is -1) ----------------------------------
    def _take(self, values: np.ndarray, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if (idx >= self.scored).any():
            raise RuntimeError("AnswerPool.run() must be called after add()")
        out = values.astype(np.float64)[np.clip(idx, 0, None)]
        return np.where(idx < 0, np.nan, out)

    def mean_logp(self, idx) -> np.ndarray:
        """Mean token log-probability log p_norm (answer tokens incl. EOS)."""
        return self._take(self.logprob / np.maximum(self.length, 1), idx)

    def nll(self, idx) -> np.ndarray:
        return -self.mean_logp(idx)

    def p_norm(self, idx) -> np.ndarray:
        return np.exp(self.mean_logp(idx))

    def exact_match(self, idx) -> np.ndarray:
        return self._take(self.exact, idx)

    def padded_tokens(self, idx, kind: str = "logp") -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded per-token scores ``(values [n, L], mask [n, L])`` for pairs scored with
        ``tokens=True``; ``kind`` is ``"logp"`` (Min-K%) or ``"z"`` (Min-K%++)."""
        store = self.token_logp if kind == "logp" else self.token_z
        seqs = [store[int(i)] for i in idx]
        width = max((len(s) for s in seqs), default=0)
        values = torch.zeros(len(seqs), max(width, 1), dtype=torch.float32)
        mask = torch.zeros(len(seqs), max(width, 1), dtype=torch.bool)
        for r, s in enumerate(seqs):
            values[r, :len(s)] = s
            mask[r, :len(s)] = True
        return values, mask


def ragged_index(lists: Sequence[Sequence[int]]) -> np.ndarray:
    """Stack index lists of unequal length into [n, m_max], -1 for missing entries."""
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), width), -1, dtype=np.int64)
    for r, x in enumerate(lists):
        out[r, :len(x)] = x
    return out


@torch.no_grad()
def greedy_generate_ids(model, encoded: Sequence[Sequence[int]], max_new_tokens: int, *, pad: int,
                        eos: int | None, batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations of already-encoded prompts: longest first in left-padded batches, at
    most ``max_new_tokens`` new tokens and never past the model's ``max_position_embeddings``
    (a batch whose prompts fill the window gets none), each cut at its first ``eos``. Returns the
    new token ids per prompt, in the input order. The one generation loop behind the QA answers
    (:func:`greedy_generate`) and MUSE's continuations."""
    out: list[list[int]] = [[] for _ in encoded]
    if not encoded:
        return out
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    order = np.argsort([-len(p) for p in encoded], kind="stable")
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(encoded[j]) for j in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, j in enumerate(chunk):
                p = encoded[j]
                ids[r, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
                mask[r, width - len(p):] = 1
            new = max_new_tokens if limit is None else max(0, min(max_new_tokens, int(limit) - width))
            if new == 0:
                continue
            with torch.no_grad():
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=new, do_sample=False, num_beams=1,
                                     eos_token_id=eos, pad_token_id=pad)[:, width:].cpu()
            for r, j in enumerate(chunk):
                tokens = gen[r].tolist()
                out[j] = tokens[:tokens.index(eos)] if eos in tokens else tokens
    finally:
        model.train(was_training)
    return out


def greedy_generate(model, tokenizer, questions: Sequence[str], max_new_tokens: int = 200,
                    batch_size: int = 32, fmt: PromptFormat | None = None) -> list[str]:
    """Greedy answers to ``questions``: the prompt in ``fmt`` (default ``plain``), generated by
    :func:`greedy_generate_ids`, decoded without special tokens and stripped."""
    fmt = prompt_format(fmt)
    ids = greedy_generate_ids(model, [encode_prompt(tokenizer, q, fmt) for q in questions], max_new_tokens,
                              pad=pad_id_of(tokenizer), eos=tokenizer.eos_token_id, batch_size=batch_size)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
