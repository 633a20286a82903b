"""One prepared GPU check for basin: run it once on a lent H100 / H200 and bring back one JSON.

    python bench/gpu_check.py                 # the full check (default time budget 600 s)
    python bench/gpu_check.py --dry-run       # tiny sizes, any device (CPU: well under a minute)
    bash bench/gpu_check.sh                   # the same with the environment set (see that file)

Stages (each timed; a failure is printed and the next stage runs):

- ``env``: torch, transformers, bitsandbytes versions; the GPU's name, memory and capability.
- ``nf4``: bitsandbytes NF4 quantize / dequantize of the weight matrices of a random Llama
  decoder layer on the device, checked against a plain-torch NF4 reference (absmax per block of
  64, nearest of the 16 NF4 levels) and against bitsandbytes on the CPU; also basin's own ``nf4``
  attack function on the device. Skipped with a message when bitsandbytes does not import.
- ``unlearn``: a small random-init Llama on the device in bfloat16: direct optimizer steps
  (adam + NPO, zo-sgd + NPO, adazo + NPO) asserting finite losses; a zeroth-order step with
  lr = 0 must give the weights back bit for bit (exact restore in bf16), and its closure must run
  with autograd off (no graph); peak memory of a ZO step against a plain forward; then basin's
  ``unlearn()`` loop end to end (adam + NPO and zo-sgd + NPO, ``dtype="bfloat16"``, and adam
  with ``dtype="bf16-mixed"``).
- ``p7``: P7, the first-order step MFU on a ~1B-parameter random-init ``LlamaForCausalLM`` in
  bfloat16 (hidden 2048, 16 layers, intermediate 5632, 32 heads, vocabulary 32000, sequence
  2048) with SDPA attention, through basin's optimizer (``adam``, a closure over the answer NLL
  of every token). MFU = 6 * params * tokens / step time / peak bf16 dense FLOP/s (goal >= 40%);
  then a zeroth-order step (``zo-sgd``, q = 1, central differences: two forwards) on the same
  batch, tokens/s ZO over tokens/s FO (goal >= 1.5; the FLOP ratio 6N / 4N gives 1.5 at equal
  efficiency), with and without ``exact_restore``; and, time permitting, the FO step in
  ``bf16-mixed`` (float32 master weights and Adam state, bf16 autocast) to price that setting.

The peak is read from ``torch.cuda.get_device_name()`` (H100 SXM and H200: 989 TFLOP/s bf16
dense; the value assumed is printed and saved; ``--peak-tflops`` overrides it). The JSON goes to
``--out``, else ``$OUT/gpu_check.json``, else ``./gpu_check.json``; it is rewritten after every
stage, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import benchlib  # noqa: F401  (environment defaults and basin's own code on sys.path, before torch)
import torch

# Peak dense bf16 tensor-core FLOP/s (no sparsity), by GPU name; the first match wins.
PEAKS = (
    ("H200", 989e12, "H200 (989 TFLOP/s bf16 dense, as H100 SXM)"),
    ("H100 PCIe", 756e12, "H100 PCIe (756 TFLOP/s bf16 dense)"),
    ("H100 NVL", 835e12, "H100 NVL (835 TFLOP/s bf16 dense)"),
    ("H100", 989e12, "H100 SXM (989 TFLOP/s bf16 dense)"),
    ("H800", 989e12, "H800 SXM (989 TFLOP/s bf16 dense)"),
    ("A100", 312e12, "A100 (312 TFLOP/s bf16 dense)"),
)
DEFAULT_PEAK = (989e12, "unknown GPU: assumed H100 SXM (989 TFLOP/s bf16 dense)")
CPU_PEAK = (1e12, "CPU: a nominal 1 TFLOP/s (the MFU number means nothing on a CPU)")
GOAL_MFU = 0.40
GOAL_ZO_OVER_FO = 1.5
# NF4 levels of QLoRA (Dettmers et al. 2023, arXiv 2305.14314), as bitsandbytes stores them
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)

# model sizes: (full check, dry run)
P7_SHAPE = dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=5632, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000)
P7_SHAPE_DRY = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                    num_key_value_heads=4, vocab_size=256)
SMALL_SHAPE = dict(hidden_size=256, num_hidden_layers=4, intermediate_size=1024, num_attention_heads=8,
                   num_key_value_heads=8)
SMALL_SHAPE_DRY = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=2,
                       num_key_value_heads=2)


class Budget:
    """A global deadline; stages ask how much is left before starting something long."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


