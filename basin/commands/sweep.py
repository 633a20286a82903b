"""``basin sweep SPEC.yaml``: a grid of unlearning runs, each audited, on an engine (see
:mod:`basin.sweep`)."""

from __future__ import annotations

import argparse
import dataclasses

from analysis.load import load_records
from analysis.report import write_report
from basin.sweep import SweepConfig, run_sweep, sweep_sources, switch_engine


def register(sub) -> None:
    p = sub.add_parser("sweep", help="a grid of unlearning runs (optimizer x objective x seed ...), each "
                       "audited, run locally or on Ray; results merge in basin report",
                       description=__doc__)
    p.add_argument("spec", help="YAML file with SweepConfig fields (out, unlearn, grid, recipes, audit, "
                   "original, retain, engine, engine_args); see docs/real_world.md")
    p.add_argument("--engine", help="local (default: one job after another) or ray (one task per job); the "
                   "spec's engine_args are kept only where its engine is the one given")
    p.add_argument("--address", help="ray: the cluster to join (auto, ray://host:port); default a local instance")
    p.add_argument("--out", help="output folder (overrides the spec's out)")
    p.add_argument("--report", action="store_true", help="write OUT/report from every job's records")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = SweepConfig.from_yaml(args.spec)
    changes = {"out": args.out} if args.out is not None else {}
    if args.engine is not None:
        changes["engine"], changes["engine_args"] = switch_engine(config.engine, config.engine_args, args.engine)
    if args.address is not None:
        changes["engine_args"] = {**changes.get("engine_args", config.engine_args), "address": args.address}
    config = dataclasses.replace(config, **changes)
    results = run_sweep(config, progress=not args.quiet)
    for r in results:
        print(f"{r['name']:<24} {r['seconds']:>7.1f} s  {r['run']}" + (f"  {r['audit']}" if r["audit"] else ""))
    if args.report:
        index = write_report(load_records(sweep_sources(config)), f"{config.out}/report",
                             title=f"basin sweep: {args.spec}")
        print(f"report: {index}")
    else:
        print(f"{len(results)} jobs done; report with: basin report {config.out}/runs/* {config.out}/audits/* "
              f"--out {config.out}/report")
    return 0
