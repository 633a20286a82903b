"""Gaussian weight noise: does a random push of the same size as quantization bring knowledge back?

The quantization attack moves every weight by up to half a bin. If an equally large *random*
perturbation recovers as much forgotten knowledge, the recovery is a generic flattening of the
model, not a snap-back to the original (DESIGN section 5: "beyond the paper").
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch import nn

from audit.attacks.common import as_tuple, fmt, sweep_buffer, target_names
from audit.attacks.quantize import DEFAULT_GROUP_SIZE, rtn_bin_width
from unlearn.errors import BasinError
from unlearn.registry import lookup

# Noise of std Delta / sqrt(12) (Delta: the 4-bit RTN bin width) has the std of the 4-bit rounding
# error itself (uniform on [-Delta/2, Delta/2]).
RTN4_MATCHED = 1 / math.sqrt(12)
DEFAULT_SCALES = {"std": (0.01, 0.03, 0.1, 0.3), "rtn4": (0.5 * RTN4_MATCHED, RTN4_MATCHED, 2 * RTN4_MATCHED)}


def _std_sigma(w: torch.Tensor, group_size) -> torch.Tensor:
    """sigma_W = standard deviation of the whole tensor (a 0-d tensor)."""
    return w.std(unbiased=False)


def _rtn4_sigma(w: torch.Tensor, group_size) -> torch.Tensor:
    """sigma = the bin width of 4-bit asymmetric RTN at each entry (same shape as w)."""
    return rtn_bin_width(w, bits=4, group_size=group_size, symmetric=False)


RELATIVE = {"std": _std_sigma, "rtn4": _rtn4_sigma}


def noise(model: nn.Module, *, scales: float | Sequence[float] | None = None, draws: int = 3,
          relative: str = "std", include_embeddings: bool = False, group_size: int | None = DEFAULT_GROUP_SIZE,
          reference: nn.Module | None = None, seed: int = 0,
          generator: torch.Generator | None = None) -> Iterator[tuple[str, float, nn.Module]]:
    """Gaussian weight noise: W + scale * sigma_W * eps, eps ~ N(0, I), several scales and draws.

    ``relative="std"``: sigma_W is the standard deviation of each weight matrix (default scales
    0.01, 0.03, 0.1, 0.3). ``relative="rtn4"``: sigma is the bin width Delta of 4-bit asymmetric
    RTN (:func:`audit.attacks.quantize.rtn`, groups of ``group_size``) at each entry, so scale
    1/sqrt(12) ~ 0.289 matches the std of the 4-bit rounding error (defaults: 0.5x, 1x, 2x that).
    Acts on the same matrices as the quantization attack (decoder Linear weights; embeddings with
    ``include_embeddings``).

    Yields ``(f"noise-{relative}-{scale}-d{draw}", scale, model)`` for each draw and scale. Draw d
    uses the same eps at every scale (common random numbers, so a scale sweep is smooth); the
    per-draw seeds come from ``generator`` or, if none is given, from
    ``torch.Generator().manual_seed(seed)``: same seed, same bits. Scale 0 is the identity.
    ``reference`` is accepted for a uniform call and unused (random noise has no snap-back
    control). ``model`` is never modified; one buffer model is reused.
    """
    sigma_fn = lookup(RELATIVE, relative, "noise scale reference")
    scales = DEFAULT_SCALES[relative] if scales is None else as_tuple(scales, "scales")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            raise BasinError(f"noise scales must be finite numbers >= 0, not {s!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise BasinError(f"draws must be a positive integer, not {draws!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    draw_seeds = [int(v) for v in torch.randint(0, 2 ** 62, (draws,), generator=gen)]
    names = target_names(model, include_embeddings)
    return _sweep(model, names, [float(s) for s in scales], draw_seeds, relative, sigma_fn, group_size)


def _sweep(model, names, scales, draw_seeds, relative, sigma_fn, group_size):
    buffer, dst, src, _ = sweep_buffer(model)
    for d, draw_seed in enumerate(draw_seeds):
        for scale in scales:
            g = torch.Generator().manual_seed(draw_seed)
            with torch.no_grad():
                for name in names:
                    w = src[name].float()
                    out = dst[name]
                    if scale == 0:
                        out.copy_(w)
                        continue
                    eps = torch.randn(w.shape, generator=g).to(w.device)  # CPU draws: same bits on any device
                    out.copy_(w + scale * sigma_fn(w, group_size) * eps)
            yield f"noise-{relative}-{fmt(scale)}-d{d}", scale, buffer

