"""Relearning attack: fine-tune the unlearned model on a few forgotten samples.

Fan et al. 2025 ("Towards LLM Unlearning Resilient to Relearning Attacks", arXiv 2502.05374) and
Hu et al. 2025 ("Unlearning or Obfuscating?", arXiv 2406.13356): fine-tune on a small, fixed
subset S of the forget set for k steps with the answer NLL

    min_theta  NLL_S(theta) = -(1/|S|) sum_{(x,y) in S} (1/|y|) log pi_theta(y|x)

and score the *whole* forget set and the forget items *not* in S. Knowledge that returns on
items the attacker never showed was still in the weights.

The subset is drawn with a seeded ``torch.Generator`` from the forget rows alone, so it does not
depend on the device count. One buffer copy of the model is trained through the sorted step
counts; the input model is never modified.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch

from unlearn.data.format import collate, encode_rows, pad_id_of
from unlearn.data.format import prompt_format as prompt_format_of
from unlearn.errors import require
from unlearn.models import input_device
from unlearn.objectives.common import answer_nll
from unlearn.optim import OPTIMIZERS, make_optimizer
from unlearn.registry import lookup


def relearn_subset(n_forget: int, size: int | float, seed: int) -> list[int]:
    """Indices of the relearning subset: ``size`` rows (an int) or a fraction of the forget set."""
    count = round(size * n_forget) if isinstance(size, float) and size < 1 else int(size)
    require(1 <= count < n_forget, f"relearn subset size {size} gives {count} of {n_forget} forget rows; "
            "it must leave at least one unseen row")
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_forget, generator=g)[:count].tolist())


def relearn(model, *, tokenizer, forget_rows: list[dict], steps=(5, 10, 20, 40), size: int | float = 0.2,
            optimizer: str = "adam", lr: float = 1e-3, batch_size: int = 4, seed: int = 0,
            optimizer_args: dict | None = None, prompt_format=None) -> Iterator[tuple[str, float, torch.nn.Module]]:
    """Relearning: fine-tune on a seeded subset of the forget set; yield the model after each step count.

    Yields ``("steps=k", k, model after k relearning steps)`` for each k in ``steps``.

    The yielded model is one buffer, trained further between yields: score it before asking for
    the next one. The rows used for relearning are ``relearn_subset(len(forget_rows), size, seed)``,
    encoded in ``prompt_format`` (the audit's; default ``plain``): the attacker fine-tunes in the
    format the model was trained in.
    Arguments are checked when it is called, before anything runs.
    """
    steps = sorted({int(s) for s in steps})
    require(steps and steps[0] >= 0, f"relearn steps must be non-negative integers, got {steps}")
    subset = relearn_subset(len(forget_rows), size, seed)
    lookup(OPTIMIZERS, optimizer, "optimizer")
    require(lr > 0 and batch_size >= 1, f"relearn needs lr > 0 and batch_size >= 1, got {lr}, {batch_size}")
    fmt = prompt_format_of(prompt_format)
    return _relearn(model, tokenizer, [forget_rows[i] for i in subset], steps, optimizer, lr, batch_size,
                    seed, optimizer_args or {}, fmt)


def _relearn(model, tokenizer, rows, steps, optimizer, lr, batch_size, seed, optimizer_args, fmt):
    examples = encode_rows(tokenizer, rows, fmt=fmt)
    pad = pad_id_of(tokenizer)
    buffer = copy.deepcopy(model)
    device = input_device(buffer)
    buffer.requires_grad_(True)
    opt = make_optimizer(optimizer, buffer, lr=lr, total_steps=max(steps) or 1, seed=seed, **optimizer_args)
    g = torch.Generator().manual_seed(seed + 1)
    order: list[int] = []
    done = 0
    for target in steps:
        buffer.train()
        while done < target:
            if len(order) < batch_size:
                order += torch.randperm(len(examples), generator=g).tolist()
            batch = collate([examples[order.pop(0)] for _ in range(min(batch_size, len(examples)))], pad)
            batch = {k: v.to(device) for k, v in batch.items()}
            opt.step(lambda i: answer_nll(buffer, batch))
            done += 1
        buffer.eval()
        yield f"steps={target}", float(target), buffer
