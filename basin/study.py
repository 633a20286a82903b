"""``basin study FILE``: a preregistered study, run regime by regime through the sweep engine.

A study file (``studies/*.yaml``, :class:`StudyConfig`) fixes everything before anything runs:
the claims and their statistics (alpha, correction, the conditions of a sound comparison), and
one or more *regimes*, each a model with its benchmark, seeds, arms and attacks. Results may not
change the file; a corrected setting is a new file (a new ``version``), reported beside the old.

Regime kinds (:data:`REGIME_KINDS`):

- ``tiers`` (:class:`TiersRegime`): every arm (an optimizer with its options) unlearns under every
  objective, at every calibration target. Stages, each resumable and idempotent:

  1. models: the original and gold (retain-only) models, one pair per evaluation seed when
     ``vary_models`` (seed i uses the pair fitted with seed i; the calibration its own pair). A
     regime whose ``model`` is ``{original: MODEL, gold: MODEL}`` builds nothing: it takes a
     published pair (folders or hub names, e.g. TOFU's full and retain90 models) as it is, with
     ``benchmark_args`` for the benchmark's options (a local TOFU folder) and
     ``unlearn.prompt_format`` for the format the pair was trained in;
  2. calibration (:mod:`basin.calibrate`): per objective, target and arm, the lr that brings the
     forget metric to the target on the calibration seeds. An arm that no probe matched runs at
     its closest probe and is marked unmatched (the verdicts' conditions then keep it out of any
     comparison at matched forgetting);
  3. the sweep (:mod:`basin.sweep` jobs on the regime's engine): each arm x seed is unlearned and
     audited with every attack; same seed = same models, batch order and relearning subset.
     With ``stop_budget: B`` each run instead stops at its first evaluation at or below the
     calibration target, within B x the calibrated steps (``UnlearnConfig.stop_at``): the
     calibrated lr sets the pace, the stop matches each run's forgetting whatever its batch order.
     ``stop_split: forget_unseen`` checks the stop on the forget rows the run's relearning attack
     will not train on (``UnlearnConfig.stop_rows``), at the target's level on those rows, so the
     relearning claims, judged there, compare runs matched there; ``seed_references: [relearn]``
     has every seed's audit score the original and gold models on its own relearning subset;
  4. controls, which are not calibrated but copy an arm's setting: ``like: ARM`` takes the arm's
     lr, steps and options; ``lr_factor: k`` runs it at k x that lr (with ``stop_budget`` each run
     still stops at the target, so a higher lr is compared at matched forgetting); ``noise_of:
     ARM`` (for ``adam-noise``) sets ``noise_std`` so that the added noise moves the weights as far
     per step as ARM's zeroth-order steps did in the run of the same seed: noise_std = rms_ZO x
     lr_ZO / lr (:func:`matched_noise_std`);
  5. paths: interpolation from the ``paths.from`` arm to each ``paths.to`` arm, same seed;
  6. the plane through the original and the two ``plane`` arms (first seed, each objective).

- ``quantization-map`` (:class:`MapRegime`): one optimizer and objective over a grid of lr x
  steps, each cell audited with 4-bit quantization: where (if anywhere) does 4-bit bring
  knowledge back (Zhang et al. 2025, arXiv 2410.16454)?

Files: ``WORK/<regime>/`` (``work``, default ``runs/study``) holds ``calibration/``, ``runs/``, ``audits/``, ``paths/``, ``plane/``
(checkpoints are in ``runs/*/model``; none of it need be kept), and the report
(:func:`write_study`) goes to ``out`` with the records it was built from (``--report-only``
rewrites it from whatever has run; a cell none of whose runs is under ``work``, as on a fresh
checkout, is rebuilt from the records its committed report holds, so every committed version is
judged again by today's claim table and conditions). ``basin study FILE --pack ARCHIVE`` and
``--unpack ARCHIVE`` (:mod:`basin.carry`) carry the finished runs' records, without weights, to
another machine, where the same command goes on.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from analysis.load import load_frame
from analysis.report import fmt_num, save_figure, write_report
from analysis.tables import TRAJECTORY
from analysis.study import (clean_levels, grid_arm, grid_claims, load_arms, plot_regime_map, read_summaries,
                            reference_level, regime_map, write_index)
from analysis.verdicts import PAPER_CLAIMS, Bands, Claim, claims_for
from audit.attacks import ATTACKS
from audit.metrics import METRICS, evaluate
from audit.runner import AuditConfig, audit_plane
from basin.calibrate import CALIBRATIONS, CalibrationConfig, calibrate, load_calibration, make_target, seed_spread
from basin.carry import check_carried
from basin.sweep import AUDITS, RUNS, Job, engine_of, job_dirs, switch_engine
from unlearn.cache import check_writable, write_json_atomic, write_text_atomic
from unlearn.build import BuildConfig, build, finetune_fit, model_dir, retain_split
from unlearn.data.benchmarks import load_benchmark
from unlearn.data.format import format_spec, recorded_format
from unlearn.data.world import WorldConfig
from unlearn.errors import BasinError, require
from unlearn.objectives import OBJECTIVES
from unlearn.optim import OPTIMIZERS
from unlearn.pretrain import FitConfig
from unlearn.records import read_records
from unlearn.registry import from_fields, lookup
from unlearn.train import UnlearnConfig

# a regime's work folder: runs/ and audits/ (the sweep's job_dirs), calibration/ (CALIBRATIONS),
# paths/ (interpolations between arms) and plane/ (the plane through three models), each by cell
PATHS, PLANE = "paths", "plane"
CORRECTIONS = {"holm": "Holm's step-down correction over the claims of one table"}
CLAIMS = {c.name: c for c in PAPER_CLAIMS}
MODEL_KEYS = {"size": "a scratch model size (micro, tiny, small)", "base": "a pretrained model to fine-tune",
              "world": "WorldConfig fields", "fit": "FitConfig overrides",
              "original": "a trained model that knows the forget set (folder or hub name)",
              "gold": "its retain-only counterpart (folder or hub name)"}
GIVEN = ("original", "gold")   # model: {original, gold}: third-party models, nothing is built
ARM_KEYS = {"optimizer": "optimizer name", "optimizer_args": "its options", "start": "the calibration's first lr"}
CONTROL_KEYS = {"optimizer": "optimizer name", "like": "the arm whose setting it copies",
                "noise_of": "the arm whose zeroth-order step size the noise matches",
                "optimizer_args": "extra options",
                "lr_factor": "k: the control runs at k x its like arm's lr"}
STOP_SPLITS = {"forget": "every forget row",
               "forget_unseen": "the forget rows the run's relearning attack does not train on"}
CALIBRATION_KEYS = {"metric", "targets", "tolerance", "seeds", "max_probes", "max_retain", "factor", "method",
                    "lr_range", "grid"}


# ----------------------------------------------------------------------------- the file

@dataclass
class TiersRegime:
    """Arms x objectives x calibration targets x seeds, each model audited (module docstring)."""

    kind: str = "tiers"
    model: dict = field(default_factory=lambda: {"size": "tiny"})
    benchmark: str = "world:forget10"
    benchmark_args: dict | None = None  # the benchmark's options (default: the model's world)
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    vary_models: bool = False         # one original / gold pair per evaluation seed (fit seed = seed)
    calibration_model_seed: int | None = None  # the calibration's pair (vary_models); default: seeds[0]'s
    objectives: dict = field(default_factory=lambda: {"npo": {}})
    unlearn: dict = field(default_factory=dict)   # UnlearnConfig fields every run shares
    arms: dict = field(default_factory=dict)      # label -> {optimizer, optimizer_args, start}
    controls: dict = field(default_factory=dict)  # label -> {optimizer, like, noise_of, optimizer_args}
    calibration: dict = field(default_factory=dict)  # CalibrationConfig fields, targets: [..]
    audit: dict = field(default_factory=dict)     # AuditConfig fields; attacks: {name: options}
    paths: dict | None = None                     # {from: ARM, to: [ARM, ...]}
    plane: list | None = None                     # [ARM, ARM]: the plane through the original and these
    engine: str = "local"
    engine_args: dict = field(default_factory=dict)
    claims: list | None = None                    # the claims tested here (default: all the study's)
    # matched forgetting per run: each evaluation run stops at its first evaluation at or below the
    # cell's calibration target, within stop_budget x the calibrated steps (None: it takes them all)
    stop_budget: float | None = None
    # where the stop is checked: "forget" (every forget row) or "forget_unseen" (the rows the run's
    # relearning attack does not train on, where the relearning claims are judged; the target is
    # then the original's and gold model's level on those same rows)
    stop_split: str = "forget"
    # attacks whose setting changes with the attack seed (the relearning subset): every seed's
    # audit, not only the first, also scores the original and gold models under them
    seed_references: list = field(default_factory=list)

    def __post_init__(self):
        _check_common(self)
        if self.stop_budget is not None:
            require(isinstance(self.stop_budget, (int, float)) and self.stop_budget >= 1,
                    f"stop_budget must be a number >= 1 (the runs' step budget in calibrated steps), "
                    f"got {self.stop_budget!r}")
            require(self.calibration.get("metric", "prob") == "prob", "stop_budget stops each run at the target's "
                    "forget answer probability, so the calibration's metric must be prob")
            require(int(self.unlearn.get("eval_every", 0)) > 0, "stop_budget checks the target at the "
                    "evaluations: set unlearn.eval_every (e.g. 2)")
        require("stop_at" not in self.unlearn and "stop_rows" not in self.unlearn, "unlearn.stop_at and "
                "stop_rows are set per run from the calibration target; use stop_budget and stop_split")
        lookup(STOP_SPLITS, self.stop_split, "stop_split")
        if self.stop_split != "forget":
            require(self.stop_budget is not None, f"stop_split {self.stop_split} says where each run stops, and "
                    "stop_budget is not set (runs do not stop); set stop_budget or drop stop_split")
            require("relearn" in self.audit.get("attacks", {}), f"stop_split {self.stop_split} is the split the "
                    "relearning attack does not train on, and audit.attacks has no relearn")
        require(isinstance(self.seed_references, list), "seed_references must list attack names")
        for name in self.seed_references:
            lookup(self.audit.get("attacks", {}), name, "attack in seed_references (of audit.attacks)")
        require(isinstance(self.objectives, dict) and self.objectives, "objectives must map objective names to options")
        for name, args in self.objectives.items():
            lookup(OBJECTIVES, name, "objective")
            require(isinstance(args, dict), f"objectives[{name!r}] must be a mapping of options")
        require(isinstance(self.arms, dict) and self.arms, "arms must map labels to {optimizer, optimizer_args, start}")
        for label, arm in {**self.arms, **self.controls}.items():
            keys = ARM_KEYS if label in self.arms else CONTROL_KEYS
            require(isinstance(arm, dict) and "optimizer" in arm, f"arm {label!r} must be a mapping with an optimizer")
            for key in arm:
                lookup(keys, key, f"key of arm {label!r}")
            lookup(OPTIMIZERS, arm["optimizer"], f"optimizer of arm {label!r}")
        for label, control in self.controls.items():
            require(label not in self.arms, f"{label!r} is both an arm and a control")
            for key in ("like", "noise_of"):
                if key in control:
                    lookup(self.arms, control[key], f"{key} of control {label!r}")
            require("like" in control, f"control {label!r} needs like: ARM (the arm whose setting it copies)")
            factor = control.get("lr_factor", 1.0)
            require(isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0,
                    f"lr_factor of control {label!r} must be a positive number (the multiple of its like arm's lr),"
                    f" got {factor!r}")
        for key in self.calibration:
            lookup({k: k for k in CALIBRATION_KEYS}, key, "calibration field")
        require(self.calibration.get("targets"), "calibration.targets must list at least one target (gold, halfway, ...)")
        require(not (self.vary_models and given_models(self)),
                "vary_models fits one model pair per seed; with model: {original, gold} there is one pair")
        if self.vary_models:
            require(self.calibration_model_seed is not None and self.calibration_model_seed not in self.seeds,
                    "vary_models needs a calibration_model_seed that is not an evaluation seed")
        labels = {**self.arms, **self.controls}
        if self.paths:
            require(set(self.paths) == {"from", "to"}, "paths must be {from: ARM, to: [ARM, ...]}")
            for label in [self.paths["from"], *self.paths["to"]]:
                lookup(labels, label, "arm in paths")
        if self.plane:
            require(len(self.plane) == 2, "plane names two arms (the original is the third corner)")
            for label in self.plane:
                lookup(labels, label, "arm in plane")

    def arm_labels(self) -> list[str]:
        return list(self.arms) + list(self.controls)


@dataclass
class MapRegime:
    """One optimizer and objective over a grid of lr x steps, each cell audited (4-bit)."""

    kind: str = "quantization-map"
    model: dict = field(default_factory=lambda: {"size": "small"})
    benchmark: str = "world:forget10"
    benchmark_args: dict | None = None
    seeds: list = field(default_factory=lambda: [0])
    objective: str = "npo"
    objective_args: dict = field(default_factory=dict)
    optimizer: str = "adam"
    unlearn: dict = field(default_factory=dict)
    grid: dict = field(default_factory=lambda: {"lr": [1e-4], "steps": [60]})
    audit: dict = field(default_factory=dict)
    engine: str = "local"
    engine_args: dict = field(default_factory=dict)
    claims: list | None = None

    def __post_init__(self):
        _check_common(self)
        lookup(OBJECTIVES, self.objective, "objective")
        lookup(OPTIMIZERS, self.optimizer, "optimizer")
        require(isinstance(self.grid, dict) and set(self.grid) == {"lr", "steps"},
                "grid must be {lr: [...], steps: [...]}")


REGIME_KINDS = {"tiers": TiersRegime, "quantization-map": MapRegime}


def _check_common(regime) -> None:
    lookup(REGIME_KINDS, regime.kind, "regime kind")
    require(isinstance(regime.model, dict) and ("size" in regime.model or "base" in regime.model
                                                or set(GIVEN) <= set(regime.model)),
            "model must be {size: tiny}, {base: NAME, world: {...}} or {original: MODEL, gold: MODEL}")
    for key in regime.model:
        lookup(MODEL_KEYS, key, "model key")
    if given_models(regime):
        require(set(regime.model) == set(GIVEN), "model: {original, gold} names trained models, so it takes no "
                f"size, base, world or fit (got {sorted(regime.model)})")
    require(regime.benchmark_args is None or isinstance(regime.benchmark_args, dict),
            "benchmark_args must be a mapping of the benchmark's options")
    require(isinstance(regime.seeds, list) and regime.seeds and all(isinstance(s, int) for s in regime.seeds),
            "seeds must be a list of integers")
    engine_of(regime.engine, regime.engine_args)
    attacks = regime.audit.get("attacks", {})
    require(isinstance(attacks, dict) and attacks, "audit.attacks must map attack names to their options")
    for name in attacks:
        lookup(ATTACKS, name, "attack")
    for metric in regime.audit.get("metrics", ()):
        lookup(METRICS, metric, "metric")


@dataclass
class StudyConfig:
    """A preregistered study (module docstring); read with :meth:`from_yaml`."""

    name: str
    version: int
    question: str
    out: str = "reports/study"                        # the report (committed: HTML, figures, tables, records)
    work: str = "runs/study"                          # runs, checkpoints, calibrations, audits (not committed)
    alpha: float = 0.05
    correction: str = "holm"
    bands: dict = field(default_factory=dict)
    claims: list = field(default_factory=list)        # names in analysis.verdicts.PAPER_CLAIMS
    study_claims: list = field(default_factory=list)  # Claim fields; arms are arm labels
    regimes: dict = field(default_factory=dict)
    min_seeds: int = 5                                # fewest evaluation seeds a tiers regime may have

    def __post_init__(self):
        lookup(CORRECTIONS, self.correction, "multiple-comparison correction")
        require(0 < self.alpha < 1, f"alpha must be in (0, 1), got {self.alpha!r}")
        for key in ("target", "stopped"):
            require(key not in self.bands, f"bands.{key} is set per cell (from the regime's calibration targets "
                    "and stop_budget); remove it from bands")
        Bands(**self.bands)
        for name in self.claims:
            lookup(CLAIMS, name, "claim")
        require(isinstance(self.regimes, dict) and self.regimes, "regimes must map names to regimes")
        self.regimes = {name: _regime(name, spec) for name, spec in self.regimes.items()}
        table = {c.name: c for c in self.claim_table()}  # bad study claims fail here
        for name, regime in self.regimes.items():
            for claim in regime.claims or ():
                lookup(table, claim, f"claim of regime {name!r}")
            if isinstance(regime, TiersRegime):
                require(len(regime.seeds) >= self.min_seeds, f"regime {name!r} has {len(regime.seeds)} evaluation "
                        f"seeds; a study needs at least {self.min_seeds}")

    def regime_claims(self, name: str) -> list[Claim]:
        """The claims tested in regime ``name``: its own list, else the study's ``claims`` and
        ``study_claims`` (not the paper claims only another regime names)."""
        table = self.claim_table()
        wanted = self.regimes[name].claims
        if wanted is None:
            wanted = set(self.claims) | {c["name"] for c in self.study_claims}
        return [c for c in table if c.name in wanted]

    @classmethod
    def from_yaml(cls, path) -> "StudyConfig":
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise BasinError(f"cannot read the study file {path}: {err}") from None
        require(isinstance(data, dict), f"the study file {path} must be a mapping of StudyConfig fields")
        return from_fields(cls, data, "study")

    def claim_table(self) -> list[Claim]:
        """Every claim of the study, at the study's alpha (paper claims first, then the study's):
        the study-level ``claims`` and any paper claim a regime names."""
        names = list(self.claims) + [n for r in self.regimes.values() if isinstance(r, (TiersRegime, MapRegime))
                                     for n in (r.claims or ()) if n in CLAIMS and n not in self.claims]
        paper = [dataclasses.replace(CLAIMS[n], alpha=self.alpha) for n in names]
        own = []
        for spec in self.study_claims:
            require(isinstance(spec, dict) and "name" in spec, "each study claim must be a mapping of Claim fields")
            try:
                own.append(from_fields(Claim, {**spec, "alpha": self.alpha}, f"study claim {spec['name']!r}"))
            except (TypeError, ValueError) as err:
                raise BasinError(f"study claim {spec['name']!r}: {err}") from None
        names = [c.name for c in paper + own]
        require(len(set(names)) == len(names), "two claims share a name")
        return paper + own


def _regime(name: str, spec) -> TiersRegime | MapRegime:
    if isinstance(spec, tuple(REGIME_KINDS.values())):  # already read (dataclasses.replace of a study)
        return spec
    require(isinstance(spec, dict), f"regime {name!r} must be a mapping")
    kind = lookup(REGIME_KINDS, spec.get("kind", "tiers"), f"kind of regime {name!r}")
    return from_fields(kind, spec, f"regime {name!r}")


# ----------------------------------------------------------------------------- models

def given_models(regime) -> bool:
    """True when the regime names its original and gold models instead of building them."""
    return any(key in regime.model for key in GIVEN)


def benchmark_args(regime) -> dict:
    """The benchmark's options: the file's ``benchmark_args``, else the world the models were built on."""
    return dict(regime.benchmark_args if regime.benchmark_args is not None else regime.model.get("world", {}))


def build_config(regime, seed: int) -> BuildConfig:
    """The original / gold pair of ``regime`` fitted with ``seed``."""
    model = regime.model
    forget = regime.benchmark.split(":", 1)[1]
    fit = {**model.get("fit", {}), "seed": seed}
    return BuildConfig(world=WorldConfig(**model.get("world", {})), size=model.get("size", "tiny"), forget=forget,
                       fit=finetune_fit(**fit) if model.get("base") else FitConfig(**fit), base=model.get("base"))


def model_seeds(regime) -> dict[str, int]:
    """Which fitted pair each use takes: ``{"cal": seed, "0": seed, "1": ...}``."""
    if isinstance(regime, TiersRegime) and regime.vary_models:
        return {"cal": regime.calibration_model_seed, **{str(s): s for s in regime.seeds}}
    return {"cal": 0, **{str(s): 0 for s in regime.seeds}}


def model_paths(regime, cache_dir=None) -> dict[str, tuple[str, str]]:
    """Where each use's (original, gold) pair lives (built or not: nothing is built)."""
    if given_models(regime):
        return {use: (str(regime.model["original"]), str(regime.model["gold"])) for use in model_seeds(regime)}
    out = {}
    for use, seed in model_seeds(regime).items():
        config = build_config(regime, seed)
        out[use] = tuple(str(model_dir(config, split, cache_dir)) for split in ("full", retain_split(config.forget)))
    return out


