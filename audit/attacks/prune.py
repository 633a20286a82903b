"""Magnitude pruning: zero the smallest weights and see whether the forgotten knowledge returns.

Pruning is a common compression step after release, like quantization, and also removes small
weight differences (DESIGN section 5: "beyond the paper").
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch import nn

from audit.attacks.common import as_tuple, check_same_architecture, fmt, sweep_buffer, target_names
from unlearn.errors import BasinError
from unlearn.registry import lookup

SCOPES = {"global": "one magnitude threshold over all attacked matrices",
          "tensor": "the same fraction of each matrix"}
DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.5)


def prune(model: nn.Module, *, sparsities: float | Sequence[float] = DEFAULT_SPARSITIES, scope: str = "global",
          include_embeddings: bool = False,
          reference: nn.Module | None = None) -> Iterator[tuple[str, float, nn.Module]]:
    """Magnitude pruning: W * 1[|W| > tau], zeroing the k = round(s * n) smallest |w|.

    Han et al. 2015 (arXiv 1506.02626); the magnitude baseline of Wanda (Sun et al. 2023, arXiv
    2306.11695). ``scope="global"``: one threshold tau over every attacked matrix (n = all their
    entries); ``scope="tensor"``: each matrix loses the fraction s of its own entries. Ties at tau
    are broken in tensor order, then position order, so exactly k entries are zeroed. Acts on the
    decoder Linear weights (embeddings with ``include_embeddings``).

    Yields ``(f"prune-{scope}-{s}", s, model)``. With ``reference`` (the original O; ``model`` is
    the unlearned U) each setting is followed by ``<setting>-snapback``: P(W_O) + (W_U - W_O),
    the mask chosen on the original's weights. ``model`` is never modified; one buffer is reused.
    """
    lookup(SCOPES, scope, "pruning scope")
    levels = [float(s) for s in as_tuple(sparsities, "sparsities")]
    for s in levels:
        if not math.isfinite(s) or not 0 <= s <= 1:
            raise BasinError(f"sparsities must be fractions in [0, 1], not {s!r}")
    if reference is not None:
        check_same_architecture(reference, model, "original (reference) and unlearned models")
    names = target_names(model, include_embeddings)
    return _sweep(model, names, levels, scope, reference)


def magnitude_masks(tensors: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Boolean keep-masks that zero exactly round(sparsity * n) smallest-magnitude entries."""
    if scope == "tensor":
        return {name: _keep_mask([w.abs().flatten()], round(sparsity * w.numel()))[0].reshape(w.shape)
                for name, w in tensors.items()}
    mags = [w.abs().flatten() for w in tensors.values()]
    total = sum(m.numel() for m in mags)
    keeps = _keep_mask(mags, round(sparsity * total))
    return {name: keep.reshape(w.shape) for (name, w), keep in zip(tensors.items(), keeps)}


def _keep_mask(mags: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Keep-masks over a list of flat magnitude tensors dropping exactly the k smallest overall."""
    if k <= 0:
        return [torch.ones_like(m, dtype=torch.bool) for m in mags]
    flat = torch.cat(mags) if len(mags) > 1 else mags[0]
    tau = flat.kthvalue(k).values  # the k-th smallest magnitude
    del flat
    below = [m < tau for m in mags]
    ties_left = k - sum(int(b.sum()) for b in below)
    keeps = []
    for m, b in zip(mags, below):
        drop = b
        if ties_left > 0:
            tie_idx = (m == tau).nonzero().flatten()[:ties_left]
            drop = b.clone()
            drop[tie_idx] = True
            ties_left -= tie_idx.numel()
        keeps.append(~drop)
    return keeps


def _sweep(model, names, levels, scope, reference):
    buffer, dst, src, ref = sweep_buffer(model, reference)
    for s in levels:
        setting = f"prune-{scope}-{fmt(s)}"
        with torch.no_grad():
            weights = {n: src[n].float() for n in names}
            for n, keep in magnitude_masks(weights, s, scope).items():
                dst[n].copy_(torch.where(keep, weights[n], 0.0))
            del weights
        yield setting, s, buffer
        if reference is not None:
            with torch.no_grad():
                originals = {n: ref[n].float() for n in names}
                for n, keep in magnitude_masks(originals, s, scope).items():
                    dst[n].copy_(torch.where(keep, originals[n], 0.0) + (src[n].float() - originals[n]))
                del originals
            yield f"{setting}-snapback", s, buffer
