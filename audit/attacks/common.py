"""Shared plumbing of the weight-space attacks: the buffer model, the tensors an attack touches,
architecture checks and the snap-back control.

Every attack follows one pattern: make ONE buffer model per sweep (a copy of the input model in
float32, eval mode, no gradients), then for each setting write the attacked weights into it and
yield it. The input model is only ever read. The yielded buffer is overwritten by the next
setting: deep-copy it if you need to keep it.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn

from unlearn.errors import BasinError

# A per-tensor attack: (name, weight in float32) -> attacked weight in float32.
Transform = Callable[[str, torch.Tensor], torch.Tensor]


def make_buffer(model: nn.Module) -> nn.Module:
    """One working copy of ``model`` in float32, eval mode, ``requires_grad=False``.

    This is the only full copy an attack sweep makes; each setting overwrites its weights.
    """
    buffer = copy.deepcopy(model)
    buffer.float()
    buffer.eval()
    for p in buffer.parameters():
        p.requires_grad_(False)
    return buffer


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every floating-point tensor of the state dict, tied tensors listed once (first name wins).

    These are the tensors interpolation and precision change act on ("every tensor").
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        t = t.detach()
        if not t.is_floating_point():
            continue
        key = t.data_ptr()
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def target_names(model: nn.Module, include_embeddings: bool = False) -> list[str]:
    """Names of the weight matrices the quantize / noise / prune attacks change.

    By default: the weight of every ``nn.Linear`` except the output embedding (``lm_head``), i.e.
    the attention and MLP projections of the decoder layers. Embeddings and ``lm_head`` stay in
    full precision, as the quantization-attack release did (bitsandbytes and GPTQ leave them
    alone). ``include_embeddings=True`` adds the input and output embedding matrices (a tied pair
    is one tensor, listed once).
    """
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    in_emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    skip = {id(m) for m in (out_emb, in_emb) if m is not None}
    names: list[str] = []
    seen: set[int] = set()

    def add(name: str, weight: torch.Tensor) -> None:
        if weight.data_ptr() not in seen:
            seen.add(weight.data_ptr())
            names.append(name)

    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and id(module) not in skip:
            add(f"{mod_name}.weight", module.weight)
    if include_embeddings:
        for mod_name, module in model.named_modules():
            if id(module) in skip and getattr(module, "weight", None) is not None:
                add(f"{mod_name}.weight", module.weight)
    if not names:
        raise BasinError(f"{type(model).__name__} has no nn.Linear weights to attack")
    return names


def check_same_architecture(first: nn.Module, second: nn.Module, what: str = "models") -> None:
    """Raise :class:`BasinError` naming the first tensor whose name or shape differs."""
    a = first.state_dict()
    b = second.state_dict()
    for name in list(a) + [n for n in b if n not in a]:
        if name not in a or name not in b:
            where = "the first" if name in a else "the second"
            raise BasinError(f"the {what} have different architectures: tensor {name!r} exists only in "
                             f"{where} model; pass models of the same architecture")
        if a[name].shape != b[name].shape:
            raise BasinError(f"the {what} have different architectures: tensor {name!r} has shape "
                             f"{tuple(a[name].shape)} in the first and {tuple(b[name].shape)} in the second")


@torch.no_grad()
def load_from(buffer: nn.Module, source: nn.Module) -> None:
    """Copy every tensor of ``source`` into ``buffer`` (casting to the buffer's dtype)."""
    dst = buffer.state_dict(keep_vars=True)
    for name, t in source.state_dict().items():
        dst[name].data.copy_(t)


def live(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every state-dict name of ``model`` -> its live tensor (writing to it changes the model)."""
    return {name: t.data for name, t in model.state_dict(keep_vars=True).items()}


def sweep_buffer(model: nn.Module, reference: nn.Module | None = None):
    """The set-up every weight-space sweep shares: one buffer holding ``model``'s weights
    (:func:`make_buffer`), and the live tensors of the buffer, the model and the reference (None
    without one): ``(buffer, dst, src, ref)``."""
    buffer = make_buffer(model)
    load_from(buffer, model)
    return buffer, live(buffer), live(model), live(reference) if reference is not None else None


@torch.no_grad()
def write_transformed(buffer: dict[str, torch.Tensor], model: dict[str, torch.Tensor], names: Iterable[str],
                      transform: Transform, reference: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``T(W)`` into ``buffer`` for each named tensor ``W`` of ``model`` (dicts from :func:`live`).

    With ``reference`` (the original model O, ``model`` being the unlearned U) write the snap-back
    control instead: ``T(W_O) + (W_U - W_O)``, i.e. the original's attacked weights plus the intact
    unlearning update (DESIGN section 5, diagnostic (a)). With ``T(W_O) ~= T(W_U)`` the attack
    "snapped back" to the original; with the control ~= ``T(W_U)`` it only added noise on top of
    the update.
    """
    for name in names:
        w_u = model[name].float()
        if reference is None:
            buffer[name].copy_(transform(name, w_u))
        else:
            w_o = reference[name].float()
            buffer[name].copy_(transform(name, w_o).add_(w_u - w_o))


def require_bits(method: str, bits, allowed: Iterable[int]) -> int:
    """Validate one bit width for ``method``."""
    allowed = sorted(set(allowed))
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or int(bits) != bits or int(bits) not in allowed:
        raise BasinError(f"{method} supports {', '.join(map(str, allowed))} bits, not {bits!r}; "
                         f"pass bits={allowed if len(allowed) > 1 else allowed[0]}")
    return int(bits)


def as_tuple(value, name: str) -> tuple:
    """A scalar or a sequence as a non-empty tuple."""
    items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not items:
        raise BasinError(f"{name} is empty; pass at least one value")
    return items


def fmt(x: float) -> str:
    """Short, stable text for a number in a setting name (0.1 -> '0.1', 1e-05 -> '1e-05')."""
    return f"{float(x):g}"