def models_of(regime, cache_dir=None) -> list[str]:
    """Every model folder (or hub name) a regime's runs start from or are measured against."""
    return sorted({m for pair in model_paths(regime, cache_dir).values() for m in pair})


def build_models(regime, cache_dir=None, progress: bool = True, log=print) -> None:
    if given_models(regime):
        return   # third-party models: loaded by each run and audit as they are
    for seed in sorted(set(model_seeds(regime).values())):
        result = build(build_config(regime, seed), cache_dir=cache_dir, progress=progress)
        log(f"models (fit seed {seed}): original forget prob {result.original_fit['eval']['forget']['prob']:.3f}, "
            f"gold {result.retain_fit['eval']['forget']['prob']:.3f} ({result.seconds:.0f} s)")


# ----------------------------------------------------------------------------- tiers: plan

def calibration_configs(regime: TiersRegime, folder: Path, models: dict) -> dict[tuple, CalibrationConfig]:
    """``(objective, target, arm) -> CalibrationConfig``, one folder each."""
    cal = dict(regime.calibration)
    targets = cal.pop("targets")
    original, gold = models["cal"]
    out = {}
    for objective, target, (label, arm) in itertools.product(regime.objectives, targets, regime.arms.items()):
        unlearn_fields = _shared(regime, objective, original)
        steps = unlearn_fields.pop("steps")
        entry = {k: arm[k] for k in ("optimizer_args", "start") if k in arm}
        out[objective, target, label] = CalibrationConfig(
            out=str(folder / CALIBRATIONS / f"{objective}-{target}" / _slug(label)), unlearn=unlearn_fields,
            optimizers={arm["optimizer"]: entry}, target=str(target), steps=(steps,),
            evaluation_seeds=tuple(regime.seeds), original=original, retain=gold, **cal)
    return out


