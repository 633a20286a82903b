"""``basin unlearn``: run one unlearning job into a run folder (resumes if interrupted)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import yaml

from basin.calibrate import calibrated_fields
from basin.options import key_values
from unlearn.data.format import cli_prompt_format
from unlearn.errors import BasinError
from unlearn.train import UnlearnConfig, reached, unlearn


def register(sub) -> None:
    p = sub.add_parser("unlearn", help="unlearn a forget set with any objective and optimizer",
                       description="Unlearn a benchmark's forget set. Writes the unlearned checkpoint "
                       "(OUT/model), config.json, manifest.json and records.jsonl; rerunning the same "
                       "command after an interruption resumes from the last checkpoint.")
    p.add_argument("--config", help="YAML file with UnlearnConfig fields (flags given here override it)")
    p.add_argument("--model", help="world:<size>, a run folder or a Hugging Face checkpoint folder")
    p.add_argument("--benchmark", help="e.g. world:forget10 (see basin ls)")
    p.add_argument("--benchmark-arg", action="append", metavar="KEY=VALUE",
                   help="benchmark loader option, e.g. --benchmark-arg n_people=10 for a world built with "
                   "--people 10, or --benchmark-arg path=data/tofu")
    p.add_argument("--objective", help="ga, graddiff, npo, simnpo, rmu")
    p.add_argument("--obj", action="append", metavar="KEY=VALUE", help="objective option, e.g. --obj beta=0.1")
    p.add_argument("--optimizer", help="see basin ls, e.g. adam, signadam, adazo, hybrid, sophia")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="optimizer option, e.g. --opt q=4")
    p.add_argument("--lr", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--schedule", help="constant, linear or cosine")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-max-rows", type=int, help="retain rows scored at each evaluation (default 200)")
    p.add_argument("--save-every", type=int)
    p.add_argument("--stop-at", type=float, metavar="PROB",
                   help="stop at the first evaluation (every --eval-every steps) whose forget answer "
                   "probability is at or below PROB; --steps is then the budget (matched forgetting per run)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default: cuda if available, else cpu), cpu, cuda, cuda:N, mps, "
                   "or auto-map (layers spread over every visible GPU, for a model larger than one)")
    p.add_argument("--dtype", help="float32 (default), bfloat16 (half the memory; small updates round "
                   "away) or bf16-mixed (float32 weights, bfloat16 autocast); see docs/real_world.md")
    p.add_argument("--prompt-format", metavar="NAME|FILE.yaml",
                   help="how questions and answers are laid out: plain, chat, llama2-chat, llama3-instruct, "
                   "llama3-instruct-tags, phi or a YAML file (default: the model folder's recorded format, else "
                   "plain; docs/auditing.md)")
    p.add_argument("--prompt-arg", action="append", metavar="KEY=VALUE",
                   help="change one field of the prompt format, e.g. --prompt-arg 'system_prompt=You are ...'")
    p.add_argument("--calibrated", metavar="FILE", help="take lr, steps and optimizer options from basin "
                   "calibrate's calibration.json (or its folder); the seed must not be a calibration seed")
    p.add_argument("--out", required=True, help="run folder to write (or resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = {}
    if args.config:
        try:
            data = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise BasinError(f"cannot read the config file {args.config}: {err}") from None
        if not isinstance(data, dict):
            raise BasinError(f"the config file {args.config} must be a mapping of UnlearnConfig fields "
                             "(lines like `lr: 1.0e-4`)")
    for f in dataclasses.fields(UnlearnConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name not in ("objective_args", "optimizer_args", "benchmark_args"):
            data[f.name] = value
    for key, flag, items in (("objective_args", "--obj", args.obj), ("optimizer_args", "--opt", args.opt),
                             ("benchmark_args", "--benchmark-arg", args.benchmark_arg)):
        saved = data.get(key) or {}
        if not isinstance(saved, dict):
            raise BasinError(f"{key} in {args.config} must be a mapping (e.g. {key}: {{beta: 0.1}}), got {saved!r}")
        data[key] = {**saved, **key_values(items, flag)}
    if args.prompt_format or args.prompt_arg:
        data["prompt_format"] = cli_prompt_format(args.prompt_format or data.get("prompt_format"), args.prompt_arg)
    if args.calibrated:  # lr, steps and optimizer options from basin calibrate (checked against it)
        if args.lr is not None or args.steps is not None or args.epochs is not None or args.opt:
            raise BasinError("--calibrated sets lr, steps and the optimizer options; drop --lr, --steps, --epochs, --opt")
        data = calibrated_fields({k: v for k, v in data.items() if v != {}}, args.calibrated)
    config = UnlearnConfig.from_dict(data)
    result = unlearn(config, out=args.out, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # a data-parallel launch: the first process reports
        return 0
    last = {(r["split"], r["metric"]): r["value"] for r in result.records if r.get("attack") == "training"}
    summary = "  ".join(f"{s} {m} {v:.3f}" for (s, m), v in sorted(last.items()) if m != "nll")
    print(f"unlearned model: {Path(args.out) / 'model'}")
    if summary:
        print(f"last evaluation: {summary}")
    if config.stop_at is not None:
        taken = json.loads((Path(args.out) / "manifest.json").read_text()).get("steps_taken")
        got = reached([{"split": s, "metric": m, "value": v} for (s, m), v in last.items()], config.stop_at)
        print(f"{'stopped at' if got else 'did not reach'} forget prob {config.stop_at:g}: "
              f"{taken} of {config.steps} steps" + ("" if got else "; raise --steps or --lr"))
    return 0
