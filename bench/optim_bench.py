"""Optimizer benchmark: the ``small`` Llama (8 layers, width 256) or SmolLM2-135M, fixed random batch.

Prints, each measured side by side in this one run, with the machine's load average:

P1  memory: peak memory of one ZO-SGD step / peak memory of one forward pass alone (goal <= 1.10),
    for every ZO mode (exact restore on and off, kept directions in float32 and bfloat16), and for
    ZO-Adam / AdaZO the memory they keep beyond ZO-SGD against their moment buffers' size
    (2 x the perturbed parameters' bytes).
P2a time: one zo-sgd step / two no-grad forwards on the same batch (goal <= 1.20), adazo likewise
    (goal <= 1.25), and the kept-direction modes beside them; interleaved rounds, medians.
P2b time: ``hybrid`` (n_fo = n_zo = steps / 2: Adam, then AdaZO) / ``adam`` over the same number
    of steps, run in lockstep (goal <= 0.85 on SmolLM2-135M).
P3  time: one basin ``adam`` step / one hand-written step (forward, backward, torch.optim.AdamW)
    (goal <= 1.05).
P8  (``--growth``) cost growth: time per step of adam, zo-sgd and the hybrid on micro, tiny, small
    and SmolLM2-135M at the same batch, and of an audit sweep (4-bit RTN + NF4 + 11 interpolation
    points, forward-only metrics), against parameters x tokens run (goal: each within 1.2x of
    linear); the sweep also against one clean evaluation of the same model.

How memory is measured. tracemalloc does not see torch's allocations, and on CPU torch keeps no
peak-allocation counter, so each memory number comes from a fresh subprocess that reads the
kernel's resident-set counters: it builds the model and batch, runs one warm-up forward (lazy
initialisation), then resets the peak counter (``/proc/self/clear_refs``), records the resident
set, runs the operation, and reads the peak (``VmHWM``). Peak memory of the operation = model
weights + (peak - resident set before it); weights + activations is what inference memory means.
The children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc serves every large tensor from its
own mapping and returns it on free; the resident set then follows live tensors closely instead
of glibc's cached heap. Page-level accounting makes these numbers accurate to a few hundred kB.

Usage: ``OMP_WAIT_POLICY=PASSIVE python bench/optim_bench.py [--model smollm2-135m] [--steps N]
[--rounds N] [--skip p1,p3] [--growth]``. An option a version of basin lacks prints "n/a".
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import torch

SHAPES = {"small": (16, 64), "smollm2-135m": (4, 128)}   # batch x sequence per model
MEMORY_CASES = {                       # name -> (optimizer or None for a forward pass, options)
    "forward": (None, {}),
    "zo-sgd": ("zo-sgd", {}),
    "zo-sgd (exact_restore=False)": ("zo-sgd", {"exact_restore": False}),
    "zo-sgd (keep_directions=True)": ("zo-sgd", {"keep_directions": True}),
    "zo-sgd (keep_directions=bfloat16)": ("zo-sgd", {"keep_directions": "bfloat16"}),
    "zo-adam": ("zo-adam", {}),
    "adazo": ("adazo", {}),
    "adam (forward+backward)": ("adam", {}),
}
TIME_CASES = {                         # P2a: name -> (optimizer, options)
    "zo-sgd": ("zo-sgd", {}),
    "adazo": ("adazo", {}),
    "zo-sgd (exact_restore=False)": ("zo-sgd", {"exact_restore": False}),
    "zo-sgd (keep_directions=True)": ("zo-sgd", {"keep_directions": True}),
    "zo-sgd (keep_directions=bfloat16)": ("zo-sgd", {"keep_directions": "bfloat16"}),
}


# ----------------------------------------------------------------------------- setup

def make_tokenizer(folder: Path) -> None:
    from unlearn.data.world import World
    from unlearn.tokenizer import train_tokenizer, world_training_texts

    train_tokenizer(world_training_texts(World()), vocab_size=2048).save_pretrained(str(folder))


def build(tokenizer_dir: str, model_name: str = "small", seed: int = 0, shape: tuple | None = None):
    """The model (a world size with seeded init, or a pretrained one by name) and a fixed random
    batch of ``shape`` (batch x sequence) tokens."""
    from transformers import AutoTokenizer

    from unlearn.loading import load_model
    from unlearn.models import SIZES, build_model

    if model_name in SIZES:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = build_model(model_name, tok, torch.Generator().manual_seed(seed))
    else:
        model, tok = load_model(model_name, progress=False)
    batch_size, seq = shape or SHAPES.get(model_name, (4, 128))
    ids = torch.randint(4, len(tok), (batch_size, seq), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    return model, batch


def make(name: str, model, **options):
    """``make_optimizer``, or None where this version of basin lacks an option."""
    from unlearn.errors import BasinError
    from unlearn.optim import make_optimizer

    try:
        return make_optimizer(name, model, **options)
    except BasinError:
        return None


# ----------------------------------------------------------------------------- P1: memory (child)

def memory_child(case: str, tokenizer_dir: str, model_name: str) -> None:
    name, options = MEMORY_CASES[case]
    model, batch = build(tokenizer_dir, model_name)
    loss = lambda i: model(**batch).loss  # noqa: E731
    with torch.no_grad():
        loss(0)                                               # warm-up: lazy init, caches
    opt = make(name, model, lr=1e-6, **options) if name else None
    if name and opt is None:
        print(json.dumps(None))
        return
    gc.collect()
    benchlib.reset_peak()                                     # reset the peak counter
    before = benchlib.status_bytes("VmRSS") // 1024
    if opt is None:
        with torch.no_grad():
            loss(0)
    else:
        opt.step(loss)
    peak, after = benchlib.status_bytes("VmHWM") // 1024, benchlib.status_bytes("VmRSS") // 1024
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    perturbed = weights if opt is None else sum(
        p.numel() * p.element_size() for ph in opt.plan.phases.values()
        for _, _, p in getattr(ph.estimator, "_selected", []))
    kept = sum(v.numel() * v.element_size() for s in (opt.state.values() if opt else [])
               for v in s.values() if isinstance(v, torch.Tensor))
    print(json.dumps({"before_kb": before, "peak_kb": peak, "after_kb": after, "weights": weights,
                      "perturbed": perturbed, "state_bytes": kept}))


def measure_memory(case: str, tokenizer_dir: str, model_name: str) -> dict | None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run([sys.executable, __file__, "--memory-child", case, "--tokenizer", tokenizer_dir,
                          "--model", model_name], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- P2, P3: time

def lockstep_runs(template, batch, steps: int) -> dict:
    """Run ``adam`` and ``hybrid`` on fresh copies of the model in lockstep (step t of one, then
    step t of the other, alternating which goes first), so that load from other jobs hits both
    alike. Returns per optimizer and phase the list of step times."""
    from unlearn.optim import make_optimizer

    runs, block = {}, max(steps // 2, 1)
    for name, options in (("adam", {}), ("hybrid", {"n_fo": block, "n_zo": block})):
        model = copy.deepcopy(template)
        runs[name] = {"model": model, "phases": {},
                      "opt": make_optimizer(name, model, lr=1e-4, total_steps=steps, seed=0, **options)}
    for t in range(steps):
        for name in (("adam", "hybrid") if t % 2 else ("hybrid", "adam")):
            run, model = runs[name], runs[name]["model"]
            start = time.perf_counter()
            run["opt"].step(lambda i: model(**batch).loss)
            run["phases"].setdefault(run["opt"].phase, []).append(time.perf_counter() - start)
    return {name: run["phases"] for name, run in runs.items()}


def zo_step_times(template, batch, rounds: int) -> dict:
    """P2a: per round, two no-grad forwards and one step of every ZO case in TIME_CASES, on one
    copy of the model, in an order that rotates each round (round 0 warms up and is dropped).
    Returns name -> list of wall times (cases this version lacks are left out)."""
    model = copy.deepcopy(template)
    loss = lambda i: model(**batch).loss  # noqa: E731

    def forwards():
        with torch.no_grad():
            loss(0)
            loss(0)

    fns = {"2 forwards": forwards}
    for case, (name, options) in TIME_CASES.items():
        opt = make(name, model, lr=1e-7, seed=0, **options)
        if opt is not None:
            fns[case] = functools.partial(opt.step, loss)
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds + 1):
        for k in names[r % len(names):] + names[:r % len(names)]:
            start, cpu = time.perf_counter(), time.process_time()
            fns[k]()
            if r:
                times[k].append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def forward_time(template, batch, repeats: int = 5) -> float:
    """Median wall time of a no-grad forward with the loss."""
    model, times = copy.deepcopy(template), []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(**batch).loss
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def step_times(template, batch, rounds: int) -> tuple[list[float], list[float]]:
    """Per-step wall times of a basin adam step and a hand-written one (forward, backward,
    torch.optim.AdamW), interleaved and in alternating order so that load drift and whichever
    runs second in a round affect both alike."""
    from unlearn.optim import make_optimizer

    ours, bare = copy.deepcopy(template), copy.deepcopy(template)
    opt = make_optimizer("adam", ours, lr=1e-4)
    ref = torch.optim.AdamW(bare.parameters(), lr=1e-4, weight_decay=0.0)

    def basin_step():
        opt.step(lambda i: ours(**batch).loss)

    def bare_step():
        ref.zero_grad(set_to_none=True)
        bare(**batch).loss.backward()
        ref.step()

    times = {basin_step: [], bare_step: []}
    for r in range(rounds + 1):                                # round 0 warms both up
        for fn in ((basin_step, bare_step) if r % 2 else (bare_step, basin_step)):
            start = time.perf_counter()
            fn()
            if r:
                times[fn].append(time.perf_counter() - start)
    return times[basin_step], times[bare_step]


# ----------------------------------------------------------------------------- P8: cost growth

GROWTH_MODELS = ("micro", "tiny", "small", "smollm2-135m")


def growth(tokenizer_dir: str, rounds: int, shape=(4, 128)) -> None:
    """Time per step of adam, zo-sgd and the hybrid (n_fo = n_zo = 1: one step of each phase) per
    model, at one batch shape; per-step time / (parameters x tokens), relative to SmolLM2-135M's."""
    tokens = shape[0] * shape[1]
    rows = []
    for model_name in GROWTH_MODELS:
        template, batch = build(tokenizer_dir, model_name, shape=shape)
        n = sum(p.numel() for p in template.parameters())
        runs = {}
        for name, options in (("adam", {}), ("zo-sgd", {}), ("hybrid", {"n_fo": 1, "n_zo": 1})):
            model = copy.deepcopy(template)
            runs[name] = (model, make(name, model, lr=1e-6, total_steps=2 * (rounds + 1), seed=0, **options))
        times = {}                                                # (name, phase) -> step times
        for r in range(rounds + 1):
            for name, (model, opt) in runs.items():
                for _ in range(2 if name == "hybrid" else 1):     # the hybrid: an fo and a zo step
                    start = time.perf_counter()
                    opt.step(lambda i, model=model, batch=batch: model(**batch).loss)
                    if r:
                        times.setdefault((name, opt.phase), []).append(time.perf_counter() - start)
        per_step = {}                                             # the hybrid: mean of its phases' medians
        for (name, _), v in times.items():
            per_step.setdefault(name, []).append(statistics.median(v))
        rows.append((model_name, n, {k: statistics.mean(v) for k, v in per_step.items()}))
        print(f"    {model_name:<14} {n / 1e6:8.2f}M params  " + "  ".join(
            f"{k} {v:7.3f} s" for k, v in rows[-1][2].items()) + f"   ({benchlib.load_text()})", flush=True)
    ref_name, ref_n, ref = rows[-1]
    print(f"\n    time per step / (parameters x tokens), relative to {ref_name} (1.00 = linear; goal <= 1.20)")
    for model_name, n, t in rows:
        print(f"    {model_name:<14} " + "  ".join(
            f"{k} {(t[k] / (n * tokens)) / (ref[k] / (ref_n * tokens)):7.2f}" for k in t))