def _shared(regime, objective: str, model: str) -> dict:
    """The UnlearnConfig fields every run of ``objective`` shares."""
    return {"model": model, "benchmark": regime.benchmark, "benchmark_args": benchmark_args(regime),
            "objective": objective, "objective_args": dict(regime.objectives[objective]),
            "steps": UnlearnConfig.steps, **regime.unlearn}


def _slug(label: str) -> str:
    return label.replace(":", "to").replace("/", "_")


def audit_fields(regime, seed: int, references: bool | tuple) -> dict:
    """The AuditConfig fields of a run's audit: attack seed = the run's seed; ``references``: its
    ``score_references`` (True, False or the attacks the references get)."""
    spec = dict(regime.audit)
    attacks = spec.pop("attacks")
    return {"benchmark": regime.benchmark, "benchmark_args": benchmark_args(regime), **spec,
            "attacks": tuple(attacks), "attack_args": {k: dict(v or {}) for k, v in attacks.items()},
            "seed": seed, "score_references": references}


def settings_of(calibrations: dict, regime: TiersRegime, objective: str, target: str) -> dict[str, dict]:
    """``arm -> {lr, steps, optimizer_args, matched}`` from the calibration files (or the arm's
    start lr where a calibration has not run: used only to check a plan)."""
    out = {}
    for label, arm in regime.arms.items():
        config = calibrations[objective, target, label]
        path = Path(config.out) / "calibration.json"
        cal = load_calibration(path) if path.exists() else {}
        entry = cal.get("optimizers", {}).get(arm["optimizer"])
        if entry and entry.get("lr"):
            out[label] = {"lr": entry["lr"], "steps": entry["steps"], "matched": bool(entry["matched"]),
                          "optimizer_args": dict(entry["optimizer_args"]), "forget": entry.get("forget"),
                          "seed_spread": seed_spread(entry.get("forget_per_seed", [])),
                          "target": cal.get("target", {}).get("value")}
        else:
            out[label] = {"lr": arm.get("start", UnlearnConfig.lr), "steps": config.steps[0], "matched": False,
                          "optimizer_args": dict(arm.get("optimizer_args", {})), "forget": None, "planned": True,
                          "target": None}
    return out


