"""Benchmark of the weight-space attacks: time per attack on the tiny and small models, and P5,
the peak memory of a quantize (4 settings) + interpolate (11 points) sweep per weight byte.

Run: ``python bench/attack_bench.py`` (about a minute on two busy cores). Models are randomly
initialised (the timing does not depend on training); the tokenizer is trained on the default
world's texts. Memory is read from the kernel's peak resident set (VmHWM, reset through
/proc/self/clear_refs) in a fresh child process per size, so allocator reuse of earlier runs
cannot hide anything. Prints the machine load next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import benchlib
import torch

N_CALIBRATION = 64


def _texts():
    from unlearn.data.format import prompt_text
    from unlearn.data.world import World
    from unlearn.tokenizer import world_training_texts

    world = World()
    retain = world.split(0.1)[1]
    calibration = [f"{prompt_text(r['question'])} {r['answer']}" for r in retain[:N_CALIBRATION]]
    return world_training_texts(world), calibration


def _models(size: str, tokenizer):
    from unlearn.models import build_model

    original = build_model(size, tokenizer, torch.Generator().manual_seed(0))
    unlearned = build_model(size, tokenizer, torch.Generator().manual_seed(1))
    return original, unlearned


def weight_bytes(model) -> int:
    from audit.attacks.common import named_tensors

    return sum(t.numel() * t.element_size() for t in named_tensors(model).values())


def _drain(sweep) -> int:
    n = 0
    for _setting, _x, _model in sweep:
        n += 1
    return n


def _best(fn, repeats: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - start)
    return best, n


def time_attacks(size: str, tokenizer, calibration) -> list[tuple[str, float, int]]:
    from audit.attacks.interpolate import interpolate
    from audit.attacks.noise import noise
    from audit.attacks.prune import prune
    from audit.attacks.quantize import quantize

    original, unlearned = _models(size, tokenizer)
    runs = [
        ("rtn 4-bit", lambda: _drain(quantize(unlearned, bits=4)), 3),
        ("rtn 8/4/3/2-bit", lambda: _drain(quantize(unlearned)), 3),
        ("rtn 4-bit + snap-back", lambda: _drain(quantize(unlearned, bits=4, reference=original)), 3),
        ("nf4", lambda: _drain(quantize(unlearned, methods="nf4")), 3),
        ("fp4", lambda: _drain(quantize(unlearned, methods="fp4")), 3),
        ("int8", lambda: _drain(quantize(unlearned, methods="int8")), 3),
        (f"gptq 4-bit ({N_CALIBRATION} texts)",
         lambda: _drain(quantize(unlearned, methods="gptq", calibration=calibration, tokenizer=tokenizer)), 1),
        ("interpolate 11 points", lambda: _drain(interpolate(unlearned, reference=original)), 3),
        ("noise 4 scales x 3 draws", lambda: _drain(noise(unlearned)), 3),
        ("prune 4 sparsities (global)", lambda: _drain(prune(unlearned)), 3),
        ("prune 4 sparsities (tensor)", lambda: _drain(prune(unlearned, scope="tensor")), 3),
    ]
    out = []
    for name, fn, repeats in runs:
        seconds, n = _best(fn, repeats)
        out.append((name, seconds, n))
    return out


def memory_child(size: str, tokenizer_dir: str) -> None:
    """In a fresh process: P5 for one size, printed as one JSON line."""
    from transformers import AutoTokenizer

    from audit.attacks.interpolate import interpolate
    from audit.attacks.quantize import quantize

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    # warm-up on micro models: lazy imports (the Llama modelling code) and first-call allocations
    # are then part of the baseline, not of the sweep
    warm_o, warm_u = _models("micro", tokenizer)
    _drain(quantize(warm_u, bits=4))
    _drain(interpolate(warm_u, reference=warm_o, points=2))
    del warm_o, warm_u
    rss_empty = benchlib.status_bytes("VmRSS")
    original, unlearned = _models(size, tokenizer)
    rss_models = benchlib.status_bytes("VmRSS")
    benchlib.reset_peak()                            # reset VmHWM to the current RSS
    _drain(quantize(unlearned))                      # rtn 8/4/3/2 bits: 4 settings
    _drain(interpolate(unlearned, reference=original, points=11))
    peak = benchlib.status_bytes("VmHWM")
    print(json.dumps({"size": size, "weight_bytes": weight_bytes(unlearned), "rss_empty": rss_empty,
                      "rss_models": rss_models, "peak": peak}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--memory-child", nargs=2, metavar=("SIZE", "TOKENIZER_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0

    from unlearn.tokenizer import train_tokenizer

    texts, calibration = _texts()
    tokenizer = train_tokenizer(texts)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {benchlib.load_text()} (before)")
    start = time.perf_counter()
    from audit.attacks.quantize import _bnb_functional, _gptqmodel

    _bnb_functional()
    _gptqmodel()
    print(f"import of bitsandbytes + gptqmodel: {time.perf_counter() - start:.1f} s (once per process, not below)")

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for size in args.sizes:
            original, _ = _models(size, tokenizer)
            wb = weight_bytes(original)
            n_params = sum(p.numel() for p in original.parameters())
            del original
            print(f"\n== {size}: {n_params / 1e6:.2f} M parameters, {wb / 2**20:.1f} MiB of fp32 weights")
            for name, seconds, n in time_attacks(size, tokenizer, calibration):
                print(f"  {name:<32} {seconds:8.3f} s  ({n} settings, {seconds / max(n, 1) * 1000:7.1f} ms each)")
            child = subprocess.run([sys.executable, __file__, "--memory-child", size, tmp],
                                   capture_output=True, text=True, check=True)
            m = json.loads(child.stdout.strip().splitlines()[-1])
            extra = (m["peak"] - m["rss_models"]) / m["weight_bytes"]
            total = (m["peak"] - m["rss_empty"]) / m["weight_bytes"]
            print(f"  P5 quantize (rtn 8/4/3/2) + interpolate (11 points): peak above the loaded models "
                  f"{extra:.2f} x weight bytes (goal <= 3); including the two input models {total:.2f} x")
    print(f"\n{benchlib.load_text()} (after)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
