"""``basin report RUNS... --out DIR``: tables, figures, audit cards and verdicts from run folders."""

from __future__ import annotations

import argparse

from analysis.load import load_records, records_path
from analysis.report import write_report


def register(sub) -> None:
    p = sub.add_parser("report", help="build an offline HTML report (tables, figures, audit cards, "
                       "verdicts on the paper's claims) from run and audit folders")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run or audit folders (each holds records.jsonl), or records.jsonl files")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="report folder to write (replaced atomically if it holds an older report)")
    p.add_argument("--title", default="basin report", help="the report's title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for source in args.runs:
        records_path(source)  # a missing folder or one without records.jsonl -> BasinError
    df = load_records(args.runs)  # a malformed record -> RecordError (a BasinError)
    index = write_report(df, args.out, title=args.title)
    print(f"report: {index} ({len(df)} records from {len(args.runs)} source(s))")
    return 0