def control_setting(regime: TiersRegime, label: str, settings: dict, noise_std: float | None = None) -> dict:
    """A control's setting: its ``like`` arm's lr (times ``lr_factor``) and steps, the options its
    optimizer accepts."""
    control = regime.controls[label]
    base = settings[control["like"]]
    accepted = _options(control["optimizer"])
    args = {k: v for k, v in base["optimizer_args"].items() if accepted is None or k in accepted}
    args.update(control.get("optimizer_args", {}))
    if "noise_of" in control:
        args["noise_std"] = 1.0 if noise_std is None else noise_std
    return {**base, "lr": base["lr"] * control.get("lr_factor", 1.0), "optimizer_args": args, "control": True}


def stop_run(setting: dict, budget: float, eval_every: int) -> dict:
    """A run's ``stop_at`` (the cell's calibration target; None before it is calibrated) and its
    step budget: ``budget`` x the calibrated steps, rounded up to a multiple of ``eval_every`` (so
    the hybrid's blocks, aligned from the end of the budget, close at every check)."""
    return {"stop_at": setting.get("target"), "steps": eval_every * math.ceil(budget * setting["steps"] / eval_every)}


def _options(optimizer: str) -> set | None:
    """The options an optimizer takes (None: any)."""
    return set(getattr(OPTIMIZERS[optimizer], "options", ())) or None


