"""Precision change: store the model in bf16 or fp16 (as most releases are) and load it back.

Rounding every weight to 8 (bf16) or 11 (fp16) significant bits is the mildest quantization
there is; an update that does not survive it did not survive release (DESIGN section 5: "beyond
the paper").
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from audit.attacks.common import (as_tuple, check_same_architecture, named_tensors, sweep_buffer,
                                   write_transformed)
from unlearn.registry import lookup

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision(model: nn.Module, *, dtypes: str | Sequence[str] = ("bf16", "fp16"),
              reference: nn.Module | None = None) -> Iterator[tuple[str, float | None, nn.Module]]:
    """Precision change: every floating tensor fp32 -> bf16 / fp16 -> fp32 (round to nearest even).

    w_hat = fp32(dtype(w)); fp16 turns |w| > 65504 into inf, as a real fp16 cast would. Yields
    ``(dtype name, None, model)``. With ``reference`` (the original O; ``model`` is the unlearned U)
    each setting is followed by ``<dtype>-snapback``: R(W_O) + (W_U - W_O). ``model`` is never
    modified; one buffer is reused.
    """
    names = list(as_tuple(dtypes, "dtypes"))
    for name in names:
        lookup(DTYPES, name, "precision")
    if reference is not None:
        check_same_architecture(reference, model, "original (reference) and unlearned models")
    return _sweep(model, names, reference)


def round_trip(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32(dtype(w))."""
    return w.to(dtype).to(torch.float32)


def _sweep(model, names, reference):
    buffer, dst, src, ref = sweep_buffer(model, reference)
    tensors = list(named_tensors(model))
    for name in names:
        dtype = DTYPES[name]
        write_transformed(dst, src, tensors, lambda _n, w: round_trip(w, dtype))
        yield name, None, buffer
        if reference is not None:
            write_transformed(dst, src, tensors, lambda _n, w: round_trip(w, dtype), ref)
            yield f"{name}-snapback", None, buffer
