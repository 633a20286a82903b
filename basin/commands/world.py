"""``basin world build``: make the embedded benchmark, its tokenizer and the tiny models."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from unlearn.build import BuildConfig, build, finetune_fit
from unlearn.cache import cache_root, check_writable
from unlearn.data.format import cli_prompt_format
from unlearn.data.world import WorldConfig, forget_count
from unlearn.pretrain import FitConfig


def register(sub) -> None:
    world = sub.add_parser("world", help="the embedded fictitious-people benchmark")
    wsub = world.add_subparsers(dest="world_command", metavar="ACTION", required=True)
    p = wsub.add_parser("build", help="generate the world, train the tokenizer, the original and the "
                        "retain-only model (cached: a second build trains nothing)")
    p.add_argument("--people", type=int, default=100, help="number of people (default 100)")
    p.add_argument("--holdout", type=int, default=10, help="hold-out people never trained on (default 10)")
    p.add_argument("--countries", type=int, default=33,
                   help="fictitious countries for the utility set, 3 facts each (default 33)")
    p.add_argument("--forget", type=float, default=0.10,
                   help="fraction of people to forget, strictly between 0 and 1 (default 0.10)")
    p.add_argument("--size", default="tiny", help="model size (see basin ls; default tiny)")
    p.add_argument("--base", default=None, metavar="MODEL",
                   help="fine-tune this pretrained model (a name such as smollm2-135m, or a folder) on the "
                   "world instead of training --size from scratch (the TOFU recipe)")
    p.add_argument("--prompt-format", default=None, metavar="NAME|FILE.yaml",
                   help="with --base: how the world's rows are laid out (plain by default; e.g. chat, "
                   "llama2-chat, llama3-instruct, phi or a YAML file); recorded with the models")
    p.add_argument("--prompt-arg", action="append", metavar="KEY=VALUE", help="change one field of the prompt format")
    p.add_argument("--device", default="cpu", help="where to train: cpu (default), cuda, cuda:N, auto")
    p.add_argument("--dtype", default="float32", help="weights while fitting: float32 (default) or bfloat16")
    p.add_argument("--seed", type=int, default=0, help="seed for the world and the models (default 0)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="training step limit per model (default 1500; 80 with --base)")
    p.add_argument("--cache", default=None, help="cache folder (default $BASIN_CACHE or ~/.cache/basin)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    world = WorldConfig(n_people=args.people, n_holdout=args.holdout, n_countries=args.countries,
                        seed=args.seed)
    n_forget = forget_count(world.n_people, args.forget)  # validates the fraction early
    forget = f"forget{round(args.forget * 100):02d}"
    steps = {"max_steps": args.max_steps} if args.max_steps is not None else {}
    fit = finetune_fit(seed=args.seed, **steps) if args.base else FitConfig(seed=args.seed, **steps)
    config = BuildConfig(world=world, size=args.size, forget=forget, fit=fit, base=args.base, device=args.device,
                         dtype=args.dtype, prompt_format=cli_prompt_format(args.prompt_format, args.prompt_arg) or "plain")
    check_writable(cache_root(args.cache), "cache folder", "set BASIN_CACHE or pass --cache to a writable folder")
    result = build(config, cache_dir=args.cache, progress=not args.quiet)
    hit = lambda k: "cache hit" if result.cache_hits[k] else "built"  # noqa: E731
    print(f"world      {result.world_dir}  ({hit('world')}; {world.n_people} people, "
          f"{n_forget} to forget, {world.n_holdout} hold-out, {3 * world.n_countries} utility facts)")
    for label, path, info, key in (("original", result.original_dir, result.original_fit, "original"),
                                   ("retain", result.retain_dir, result.retain_fit, "retain")):
        ev = info["eval"]
        print(f"{label:<10} {path}  ({hit(key)}; {info['steps']} steps, {info['seconds']} s)")
        print(f"{'':<10} answer prob  forget {ev['forget']['prob']:.3f}  retain {ev['retain']['prob']:.3f}"
              f"  holdout {ev['holdout']['prob']:.3f}   exact match  forget "
              f"{ev['forget']['exact_match']:.3f}  retain {ev['retain']['exact_match']:.3f}")
    if args.base is None and world == WorldConfig(seed=args.seed) and args.seed == 0 and not steps:
        print(f"done in {result.seconds:.1f} s; use them as --model world:{args.size} and "
              f"world:{args.size}:retain{100 - round(args.forget * 100)}")
    else:
        opts = " ".join(f"--benchmark-arg {k}={v}" for k, v in asdict(world).items())
        print(f"done in {result.seconds:.1f} s; use them as --model {result.original_dir} (and "
              f"{result.retain_dir}) with --benchmark world:{forget} {opts}")
    return 0