def matched_noise_std(run_dir, arm_setting: dict, lr: float) -> float:
    """noise_std for ``adam-noise`` at ``lr`` whose per-step displacement matches the zeroth-order
    steps of the run in ``run_dir`` (:func:`unlearn.optim.aliases.adam_noise`):
    noise_std = rms_ZO x lr_ZO / lr, rms_ZO the mean ``update_rms`` over its ZO steps (``phase``
    ``zo``; every step for a pure ZO run), lr_ZO = its lr x ``zo_lr_scale``."""
    rows = [r for r in read_records(Path(run_dir) / "records.jsonl")
            if r.get("metric") == "update_rms" and r.get("split") == "optimizer"]
    zo = [r["value"] for r in rows if r.get("phase") == "zo"] or [r["value"] for r in rows if r.get("phase") is None]
    require(zo, f"{run_dir} recorded no zeroth-order update_rms to match the noise to")
    lr_zo = arm_setting["lr"] * float(arm_setting["optimizer_args"].get("zo_lr_scale", 1.0))
    return sum(zo) / len(zo) * lr_zo / lr


@dataclass
class TiersPlan:
    """Where everything of a tiers regime goes, and the jobs for given settings."""

    regime: TiersRegime
    folder: Path
    models: dict
    calibrations: dict

    def cells(self) -> list[tuple[str, str]]:
        return list(itertools.product(self.regime.objectives, self.regime.calibration["targets"]))

    def dirs(self, objective, target, label, seed) -> tuple[str, str]:
        """The run and audit folders of one arm's seed in one cell (:func:`basin.sweep.job_dirs`)."""
        return job_dirs(self.folder, f"{objective}-{target}/{_slug(label)}-s{seed}")

    def run_dir(self, objective, target, label, seed) -> Path:
        return Path(self.dirs(objective, target, label, seed)[0])

    def job(self, objective, target, label, seed, setting: dict, references: bool) -> Job:
        original, gold = self.models[str(seed)]
        optimizer = (self.regime.arms.get(label) or self.regime.controls[label])["optimizer"]
        fields = {**_shared(self.regime, objective, original), "optimizer": optimizer, "seed": seed,
                  "lr": setting["lr"], "steps": setting["steps"], "optimizer_args": dict(setting["optimizer_args"])}
        if self.regime.stop_budget is not None:
            fields.update(stop_run(setting, self.regime.stop_budget, int(fields["eval_every"])))
            if self.regime.stop_split == "forget_unseen" and fields["stop_at"] is not None:
                fields.update(self.unseen_stop(target, seed))
        config = UnlearnConfig.from_dict(fields)
        audit = audit_fields(self.regime, seed, references)
        AuditConfig(**audit)
        return Job(f"{objective}-{target}/{label}-s{seed}", dataclasses.asdict(config), audit, original, gold,
                   *self.dirs(objective, target, label, seed))

    def unseen_stop(self, target, seed: int) -> dict:
        """``stop_rows``, the forget rows seed's relearning attack does not train on, and ``stop_at``,
        ``target`` on those rows: from the seed's original and gold models' levels there."""
        original, gold = self.models[str(seed)]
        levels = {role: self.row_probs(path) for role, path in (("original", original), ("gold", gold))}
        rows = ATTACKS["relearn"].unseen_rows(len(levels["original"]), self.regime.audit["attacks"]["relearn"] or {},
                                              seed)
        o, g = (sum(levels[role][i] for i in rows) / len(rows) for role in ("original", "gold"))
        return {"stop_rows": rows, "stop_at": make_target(target, o, g).value}

    def row_probs(self, model: str) -> list[float]:
        """The clean answer probability of each forget row under ``model`` (as the audit scores it),
        computed once and kept in ``forget-rows.json``."""
        path = self.folder / "forget-rows.json"
        cache = json.loads(path.read_text()) if path.exists() else {}
        if model not in cache:
            fmt = format_spec(self.regime.unlearn.get("prompt_format") or recorded_format(model))
            bench = load_benchmark(self.regime.benchmark, **benchmark_args(self.regime))
            _, rows = evaluate(model, None, bench, metrics=["prob"], splits=["forget"], generate=False,
                               strict=False, prompt_format=fmt)
            rows = rows[rows["split"] == "forget"].sort_values("row")
            require(list(rows["row"]) == list(range(len(bench.forget))), f"{model}: not every forget row was scored")
            cache[model] = [float(v) for v in rows["prob"]]
            write_json_atomic(path, cache)
        return cache[model]

    def path_job(self, objective, target, label, seed, setting) -> Job:
        """Interpolation from the ``paths.from`` arm's run of the same seed to ``label``'s run."""
        base = self.job(objective, target, label, seed, setting, references=False)
        start = self.run_dir(objective, target, self.regime.paths["from"], seed)
        audit = {**base.audit, "attacks": ("interpolate",), "seed": seed, "score_references": False,
                 "attack_args": {"interpolate": {**self.regime.audit["attacks"].get("interpolate", {}),
                                                 "endpoint": str(start)}}}
        AuditConfig(**audit)
        name = f"{_slug(self.regime.paths['from'])}-{_slug(label)}-s{seed}"
        return dataclasses.replace(base, name=f"{objective}-{target}/path-{name}", audit=audit,
                                   audit_dir=str(self.folder / PATHS / f"{objective}-{target}" / name))


def cell_settings(plan: TiersPlan, objective: str, target: str) -> dict[str, dict]:
    """Every arm's setting in one cell (calibrated where its calibration has run, else its start)
    and every control's, copied from the arm it controls."""
    settings = settings_of(plan.calibrations, plan.regime, objective, target)
    for label in plan.regime.controls:
        settings[label] = control_setting(plan.regime, label, settings)
    return settings


def plan_tiers(regime: TiersRegime, folder: Path, cache_dir=None) -> TiersPlan:
    """Every calibration and job of a tiers regime, checked (names, options) without running."""
    plan = TiersPlan(regime, folder, model_paths(regime, cache_dir), {})
    plan.calibrations = calibration_configs(regime, folder, plan.models)
    for objective, target in plan.cells():
        settings = cell_settings(plan, objective, target)
        for label in regime.arm_labels():
            plan.job(objective, target, label, regime.seeds[0], settings[label], references=True)
    return plan


# ----------------------------------------------------------------------------- tiers: run

