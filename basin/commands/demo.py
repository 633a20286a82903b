"""``basin demo``: the main job on the embedded default (see :mod:`basin.demo`)."""

from __future__ import annotations

import argparse
import os
import time

from basin.demo import DemoConfig, run_demo
from unlearn.errors import require


def register(sub) -> None:
    p = sub.add_parser("demo", help="the paper's experiment in miniature: build, unlearn with every tier, "
                       "audit, report, and a verdict on each claim")
    p.add_argument("--out", default="reports/demo", help="output folder (default reports/demo)")
    p.add_argument("--quick", action="store_true", help="2 seeds and fewer settings (about half the time)")
    p.add_argument("--seeds", type=int, help="number of seeds per optimizer (default 3; --quick 2)")
    p.add_argument("--size", default=None, help="the model trained from scratch on the world (see basin ls): "
                   "tiny (default), micro (a quick look: about a quarter of the time; its optimizer settings "
                   "were chosen for tiny) or small")
    p.add_argument("--base", default=None, metavar="MODEL",
                   help="run the TOFU recipe on a pretrained model instead of the tiny one trained from "
                   "scratch: fine-tune MODEL (a name such as smollm2-135m, or a folder) on a 10-person world, "
                   "then unlearn with adam and the hybrid (see docs/real_world.md)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N, auto-map")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, bf16-mixed")
    p.add_argument("--engine", default="local", help="run the unlearn + audit jobs one after another (local, "
                   "default) or as Ray tasks (ray; pip install 'basin[sweep]')")
    p.add_argument("--calibrated", metavar="FILE", help="unlearn the optimizers of basin calibrate's file at "
                   "its lr and steps (the demo's seeds must not be calibration seeds)")
    p.add_argument("--cache", default=None, help="cache folder (default $BASIN_CACHE or ~/.cache/basin)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.cache:  # every stage (and every sweep worker) reads the models from this cache
        os.environ["BASIN_CACHE"] = args.cache
    place = {"out": args.out, "device": args.device, "dtype": args.dtype, "engine": args.engine,
             "calibrated": args.calibrated}
    if args.size is not None:
        require(not args.base, "--size picks the model trained from scratch; --base fine-tunes a pretrained one "
                "instead: pass one of them")
        place["size"] = args.size
    if args.base:
        config = DemoConfig.pretrained(args.base, **place)
        if args.quick:
            config.seeds, config.steps = (0, 1), max(10, config.steps // 2)
    else:
        config = DemoConfig.quick(**place) if args.quick else DemoConfig(**place)
    if args.seeds is not None:
        require(args.seeds >= 1, f"--seeds must be >= 1, got {args.seeds}")
        config.seeds = tuple(range(args.seeds))
    result = run_demo(config, cache_dir=args.cache, progress=not args.quiet)
    print("\nVerdicts on the paper's claims (95% CI of the difference over seeds):")
    for _, row in result["verdicts"].iterrows():
        print(f"  [{row['verdict']}] {row['text']}\n      {row['reason']}")
    total = time.perf_counter() - start
    split = ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items())
    print(f"\ndemo finished in {total:.0f} s ({split})")
    print(f"report: {result['report']}")
    return 0
