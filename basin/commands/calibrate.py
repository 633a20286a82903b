"""``basin calibrate``: per optimizer, the learning rate (and step count) that reaches a target forget
level with the least retain loss, on calibration seeds kept apart from the evaluation seeds (see
:mod:`basin.calibrate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from basin.calibrate import CALIBRATION_FILE, CalibrationConfig, calibrate
from basin.options import key_values
from unlearn.errors import BasinError, require


def _numbers(text: str | None, kind=float, flag: str = "") -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise BasinError(f"{flag} expects comma-separated numbers, got {text!r} (e.g. {flag} 1e-4,1e-3)") from None


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="per optimizer, the lr (and steps) reaching a target forget level with "
                       "the least retain loss, on seeds kept apart from the evaluation seeds",
                       description=__doc__ + " Writes OUT/records.jsonl (every probe), OUT/calibration.json "
                       "(the chosen settings, for basin unlearn --calibrated, a sweep's calibrated: key and "
                       "basin demo --calibrated); rerun to resume. Exit status 1 when an optimizer did not "
                       "reach the target band.")
    p.add_argument("--config", help="YAML file with CalibrationConfig fields (flags given here override it)")
    p.add_argument("--model", help="the model to unlearn (world:<size>, a run or checkpoint folder)")
    p.add_argument("--retain", help="the retain-only (gold) model, e.g. world:tiny:retain90")
    p.add_argument("--benchmark", help="e.g. world:forget10")
    p.add_argument("--benchmark-arg", action="append", metavar="KEY=VALUE", help="benchmark loader option")
    p.add_argument("--objective", help="ga, graddiff, npo, simnpo, rmu")
    p.add_argument("--obj", action="append", metavar="KEY=VALUE", help="objective option, e.g. --obj beta=0.1")
    p.add_argument("--optimizer", action="append", metavar="NAME",
                   help="an optimizer to calibrate (repeat for several), e.g. --optimizer adam --optimizer hybrid")
    p.add_argument("--opt", action="append", metavar="NAME.KEY=VALUE", help="optimizer option, e.g. --opt hybrid.n_fo=10")
    p.add_argument("--start", action="append", metavar="NAME=LR", help="first lr tried for an optimizer, e.g. --start adam=1e-3")
    p.add_argument("--target", help="forget level to reach: a number, gold, halfway (default) or gap=A "
                   "(A of the way from the original to the gold model)")
    p.add_argument("--tolerance", type=float, help="band half-width (default 0.1 x |original - gold|)")
    p.add_argument("--metric", help="forget metric (default prob)")
    p.add_argument("--steps", help="step count(s) to try, comma-separated, e.g. 30,60")
    p.add_argument("--lr-range", help="LO,HI: the learning rates the search may try (default 1e-6,1e-1)")
    p.add_argument("--max-probes", type=int, help="probes per optimizer and step count (default 8)")
    p.add_argument("--method", help="interpolate (default) or bisect")
    p.add_argument("--seeds", help="calibration seeds, comma-separated (default 1000)")
    p.add_argument("--eval-seeds", help="evaluation seeds the setting is for, kept apart (default 0,1,2)")
    p.add_argument("--grid", help="extra learning rates probed for every optimizer (the frontier), comma-separated")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-retain", type=int, help="retain rows scored per probe (default 60)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", help="float32 (default), bfloat16, bf16-mixed")
    p.add_argument("--out", required=True, help="calibration folder to write (or resume)")
    p.add_argument("--quiet", action="store_true", help="print only the result")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The CalibrationConfig of a command line (``--config`` first, flags over it)."""
    data: dict = {}
    if args.config:
        try:
            data = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise BasinError(f"cannot read the calibration spec {args.config}: {err}") from None
        require(isinstance(data, dict), f"the calibration spec {args.config} must be a mapping")
    unlearn = dict(data.get("unlearn") or {})
    for flag, key in (("model", "model"), ("benchmark", "benchmark"), ("objective", "objective"),
                      ("batch_size", "batch_size"), ("device", "device"), ("dtype", "dtype")):
        if getattr(args, flag) is not None:
            unlearn[key] = getattr(args, flag)
    if args.obj:
        unlearn["objective_args"] = {**unlearn.get("objective_args", {}), **key_values(args.obj, "--obj")}
    if args.benchmark_arg:
        unlearn["benchmark_args"] = {**unlearn.get("benchmark_args", {}),
                                     **key_values(args.benchmark_arg, "--benchmark-arg")}
    data["unlearn"] = unlearn
    optimizers = data.get("optimizers") or {}
    if isinstance(optimizers, (list, tuple)):
        optimizers = {name: {} for name in optimizers}
    if args.optimizer:
        optimizers = {name: dict(optimizers.get(name, {})) for name in args.optimizer}
    for key, value in key_values(args.opt, "--opt").items():
        name, _, option = key.partition(".")
        require(option and name in optimizers, f"--opt expects NAME.KEY=VALUE for a calibrated optimizer "
                f"({', '.join(optimizers) or 'none named'}), got {key}")
        optimizers[name].setdefault("optimizer_args", {})[option] = value
    for key, value in key_values(args.start, "--start").items():
        require(key in optimizers, f"--start names {key}, which is not calibrated ({', '.join(optimizers)})")
        optimizers[key]["start"] = float(value)
    if optimizers:
        data["optimizers"] = optimizers
    for flag, key, convert in (("retain", "retain", None), ("target", "target", None),
                               ("tolerance", "tolerance", None), ("metric", "metric", None),
                               ("max_probes", "max_probes", None), ("method", "method", None),
                               ("max_retain", "max_retain", None), ("out", "out", None),
                               ("steps", "steps", int), ("lr_range", "lr_range", float),
                               ("seeds", "seeds", int), ("eval_seeds", "evaluation_seeds", int),
                               ("grid", "grid", float)):
        value = getattr(args, flag)
        if value is not None:
            data[key] = _numbers(value, convert, "--" + flag.replace("_", "-")) if convert else value
    return CalibrationConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    result = calibrate(config, progress=not args.quiet, log=(lambda _: None) if args.quiet else print)
    t = result["target"]
    print(f"target {result['metric']} on forget: {t['value']:.4f} +- {t['tolerance']:.4f} ({t['spec']})")
    for name, e in result["optimizers"].items():
        lr = f"{e['lr']:.4g}" if e["lr"] is not None else "none"
        state = "matched" if e["matched"] else "NOT MATCHED: " + "; ".join(s["reason"] for s in e["searches"])
        print(f"{name:<12} lr {lr:<10} steps {e['steps']}  forget {e['forget']}  retain loss {e['retain_loss']}  "
              f"{e['search_probes']} probes, {e['probe_seconds']:.1f} s  [{state}]")
    print(f"calibration: {config.out}/{CALIBRATION_FILE} (use: basin unlearn --calibrated {config.out} "
          f"--optimizer NAME --seed S, S in {result['evaluation_seeds']})")
    return 0 if all(e["matched"] for e in result["optimizers"].values()) else 1