def run_tiers(regime: TiersRegime, folder: Path, cache_dir=None, progress: bool = True, log=print) -> dict:
    """Stages 1-6 of the module docstring; returns ``{"settings": {cell: {arm: setting}}}``."""
    plan = plan_tiers(regime, folder, cache_dir)
    build_models(regime, cache_dir, progress=progress, log=log)
    check_carried(folder.parent, models_of(regime, cache_dir))   # carried runs started from these bits

    def save_settings(cells: dict) -> dict:   # the report's calibration table, even if interrupted
        write_json_atomic(folder / "settings.json", {f"{o}/{t}": s for (o, t), s in cells.items()})
        return cells

    for (objective, target, label), config in plan.calibrations.items():
        log(f"calibration {objective} / {target} / {label}")
        calibrate(config, progress=progress, log=log)
        save_settings({cell: cell_settings(plan, *cell) for cell in plan.cells()})  # as each arm lands
    engine = engine_of(regime.engine, regime.engine_args)
    run = lambda jobs: engine(jobs, progress=progress, **regime.engine_args) if jobs else []  # noqa: E731
    cells = save_settings({cell: cell_settings(plan, *cell) for cell in plan.cells()})   # now calibrated
    referenced: set = set()   # model pairs whose references one audit scores under every attack
    seeded: set = set()       # seeds whose references one audit scores under the seed_references
    # wave 1: the arms and the controls that copy a setting (references once per model pair)
    jobs = []
    for (objective, target), settings in cells.items():
        for label, seed in itertools.product(regime.arm_labels(), regime.seeds):
            if "noise_of" in regime.controls.get(label, {}):
                continue
            first = plan.models[str(seed)] not in referenced
            referenced.add(plan.models[str(seed)])
            references = True if first else (tuple(regime.seed_references) if seed not in seeded else False)
            seeded.add(seed)
            jobs.append(plan.job(objective, target, label, seed, settings[label], references=references))
    log(f"sweep: {len(jobs)} runs, each audited")
    run(jobs)
    # wave 2: noise-matched controls, from the runs they match (same seed)
    jobs = []
    for (objective, target), settings in cells.items():
        for label, control in regime.controls.items():
            if "noise_of" not in control:
                continue
            for seed in regime.seeds:
                source = plan.run_dir(objective, target, control["noise_of"], seed)
                std = matched_noise_std(source, settings[control["noise_of"]], settings[control["like"]]["lr"])
                setting = control_setting(regime, label, settings, noise_std=std)
                settings[label].setdefault("noise_std_per_seed", {})[str(seed)] = std
                jobs.append(plan.job(objective, target, label, seed, setting, references=False))
    run(jobs)
    # wave 3: paths between arms
    jobs = []
    if regime.paths:
        for (objective, target), settings in cells.items():
            for label, seed in itertools.product(regime.paths["to"], regime.seeds):
                jobs.append(plan.path_job(objective, target, label, seed, settings[label]))
    log(f"paths: {len(jobs)} interpolations between arms")
    run(jobs)
    # the plane (first seed of each objective, first target)
    if regime.plane:
        target, seed = regime.calibration["targets"][0], regime.seeds[0]
        for objective in regime.objectives:
            out = folder / PLANE / f"{objective}-{target}"
            if (out / "manifest.json").exists() or (out / "records.jsonl").exists():
                continue
            a, b = (str(plan.run_dir(objective, target, label, seed)) for label in regime.plane)
            audit_plane(plan.models[str(seed)][0], a, b, names=("original", *(f"{x}-s{seed}" for x in regime.plane)),
                        benchmark=regime.benchmark, benchmark_args=benchmark_args(regime),
                        max_retain=regime.audit.get("max_retain", 100), out=out, progress=progress)
    save_settings(cells)   # now with the noise-matched controls' per-seed noise
    return {"settings": cells}


# ----------------------------------------------------------------------------- quantization map

def map_jobs(regime: MapRegime, folder: Path, cache_dir=None) -> list[Job]:
    """One job per (lr, steps, seed): unlearn with the regime's optimizer, audit (references once)."""
    original, gold = model_paths(regime, cache_dir)[str(regime.seeds[0])]
    jobs = []
    for lr, steps, seed in itertools.product(regime.grid["lr"], regime.grid["steps"], regime.seeds):
        fields = {"model": original, "benchmark": regime.benchmark,
                  "benchmark_args": benchmark_args(regime), "objective": regime.objective,
                  "objective_args": dict(regime.objective_args), **regime.unlearn, "optimizer": regime.optimizer,
                  "lr": lr, "steps": steps, "seed": seed}
        config = UnlearnConfig.from_dict(fields)
        audit = audit_fields(regime, seed, references=not jobs)
        AuditConfig(**audit)
        name = f"lr{lr:g}-steps{steps}-s{seed}"
        jobs.append(Job(name, dataclasses.asdict(config), audit, original, gold, *job_dirs(folder, name)))
    return jobs


def run_map(regime: MapRegime, folder: Path, cache_dir=None, progress: bool = True, log=print) -> dict:
    jobs = map_jobs(regime, folder, cache_dir)
    build_models(regime, cache_dir, progress=progress, log=log)
    check_carried(folder.parent, models_of(regime, cache_dir))
    log(f"quantization map: {len(jobs)} runs, each audited")
    engine_of(regime.engine, regime.engine_args)(jobs, progress=progress, **regime.engine_args)
    return {"jobs": len(jobs)}


# ----------------------------------------------------------------------------- the study

def override_engine(config: StudyConfig, engine: str) -> None:
    """Run every regime on ``engine`` (``basin study --engine``); a regime's ``engine_args`` stay
    only where its engine already was ``engine`` (``num_cpus`` is Ray's, the local engine takes none)."""
    for regime in config.regimes.values():
        regime.engine, regime.engine_args = switch_engine(regime.engine, regime.engine_args, engine)


def check_study(config: StudyConfig, regimes=None, cache_dir=None) -> list[str]:
    """The regimes to run (all by default), every calibration and job planned and checked."""
    names = list(config.regimes) if not regimes else [lookup(config.regimes, r, "regime") and r for r in regimes]
    check_writable(Path(config.work), "study work folder", "pass a writable --work (or work: in the file)")
    check_writable(Path(config.out), "study report folder", "pass a writable --out (or out: in the file)")
    out = Path(config.work)
    for name in names:
        regime = config.regimes[name]
        if isinstance(regime, TiersRegime):
            plan_tiers(regime, out / name, cache_dir)
        else:
            map_jobs(regime, out / name, cache_dir)
    return names


def run_study(config: StudyConfig, regimes=None, objectives=None, cache_dir=None, progress: bool = True,
              log=print) -> dict:
    """Run the named regimes (default: all) in order; ``objectives`` limits a tiers regime to some
    of its objectives (two processes can then share the work). Returns what each regime did."""
    names = check_study(config, regimes, cache_dir)
    for name in names:  # a misspelt objective is refused before anything runs
        if objectives and isinstance(config.regimes[name], TiersRegime):
            for o in objectives:
                lookup(config.regimes[name].objectives, o, f"objective of regime {name!r}")
    done = {}
    for name in names:
        regime = config.regimes[name]
        folder = Path(config.work) / name
        log(f"regime {name} ({regime.kind}) -> {folder}")
        if isinstance(regime, TiersRegime):
            if objectives:
                for o in objectives:
                    lookup(regime.objectives, o, f"objective of regime {name!r}")
                regime = dataclasses.replace(regime, objectives={o: regime.objectives[o] for o in objectives})
            done[name] = run_tiers(regime, folder, cache_dir, progress=progress, log=log)
        else:
            done[name] = run_map(regime, folder, cache_dir, progress=progress, log=log)
    return done