AUDIT_SWEEP = {"attacks": ("quantize", "interpolate"),
               "attack_args": {"quantize": {"methods": ["rtn", "nf4"], "bits": [4]}, "interpolate": {"points": 11}},
               "metrics": ("prob", "nll", "truth_ratio", "margin"), "splits": ("forget",),
               "score_references": False}


def _model_and_tokenizer(tokenizer_dir: str, model_name: str, seed: int = 0):
    from transformers import AutoTokenizer

    from unlearn.loading import load_model
    from unlearn.models import SIZES, build_model

    if model_name in SIZES:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        return build_model(model_name, tok, torch.Generator().manual_seed(seed)), tok
    return load_model(model_name, progress=False)


def _count_tokens(model) -> list[int]:
    """A counter of the token positions every forward runs (padding included): a hook on the
    input embeddings, which every forward, cached or not, goes through."""
    count = [0]

    def hook(_module, args):
        count[0] += args[0].numel()
    model.get_input_embeddings().register_forward_pre_hook(hook)
    return count


def audit_sweep_time(tokenizer_dir: str, model_name: str, rounds: int) -> tuple[int, float, float, int]:
    """(parameters, seconds of one clean evaluation, seconds of the sweep, tokens the sweep ran):
    an audit of a model against an original (4-bit RTN + NF4 + 11 interpolation points,
    forward-only metrics on the default world's forget split); the best of ``rounds``."""
    from audit.metrics.evaluation import evaluate
    from audit.runner import AuditConfig, audit
    from unlearn.data.benchmarks import load_benchmark

    original, tok = _model_and_tokenizer(tokenizer_dir, model_name, seed=0)
    model = copy.deepcopy(original)
    with torch.no_grad():                             # an "unlearned" model: the original, moved
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)), alpha=1e-3)
    counter = _count_tokens(model)
    bench = load_benchmark("world:forget10")
    clean, sweep = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        evaluate(model, tok, bench, metrics=AUDIT_SWEEP["metrics"], splits=AUDIT_SWEEP["splits"], generate=False)
        clean.append(time.perf_counter() - start)
        counter[0] = 0
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            audit(model, tok, original=original, config=AuditConfig(**AUDIT_SWEEP), out=out, progress=False)
            sweep.append(time.perf_counter() - start)
    return sum(p.numel() for p in model.parameters()), min(clean), min(sweep), counter[0]


