"""``basin audit``: attack a model and score it with the benchmark metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audit.runner import FAST_METRICS, AuditConfig, audit
from basin.options import attack_args, key_values
from unlearn.data.format import cli_prompt_format
from unlearn.errors import require


def register(sub) -> None:
    p = sub.add_parser("audit", help="attack a model (relearn, quantize, interpolate, noise, prune, "
                       "precision) and score every result", description=__doc__)
    p.add_argument("model", help="world:<size>, a basin unlearn run folder, or a Hugging Face checkpoint folder")
    p.add_argument("--benchmark", default=None,
                   help="e.g. world:forget10, tofu:forget10, muse:news (default: the benchmark of the audited "
                   "basin unlearn run, else world:forget10)")
    p.add_argument("--benchmark-arg", action="append", metavar="KEY=VALUE",
                   help="benchmark loader option, e.g. --benchmark-arg n_people=10 or --benchmark-arg path=DIR")
    p.add_argument("--attacks", default="relearn,quantize,interpolate",
                   help="comma-separated attack names (see basin ls)")
    p.add_argument("--original", help="the model before unlearning (ceiling; interpolation endpoint)")
    p.add_argument("--retain", help="the retain-only model (floor; forget quality)")
    p.add_argument("--arg", action="append", metavar="ATTACK.KEY=VALUE",
                   help="attack option, e.g. --arg relearn.lr=1e-3 --arg quantize.methods=[rtn,nf4,gptq]")
    p.add_argument("--generate", action="store_true", help="also score the metrics that decode greedily: ROUGE, "
                   "model utility, MUSE VerbMem and KnowMem (slower)")
    p.add_argument("--metrics", default=None, help="comma-separated metric names (see basin ls; default: "
                   "every forward-only metric that applies, and with --generate every metric)")
    p.add_argument("--lmeval-task", action="append", metavar="TASK",
                   help="also score every attacked model with this lm-eval task, in process (e.g. mmlu, "
                   "wmdp_bio, or a local task with --lmeval-arg include_path=DIR); repeat for more")
    p.add_argument("--lmeval-arg", action="append", metavar="KEY=VALUE",
                   help="lm-eval option: include_path=DIR, limit=N, batch_size=N, num_fewshot=N")
    p.add_argument("--muse-arg", action="append", metavar="KEY=VALUE",
                   help="MUSE pass option: limit=N (only the first N rows of each MUSE set: quick looks on a "
                   "CPU), verbmem_tokens, knowmem_tokens, score=mink|minkpp, batch_size")
    p.add_argument("--prompt-format", default=None, metavar="NAME|FILE.yaml",
                   help="how questions and answers are laid out: plain, chat (the tokenizer's chat template), "
                   "llama2-chat, llama3-instruct, llama3-instruct-tags, phi (open-unlearning's TOFU models) or a "
                   "YAML file of fields (default: the audited run's recorded format, else plain; docs/auditing.md)")
    p.add_argument("--prompt-arg", action="append", metavar="KEY=VALUE",
                   help="change one field of the prompt format, e.g. --prompt-arg 'system_prompt=You are ...'")
    p.add_argument("--max-retain", type=int, default=100, help="retain rows scored (default 100)")
    p.add_argument("--seed", type=int, default=0, help="attack seed (relearning subset, noise)")
    p.add_argument("--device", default="auto", help="auto (default: cuda if available, else cpu), cpu, "
                   "cuda, cuda:N, mps, or auto-map (layers spread over every visible GPU)")
    p.add_argument("--dtype", default="float32", help="dtype of the audited models' weights: float32 "
                   "(default), bfloat16 or float16")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (*.bin) checkpoints")
    p.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with a hub model")
    p.add_argument("--out", required=True, help="folder for records.jsonl, config.json, manifest.json")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    benchmark, bench_args = args.benchmark, {}
    run_config = Path(args.model) / "config.json"
    if benchmark is None and (Path(args.model) / "model").is_dir() and run_config.exists():
        saved = json.loads(run_config.read_text())  # a basin unlearn run: audit what it unlearned
        benchmark, bench_args = saved.get("benchmark"), dict(saved.get("benchmark_args") or {})
    bench_args.update(key_values(args.benchmark_arg, "--benchmark-arg"))
    attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    if args.metrics:
        metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    else:
        metrics = None if args.generate else FAST_METRICS
    require(args.lmeval_task or not args.lmeval_arg, "--lmeval-arg sets an option of lm-eval, which runs only with "
            "--lmeval-task TASK; add the task or drop the option")
    muse = key_values(args.muse_arg, "--muse-arg")
    lmeval = {"tasks": args.lmeval_task, **key_values(args.lmeval_arg, "--lmeval-arg")} if args.lmeval_task else None
    config = AuditConfig(benchmark=benchmark or "world:forget10", benchmark_args=bench_args, attacks=attacks,
                         metrics=metrics, muse_options=muse, lmeval=lmeval, attack_args=attack_args(args.arg),
                         generate=args.generate, max_retain=args.max_retain, seed=args.seed,
                         device=args.device, dtype=args.dtype,
                         prompt_format=cli_prompt_format(args.prompt_format, args.prompt_arg))
    df = audit(args.model, original=args.original, retain=args.retain, config=config, out=args.out,
               progress=not args.quiet, allow_pickle=args.allow_pickle,
               trust_remote_code=args.trust_remote_code)
    clean = df[(df.attack == "none") & df.metric.isin(["prob", "exact_match"]) & df.split.isin(["forget", "retain"])]
    print(clean.pivot_table(index="role", columns=["split", "metric"], values="value").round(3).to_string())
    print(f"{len(df)} records in {args.out}/records.jsonl")
    return 0