def write_study(config: StudyConfig, source=None, log=print) -> Path:
    """The study's report from the records of whatever has run, into ``out/v<version>/`` (one
    full report per tiers cell and per map, the regime map, ``summary.json``, the study file and
    the calibrated settings); then ``out/index.html`` over every version written under ``out``."""
    out = Path(config.out)
    vdir = out / f"v{config.version}"
    vdir.mkdir(parents=True, exist_ok=True)
    if source is not None:
        write_text_atomic(vdir / "study.yaml", Path(source).read_text())
    previous = json.loads((vdir / "summary.json").read_text()) if (vdir / "summary.json").exists() else {}
    summary = {"name": config.name, "version": config.version, "question": config.question, "verdicts": [],
               "calibration": [], "figures": [], "cells": [], "regime_map": [], "progress": {}, "compute": []}
    bands = Bands(**config.bands)
    for name, regime in config.regimes.items():
        folder = Path(config.work) / name
        if isinstance(regime, TiersRegime):
            _report_tiers(config, name, regime, folder, vdir, bands, summary, previous, log)
        else:
            _report_map(config, name, regime, folder, vdir, bands, summary, previous, log)
    summary["status"] = "; ".join(f"{k}: {v}" for k, v in summary["progress"].items())
    write_json_atomic(vdir / "summary.json", summary)
    return write_index(out, read_summaries(out))


def _committed_records(df: pd.DataFrame, report: Path, previous: dict, summary: dict, progress_key: str,
                       log, **cell) -> pd.DataFrame | None:
    """Where none of a cell's runs is on this machine (a fresh checkout) but its report was
    committed, the records that report was built from (``report/tables/records.csv.gz``), so that
    the report is rebuilt from them (with today's claim table and conditions); the summary keeps
    the progress, compute and calibration entries ``previous`` had for the cell. None otherwise."""
    records = report / "tables" / "records.csv.gz"
    if not df.empty or not records.exists():
        return None
    log(f"no runs of {progress_key} under the work folder: the report is rebuilt from {records}")
    was = previous.get("progress", {}).get(progress_key, "runs not on this machine")
    summary["progress"][progress_key] = was.split("; ")[0] + "; report rebuilt from the committed records"
    summary["compute"] += [c for c in previous.get("compute", [])
                           if c.get("regime") == cell.get("regime") and c.get("cell") == cell.get("cell")]
    summary["calibration"] += [c for c in previous.get("calibration", [])
                               if all(c.get(k) == cell[k] for k in ("regime", "objective", "target") if k in cell)]
    return load_frame(records)


def _report_tiers(config, name, regime, folder, vdir, bands, summary, previous, log) -> None:
    shared = sorted(str(p) for p in (folder / AUDITS).glob("*/*"))
    settings_file = folder / "settings.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    planned = len(regime.arm_labels()) * len(regime.seeds)
    metric = regime.calibration.get("metric", "prob")
    for objective, target in itertools.product(regime.objectives, regime.calibration["targets"]):
        cell = f"{objective}-{target}"
        groups = []
        for label in regime.arm_labels():
            slug = _slug(label)
            runs = sorted(str(p) for p in (folder / RUNS / cell).glob(f"{slug}-s*"))
            audits = sorted(str(p) for p in (folder / AUDITS / cell).glob(f"{slug}-s*"))
            paths = sorted(str(p) for p in (folder / PATHS / cell).glob(f"*-{slug}-s*"))
            calibration = [str(folder / CALIBRATIONS / cell / slug)]
            groups.append((runs + audits + paths + calibration, {"arm": label}))
        groups.append(([str(folder / PLANE / cell)], {}))
        df = load_arms(groups, shared)
        committed = _committed_records(df, vdir / f"{name}-{cell}", previous, summary, f"{name} / {cell}", log,
                                       regime=name, cell=cell, objective=objective, target=target)
        if committed is not None:
            _judge_tiers(config, name, regime, committed, vdir, cell, objective, target, bands, metric,
                         summary["progress"][f"{name} / {cell}"].split(";")[0], summary, log)
            continue
        done = sum((p / "manifest.json").exists() for p in (folder / AUDITS / cell).glob("*-s*"))
        summary["progress"][f"{name} / {cell}"] = f"{done} of {planned} runs audited"
        summary["compute"].append({"regime": name, "cell": cell, **{
            stage: round(_wall_seconds([folder / stage / cell] if stage == PLANE else (folder / stage / cell).glob("*"))
                         / 60, 1) for stage in (CALIBRATIONS, RUNS, AUDITS, PATHS, PLANE)}})
        splits = dict.fromkeys(("forget", regime.stop_split))   # where the runs stopped, when not on forget
        levels = {split: clean_levels(df, metric, split).set_index("arm") if not df.empty else pd.DataFrame()
                  for split in splits}
        for label, s in settings.get(f"{objective}/{target}", {}).items():
            summary["calibration"].append({
                "regime": name, "objective": objective, "target": target, "arm": label,
                "lr": None if s.get("planned") else s.get("lr"),
                "steps": None if s.get("planned") else s.get("steps"), "metric": metric,
                "forget at calibration": s.get("forget"),
                "spread over calibration seeds": s.get("seed_spread"),   # None: one seed (or a control)
                "matched": "not calibrated yet" if s.get("planned") else "control (copies its arm)"
                if s.get("control") else "yes" if s.get("matched") else "NO: closest probe",
                **{key: value for split in splits for key, value in _landed(levels[split], label, split).items()},
                **({"steps taken, evaluation seeds": steps_taken(
                    folder / RUNS / cell, label,
                    stop_run(s, regime.stop_budget, int(regime.unlearn["eval_every"]))["steps"])}
                   if regime.stop_budget is not None and not s.get("planned") else {})})
        _judge_tiers(config, name, regime, df, vdir, cell, objective, target, bands, metric,
                     f"{done} of {planned} runs", summary, log)


def _judge_tiers(config, name, regime, df, vdir, cell, objective, target, bands, metric, runs, summary, log) -> None:
    """One tiers cell's report and verdicts from its records ``df``."""
    if df.empty or not ((df["role"] == "unlearned") & ~df["attack"].isin(TRAJECTORY)).any():
        return   # no finished run yet (perhaps calibration probes): nothing to judge
    arms = sorted(set(df.loc[df["role"] == "unlearned", "optimizer"]))
    claims = claims_for(arms, config.regime_claims(name))
    title = f"{config.name} v{config.version}: {name}, {objective}, target {target} ({runs.replace(' audited', '')})"
    conditions = cell_bands(bands, target, df, metric, stopped=regime.stop_budget is not None)
    _cell_report(df, vdir, f"{name}-{cell}", claims, title, conditions,
                 {"regime": name, "objective": objective, "target": target}, summary, log)


