"""Fitting a model to question / answer pairs until it has memorised them.

This is the plain fine-tuning that makes the *original* model (every person but the hold-out
ones) and the *retain-only* gold model (the retain people only): AdamW, linear warm-up then
cosine decay, loss on answer tokens only, data order from a seeded ``torch.Generator``. It stops
early once the mean answer probability p_norm on the training rows reaches ``target_prob``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from unlearn.data.format import Example, collate, pad_id_of
from unlearn.errors import require, require_number
from unlearn.scoring import answer_stats


@dataclass(frozen=True)
class FitConfig:
    max_steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    eval_every: int = 100
    target_prob: float = 0.98
    seed: int = 0

    def __post_init__(self):
        require_number("max_steps", self.max_steps, 1, integer=True)
        require_number("batch_size", self.batch_size, 1, integer=True)
        require_number("lr", self.lr, 0, low_open=True)
        require_number("eval_every", self.eval_every, 1, integer=True)
        for name in ("warmup_steps", "seed"):
            require_number(name, getattr(self, name), 0, integer=True)
        require_number("weight_decay", self.weight_decay, 0)
        require_number("target_prob", self.target_prob, 0, 1)

    def as_dict(self) -> dict:
        return asdict(self)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_order(n: int, generator: torch.Generator):
    """An endless stream of indices: a fresh permutation of range(n) per epoch."""
    while True:
        yield from torch.randperm(n, generator=generator).tolist()


def fit(model, tokenizer, examples: list[Example], config: FitConfig = FitConfig(),
        progress: bool = True, desc: str = "fit") -> dict:
    """Train ``model`` in place on ``examples``; return the final metrics and the history."""
    require(len(examples) > 0, "nothing to train on: the training set is empty")
    generator = torch.Generator().manual_seed(config.seed)
    pad = pad_id_of(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, config.warmup_steps, config.max_steps))
    order = epoch_order(len(examples), generator)
    device = next(model.parameters()).device
    history, stats = [], None
    model.train()
    bar = tqdm(range(config.max_steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        batch = collate([examples[next(order)] for _ in range(config.batch_size)], pad)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if (step + 1) % config.eval_every == 0 or step + 1 == config.max_steps:
            stats = answer_stats(model, examples, pad)
            record = {"step": step + 1, "loss": loss.item(), "prob": stats.p_norm.mean().item(),
                      "exact_match": stats.exact.mean().item()}
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", prob=f"{record['prob']:.3f}")
            if record["prob"] >= config.target_prob:
                break
    model.eval()
    return {"steps": history[-1]["step"], "prob": history[-1]["prob"],
            "exact_match": history[-1]["exact_match"], "history": history}
