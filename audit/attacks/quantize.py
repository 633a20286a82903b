"""Quantization attack (Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization",
ICLR 2025, arXiv 2410.16454) and the snap-back control.

Unlearning updates are tiny, so quantize(original) ~= quantize(unlearned) and the forgotten
knowledge can come back. Every method here produces *fake-quantized* float32 weights
(quantize, then dequantize), so the attacked model runs like any model and every metric applies.

Methods (:data:`METHODS`):

- ``rtn``: round-to-nearest in plain torch, 2-8 bits, per group of G input columns (default 128,
  clamped to the row length) or per output channel (``group_size=None``); asymmetric min-max by
  default, symmetric absmax on request.
- ``nf4`` / ``fp4``: bitsandbytes 4-bit, blockwise absmax (block 64), through
  ``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit``.
- ``int8``: LLM.int8 weights (row-wise absmax int8 of the fp16 weights), through
  ``bitsandbytes.functional.int8_vectorwise_quant`` / ``int8_vectorwise_dequant``.
- ``gptq``: GPTQ (Frantar et al. 2023, arXiv 2210.17323) with gptqmodel's solver, layer by layer
  on calibration text (e.g. retain-set strings).

**Default grid of ``rtn``: asymmetric.** The attack paper writes RTN in the symmetric absmax
form Q(w) = Delta * Round(w / Delta), Delta = max|w| / 2^(N-1) (AWQ's notation), but its released
code never runs that formula: it loads models with
transformers ``BitsAndBytesConfig`` (4-bit FP4, 8-bit LLM.int8), and its GPTQ ablation uses
transformers ``GPTQConfig`` (symmetric, group 128). We default to asymmetric min-max with an
integer zero point because (1) it is the RTN baseline of the GPTQ and AWQ papers (AWQ's default
``zero_point=True``); (2) it uses all 2^N levels, while a symmetric grid without clipping uses
2^N - 1 (3 levels at 2 bits), so at 2-3 bits the quantized *original* is not destroyed by the grid
alone and the ceiling/floor comparison of DESIGN section 5 still means something. Pass
``symmetric=True`` for the absmax grid (restricted range, as LLM.int8's absmax / 127).

Embeddings and ``lm_head`` stay in full precision unless ``include_embeddings=True``, as the
paper's release (bitsandbytes, GPTQ) left them.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from audit.attacks.common import (as_tuple, check_same_architecture, live, load_from, require_bits,
                                   sweep_buffer, target_names, write_transformed)
from unlearn.data.format import Example, collate, encode_text, pad_id_of
from unlearn.errors import BasinError
from unlearn.registry import lookup

RTN_BITS = (2, 3, 4, 5, 6, 7, 8)
GPTQ_BITS = (2, 3, 4, 8)
DEFAULT_BITS = {"rtn": (8, 4, 3, 2), "nf4": (4,), "fp4": (4,), "int8": (8,), "gptq": (4,)}
ALLOWED_BITS = {"rtn": RTN_BITS, "nf4": (4,), "fp4": (4,), "int8": (8,), "gptq": GPTQ_BITS}
DEFAULT_GROUP_SIZE = 128
BNB_BLOCKSIZE = 64


@dataclass
class Quantized:
    """One quantized tensor: the dequantized float32 weight and the integer codes behind it."""

    weight: torch.Tensor   # fake-quantized weight, float32, same shape as the input
    codes: torch.Tensor    # integer code of every entry, same shape as the input


# --------------------------------------------------------------------------------------------
# Per-tensor methods


def rtn(weight: torch.Tensor, *, bits: int = 4, group_size: int | None = DEFAULT_GROUP_SIZE,
        symmetric: bool = False) -> Quantized:
    """Round-to-nearest (RTN) in plain torch, 2-8 bits, per group of columns or per output channel.

    For each output row and each group g of ``group_size`` consecutive input columns
    (``None`` or -1: the whole row, i.e. per output channel; clamped to the row length; a last,
    shorter group is allowed):

    asymmetric (default), with q_max = 2^b - 1::

        s = (max_g w - min_g w) / q_max,   z = clamp(round(-min_g w / s), 0, q_max)
        q = clamp(round(w / s) + z, 0, q_max),   w_hat = s * (q - z)

    symmetric, with q_max = 2^(b-1) - 1::

        s = max_g |w| / q_max,   q = clamp(round(w / s), -q_max, q_max),   w_hat = s * q

    (the RTN baseline of GPTQ, arXiv 2210.17323, and AWQ, arXiv 2306.00978). A constant group is
    reproduced exactly. ``codes`` holds q (uint8, or int8 when symmetric).
    """
    bits = require_bits("rtn", bits, RTN_BITS)
    wg, restore = _grouped(weight, group_size)
    s, z, q_lo, q_hi = _rtn_grid(wg, bits, symmetric)
    q = torch.clamp(torch.round(wg / s) + z, q_lo, q_hi)
    w_hat = s * (q - z)
    return Quantized(restore(w_hat), restore(q.to(torch.int8 if symmetric else torch.uint8)))


def rtn_bin_width(weight: torch.Tensor, *, bits: int = 4, group_size: int | None = DEFAULT_GROUP_SIZE,
                  symmetric: bool = False) -> torch.Tensor:
    """The RTN step s of :func:`rtn` at every entry of ``weight`` (same shape, float32)."""
    bits = require_bits("rtn", bits, RTN_BITS)
    wg, restore = _grouped(weight, group_size)
    s = _rtn_grid(wg, bits, symmetric)[0]
    return restore(s.expand_as(wg))


def _grouped(weight: torch.Tensor, group_size):
    """``weight`` as float32 [rows, groups, G] and a function that maps such a tensor back."""
    w = weight.detach().float()
    shape = w.shape
    w = w.reshape(shape[0], -1)
    rows, cols = w.shape
    g = _group(group_size, cols)
    pad = (-cols) % g
    if pad:  # repeat the last column: the last group's min and max do not change
        w = torch.cat([w, w[:, -1:].expand(rows, pad)], dim=1)

    def restore(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(rows, -1)[:, :cols].reshape(shape).contiguous()

    return w.reshape(rows, -1, g), restore


def _rtn_grid(wg: torch.Tensor, bits: int, symmetric: bool):
    """Step s, zero point z and code range of each group (the equations of :func:`rtn`)."""
    if symmetric:
        q_max = 2 ** (bits - 1) - 1
        amax = wg.abs().amax(-1, keepdim=True)
        s = torch.where(amax > 0, amax / q_max, torch.ones_like(amax))
        return s, torch.zeros_like(s), -q_max, q_max
    q_max = 2 ** bits - 1
    lo = wg.amin(-1, keepdim=True)
    hi = wg.amax(-1, keepdim=True)
    # a constant group gets s = |w| (or 1 for zeros), which reproduces it exactly
    s = torch.where(hi > lo, (hi - lo) / q_max, torch.where(lo != 0, lo.abs(), torch.ones_like(lo)))
    z = torch.clamp(torch.round(-lo / s), 0, q_max)
    return s, z, 0, q_max


def nf4(weight: torch.Tensor, *, bits: int = 4, blocksize: int = BNB_BLOCKSIZE) -> Quantized:
    """bitsandbytes NF4 (QLoRA, arXiv 2305.14314): 4-bit NormalFloat codes, absmax per block of 64.

    w_hat = absmax_block * NF4[q], with q the nearest of the 16 NF4 levels to w / absmax_block;
    exactly ``dequantize_4bit(quantize_4bit(w, quant_type="nf4"))`` of bitsandbytes.
    """
    return _bnb_4bit(weight, "nf4", bits, blocksize)


def fp4(weight: torch.Tensor, *, bits: int = 4, blocksize: int = BNB_BLOCKSIZE) -> Quantized:
    """bitsandbytes FP4 (the default type of ``BitsAndBytesConfig(load_in_4bit=True)``), block 64.

    w_hat = absmax_block * FP4[q] (a 4-bit float grid: sign, 2 exponent bits, 1 mantissa bit);
    exactly ``dequantize_4bit(quantize_4bit(w, quant_type="fp4"))`` of bitsandbytes.
    """
    return _bnb_4bit(weight, "fp4", bits, blocksize)


def int8(weight: torch.Tensor, *, bits: int = 8) -> Quantized:
    """LLM.int8 weights (Dettmers et al. 2022, arXiv 2208.07339): row-wise absmax int8.

    q = round(127 * w / max_row |w|), w_hat = q * max_row |w| / 127, computed by bitsandbytes'
    ``int8_vectorwise_quant`` / ``int8_vectorwise_dequant`` on the fp16 weights, as transformers'
    ``BitsAndBytesConfig(load_in_8bit=True)`` does (same codes and scales, bit for bit). Only the
    weights are simulated: LLM.int8's int8 activations and its fp16 outlier columns are not.
    """
    require_bits("int8", bits, (8,))
    F = _bnb_functional()
    w = weight.detach()
    shape = w.shape
    w16 = w.reshape(shape[0], -1).to(torch.float16).contiguous()
    codes, row_scale, _ = F.int8_vectorwise_quant(w16)
    w_hat = F.int8_vectorwise_dequant(codes, row_scale).float()
    return Quantized(w_hat.reshape(shape).contiguous(), codes.reshape(shape))


def _bnb_4bit(weight: torch.Tensor, quant_type: str, bits, blocksize: int) -> Quantized:
    require_bits(quant_type, bits, (4,))
    F = _bnb_functional()
    w = weight.detach().float().contiguous()
    try:
        packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
        w_hat = F.dequantize_4bit(packed, state)
    except (ValueError, RuntimeError, AssertionError) as err:
        raise BasinError(f"bitsandbytes could not quantize a {tuple(w.shape)} tensor to {quant_type} "
                         f"with blocksize {blocksize} ({err}); use blocksize 64") from None
    p = packed.flatten()
    codes = torch.stack([p >> 4, p & 0x0F], dim=-1).flatten()[: w.numel()].reshape(w.shape)
    return Quantized(w_hat.float().reshape(w.shape), codes)


def _bnb_functional():
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # a harmless "kernels-community" notice
            import bitsandbytes.functional as F
    except ImportError:
        raise BasinError("the nf4, fp4 and int8 methods need bitsandbytes: pip install 'basin[quant]'") from None
    return F


def _group(group_size, cols: int) -> int:
    if group_size is None or group_size == -1:
        return cols
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise BasinError(f"group_size must be a positive integer, or None for per-channel, not {group_size!r}")
    return min(group_size, cols)


# --------------------------------------------------------------------------------------------
# GPTQ through gptqmodel


class _StopForward(Exception):
    """Raised by a hook to end a calibration forward pass after the layer being quantized."""


def _gptqmodel():
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(2, os.cpu_count() or 1))))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from gptqmodel import QuantizeConfig
            from gptqmodel.quantization.gptq import GPTQ
    except ImportError:
        raise BasinError("the gptq method needs gptqmodel: pip install 'basin[quant]' "
                         "(gptqmodel==7.6.0 with torch==2.13.0)") from None
    return GPTQ, QuantizeConfig


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM (``model.model.layers`` for Llama-like models)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(base, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise BasinError(f"{type(model).__name__} has no list of decoder layers for GPTQ")
    return max(lists, key=len)


def _calibration_batches(calibration: Sequence[str], tokenizer, max_length: int, batch_size: int):
    if tokenizer is None:
        raise BasinError("gptq needs the tokenizer of the model for its calibration text: pass tokenizer=...")
    if calibration is None or isinstance(calibration, str) or not len(calibration):
        raise BasinError("gptq needs calibration text: pass calibration=[...] (a list of strings, "
                         "e.g. retain-set questions and answers)")
    examples = [e for e in (Example(list(t)[:max_length], list(t)[:max_length]) if isinstance(t, (list, tuple))
                            else encode_text(tokenizer, str(t), max_length)  # ids: already in the audit's format
                            for t in calibration) if e.input_ids]
    if not examples:
        raise BasinError("the calibration texts encode to no tokens; pass non-empty strings")
    pad = pad_id_of(tokenizer)
    return [(b["input_ids"], b["attention_mask"]) for b in
            (collate(examples[start:start + batch_size], pad) for start in range(0, len(examples), batch_size))]


@torch.no_grad()
def gptq(model: nn.Module, calibration: Sequence[str], tokenizer, *, bits: int = 4,
         group_size: int | None = DEFAULT_GROUP_SIZE, symmetric: bool = False, damp: float = 0.01,
         max_length: int = 128, batch_size: int = 16) -> dict[str, Quantized]:
    """GPTQ (Frantar et al. 2023, arXiv 2210.17323) via gptqmodel's solver, layer by layer on calibration text.

    Works IN PLACE on ``model`` (the attack passes its buffer).

    For each linear layer with calibration inputs X, GPTQ minimises the layer-output error
    ||X W^T - X W_hat^T||^2 over the grid: it quantizes one column at a time and moves the
    rounding error onto the columns not yet quantized, using the inverse Hessian H^-1 of
    H = 2 X^T X + lambda I (lambda = ``damp`` * mean diag H; 0.01 as in the paper)::

        q_j = quant(w_j),   w_{j+1:} -= (w_j - q_j) / [H^-1]_jj * [H^-1]_{j, j+1:}

    Layers are processed in order and each layer's inputs come from the already-quantized layers
    below it (sequential GPTQ); the Linear modules inside one layer see the same forward pass.
    Padding positions are left out of X. The grid is gptqmodel's min-max grid over groups of
    ``group_size`` columns (clamped to the row length; the range is widened to contain 0, which
    changes nothing for groups with both signs), no activation reordering. gptqmodel and
    transformers default to ``symmetric=True``; we default to asymmetric like :func:`rtn`, so the
    two are comparable. (gptqmodel's symmetric grid has step 2 max|w| / (2^b - 1) and 2^b levels,
    not the restricted symmetric grid of :func:`rtn`.) Returns the codes per weight name;
    ``model``'s decoder Linear weights now hold the dequantized float32 values. Embeddings and
    ``lm_head`` are not touched.
    """
    bits = require_bits("gptq", bits, GPTQ_BITS)
    if not 0 < damp < 1:
        raise BasinError(f"damp must be in (0, 1), not {damp!r}")
    GPTQ, QuantizeConfig = _gptqmodel()
    batches = _calibration_batches(calibration, tokenizer, max_length, batch_size)
    names = {id(m): n for n, m in model.named_modules()}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: dict[str, Quantized] = {}
    state: dict[str, torch.Tensor | None] = {"mask": None}
    try:
        for layer in decoder_layers(model):
            linears = [(names[id(m)], m) for m in layer.modules() if isinstance(m, nn.Linear)]
            solvers = {}
            hooks = []
            for name, module in linears:
                g = _group(group_size, module.in_features)
                with contextlib.redirect_stdout(io.StringIO()):
                    qcfg = QuantizeConfig(bits=bits, group_size=g, sym=symmetric, desc_act=False,
                                          act_group_aware=False, damp_percent=damp, fallback=None,
                                          offload_to_disk=False)
                solver = GPTQ(module, qcfg)
                solver.quantizer.configure(perchannel=True)
                solvers[name] = solver
                hooks.append(module.register_forward_hook(_capture(solver, state)))
            hooks.append(layer.register_forward_hook(_stop))
            try:
                for input_ids, mask in batches:
                    state["mask"] = mask.bool().to(device)
                    try:
                        model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
                    except _StopForward:
                        pass
            finally:
                for h in hooks:
                    h.remove()
            for name, module in linears:
                q, scale, zero, g_idx, *_ = solvers[name].quantize(blocksize=128)
                q = q.to(module.weight.dtype)
                idx = g_idx.long()
                s, z = scale[:, idx].float(), zero[:, idx].float()
                codes = torch.round(q.float() / s) + z
                module.weight.copy_(q)
                results[f"{name}.weight"] = Quantized(module.weight.detach(), codes.to(torch.uint8))
                del solvers[name]
    finally:
        model.train(was_training)
    return results


def _capture(solver, state):
    def hook(module, inputs, output):
        x = inputs[0].detach()
        mask = state["mask"]
        x = x[mask] if mask is not None and mask.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
        solver.add_batch(x.float(), None)
    return hook


def _stop(module, inputs, output):
    raise _StopForward


# --------------------------------------------------------------------------------------------
# Registry and the attack

METHODS = {"rtn": rtn, "nf4": nf4, "fp4": fp4, "int8": int8, "gptq": gptq}


def setting_name(method: str, bits: int) -> str:
    """``rtn-4bit``, ``gptq-3bit``; the fixed-width bitsandbytes types are just ``nf4``, ``fp4``, ``int8``."""
    return f"{method}-{bits}bit" if method in ("rtn", "gptq") else method


def _plan(methods, bits) -> list[tuple[str, int]]:
    plan = []
    for method in as_tuple(methods, "methods"):
        lookup(METHODS, method, "quantization method")
        for b in (DEFAULT_BITS[method] if bits is None else as_tuple(bits, "bits")):
            plan.append((method, require_bits(method, b, ALLOWED_BITS[method])))
    return plan


def _per_tensor(method: str, bits: int, group_size, symmetric: bool, blocksize: int):
    if method == "rtn":
        return lambda w: rtn(w, bits=bits, group_size=group_size, symmetric=symmetric)
    if method in ("nf4", "fp4"):
        return lambda w: METHODS[method](w, bits=bits, blocksize=blocksize)
    return lambda w: int8(w, bits=bits)


def quantize(model: nn.Module, *, methods: str | Sequence[str] = ("rtn", "nf4"), bits: int | Sequence[int] | None = None,
             group_size: int | None = DEFAULT_GROUP_SIZE, symmetric: bool = False, blocksize: int = BNB_BLOCKSIZE,
             include_embeddings: bool = False, reference: nn.Module | None = None,
             calibration: Sequence[str] | None = None, tokenizer=None, damp: float = 0.01,
             stats: dict | None = None) -> Iterator[tuple[str, float, nn.Module]]:
    """Quantization attack: RTN 8/4/3/2 bits, NF4, FP4, LLM.int8 or GPTQ (fake-quantized fp32 weights).

    Yields ``(setting, bits, model)`` for each method and bit width (``bits=None``: 8/4/3/2 for
    ``rtn``, 4 for ``nf4``/``fp4``/``gptq``, 8 for ``int8``). Settings are named by
    :func:`setting_name` (``rtn-4bit``, ``nf4``, ...). ``group_size`` applies to ``rtn`` and
    ``gptq`` (``None``: per output channel), ``blocksize`` to ``nf4``/``fp4``. ``gptq`` needs
    ``calibration`` (a list of strings, or of token-id lists: the audit passes the retain rows
    encoded in its prompt format) and ``tokenizer``.

    With ``reference`` (the original model O; ``model`` is the unlearned U) every setting is
    followed by ``<setting>-snapback``: Q(W_O) + (W_U - W_O), the snap-back control of DESIGN
    section 5; and if ``stats`` is a dict, ``stats[setting] = {"code_change": f}`` is filled before
    the setting is yielded, f being the fraction of quantized weights whose integer code differs
    between Q(W_O) and Q(W_U) (see :func:`code_change_fraction`).

    ``model`` is never modified; one buffer model is reused for every setting (copy it to keep it).
    """
    plan = _plan(methods, bits)
    if reference is not None:
        check_same_architecture(reference, model, "original (reference) and unlearned models")
    if any(m == "gptq" for m, _ in plan):
        if include_embeddings:
            raise BasinError("gptq keeps the embeddings and lm_head in full precision; "
                             "drop include_embeddings or use rtn/nf4/fp4/int8")
        _gptqmodel()
        _calibration_batches(calibration, tokenizer, 128, 16)
    for m, _ in plan:
        if m in ("nf4", "fp4", "int8"):
            _bnb_functional()
        if m in ("rtn", "gptq"):
            _group(group_size, 1)
    names = target_names(model, include_embeddings)
    return _quantize_sweep(model, plan, names, group_size, symmetric, blocksize, reference,
                           calibration, tokenizer, damp, stats)


def _quantize_sweep(model, plan, names, group_size, symmetric, blocksize, reference, calibration, tokenizer,
                    damp, stats):
    buffer, dst, src, ref = sweep_buffer(model, reference)
    for method, bits in plan:
        setting = setting_name(method, bits)
        if method == "gptq":
            yield from _gptq_settings(buffer, model, names, reference, setting, bits, group_size, symmetric,
                                      damp, calibration, tokenizer, stats)
            dst = live(buffer)
            continue
        fn = _per_tensor(method, bits, group_size, symmetric, blocksize)
        with torch.no_grad():
            changed = total = 0
            for name in names:
                q_u = fn(src[name])
                dst[name].copy_(q_u.weight)
                if reference is not None:
                    q_o = fn(ref[name])
                    changed += int((q_o.codes != q_u.codes).sum())
                    total += q_u.codes.numel()
        if reference is not None and stats is not None:
            stats[setting] = {"code_change": changed / max(total, 1)}
        yield setting, float(bits), buffer
        if reference is not None:
            write_transformed(dst, src, names, lambda _n, w: fn(w).weight, ref)
            yield f"{setting}-snapback", float(bits), buffer


def _gptq_settings(buffer, model, names, reference, setting, bits, group_size, symmetric, damp, calibration,
                   tokenizer, stats):
    kwargs = dict(bits=bits, group_size=group_size, symmetric=symmetric, damp=damp)
    q_o = None
    if reference is not None:  # Q(W_O) first, so the code-change fraction is known before Q(W_U) is yielded
        load_from(buffer, reference)
        codes_o = gptq(buffer, calibration, tokenizer, **kwargs)
        q_o = {n: t.clone() for n, t in live(buffer).items() if n in names}
    load_from(buffer, model)
    codes_u = gptq(buffer, calibration, tokenizer, **kwargs)
    if reference is not None and stats is not None:
        changed = sum(int((codes_o[n].codes != codes_u[n].codes).sum()) for n in codes_u)
        total = sum(codes_u[n].codes.numel() for n in codes_u)
        stats[setting] = {"code_change": changed / max(total, 1)}
    yield setting, float(bits), buffer
    if reference is not None:
        dst, src, ref = live(buffer), live(model), live(reference)
        with torch.no_grad():
            for n in names:
                dst[n].copy_(q_o[n].add_(src[n].float() - ref[n].float()))
        yield f"{setting}-snapback", float(bits), buffer
        load_from(buffer, model)


def code_change_fraction(original: nn.Module, unlearned: nn.Module, *, method: str = "rtn", bits: int = 4,
                         group_size: int | None = DEFAULT_GROUP_SIZE, symmetric: bool = False,
                         blocksize: int = BNB_BLOCKSIZE, include_embeddings: bool = False,
                         calibration: Sequence[str] | None = None, tokenizer=None, damp: float = 0.01) -> float:
    """Fraction of quantized weights whose integer code differs between Q(W_original) and Q(W_unlearned).

    Near 0: quantization maps both models to (almost) the same grid points, so the unlearning
    update is erased by rounding (the attack paper's mechanism). The DESIGN probe saw 0.2-0.3% for
    Adam+NPO at lr 1e-5 on SmolLM2-135M.
    """
    stats: dict = {}
    for _ in quantize(unlearned, methods=method, bits=bits, group_size=group_size, symmetric=symmetric,
                      blocksize=blocksize, include_embeddings=include_embeddings, reference=original,
                      calibration=calibration, tokenizer=tokenizer, damp=damp, stats=stats):
        break
    return stats[setting_name(method, int(bits))]["code_change"]


# --------------------------------------------------------------------------------------------
# The deployment path: a saved checkpoint through transformers' BitsAndBytesConfig


def load_bnb_checkpoint(path, method: str = "nf4", *, compute_dtype: torch.dtype = torch.float32,
                        device_map: str = "cpu"):
    """Load a saved Hugging Face checkpoint as transformers + bitsandbytes would deploy it.

    ``nf4`` / ``fp4``: ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=method)``
    (real ``Linear4bit`` modules, block 64 on CPU); ``int8``: ``BitsAndBytesConfig(load_in_8bit=True)``
    (``Linear8bitLt``, outlier threshold 6.0, int8 activations). The weights are loaded in float32
    before quantizing, so ``nf4``/``fp4`` give the same codes as :func:`nf4`/:func:`fp4` on the
    float32 model, and ``int8`` the same codes as :func:`int8`. Safetensors only.
    """
    from pathlib import Path

    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    lookup({"nf4": 1, "fp4": 1, "int8": 1}, method, "bitsandbytes checkpoint type")
    _bnb_functional()
    if not (Path(path) / "config.json").exists():
        raise BasinError(f"{path} has no config.json: it is not a Hugging Face checkpoint folder")
    if method == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=method,
                                    bnb_4bit_compute_dtype=compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, device_map=device_map,
                                                 quantization_config=config, use_safetensors=True)
    model.eval()
    return model