def _landed(levels: pd.DataFrame, label: str, split: str) -> dict:
    """The calibration table's columns for where ``label``'s evaluation seeds landed on ``split``
    (mean, range, n; its distance from the gold model in fractions of the gap there)."""
    level = levels.loc[label] if label in levels.index else None
    where = "" if split == "forget" else f" ({split})"
    return {f"forget, evaluation seeds{where}": None if level is None else
            f"{fmt_num(level['mean'])} ({fmt_num(level['min'])} to {fmt_num(level['max'])}, n={int(level['n'])})",
            f"from gold (gap fraction){where}": None if level is None else round(float(level["from_gold"]), 3)}


def cell_bands(bands: Bands, target, df: pd.DataFrame, metric: str, stopped: bool = False) -> Bands:
    """``bands`` for one (objective, target) cell: its gold-distance condition measured from the
    level the arms were calibrated to (``Bands.target``, the fraction of the original-gold gap:
    gold 1, halfway 0.5, gap=A A; a target given as a level of ``metric`` is converted with the
    cell's clean original and gold models); ``stopped``: its runs stopped at the target
    (``Bands.stopped``)."""
    bands = dataclasses.replace(bands, stopped=stopped)
    o, r = (reference_level(df, role, metric) for role in ("original", "retain"))
    if not (math.isfinite(o) and math.isfinite(r) and o != r):
        return bands   # no references yet: nothing is judged against the level anyway
    t = make_target(target, o, r)
    return dataclasses.replace(bands, target=min(1.0, max(0.0, (o - t.value) / (o - r))))


def steps_taken(folder: Path, label: str, budget: int) -> str | None:
    """Where an arm's finished evaluation runs stopped (their manifests' ``steps_taken``):
    "mean (min to max, n=N; budget B)", or None before any has finished."""
    taken = [json.loads(p.read_text()).get("steps_taken") for p in sorted(folder.glob(f"{_slug(label)}-s*/manifest.json"))]
    taken = [t for t in taken if t is not None]
    if not taken:
        return None
    return f"{sum(taken) / len(taken):.3g} ({min(taken)} to {max(taken)}, n={len(taken)}; budget {budget})"


def _wall_seconds(folders) -> float:
    """The wall time the manifests of ``folders`` recorded (runs, audits, calibrations)."""
    total = 0.0
    for folder in folders:
        path = Path(folder) / "manifest.json"
        if path.exists():
            total += float(json.loads(path.read_text()).get("wall_seconds") or 0)
    return total


def _report_map(config, name, regime, folder, vdir, bands, summary, previous, log) -> None:
    groups = []
    for job in map_jobs(regime, folder):
        steps = job.unlearn["steps"]
        groups.append(([job.run_dir, job.audit_dir], {"steps": steps, "arm": grid_arm(regime.optimizer, steps)}))
    df = load_arms(groups)
    committed = _committed_records(df, vdir / name, previous, summary, name, log, regime=name)
    if committed is not None:
        df = committed
    else:
        done = sum((Path(j.audit_dir) / "manifest.json").exists() for j in map_jobs(regime, folder))
        summary["progress"][name] = f"{done} of {len(groups)} runs audited"
    if df.empty:
        return
    table = regime_map(df)
    if len(table):   # no map before the first cell has an unlearned model
        figures = vdir / f"{name}-map"
        figures.mkdir(parents=True, exist_ok=True)
        table.to_csv(figures / "regime-map.csv", index=False, float_format="%.6g")
        fig = plot_regime_map(table, f"{name}: {regime.optimizer} + {regime.objective}, seeds per cell: "
                              f"{int(table['n'].max())}", gold_distance=bands.gold_distance)
        save_figure(fig, figures, "regime-map")
        summary["regime_map"] += [{"regime": name, **r} for r in table.to_dict("records")]
        summary["figures"].append({"png": f"{vdir.name}/{figures.name}/regime-map.png",
                                   "svg": f"{vdir.name}/{figures.name}/regime-map.svg",
                                   "href": f"{vdir.name}/{figures.name}/regime-map.csv",
                                   "caption": f"{name}: the quantization regime map (lr x steps)"})
    claims = grid_claims(config.regime_claims(name), regime.optimizer, regime.grid["lr"], regime.grid["steps"])
    _cell_report(df, vdir, name, claims, f"{config.name} v{config.version}: {name}", bands,
                 {"regime": name, "objective": regime.objective, "target": "grid"}, summary, log)


CELL_FIGURES = (("tiers", "forgetting and utility per arm, clean and under each attack"),
                ("robustness-relearn-prob", "relearning curves"),
                ("robustness-quantize-prob", "quantization"),
                ("frontier", "the forget/retain frontier of the calibration probes"),
                ("barriers", "loss barriers between models"),
                ("flatness", "flatness of the forget and retain losses"))


def _cell_report(df, vdir, cell, claims, title, bands, keys, summary, log) -> None:
    # a committed report: long tables gzipped, robustness curves of the answer probability only
    # (the other metrics are in the tables), the per-metric tables as CSV links, the per-seed and
    # summary tables of the claims' metrics only (the records hold every metric), PNGs at 90 dpi
    # beside the SVGs
    index = write_report(df, vdir / cell, claims=claims, title=title, bands=bands, compress_records=True,
                         max_metrics=1, dpi=90, inline_tables=False,
                         table_metrics=sorted({c.metric for c in claims}) or None)
    log(f"report: {index}")
    verdicts = pd.read_csv(vdir / cell / "tables" / "verdicts.csv")
    summary["verdicts"] += [{**r, "claim_objective": r.get("objective"), **keys} for r in verdicts.to_dict("records")]
    summary["cells"].append({"name": cell, "href": f"{vdir.name}/{cell}/index.html"})
    figures = vdir / cell / "figures"
    stems = [(s, c) for s, c in CELL_FIGURES] + [(p.stem, "the loss over the plane through three models")
                                                for p in sorted(figures.glob("basin-2d-*.png"))]
    for stem, caption in stems:
        if (figures / f"{stem}.png").exists():
            summary["figures"].append({"png": f"{vdir.name}/{cell}/figures/{stem}.png",
                                       "svg": f"{vdir.name}/{cell}/figures/{stem}.svg",
                                       "href": f"{vdir.name}/{cell}/index.html", "caption": f"{cell}: {caption}"})
