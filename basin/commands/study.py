"""``basin study FILE``: run a preregistered study (or some of its regimes) through the sweep
engine and write its report (see :mod:`basin.study`)."""

from __future__ import annotations

import argparse
import dataclasses

from basin.carry import pack, unpack
from basin.study import StudyConfig, check_study, models_of, override_engine, run_study, write_study


def register(sub) -> None:
    p = sub.add_parser("study", help="run a preregistered study file (studies/*.yaml) regime by regime, "
                       "resumable, and write its report", description=__doc__)
    p.add_argument("file", help="the study file, e.g. studies/optimizer_tiers.yaml")
    p.add_argument("--regime", action="append", help="run only this regime (repeat for several; default: all)")
    p.add_argument("--objective", action="append",
                   help="tiers regimes: run only this objective (two processes can split a regime this way)")
    p.add_argument("--engine", help="override every regime's sweep engine: local or ray (a regime's "
                   "engine_args are kept only where its engine is the one given)")
    p.add_argument("--out", help="report folder (overrides the file's out)")
    p.add_argument("--work", help="folder for runs, calibrations and audits (overrides the file's work)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--report-only", action="store_true", help="write the report from what has run; run nothing")
    only.add_argument("--pack", metavar="ARCHIVE", help="write the work folder's finished runs, audits and "
                      "calibrations without their weights to ARCHIVE (.tar.gz), to go on on another machine; "
                      "run nothing")
    only.add_argument("--unpack", metavar="ARCHIVE", help="put the runs of an archive written by --pack into "
                      "the work folder (the next `basin study FILE` goes on from them); run nothing")
    p.add_argument("--no-report", action="store_true", help="run, but leave the report for later")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = StudyConfig.from_yaml(args.file)
    config = dataclasses.replace(config, **{k: getattr(args, k) for k in ("out", "work") if getattr(args, k)})
    if args.engine:
        override_engine(config, args.engine)
    check_study(config, regimes=args.regime)   # everything is refused before anything runs or is written
    if args.pack or args.unpack:
        models = [m for regime in config.regimes.values() for m in models_of(regime)]
        done = pack(config.work, args.pack, models) if args.pack else unpack(args.unpack, config.work)
        print(f"{'packed' if args.pack else 'unpacked'}: {done}")
        return 0
    if not args.report_only:
        run_study(config, regimes=args.regime, objectives=args.objective, progress=not args.quiet)
    if not args.no_report:
        print(f"report: {write_study(config, source=args.file)}")
    return 0
