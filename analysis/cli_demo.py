"""``basin demo``: the main job on the embedded default (see :mod:`analysis.demo`)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("demo", help="the paper's experiment in miniature: build, unlearn with every tier, "
                       "audit, report, and a verdict on each claim")
    p.add_argument("--out", default="reports/demo", help="output folder (default reports/demo)")
    p.add_argument("--quick", action="store_true", help="2 seeds and fewer settings (about half the time)")
    p.add_argument("--seeds", type=int, help="number of seeds per optimizer (default 3; --quick 2)")
    p.add_argument("--cache", default=None, help="cache folder (default $BASIN_CACHE or ~/.cache/basin)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from analysis.demo import DemoConfig, run_demo
    from unlearn.errors import require

    start = time.perf_counter()
    config = DemoConfig.quick(out=args.out) if args.quick else DemoConfig(out=args.out)
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