def audit_growth(tokenizer_dir: str, rounds: int) -> None:
    """P8's audit half: sweep time per model against parameters x tokens run, relative to
    SmolLM2-135M's, and the sweep / one clean evaluation (13 models scored: about 13 when
    nothing but the scoring grows)."""
    rows = []
    for model_name in GROWTH_MODELS:
        n, clean, sweep, tokens = audit_sweep_time(tokenizer_dir, model_name, rounds)
        rows.append((model_name, n, sweep, tokens))
        print(f"    {model_name:<14} {n / 1e6:8.2f}M params  sweep {sweep:7.2f} s  one clean evaluation "
              f"{clean:6.2f} s  sweep / evaluation {sweep / clean:5.1f}  tokens run {tokens}   ({benchlib.load_text()})",
              flush=True)
    ref_name, ref_n, ref_t, ref_tokens = rows[-1]
    print(f"\n    sweep time / (parameters x tokens run), relative to {ref_name} (1.00 = linear; goal <= 1.20)")
    for model_name, n, sweep, tokens in rows:
        print(f"    {model_name:<14} {(sweep / (n * tokens)) / (ref_t / (ref_n * ref_tokens)):7.2f}")


# ----------------------------------------------------------------------------- report

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=sorted(SHAPES),
                        help="the world's small model (default) or SmolLM2-135M")
    parser.add_argument("--steps", type=int, help="steps per run for P2b (default 40 small, 8 SmolLM2)")
    parser.add_argument("--rounds", type=int, help="timed rounds for P2a and P3 (default 8 small, 3 SmolLM2)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: p1, p2a, p2b, p3")
    parser.add_argument("--growth", action="store_true", help="only P8: cost growth across model sizes")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.tokenizer, args.model)
        return
    big = args.model != "small"
    steps = args.steps or (8 if big else 40)
    rounds = args.rounds or (3 if big else 8)
    skip = {part.strip().lower() for part in args.skip.split(",") if part.strip()}

    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"{benchlib.load_text()} at start")
    with tempfile.TemporaryDirectory() as tmp:
        make_tokenizer(Path(tmp))
        if args.growth:
            print("P8  cost growth: median step time over", rounds, "rounds, batch 4 x 128")
            growth(tmp, rounds)
            print("\nP8  cost growth of an audit sweep (4-bit RTN + NF4 + 11 interpolation points, forward-only "
                  f"metrics on world:forget10's forget split), best of {min(rounds, 2)} rounds")
            audit_growth(tmp, min(rounds, 2))
            print(f"\n{benchlib.load_text()} at end")
            return
        template, batch = build(tmp, args.model)
        n = sum(p.numel() for p in template.parameters())
        print(f"model: {args.model}, {n / 1e6:.2f}M parameters ({n * 4 / 2**20:.1f} MiB fp32), "
              f"batch {batch['input_ids'].shape[0]} x {batch['input_ids'].shape[1]} tokens\n")

        if "p1" not in skip:
            print("P1  peak memory of one operation (weights + peak rise of the resident set)")
            mem = {case: measure_memory(case, tmp, args.model) for case in MEMORY_CASES}
            weights = mem["forward"]["weights"]
            peak = {c: weights + (m["peak_kb"] - m["before_kb"]) * 1024 for c, m in mem.items() if m}
            for case, m in mem.items():
                if not m:
                    print(f"    {case:<36} n/a (this version has no such option)")
                    continue
                rise, kept = (m["peak_kb"] - m["before_kb"]) / 1024, (m["after_kb"] - m["before_kb"]) / 1024
                ratio = f"   / forward {peak[case] / peak['forward']:.3f}" if case != "forward" else ""
                print(f"    {case:<36} peak {peak[case] / 2**20:7.1f} MiB   (rise {rise:6.1f} MiB, "
                      f"kept after {kept:6.1f} MiB){ratio}")
            print(f"    P1: zo-sgd / forward = {peak['zo-sgd'] / peak['forward']:.3f}   (goal <= 1.10)")
            kept = {c: (m["after_kb"] - m["before_kb"]) * 1024 for c, m in mem.items() if m}
            for case in ("zo-adam", "adazo"):
                m = mem[case]
                print(f"    {case}: memory kept after the step beyond zo-sgd's {(kept[case] - kept['zo-sgd']) / 2**20:.1f}"
                      f" MiB, expected (m, v) = 2 x perturbed bytes = {2 * m['perturbed'] / 2**20:.1f} MiB "
                      f"(state tensors: {m['state_bytes'] / 2**20:.1f} MiB)")
            print(f"    ({benchlib.load_text()})")

        if "p2a" not in skip:
            print(f"\nP2a one ZO step / two no-grad forwards, {rounds} interleaved rounds (medians)")
            both = zo_step_times(template, batch, rounds)
            cpu = {k: statistics.median(c for _, c in v) for k, v in both.items()}
            times = {k: [w for w, _ in v] for k, v in both.items()}
            base = times.pop("2 forwards")
            print(f"    2 forwards: median {statistics.median(base):.3f} s (cpu time of all threads "
                  f"{cpu['2 forwards']:.3f} s)")
            for case, v in times.items():
                goal = {"zo-sgd": "   (goal <= 1.20)", "adazo": "   (goal <= 1.25)"}.get(case, "")
                paired = statistics.median(a / b for a, b in zip(v, base))
                print(f"    {case:<36} median {statistics.median(v):.3f} s   ratio "
                      f"{statistics.median(v) / statistics.median(base):.3f} (median of paired ratios "
                      f"{paired:.3f}; cpu time ratio {cpu[case] / cpu['2 forwards']:.3f}){goal}")
            print(f"    ({benchlib.load_text()})")

        if "p2b" not in skip:
            block = max(steps // 2, 1)
            print(f"\nP2b wall time of {steps} steps, adam and hybrid (n_fo = n_zo = {block}) in lockstep")
            runs = lockstep_runs(template, batch, steps)
            adam_steps, hybrid_phases = runs["adam"]["fo"], runs["hybrid"]
            t_adam, t_hybrid = sum(adam_steps), sum(sum(v) for v in hybrid_phases.values())
            per_phase = ", ".join(f"{k}: {len(v)} steps, median {statistics.median(v):.3f} s"
                                  for k, v in hybrid_phases.items())
            print(f"    adam {t_adam:.1f} s (median step {statistics.median(adam_steps):.3f} s); hybrid "
                  f"{t_hybrid:.1f} s ({per_phase}; zo = adazo, q = 1, central)")
            robust = sum(len(v) * statistics.median(v) for v in hybrid_phases.values()) / (
                len(adam_steps) * statistics.median(adam_steps))
            print(f"    hybrid / adam = {t_hybrid / t_adam:.3f} (total times; from median step times "
                  f"{robust:.3f})   (goal <= 0.85)")
            print(f"    ({benchlib.load_text()})")

        if "p3" not in skip:
            print(f"\nP3  one adam step, basin vs hand-written forward + backward + torch.optim.AdamW "
                  f"({rounds} interleaved rounds)")
            t_ours, t_bare = step_times(template, batch, rounds)
            m_ours, m_bare = statistics.median(t_ours), statistics.median(t_bare)
            paired = statistics.median(a / b for a, b in zip(t_ours, t_bare))
            print(f"    median basin {m_ours:.3f} s, bare {m_bare:.3f} s (min {min(t_ours):.3f} / {min(t_bare):.3f})")
            print(f"    basin / bare = {m_ours / m_bare:.3f} (ratio of medians; median of paired ratios "
                  f"{paired:.3f})   (goal <= 1.05)")
    print(f"\n{benchlib.load_text()} at end (other jobs share these cores)")


if __name__ == "__main__":
    main()