class Skip(Exception):
    """A stage that cannot run here (missing package, no time left); not a failure."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float, str, str]:
    """(peak FLOP/s, what it assumes, device name)."""
    if device.type != "cuda":
        name = platform.processor() or platform.machine() or "cpu"
        flops, note = CPU_PEAK
    else:
        name = torch.cuda.get_device_name(device)
        flops, note = next(((f, n) for key, f, n in PEAKS if key.lower() in name.lower()), DEFAULT_PEAK)
    if override_tflops:
        flops, note = override_tflops * 1e12, f"--peak-tflops {override_tflops:g} (given)"
    return flops, note, name


def llama(shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0, attn: str = "sdpa",
          max_positions: int = 4096):
    """A random-init LlamaForCausalLM built on ``device`` (N(0, 0.02) weights, seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=max_positions, tie_word_embeddings=False,
                         initializer_range=0.02, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, **shape)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    with device:
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def token_batch(batch: int, seq: int, vocab: int, device: torch.device, seed: int = 0) -> dict:
    """Random tokens with every position scored (labels = inputs, no padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": ids.clone().to(device)}


# ----------------------------------------------------------------------------------- stages

def stage_env(ctx: dict, out: dict) -> None:
    import transformers

    device = ctx["device"]
    out.update({"torch": torch.__version__, "transformers": transformers.__version__,
                "cuda": torch.version.cuda, "python": platform.python_version(), "device": str(device),
                "gpu": ctx["gpu_name"], "peak_flops": ctx["peak"], "peak_assumed": ctx["peak_note"]})
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu_count=torch.cuda.device_count(), gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                   capability=f"{props.major}.{props.minor}",
                   flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            import bitsandbytes
        out["bitsandbytes"] = bitsandbytes.__version__
    except Exception as err:  # noqa: BLE001 - any import failure means "not here"
        out["bitsandbytes"] = f"not importable ({type(err).__name__}: {err})"


def nf4_reference(w: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """Plain-torch NF4: absmax per block of ``blocksize``, nearest NF4 level, dequantised."""
    flat = w.detach().float().reshape(-1)
    pad = (-flat.numel()) % blocksize
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, blocksize)
    absmax = blocks.abs().amax(-1, keepdim=True)
    scaled = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)
    levels = torch.tensor(NF4_LEVELS, device=w.device)
    q = (scaled.unsqueeze(-1) - levels).abs().argmin(-1)
    return (levels[q] * absmax).reshape(-1)[: flat.numel()].reshape(w.shape)


def stage_nf4(ctx: dict, out: dict) -> None:
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            import bitsandbytes.functional as F
    except Exception as err:  # noqa: BLE001
        raise Skip(f"bitsandbytes does not import ({type(err).__name__}: {err}); NF4 not checked") from None
    from audit.attacks.quantize import nf4 as basin_nf4

    device, dry = ctx["device"], ctx["dry"]
    hidden, inter = (64, 128) if dry else (2048, 5632)
    g = torch.Generator().manual_seed(0)
    layer = {"self_attn.q_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
             "mlp.gate_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
    tensors, worst_ref, worst_rel = {}, 0.0, 0.0
    out["tensors"] = tensors
    for name, shape in layer.items():
        # a bf16 weight (as a bf16 checkpoint holds it), quantized from float32 as basin's attack does
        w_cpu = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16).float()
        w = w_cpu.to(device)
        sync(device)
        t0 = time.perf_counter()
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
        w_hat = F.dequantize_4bit(packed, state).float()
        sync(device)
        seconds = time.perf_counter() - t0
        ref = nf4_reference(w)
        agree = float((w_hat - ref).abs().le(1e-6 + 1e-3 * ref.abs()).float().mean())
        rel = float((w_hat - w.float()).norm() / w.float().norm())
        row = {"agree_with_reference": agree, "relative_error": rel, "seconds": seconds,
               "finite": bool(torch.isfinite(w_hat).all())}
        if device.type == "cuda":  # the same tensor through bitsandbytes' CPU backend, where it has one
            try:
                p_cpu, s_cpu = F.quantize_4bit(w_cpu, blocksize=64, quant_type="nf4")
                row["codes_equal_cpu"] = float((packed.cpu() == p_cpu).float().mean())
                row["max_abs_diff_cpu"] = float((F.dequantize_4bit(p_cpu, s_cpu).float() - w_hat.cpu()).abs().max())
            except Exception as err:  # noqa: BLE001
                row["cpu_backend"] = f"unavailable ({type(err).__name__})"
        via_basin = basin_nf4(w)  # basin's attack function on a device tensor
        row["basin_nf4_matches"] = bool(torch.equal(via_basin.weight.to(w_hat.device), w_hat))
        tensors[name] = row
        worst_ref, worst_rel = max(worst_ref, 1 - agree), max(worst_rel, rel)
        log(f"  nf4 {name:18s} {tuple(shape)}: agree {agree:.4f}, rel. error {rel:.4f}, {seconds * 1e3:.1f} ms")
    out.update(worst_disagreement=worst_ref, worst_relative_error=worst_rel)
    assert all(r["finite"] for r in tensors.values()), "NF4 dequantization produced non-finite values"
    assert worst_ref < 1e-3, f"bitsandbytes NF4 differs from the plain-torch reference on {worst_ref:.2%} of entries"
    assert 0.01 < worst_rel < 0.2, f"NF4 relative error {worst_rel:.3f} is outside the expected 0.01-0.2"
    assert all(r["basin_nf4_matches"] for r in tensors.values()), "basin's nf4() differs from bitsandbytes"


def _micro_world():
    from unlearn.data.benchmarks import Benchmark
    from unlearn.data.world import World, WorldConfig
    from unlearn.tokenizer import train_tokenizer, world_training_texts

    world = World(WorldConfig(n_people=20, n_holdout=4, n_countries=4, seed=0))
    tok = train_tokenizer(world_training_texts(world), vocab_size=512)
    forget, retain = world.split(0.1)
    return tok, Benchmark("check:forget10", forget, retain, world.holdout, {"world_facts": world.utility})


def _small_model(ctx, tok, dtype):
    shape = {**(SMALL_SHAPE_DRY if ctx["dry"] else SMALL_SHAPE), "vocab_size": len(tok)}
    model = llama(shape, ctx["device"], dtype, seed=0, max_positions=128)
    model.config.pad_token_id, model.config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    model.config.bos_token_id = tok.bos_token_id
    return model


def stage_unlearn(ctx: dict, out: dict) -> None:
    from unlearn.data.format import collate, encode_rows, pad_id_of
    from unlearn.models import weights_hash
    from unlearn.objectives import make_objective
    from unlearn.optim import make_optimizer
    from unlearn.train import UnlearnConfig, unlearn

    device, bf16 = ctx["device"], torch.bfloat16
    tok, bench = _micro_world()
    pad = pad_id_of(tok)
    forget, retain = encode_rows(tok, bench.forget), encode_rows(tok, bench.retain)
    batch = {"forget": {k: v.to(device) for k, v in collate(forget[:8], pad).items()},
             "retain": {k: v.to(device) for k, v in collate(retain[:8], pad).items()}}
    out["steps"] = {}
    npo = make_objective("npo")
    for opt_name, lr in (("adam", 1e-4), ("zo-sgd", 1e-4), ("adazo", 1e-4)):
        model = _small_model(ctx, tok, bf16)
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        prep = npo.prepare(reference, batch)
        opt = make_optimizer(opt_name, model, lr=lr, seed=0)
        grad_modes = []

        def closure(i, model=model, grad_modes=grad_modes):
            grad_modes.append(torch.is_grad_enabled())
            return npo(model, batch, prep)

        losses = [opt.step(closure) for _ in range(3)]
        sync(device)
        assert all(math.isfinite(x) for x in losses), f"{opt_name}: non-finite loss {losses}"
        assert all(p.dtype == bf16 and p.device.type == device.type for p in model.parameters())
        if opt_name != "adam":
            assert not any(grad_modes), f"{opt_name}: a zeroth-order closure ran with autograd on"
        out["steps"][opt_name] = {"losses": losses, "autograd_in_closure": any(grad_modes)}
        log(f"  bf16 {opt_name:6s} + npo on {device.type}: losses {', '.join(f'{x:.4f}' for x in losses)}")
        del model, reference, opt

    # zeroth-order bookkeeping in bf16: lr = 0 must give the weights back bit for bit; memory
    model = _small_model(ctx, tok, bf16).requires_grad_(True)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    prep = npo.prepare(reference, batch)
    del reference
    before = weights_hash(model)
    zo = make_optimizer("zo-sgd", model, lr=0.0, seed=0, q=2)
    free_memory(device)
    with torch.no_grad():
        npo(model, batch, prep)
    sync(device)
    fwd_peak = peak_gib(device)
    free_memory(device)
    loss = zo.step(lambda i: npo(model, batch, prep))
    sync(device)
    zo_peak = peak_gib(device)
    exact = weights_hash(model) == before
    assert math.isfinite(loss) and exact, "a zeroth-order step with lr=0 changed the bf16 weights"
    out["zo_exact_restore_bf16"] = exact
    out["zo_peak_gib"], out["forward_peak_gib"] = zo_peak, fwd_peak
    if zo_peak is not None:
        out["zo_over_forward_memory"] = zo_peak / fwd_peak
        log(f"  ZO step peak {zo_peak:.3f} GiB vs no-grad forward {fwd_peak:.3f} GiB (ratio {zo_peak / fwd_peak:.2f})")
    del model, zo
    free_memory(device)

    # the loop end to end: device, dtype, reference model, batches, evaluation
    loops = out["loop"] = {}
    for opt_name, dtype in (("adam", "bfloat16"), ("zo-sgd", "bfloat16"), ("adam", "bf16-mixed")):
        model = _small_model(ctx, tok, torch.float32)
        t0 = time.perf_counter()
        result = unlearn(UnlearnConfig(benchmark=bench, objective="npo", optimizer=opt_name, lr=1e-4, steps=3,
                                       batch_size=4, eval_every=3, save_every=0, device=str(device), dtype=dtype),
                         model=model, tokenizer=tok, progress=False)
        sync(device)
        values = [r["value"] for r in result.records]
        assert values and all(math.isfinite(v) for v in values), f"{opt_name}/{dtype}: non-finite records"
        want = torch.float32 if dtype == "bf16-mixed" else bf16
        assert all(p.dtype == want and p.device.type == device.type for p in result.model.parameters())
        forget_prob = [r["value"] for r in result.records if r["metric"] == "prob" and r["split"] == "forget"]
        loops[f"{opt_name}/{dtype}"] = {"seconds": time.perf_counter() - t0, "forget_prob": forget_prob}
        log(f"  unlearn() {opt_name}/{dtype} on {device.type}: forget prob {forget_prob[0]:.4f} -> "
            f"{forget_prob[-1]:.4f}, {time.perf_counter() - t0:.1f} s")
        del model, result


def _time_steps(step, device, budget: Budget, warmup: int, steps: int, reserve: float) -> list[float]:
    """Run ``step`` ``warmup`` times, then time up to ``steps`` more (stopping early when the budget
    would drop below ``reserve`` seconds). Returns the timed seconds per step."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        if times and budget.left() < reserve + 2 * max(times):
            break
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _fits(run, device) -> bool:
    try:
        run()
        sync(device)
        return True
    except torch.cuda.OutOfMemoryError:
        free_memory(device)
        return False


