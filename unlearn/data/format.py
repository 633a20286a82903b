"""Prompt format, tokenisation of question / answer pairs and batching.

One fixed format for every benchmark: ``Question: {q}\\nAnswer:`` followed by `` {answer}<eos>``.
The prompt and the answer are tokenised separately and concatenated, so the answer's tokens are
the same whatever the question; prompt positions carry label -100 (ignored by the loss), and
EOS is appended to the answer, as TOFU does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

IGNORE = -100
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def prompt_text(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question)


def encode_prompt(tokenizer, question: str) -> list[int]:
    """Token ids of the prompt, with the tokenizer's own special tokens (e.g. BOS)."""
    return tokenizer(prompt_text(question), add_special_tokens=True)["input_ids"]


def encode_answer(tokenizer, answer: str) -> list[int]:
    """Token ids of `` answer`` followed by EOS."""
    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def encode_qa(tokenizer, question: str, answer: str, max_length: int = 128) -> Example:
    """Encode one pair: labels are -100 on the prompt and the answer ids (with EOS) after it."""
    prompt = encode_prompt(tokenizer, question)
    answer_ids = encode_answer(tokenizer, answer)
    ids = (prompt + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt) + answer_ids)[:max_length]
    return Example(ids, labels)


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into ``input_ids``, ``attention_mask`` and ``labels``."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_text(tokenizer, text: str, max_length: int = 128) -> Example:
    """Encode a plain passage (WMDP / MUSE corpora): every token is a label."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
    return Example(ids, list(ids))


def encode_rows(tokenizer, rows: Iterable[dict], answer_field: str = "answer",
                question_field: str = "question", max_length: int = 128) -> list[Example]:
    """Encode question / answer rows with :func:`encode_qa`, and plain-text rows (a ``text``
    field and no question) with :func:`encode_text`."""
    return [encode_text(tokenizer, r["text"], max_length) if "text" in r and question_field not in r
            else encode_qa(tokenizer, r[question_field], r[answer_field], max_length) for r in rows]


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def batches(examples: Sequence[Example], batch_size: int, pad_id: int):
    """Yield collated batches in order (the last one may be smaller)."""
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start:start + batch_size], pad_id)
