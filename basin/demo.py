"""``basin demo``: the paper's experiment in miniature, end to end, on the embedded default.

This is basin's one pipeline module: it drives ``unlearn`` and ``audit`` and then hands their
records to the (record-only) analysis library. Stages:

1. build (or reuse from the cache) the world, its tokenizer, the tiny original model and the
   retain-only gold model;
2. a sweep (:mod:`basin.sweep`, local engine): unlearn the forget set with NPO + retain NLL
   and each optimizer tier (adam, signadam, adazo, hybrid, sophia) for several seeds, into
   ``OUT/runs/<optimizer>-s<seed>``, and audit each unlearned model with relearning, 4-bit RTN,
   NF4 and interpolation from the original into ``OUT/audits/<optimizer>-s<seed>`` (forget and
   retain sets under every attack; the world-facts utility set on the clean models); the
   original and retain-only models are attacked once (ceiling and floor);
3. score the plane through the original, Adam's and the hybrid's model (the basin picture),
   write the report (tables, figures, verdicts) to ``OUT`` and print a verdict for each claim.

Every stage resumes: run folders and audit folders that are complete are reused, so an
interrupted demo continues where it stopped. The verdicts come from the numbers and their
confidence intervals; if the miniature does not show an effect, the demo says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from analysis.load import load_records
from analysis.report import write_report
from analysis.verdicts import PAPER_CLAIMS, claims_for, evaluate_claims, verdict_table
from audit.runner import audit_plane
from basin.calibrate import load_calibration
from basin.sweep import SweepConfig, plan_jobs, run_sweep
from unlearn.build import BuildConfig, build, finetune_fit, model_dir, retain_split
from unlearn.cache import cache_root, check_writable
from unlearn.data.world import WorldConfig
from unlearn.errors import require
from unlearn.models import resolve_device
from unlearn.pretrain import FitConfig
from unlearn.sources import check_model_source

# Per-optimizer settings for NPO on the tiny model, chosen by a small learning-rate sweep on
# seed 0 (docs/paper_index.md): each is the setting that forgot the forget set while keeping the
# retain set best after 60 steps. adazo has no such setting at this budget: it moves forget and
# retain alike (DESIGN.md section 6); its lr is the largest that did not wreck the model.
DEMO_OPTIMIZERS: dict[str, dict] = {
    "sophia": {"lr": 3e-4},
    "adam": {"lr": 1e-3},
    "signadam": {"lr": 3e-4},
    "adazo": {"lr": 1e-4},
    "hybrid": {"lr": 1e-3, "optimizer_args": {"n_fo": 10, "n_zo": 10, "zo_lr_scale": 0.1}},
}

# the paper's claims, one definition per name (analysis.verdicts.PAPER_CLAIMS)
DEMO_CLAIMS = PAPER_CLAIMS


# The TOFU recipe on a real pretrained model (``basin demo --base smollm2-135m``): SmolLM2-135M
# is fine-tuned on a 10-person world, then unlearned. Learning rates from short probes on seed 0
# (docs/real_world.md): Adam at 2e-5 for 20 NPO steps takes the forget set from 0.95 to 0.11; the
# hybrid (10 FO + 10 ZO steps) needs 7e-5 to forget as much (0.11; at 2e-5 it reaches 0.69, at 5e-5
# 0.23), so the two are compared at matched forgetting.
SMOLLM2_OPTIMIZERS: dict[str, dict] = {
    "adam": {"lr": 2e-5},
    "hybrid": {"lr": 7e-5, "optimizer_args": {"n_fo": 5, "n_zo": 5}},
}


@dataclass
class DemoConfig:
    out: str = "reports/demo"
    size: str = "tiny"
    base: str | None = None         # a pretrained model fine-tuned on the world instead of `size` from scratch
    world: dict = field(default_factory=dict)   # WorldConfig fields (default: the default world)
    fit: dict = field(default_factory=dict)     # FitConfig overrides for the original / retain-only models
    device: str = "auto"
    dtype: str = "float32"
    engine: str = "local"           # the sweep engine of the unlearn + audit stage: local or ray
    relearn_lr: float = 1e-3
    benchmark: str = "world:forget10"
    optimizers: dict = field(default_factory=lambda: dict(DEMO_OPTIMIZERS))
    seeds: tuple = (0, 1, 2)
    objective: str = "npo"
    objective_args: dict = field(default_factory=lambda: {"beta": 0.1, "gamma": 1.0})
    steps: int = 60
    batch_size: int = 8
    relearn_steps: tuple = (10, 30)
    interpolation_points: int = 5
    max_retain: int = 60
    plane_grid: tuple = (-0.5, 0.5, 1.5)  # plus 0 and 1: a 5 x 5 grid through three models
    calibrated: str | None = None   # basin calibrate's file: its optimizers, lr and steps replace `optimizers`

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        """Two seeds, fewer steps and settings: the CI-sized demo."""
        return cls(**{"seeds": (0, 1), "steps": 40, "relearn_steps": (20,), "interpolation_points": 3,
                      "max_retain": 40, "plane_grid": (0.5,), **overrides})

    @classmethod
    def pretrained(cls, base: str = "smollm2-135m", **overrides) -> "DemoConfig":
        """The TOFU recipe in miniature on a pretrained model: fine-tune ``base`` on a 10-person
        world (and a retain-only copy on 8 of them), unlearn 2 people with Adam and the hybrid,
        audit (relearning, 4-bit quantization, interpolation) over 3 seeds."""
        return cls(**{"base": base, "world": {"n_people": 10, "n_holdout": 2, "n_countries": 3},
                      "benchmark": "world:forget20", "optimizers": dict(SMOLLM2_OPTIMIZERS),
                      "steps": 20, "batch_size": 4, "relearn_steps": (10,), "relearn_lr": 1e-4,
                      "interpolation_points": 3, "max_retain": 30, "plane_grid": (0.5,), **overrides})

    def claims(self) -> list:
        """The claims this configuration can test: both optimizers of a claim must be run."""
        return claims_for(self.optimizers, DEMO_CLAIMS)


AUDIT_METRICS = ("prob", "nll", "exact_match", "truth_ratio", "forget_quality", "mc_accuracy", "margin",
                 "margin_win")


def plan_demo(config: DemoConfig, cache_dir=None) -> tuple[BuildConfig, SweepConfig]:
    """The build and the sweep a demo runs, checked (names, options, devices, folders) without
    building, loading or writing anything."""
    require(config.benchmark.startswith("world:"), f"the demo runs on the embedded world, not {config.benchmark!r}; "
            "pass a benchmark such as world:forget10")
    require(isinstance(config.seeds, (list, tuple)) and len(config.seeds) > 0, "the demo needs at least one seed")
    require(len(config.optimizers) > 0, "the demo needs at least one optimizer")
    resolve_device(config.device)  # a missing GPU is refused here, not after the models are built
    check_writable(Path(config.out), "demo folder", "pass a writable --out")
    check_writable(cache_root(cache_dir), "cache folder", "set BASIN_CACHE or pass --cache to a writable folder")
    forget = config.benchmark.split(":", 1)[1]
    fit = finetune_fit(**config.fit) if config.base else FitConfig(**config.fit)
    build_config = BuildConfig(world=WorldConfig(**config.world), size=config.size, forget=forget, fit=fit,
                               base=config.base, device=config.device)
    check_model_source(config.base, what="base model")
    if config.base is None and not config.world and not config.fit:  # the default world: short names
        original, retain = f"world:{config.size}", f"world:{config.size}:{retain_split(forget)}"
    else:  # where build() puts them
        original, retain = (str(model_dir(build_config, split, cache_dir)) for split in ("full", retain_split(forget)))
    place = {"device": config.device, "dtype": config.dtype}
    optimizers = config.optimizers
    if config.calibrated:  # the calibrated optimizers, their lr / steps / options from the file
        optimizers = {n: config.optimizers.get(n, {}) for n in load_calibration(config.calibrated)["optimizers"]}
    attack_args = {"relearn": {"steps": tuple(config.relearn_steps), "size": 0.2, "lr": config.relearn_lr},
                   "quantize": {"methods": ("rtn", "nf4"), "bits": (4,)},  # 4-bit RTN (g128), NF4
                   "interpolate": {"points": config.interpolation_points}}
    sweep = SweepConfig(
        out=str(config.out), original=original, retain=retain,
        unlearn={"model": original, "benchmark": config.benchmark, "benchmark_args": dict(config.world),
                 "objective": config.objective, "objective_args": dict(config.objective_args),
                 "steps": config.steps, "batch_size": config.batch_size, "eval_every": config.steps,
                 "eval_max_rows": config.max_retain, "save_every": config.steps // 2, **place},
        grid={"optimizer": list(optimizers), "seed": list(config.seeds)},
        recipes={name: {"lr": r["lr"], "optimizer_args": dict(r.get("optimizer_args", {}))}
                 for name, r in optimizers.items() if "lr" in r}, calibrated=config.calibrated,
        audit={"attacks": ("relearn", "quantize", "interpolate"), "attack_args": attack_args,
               "metrics": AUDIT_METRICS, "max_retain": config.max_retain, "splits": ("forget", "retain"),
               "clean_splits": ("forget", "retain", "world_facts"), **place},
        engine=config.engine)
    plan_jobs(sweep)  # every unlearn and audit config of the grid (the models are checked once built)
    return build_config, sweep


def run_demo(config: DemoConfig = DemoConfig(), cache_dir=None, progress: bool = True,
             log=print) -> dict:
    """Run every stage; return ``{"report": path, "verdicts": DataFrame, "seconds": {stage: s}}``.
    Bad settings are refused (:func:`plan_demo`) before anything is built or written."""
    build_config, sweep = plan_demo(config, cache_dir)
    out = Path(config.out)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    built = build(build_config, cache_dir=cache_dir, progress=progress)
    original, place = sweep.original, {"device": config.device, "dtype": config.dtype}
    optimizers = sweep.grid["optimizer"]
    seconds["build"] = time.perf_counter() - t
    log(f"[1/3] world and models ready in {seconds['build']:.0f} s "
        f"(original forget prob {built.original_fit['eval']['forget']['prob']:.3f}, "
        f"retain-only forget prob {built.retain_fit['eval']['forget']['prob']:.3f})")

    t = time.perf_counter()
    done = run_sweep(sweep, progress=progress)
    runs = [Path(r["run"]) for r in done]
    audits = [Path(r["audit"]) for r in done]
    seconds["unlearn+audit"] = time.perf_counter() - t
    log(f"[2/3] {len(runs)} unlearning runs, each audited (relearning, 4-bit RTN, NF4, interpolation), "
        f"in {seconds['unlearn+audit']:.0f} s")

    t = time.perf_counter()
    # the basin picture: the plane through the original, Adam's and the hybrid's first seed
    corners = [n for n in ("adam", "hybrid") if n in optimizers]
    plane_dir = out / "audits" / "plane"
    if len(corners) == 2 and not (plane_dir / "records.jsonl").exists():
        s0 = config.seeds[0]
        audit_plane(original, str(out / "runs" / f"adam-s{s0}"), str(out / "runs" / f"hybrid-s{s0}"),
                    names=("original", f"adam-s{s0}", f"hybrid-s{s0}"), benchmark=config.benchmark,
                    benchmark_args=dict(config.world), grid=config.plane_grid, max_retain=config.max_retain,
                    out=plane_dir, progress=progress, **place)
    if (plane_dir / "records.jsonl").exists():
        audits.append(plane_dir)
    seconds["plane"] = time.perf_counter() - t

    t = time.perf_counter()
    df = load_records(runs + audits)
    claims = claims_for(optimizers, DEMO_CLAIMS)  # the claims whose arms this demo ran
    verdicts = verdict_table(evaluate_claims(df, claims))
    model_label = config.base or f"{config.size} model"
    report = write_report(df, out / "report", claims=claims,
                          title=f"basin demo: optimizer tiers vs. relearning and quantization ({model_label})")
    seconds["report"] = time.perf_counter() - t
    log(f"[3/3] basin plane and report written in {seconds['plane'] + seconds['report']:.0f} s")
    return {"report": report, "verdicts": verdicts, "seconds": seconds}