def stage_p7(ctx: dict, out: dict) -> None:
    from unlearn.objectives.common import answer_nll
    from unlearn.optim import make_optimizer

    device, dry, budget, args = ctx["device"], ctx["dry"], ctx["budget"], ctx["args"]
    if budget.left() < (10 if dry else 90):
        raise Skip(f"only {budget.left():.0f} s of the budget left")
    shape = P7_SHAPE_DRY if dry else P7_SHAPE
    seq = args.seq or (64 if dry else 2048)
    free_memory(device)
    t0 = time.perf_counter()
    model = llama(shape, device, torch.bfloat16, seed=0, max_positions=max(seq, 128))
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    log(f"  model: {n_params / 1e9:.3f} B parameters ({n_embed / 1e6:.0f} M input embedding), built in "
        f"{time.perf_counter() - t0:.1f} s")
    net = torch.compile(model) if args.compile else model
    opt = make_optimizer("adam", model, lr=1e-5, seed=0)
    vocab = shape["vocab_size"]

    def fo_step(batch):
        return opt.step(lambda i: answer_nll(net, batch))

    # batch: given, or the largest power of two that fits in ~85% of the memory (from batch 1's peak)
    if args.batch:
        batch_size = args.batch
    elif device.type != "cuda":
        batch_size = 2
    else:
        one = token_batch(1, seq, vocab, device)
        if not _fits(lambda: fo_step(one), device):  # the first step also allocates Adam's state
            raise RuntimeError(f"one sequence of {seq} tokens does not fit; pass --seq")
        peaks = []
        for b in (1, 2):  # peak memory at batch 1 and 2: the difference is one sequence's share
            probe = token_batch(b, seq, vocab, device)
            torch.cuda.reset_peak_memory_stats(device)
            if not _fits(lambda: fo_step(probe), device):
                raise RuntimeError(f"two sequences of {seq} tokens do not fit; pass --seq or --batch 1")
            peaks.append(torch.cuda.max_memory_allocated(device))
            del probe
        per_sample = max(1, peaks[1] - peaks[0])
        fixed = peaks[0] - per_sample
        total = torch.cuda.get_device_properties(device).total_memory
        fit = int((0.85 * total - fixed) // per_sample)
        batch_size = max(1, min(64, 2 ** int(math.log2(max(1, fit)))))
        log(f"  batch probe: {per_sample / 2 ** 30:.2f} GiB per sequence of {seq}; about {fit} fit; using {batch_size}")
    batch = token_batch(batch_size, seq, vocab, device)
    while not _fits(lambda: fo_step(batch), device):
        if batch_size == 1:
            raise RuntimeError("the FO step does not fit at batch 1")
        batch_size //= 2
        log(f"  out of memory: trying batch {batch_size}")
        batch = token_batch(batch_size, seq, vocab, device)
    tokens = batch_size * seq
    warmup, steps = (1, 2) if dry else ((3, 8) if args.compile else (2, 8))
    free_memory(device)
    fo_times = _time_steps(lambda: fo_step(batch), device, budget, warmup, steps, reserve=60 if not dry else 5)
    fo_peak = peak_gib(device)
    fo_time = statistics.median(fo_times)
    flops = ctx["peak"]
    mfu = 6 * n_params * tokens / fo_time / flops
    # the stricter count: no FLOPs for the embedding lookup, plus attention (PaLM, Chowdhery et al. 2022)
    attn_flops = 12 * shape["num_hidden_layers"] * shape["hidden_size"] * seq
    mfu_strict = (6 * (n_params - n_embed) + attn_flops) * tokens / fo_time / flops
    out.update({"params": n_params, "seq": seq, "batch": batch_size, "tokens_per_step": tokens,
                "compile": bool(args.compile), "fo_step_s": fo_time, "fo_step_times": fo_times,
                "fo_tokens_per_s": tokens / fo_time, "fo_mfu": mfu, "fo_mfu_strict": mfu_strict,
                "fo_peak_gib": fo_peak, "goal_fo_mfu": GOAL_MFU, "fo_mfu_met": mfu >= GOAL_MFU})
    log(f"  FO (adam, fwd+bwd+update) batch {batch_size} x {seq}: {fo_time:.3f} s/step, "
        f"{tokens / fo_time:,.0f} tokens/s, MFU {mfu:.1%} (strict count {mfu_strict:.1%})")

    # forward + backward alone (what the optimizer's update adds on top)
    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        answer_nll(net, batch).backward()

    fb = _time_steps(fwd_bwd, device, budget, 1, 3 if not dry else 1, reserve=40 if not dry else 3)
    model.zero_grad(set_to_none=True)
    if fb:
        out["fwd_bwd_s"] = statistics.median(fb)
        out["update_s"] = fo_time - out["fwd_bwd_s"]
    del opt
    free_memory(device)

    # zeroth order on the same batch: two forwards under no_grad, weights perturbed in place
    for label, options in (("zo", {}), ("zo_plain", {"exact_restore": False})):
        if budget.left() < (30 if not dry else 2):
            out[f"{label}_skipped"] = f"only {budget.left():.0f} s left"
            continue
        zo = make_optimizer("zo-sgd", model, lr=1e-7, seed=0, **options)
        zo_times = _time_steps(lambda: zo.step(lambda i: answer_nll(net, batch)), device, budget,
                               2 if args.compile else 1, 5 if not dry else 1, reserve=20 if not dry else 1)
        zo_time = statistics.median(zo_times)
        out[f"{label}_step_s"], out[f"{label}_tokens_per_s"] = zo_time, tokens / zo_time
        out[f"{label}_over_fo"] = fo_time / zo_time
        out[f"{label}_mfu"] = 4 * n_params * tokens / zo_time / flops
        out[f"{label}_peak_gib"] = peak_gib(device)
        log(f"  {label} (zo-sgd{', exact_restore=False' if options else ''}): {zo_time:.3f} s/step, "
            f"{tokens / zo_time:,.0f} tokens/s, ZO/FO tokens/s {fo_time / zo_time:.2f} "
            f"(4N FLOP/token: MFU {out[f'{label}_mfu']:.1%})")
        del zo
        free_memory(device)
    if "zo_over_fo" in out:
        out["goal_zo_over_fo"] = GOAL_ZO_OVER_FO
        out["zo_over_fo_met"] = out["zo_over_fo"] >= GOAL_ZO_OVER_FO

    # the same FO step in bf16-mixed (float32 master weights and Adam state, bf16 autocast): its price
    if budget.left() < (90 if not dry else 2):
        out["mixed_skipped"] = f"only {budget.left():.0f} s left"
    else:
        model.float()
        opt = make_optimizer("adam", model, lr=1e-5, seed=0)

        def mixed_step():
            def closure(i):
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                    return answer_nll(net, batch)
            return opt.step(closure)

        if _fits(mixed_step, device):
            mixed = _time_steps(mixed_step, device, budget, 2 if args.compile else 1, 5 if not dry else 1,
                                reserve=10 if not dry else 1)
            t = statistics.median(mixed)
            out.update(mixed_step_s=t, mixed_tokens_per_s=tokens / t, mixed_mfu=6 * n_params * tokens / t / flops,
                       mixed_peak_gib=peak_gib(device))
            log(f"  FO in bf16-mixed: {t:.3f} s/step, {tokens / t:,.0f} tokens/s, MFU {out['mixed_mfu']:.1%}")
        else:
            out["mixed_skipped"] = f"out of memory at batch {batch_size}"
        del opt
    del model, net
    free_memory(device)


STAGES = {"env": stage_env, "nf4": stage_nf4, "unlearn": stage_unlearn, "p7": stage_p7}


# ----------------------------------------------------------------------------------- driver

def summary_table(results: dict) -> str:
    rows = [("stage", "status", "seconds", "numbers")]
    for name, r in results["stages"].items():
        numbers = ""
        if name == "env":
            numbers = f"{r.get('gpu')}; torch {r.get('torch')}; peak {r.get('peak_flops', 0) / 1e12:.0f} TFLOP/s"
        elif name == "nf4" and r["status"] == "ok":
            numbers = f"max disagreement {r['worst_disagreement']:.2e}; rel. error {r['worst_relative_error']:.3f}"
        elif name == "unlearn" and r["status"] == "ok":
            ratio = r.get("zo_over_forward_memory")
            numbers = "finite bf16 losses; exact ZO restore" + (f"; ZO/forward memory {ratio:.2f}" if ratio else "")
        elif name == "p7" and r["status"] == "ok":
            numbers = (f"FO MFU {r['fo_mfu']:.1%} (goal {GOAL_MFU:.0%}) at batch {r['batch']} x {r['seq']}; "
                       f"ZO/FO tokens/s {r.get('zo_over_fo', float('nan')):.2f} (goal {GOAL_ZO_OVER_FO})"
                       + (f"; bf16-mixed MFU {r['mixed_mfu']:.1%}" if "mixed_mfu" in r else ""))
        if r["status"] != "ok":
            numbers = r.get("error", r.get("reason", ""))[:100]
        rows.append((name, r["status"], f"{r['seconds']:.1f}", numbers))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.insert(1, "-" * max(len(x) for x in lines))
    return "\n".join(lines)


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, any device (a CPU run of the whole script)")
    parser.add_argument("--budget", type=float, default=600.0, help="global time budget in seconds (default 600)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in the P7 stage")
    parser.add_argument("--seq", type=int, default=None, help="P7 sequence length (default 2048; dry run 64)")
    parser.add_argument("--batch", type=int, default=None, help="P7 batch (default: fill ~85%% of GPU memory)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 dense TFLOP/s to assume")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default $OUT/gpu_check.json or ./gpu_check.json)")
    args = parser.parse_args(argv)

    budget = Budget(args.budget)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if device.index is None:  # set_device and friends want an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.enable_flash_sdp(True)
    elif not args.dry_run:
        log("no CUDA device: running the dry-run sizes instead (pass --dry-run to say so)")
        args.dry_run = True
    flops, note, name = peak_flops(device, args.peak_tflops)
    out_path = args.out or default_out()
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "dry_run": args.dry_run,
               "device": str(device), "gpu": name, "peak_flops": flops, "peak_assumed": note,
               "budget_s": args.budget, "stages": {}}
    ctx = {"device": device, "dry": args.dry_run, "budget": budget, "args": args, "peak": flops,
           "peak_note": note, "gpu_name": name}
    log(f"basin GPU check on {name} ({device}); peak assumed: {note}; budget {args.budget:.0f} s"
        + (" [dry run]" if args.dry_run else ""))
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    for stage in wanted:
        if stage not in STAGES:
            log(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
            continue
        log(f"\n== {stage} ({budget.left():.0f} s of the budget left)")
        t0 = time.perf_counter()
        numbers: dict = {}  # filled as the stage goes, so a failure keeps what was measured
        try:
            if budget.left() <= 0:
                raise Skip("the time budget is spent")
            STAGES[stage](ctx, numbers)
            record = {"status": "ok", **numbers}
        except Skip as why:
            record = {"status": "skipped", "reason": str(why), **numbers}
            log(f"  skipped: {why}")
        except Exception as err:  # noqa: BLE001 - report and go on to the next stage
            record = {"status": "failed", "error": f"{type(err).__name__}: {err}", **numbers}
            log(f"  FAILED: {type(err).__name__}: {err}")
            traceback.print_exc(file=sys.stdout)
        finally:
            free_memory(device)
        record["seconds"] = time.perf_counter() - t0
        results["stages"][stage] = record
        results["wall_s"] = budget.seconds - budget.left()
        _write(out_path, results)
    log("\n" + summary_table(results))
    log(f"\nwall {results.get('wall_s', 0):.1f} s; JSON: {out_path}")
    return 0 if all(r["status"] != "failed" for r in results["stages"].values()) else 1


def _write(path: Path, results: dict) -> None:
    from unlearn.cache import write_text_atomic
    write_text_atomic(path, json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
