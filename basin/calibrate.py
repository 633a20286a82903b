"""Matched-forgetting calibration: per optimizer, the learning rate (and step count) that brings
the forget set to a target level with the least damage to the retain set.

Why. A robustness comparison between optimizers means something only when both arms forgot to
the same level, near the gold (retain-only) model (DESIGN.md section 9; Lynch et al. 2024,
"Eight methods to evaluate robust unlearning in LLMs"; Zhang et al. 2025, "Catastrophic failure
of LLM unlearning via quantization", where the learning rate alone changes the verdict). This
module finds that setting on seeds kept apart from the evaluation seeds.

Target. For a forget metric m (default: answer probability on the forget split), the original
model's level m_o and the gold model's m_g:

    t = m_o + a (m_g - m_o),   a = 1 ("gold"), a = 1/2 ("halfway"), a = A ("gap=A", 0 <= A <= 1)

or an absolute level t given as a number, which must lie in [m_g, m_o]. The band is
|m - t| <= tol, with tol = 0.1 |m_o - m_g| unless given.

Search (:func:`search_lr`). f(lr) is the mean of m over the calibration seeds after ``steps``
steps at ``lr``; more lr forgets more. With g(lr) = s (f(lr) - t) and s the metric's knowledge
sign (+1 for probability: higher = more knowledge), g > tol means "not forgotten enough", g < -tol
"forgotten past the band" (a run whose loss diverged counts as past the band). From the start lr
the search steps by ``factor`` (up while g > tol, down while g < -tol, inside ``lr_range``) until
the target is bracketed by lo (g > 0) and hi (g < 0), then splits the bracket in log lr:

    log lr = log lo + w (log hi - log lo),
    w = 1/2                                          (method "bisect")
    w = clip(g_lo / (g_lo - g_hi), 0.2, 0.8)         (method "interpolate": regula falsi on log lr,
                                                      kept away from the bracket's ends)

until a probe lands in the band or ``max_probes`` are spent. Choice (:func:`choose`): over the
step counts and grid points tried, the in-band probe with the least retain loss (NLL on the
retain set; it need not grow with lr, since NPO also optimises a retain term, so an extra
``grid`` of lrs can only improve the choice); with none in band the closest probe is reported
and the setting is marked unmatched, which :func:`calibrated_fields` refuses. The search itself
stops at its first in-band probe: it matches the forgetting, and does not explore the band.
The chosen setting's forget level on each calibration seed is kept (``forget_per_seed``; their
spread, max - min, is :func:`seed_spread`); seeds that disagree by more than the band's width, or
a single seed, are reported, since the match is on their mean and an evaluation seed lands where
its own batch order takes it (:func:`spread_warning`).

Files. ``calibrate(config)`` writes ``OUT/config.json`` (the calibration's settings),
``OUT/records.jsonl`` (every probe, per seed: forget / retain / utility metrics, lr, steps,
seconds, as long-form records with attack ``calibrate``; the original and gold levels as
``setting: reference`` records), ``OUT/calibration.json`` (the chosen setting per optimizer,
rewritten atomically after each optimizer) and ``OUT/manifest.json`` when done. A rerun reuses
every recorded probe (the search is deterministic given its probes, so it replays to where it
stopped); a finished folder is returned as it is; a folder holding another calibration is
refused. ``basin unlearn --calibrated FILE``, a sweep spec's ``calibrated: FILE`` and
``basin demo --calibrated FILE`` take their lr, steps and optimizer options from the file.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import yaml

from analysis.tables import knowledge_sign
from audit.metrics import METRICS, evaluate
from audit.runner import subsample
from unlearn.cache import write_json_atomic
from unlearn.data.benchmarks import load_benchmark
from unlearn.data.format import format_spec, recorded_format
from unlearn.errors import BasinError, LossDiverged, require
from unlearn.loading import load_model
from unlearn.models import resolve_device, resolve_dtype
from unlearn.optim import OPTIMIZERS
from unlearn.records import append_records, read_records, write_records
from unlearn.registry import from_fields, lookup
from unlearn.train import TRAIN_DTYPES, UnlearnConfig, unlearn

KIND = "basin-calibration"
CALIBRATION_FILE = "calibration.json"
ATTACK = "calibrate"        # the records' attack name: search probes, not an attack on a finished model
RETAIN_LOSS = ("nll", "retain")  # (metric, split) minimised among settings that hit the target
# UnlearnConfig fields a calibrated setting does not depend on (where and how often it is observed)
PROBE_OVERRIDDEN = ("seed", "eval_every", "eval_max_rows", "save_every")  # every probe sets these itself
NEUTRAL_FIELDS = PROBE_OVERRIDDEN + ("device",)
CALIBRATED_FIELDS = ("lr", "steps", "epochs", "optimizer_args")   # what a calibration sets
NAMED_TARGETS = {"gold": 1.0, "halfway": 0.5}
OPTIMIZER_KEYS = {"optimizer_args": "optimizer_args", "start": "start", "lr_range": "lr_range"}
CALIBRATIONS = "calibration"   # the folder of a study's work folder that holds its calibrations


# ----------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class Target:
    """The forget level to reach: ``value`` +- ``tolerance`` of a metric with knowledge sign ``sign``."""

    value: float
    tolerance: float
    sign: int = 1                   # +1: a higher metric means more knowledge (prob); -1: lower does (nll)
    spec: str = ""                  # how it was asked for: "halfway", "gold", "gap=0.3", "0.2"
    original: float | None = None   # the original model's level m_o
    gold: float | None = None       # the gold (retain-only) model's level m_g

    def gap(self, forget: float) -> float:
        """g = s (f - t): > 0 not forgotten enough, < 0 forgotten past the target; NaN (a diverged
        run) counts as past it."""
        return -math.inf if not math.isfinite(forget) else self.sign * (forget - self.value)

    def hit(self, forget: float) -> bool:
        return abs(self.gap(forget)) <= self.tolerance


def make_target(spec, original: float | None, gold: float | None, sign: int = 1,
                tolerance: float | None = None) -> Target:
    """The target level from ``spec`` (see the module docstring), checked to lie in [gold, original]."""
    text = str(spec).strip()
    try:
        value, fraction = float(text), None
    except ValueError:
        if text in NAMED_TARGETS:
            fraction = NAMED_TARGETS[text]
        elif text.startswith("gap="):
            try:
                fraction = float(text[4:])
            except ValueError:
                fraction = math.nan
            require(0 <= fraction <= 1, f"target {text!r}: the fraction of the way from the original to the gold "
                    "model must be in [0, 1], e.g. gap=0.5 (= halfway) or gap=1 (= gold)")
        else:
            raise BasinError(f"target {text!r} is not understood; use a number (the forget level itself), "
                             f"{', '.join(NAMED_TARGETS)} or gap=A (A in [0, 1] of the way from the original "
                             "to the gold model)") from None
        require(original is not None and gold is not None,
                f"target {text!r} needs the original's and the gold model's levels: pass the retain-only "
                "(gold) model (--retain)")
        value = original + fraction * (gold - original)
    require(math.isfinite(value), f"target {text!r} is not a finite number")
    if original is not None:
        low, high = (original, original) if gold is None else sorted((original, gold))
        if gold is None:  # only the original known: the target must be below its knowledge
            ok = sign * (value - original) <= 0
            where = f"at or below the original's {original:.4g}"
        else:
            ok = low - 1e-12 <= value <= high + 1e-12
            where = f"in [{low:.4g}, {high:.4g}] (between the gold model's {gold:.4g} and the original's {original:.4g})"
        require(ok, f"target {value:.4g} lies outside the reachable range: it must be {where}; "
                "use gold, halfway, gap=A or a level inside that range")
    if tolerance is None:
        require(original is not None and gold is not None and original != gold,
                "the default tolerance is 0.1 x |original - gold|; with no gold model (or no gap) pass --tolerance")
        tolerance = 0.1 * abs(original - gold)
    require(tolerance > 0, f"tolerance must be > 0, got {tolerance}")
    return Target(float(value), float(tolerance), sign, text, original, gold)


@dataclass(frozen=True)
class Probe:
    """One setting measured: the forget level and the retain loss (means over the calibration
    seeds; NaN when the run diverged) and the wall time it took over all seeds."""

    lr: float
    steps: int
    forget: float
    retain: float
    seconds: float = 0.0


@dataclass
class Search:
    """The probes of one search (in the order run), the first in-band probe, and why it stopped."""

    steps: int
    probes: list[Probe]
    hit: Probe | None
    reason: str


def _split_bisect(g_lo: float, g_hi: float) -> float:
    return 0.5


def _split_interpolate(g_lo: float, g_hi: float) -> float:
    if not math.isfinite(g_hi) or g_lo == g_hi:
        return 0.5
    return min(0.8, max(0.2, g_lo / (g_lo - g_hi)))


METHODS: dict[str, Callable[[float, float], float]] = {"bisect": _split_bisect, "interpolate": _split_interpolate}


def search_lr(measure: Callable[[float], Probe], target: Target, *, start: float,
              lr_range: tuple[float, float] = (1e-6, 1e-1), max_probes: int = 8, factor: float = 4.0,
              method: str = "interpolate", steps: int = 0) -> Search:
    """Find the lr whose probe lands in ``target``'s band: bracket from ``start`` by ``factor``,
    then split the bracket in log lr (see the module docstring). ``measure(lr)`` runs one probe."""
    split = lookup(METHODS, method, "calibration method")
    lr_min, lr_max = lr_range
    require(0 < lr_min < lr_max, f"lr_range must be two increasing positive numbers, got {lr_range}")
    require(lr_min <= start <= lr_max, f"start lr {start:g} lies outside lr_range [{lr_min:g}, {lr_max:g}]")
    require(factor > 1, f"factor must be > 1, got {factor}")
    require(max_probes >= 1, f"max_probes must be >= 1, got {max_probes}")
    probes: list[Probe] = []
    lo = hi = None                                   # largest under-forgetting, smallest over-forgetting probe
    lr = start
    while len(probes) < max_probes:
        p = measure(lr)
        probes.append(p)
        g = target.gap(p.forget)
        if abs(g) <= target.tolerance:
            return Search(steps, probes, p, "in band")
        if g > 0:
            lo = p if lo is None or p.lr > lo.lr else lo
        else:
            hi = p if hi is None or p.lr < hi.lr else hi
        if lo is not None and hi is not None:
            if hi.lr / lo.lr < 1 + 1e-6:
                return Search(steps, probes, None, f"the forget level jumps across the band between lr "
                              f"{lo.lr:.4g} and {hi.lr:.4g}")
            w = split(target.gap(lo.forget), target.gap(hi.forget))
            lr = math.exp(math.log(lo.lr) + w * (math.log(hi.lr) - math.log(lo.lr)))
        elif lo is not None:
            if lo.lr >= lr_max:
                return Search(steps, probes, None, f"not forgotten enough even at the largest lr {lr_max:g}")
            lr = min(lr_max, lo.lr * factor)
        else:
            if hi.lr <= lr_min:
                return Search(steps, probes, None, f"forgotten past the band even at the smallest lr {lr_min:g}")
            lr = max(lr_min, hi.lr / factor)
    return Search(steps, probes, None, f"no probe in the band after {max_probes} probes")


def choose(probes: Sequence[Probe], target: Target) -> tuple[Probe | None, bool]:
    """The in-band probe with the least retain loss (over every search, step count and grid point),
    and True; with no probe in band, the finite probe closest to the target, and False. The retain
    loss need not grow with lr (NPO's retain term is optimised too), so every in-band probe counts."""
    hits = [p for p in probes if target.hit(p.forget) and math.isfinite(p.retain)]
    if hits:
        return min(hits, key=lambda p: (p.retain, p.lr)), True
    finite = [p for p in probes if math.isfinite(p.forget)]
    if not finite:
        return None, False
    return min(finite, key=lambda p: (abs(target.gap(p.forget)), p.retain)), False


# ----------------------------------------------------------------------------- configuration


@dataclass
class CalibrationConfig:
    """A calibration (saved as ``OUT/config.json``); see the module docstring."""

    out: str = "runs/calibration"
    unlearn: dict = field(default_factory=dict)   # UnlearnConfig fields every probe shares (model, benchmark, objective ...)
    optimizers: dict = field(default_factory=lambda: {"adam": {}})  # name -> {optimizer_args, start, lr_range}
    target: str = "halfway"          # a number, gold, halfway or gap=A
    tolerance: float | None = None   # band half-width in metric units (default 0.1 |original - gold|)
    metric: str = "prob"             # the forget metric (on split forget)
    utility_split: str | None = "world_facts"  # scored beside forget and retain for the frontier (None: none)
    steps: tuple = ()                # step counts to try (default: UnlearnConfig's 200)
    lr_range: tuple = (1e-6, 1e-1)
    start: float | None = None       # first lr (default: the geometric mean of lr_range)
    max_probes: int = 8              # per optimizer and step count
    factor: float = 4.0              # bracketing step
    method: str = "interpolate"      # bisect or interpolate
    seeds: tuple = (1000,)           # calibration seeds
    evaluation_seeds: tuple = (0, 1, 2)  # seeds the calibrated settings will be evaluated on: kept apart
    grid: tuple = ()                 # extra lrs probed for every optimizer (the unlearning frontier)
    original: str | None = None      # the model to unlearn (default unlearn.model)
    retain: str | None = None        # the gold (retain-only) model
    max_retain: int = 60             # retain rows scored (evenly spaced)

    def __post_init__(self):
        if isinstance(self.optimizers, (list, tuple)):
            self.optimizers = {name: {} for name in self.optimizers}
        require(isinstance(self.optimizers, dict) and self.optimizers, "optimizers must name at least one optimizer")
        for name, entry in self.optimizers.items():
            lookup(OPTIMIZERS, name, "optimizer")
            require(isinstance(entry, dict), f"optimizers[{name!r}] must be a mapping of "
                    f"{', '.join(OPTIMIZER_KEYS)}, got {entry!r}")
            for key in entry:
                lookup(OPTIMIZER_KEYS, key, f"option of optimizers[{name!r}]")
        lookup(METRICS, self.metric, "metric")
        require(knowledge_sign(self.metric) is not None,
                f"metric {self.metric!r} has no knowledge direction; use prob, exact_match, nll, ...")
        lookup(METHODS, self.method, "calibration method")
        self.seeds, self.evaluation_seeds = tuple(self.seeds), tuple(self.evaluation_seeds)
        require(self.seeds, "seeds (the calibration seeds) must not be empty")
        shared = sorted(set(self.seeds) & set(self.evaluation_seeds))
        require(not shared, f"seed(s) {', '.join(map(str, shared))} are both calibration and evaluation seeds; "
                "calibrate on seeds kept apart from the evaluation seeds (e.g. --seeds 1000)")
        for key in ("optimizer", "lr", "steps", "epochs", "seed", "optimizer_args"):
            require(key not in self.unlearn, f"unlearn.{key} is set by the calibration itself; "
                    f"remove it (optimizers, steps, seeds and lr_range say what to try)")
        self.steps = tuple(int(s) for s in (self.steps or (UnlearnConfig.steps,)))
        require(all(s >= 1 for s in self.steps), f"steps must be >= 1, got {self.steps}")
        self.lr_range = tuple(float(x) for x in self.lr_range)
        self.grid = tuple(float(x) for x in self.grid)
        require(all(x > 0 for x in self.grid), f"grid learning rates must be > 0, got {self.grid}")
        require(self.max_probes >= 1, f"max_probes must be >= 1, got {self.max_probes}")
        require(self.max_retain >= 1, f"max_retain must be >= 1, got {self.max_retain}")
        for name in self.optimizers:   # every probe's config is valid before anything runs
            lo, hi = self.lr_range_of(name)
            require(0 < lo < hi, f"lr_range of {name} must be two increasing positive numbers, got {(lo, hi)}")
            require(lo <= self.start_of(name) <= hi, f"the start lr of {name} ({self.start_of(name):g}) "
                    f"lies outside its lr_range [{lo:g}, {hi:g}]")
            self.run_config(name, self.start_of(name), self.steps[0], self.seeds[0])

    @property
    def model(self) -> str:
        return self.original or self.unlearn.get("model") or "world:tiny"

    def lr_range_of(self, name: str) -> tuple[float, float]:
        lo, hi = self.optimizers[name].get("lr_range", self.lr_range)
        return float(lo), float(hi)

    def start_of(self, name: str) -> float:
        lo, hi = self.lr_range_of(name)
        start = self.optimizers[name].get("start", self.start)
        return float(start) if start is not None else math.sqrt(lo * hi)

    def run_config(self, name: str, lr: float, steps: int, seed: int):
        """The UnlearnConfig of one probe (no evaluation during training, no checkpoints)."""
        return UnlearnConfig.from_dict({**self.unlearn, "model": self.model, "optimizer": name,
                                        "optimizer_args": dict(self.optimizers[name].get("optimizer_args", {})),
                                        "lr": lr, "steps": steps, "seed": seed, "eval_every": 0, "save_every": 0})

    @classmethod
    def from_dict(cls, data: dict) -> "CalibrationConfig":
        return from_fields(cls, data, "calibration")

    @classmethod
    def from_yaml(cls, path) -> "CalibrationConfig":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise BasinError(f"cannot read the calibration spec {path}: {err}") from None
        require(isinstance(data, dict), f"the calibration spec {path} must be a mapping of CalibrationConfig fields")
        return cls.from_dict(data)

    def plain(self) -> dict:
        """The config as JSON data (what ``config.json`` holds)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ----------------------------------------------------------------------------- probes on models


class Prober:
    """Loads the original model, the gold model and the benchmark once, and runs probes: unlearn a
    copy of the original at (optimizer, lr, steps, seed), then score forget / retain / utility."""

    def __init__(self, config: CalibrationConfig):
        self.config = config
        base = config.run_config(next(iter(config.optimizers)), config.start_of(next(iter(config.optimizers))),
                                 config.steps[0], config.seeds[0])
        self.device = resolve_device(base.device)
        weights, _ = resolve_dtype(base.dtype, TRAIN_DTYPES)
        self.original, self.tokenizer = load_model(config.model, device=self.device, dtype=weights, progress=False)
        # the probes' runs lay rows out as unlearn() does: the config's format, else the model's recorded one
        self.prompt_format = format_spec(base.prompt_format if base.prompt_format is not None
                                         else recorded_format(config.model))
        self.gold = None
        if config.retain is not None:
            self.gold = load_model(config.retain, self.tokenizer, device=self.device, dtype=weights,
                                   progress=False)[0]
        bench = load_benchmark(base.benchmark, **base.benchmark_args)
        self.benchmark = dataclasses.replace(bench, retain=subsample(bench.retain, config.max_retain))
        self.splits = ["forget", "retain"]
        if config.utility_split and self.benchmark.utility.get(config.utility_split):
            self.splits.append(config.utility_split)
        # the target's metric, and probability and NLL everywhere (the frontier plots probability)
        self.keys = [(m, s) for m in dict.fromkeys((config.metric, "prob", RETAIN_LOSS[0])) for s in self.splits]

    def score(self, model) -> dict[tuple[str, str], float]:
        records, _ = evaluate(model, self.tokenizer, self.benchmark, metrics=[k[0] for k in self.keys],
                              generate=False, splits=self.splits, strict=False, prompt_format=self.prompt_format)
        got = {(r["metric"], r["split"]): r["value"] for r in records}
        return {k: float(got.get(k, math.nan)) for k in self.keys}

    def run(self, name: str, lr: float, steps: int, seed: int) -> tuple[dict, float]:
        """(scores, seconds) of one probe on one seed; a diverged run scores NaN."""
        start = time.perf_counter()
        model = copy.deepcopy(self.original)
        try:
            unlearn(self.config.run_config(name, lr, steps, seed), model=model, tokenizer=self.tokenizer,
                    progress=False)
            scores = self.score(model)
        except LossDiverged:
            scores = {k: math.nan for k in self.keys}
        return scores, time.perf_counter() - start


# ----------------------------------------------------------------------------- records


def _setting(lr: float, steps: int) -> str:
    return f"lr={lr!r},steps={steps}"


def probe_records(name: str, objective: str, lr: float, steps: int, seed: int, scores: dict, seconds: float,
                  phase: str, target: Target, metric: str, run: str) -> list[dict]:
    """One probe on one seed as long-form records (attack ``calibrate``, ``x`` = lr; ``target`` and
    ``tolerance`` are in units of ``target_metric`` on the forget split)."""
    base = {"model": f"{name}-lr{lr:.4g}-steps{steps}", "attack": ATTACK, "setting": _setting(lr, steps),
            "x": lr, "lr": lr, "steps": steps, "seed": seed, "role": "unlearned", "optimizer": name,
            "objective": objective, "phase": phase, "seconds": round(seconds, 3), "target": target.value,
            "tolerance": target.tolerance, "target_metric": metric, "run": run}
    return [{**base, "metric": m, "split": s, "value": v} for (m, s), v in scores.items()]


def reference_records(role: str, scores: dict, run: str) -> list[dict]:
    return [{"model": role, "attack": ATTACK, "setting": "reference", "seed": 0, "role": role, "run": run,
             "metric": m, "split": s, "value": v} for (m, s), v in scores.items()]


def _probe_key(r: dict) -> tuple:
    return (r.get("optimizer"), float(r["lr"]), int(r["steps"]), int(r["seed"]))


def _complete_probes(records: list[dict], keys: list) -> tuple[dict, dict, list[dict]]:
    """(probe key -> (scores, seconds), role -> reference scores, the complete records) from a
    folder's records; a probe missing some of its records (a torn write) is left out."""
    groups: dict = {}
    refs: dict = {}
    kept = []
    for r in records:
        if r.get("attack") != ATTACK:
            continue
        if r.get("setting") == "reference":
            refs.setdefault(r["role"], {})[(r["metric"], r["split"])] = _value(r)
        else:
            groups.setdefault(_probe_key(r), []).append(r)
    probes = {}
    for key, rows in groups.items():
        scores = {(r["metric"], r["split"]): _value(r) for r in rows}
        if all(k in scores for k in keys):
            probes[key] = ({k: scores[k] for k in keys}, float(rows[0].get("seconds", 0.0)))
            kept += rows
    refs = {role: s for role, s in refs.items() if all(k in s for k in keys)}
    kept = [r for r in records if r.get("setting") == "reference" and r.get("role") in refs] + kept
    return probes, refs, kept


def _value(r: dict) -> float:
    return math.nan if r.get("value") is None else float(r["value"])


# ----------------------------------------------------------------------------- the pipeline


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if all(math.isfinite(v) for v in values) else math.nan


def _probed(plain: dict) -> dict:
    """A calibration's settings less what its probes do not depend on: the folder, and the run
    fields every probe overrides (seed, no evaluation, no checkpoints)."""
    unlearn = {k: v for k, v in plain.get("unlearn", {}).items() if k not in PROBE_OVERRIDDEN}
    return {**{k: v for k, v in plain.items() if k != "out"}, "unlearn": unlearn}


def calibrate(config: CalibrationConfig | dict, progress: bool = True, log: Callable[[str], None] = print,
              prober: Prober | None = None) -> dict:
    """Run (or resume, or return) a calibration; returns what ``OUT/calibration.json`` holds.

    Bad input (an unknown optimizer, evaluation seeds among the calibration seeds, a target outside
    [gold, original], a folder holding another calibration) is refused before anything is written.
    ``prober`` (default :class:`Prober` on ``config``) runs the probes.
    """
    if isinstance(config, dict):
        config = CalibrationConfig.from_dict(config)
    out = Path(config.out)
    saved = out / "config.json"
    if saved.exists():
        same = _probed(json.loads(saved.read_text())) == _probed(config.plain())
        require(same, f"{out} holds a calibration with different settings; pass another "
                "--out (or delete the folder to start over)")
        if (out / "manifest.json").exists() and (out / CALIBRATION_FILE).exists():
            return json.loads((out / CALIBRATION_FILE).read_text())
    records = read_records(out / "records.jsonl") if (out / "records.jsonl").exists() else []
    prober = prober or Prober(config)
    done, refs, kept = _complete_probes(records, prober.keys)
    fresh_refs = []
    for role, model in (("original", prober.original), ("retain", prober.gold)):
        if model is not None and role not in refs:
            refs[role] = prober.score(model)
            fresh_refs += reference_records(role, refs[role], out.name)
    forget_key = (config.metric, "forget")
    target = make_target(config.target, refs["original"][forget_key],
                         refs["retain"][forget_key] if "retain" in refs else None,
                         knowledge_sign(config.metric), config.tolerance)
    # everything is checked: from here on the folder is written
    out.mkdir(parents=True, exist_ok=True)
    if not saved.exists():
        write_json_atomic(saved, config.plain())
    write_records(out / "records.jsonl", kept + fresh_refs)
    log(f"target: {config.metric} on forget = {target.value:.4f} +- {target.tolerance:.4f} ({target.spec}; "
        f"original {target.original:.4f}" + (f", gold {target.gold:.4f})" if target.gold is not None else ")"))

    start = time.time()
    objective = config.run_config(next(iter(config.optimizers)), config.start_of(next(iter(config.optimizers))),
                                  config.steps[0], config.seeds[0]).objective
    result = {"kind": KIND, "metric": config.metric, "split": "forget",
              "target": {"spec": target.spec, "value": target.value, "tolerance": target.tolerance,
                         "original": target.original, "gold": target.gold},
              "retain_loss": {"metric": RETAIN_LOSS[0], "split": RETAIN_LOSS[1]},
              "calibration_seeds": list(config.seeds), "evaluation_seeds": list(config.evaluation_seeds),
              "unlearn": {**config.unlearn, "model": config.model}, "optimizers": {}}

    probes = _Probes(config, prober, target, out, objective, done, log if progress else None)
    for name in config.optimizers:
        ran, reused = probes.ran, probes.reused
        lo, hi = config.lr_range_of(name)
        searches = [search_lr(lambda lr, s=steps: probes.measure(name, lr, s, "search"), target,  # noqa: B023
                              start=config.start_of(name),
                              lr_range=(lo, hi), max_probes=config.max_probes, factor=config.factor,
                              method=config.method, steps=steps)
                    for steps in config.steps]
        grid = [probes.measure(name, lr, steps, "grid") for steps in config.steps for lr in config.grid]
        chosen, matched = choose([p for s in searches for p in s.probes] + grid, target)
        per_seed = probes.per_seed(name, chosen.lr, chosen.steps) if chosen else []
        entry = {"matched": matched, "optimizer_args": dict(config.optimizers[name].get("optimizer_args", {})),
                 "lr": chosen.lr if chosen else None, "steps": chosen.steps if chosen else None,
                 "forget": chosen.forget if chosen else None, "retain_loss": chosen.retain if chosen else None,
                 "forget_per_seed": per_seed,
                 "searches": [{"steps": s.steps, "probes": len(s.probes), "reason": s.reason,
                               "lrs": [p.lr for p in s.probes]} for s in searches],
                 "probe_seconds": round(sum(p.seconds for s in searches for p in s.probes), 2),
                 "search_probes": sum(len(s.probes) for s in searches)}
        result["optimizers"][name] = entry
        write_json_atomic(out / CALIBRATION_FILE, result)
        status = "matched" if matched else "NOT matched (" + "; ".join(s.reason for s in searches) + ")"
        log(f"{name}: {status}: lr {entry['lr']}, steps {entry['steps']}, forget {entry['forget']}, "
            f"{entry['search_probes']} search probes x {len(config.seeds)} seed(s), "
            f"{entry['probe_seconds']:.1f} s of probes ({probes.ran - ran} run now, {probes.reused - reused} reused)")
        warning = spread_warning(per_seed, target.tolerance)
        if warning:
            log(f"{name}: {warning}")
    write_json_atomic(out / "manifest.json", {"kind": KIND, "wall_seconds": round(time.time() - start, 2),
                                              "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start))})
    return result


def seed_spread(per_seed: Sequence[float]) -> float | None:
    """max - min of the forget metric over the calibration seeds at one setting (None: one seed)."""
    values = [v for v in per_seed if math.isfinite(v)]
    return max(values) - min(values) if len(values) > 1 else None


def spread_warning(per_seed: Sequence[float], tolerance: float) -> str:
    """Why a match on the calibration seeds may not carry over to other seeds, or "".

    The match is on the mean over the calibration seeds; an evaluation seed (another batch order)
    lands where its own run goes. Seeds that disagree by more than the band's width (2 x
    ``tolerance``) say that a single run can land outside the band at the chosen setting; one seed
    says nothing about that spread."""
    spread = seed_spread(per_seed)
    if len(per_seed) == 1:
        return ("one calibration seed: how far other batch orders land at this setting is not measured; "
                "calibrate on several seeds (the match is then on their mean) and check the evaluation "
                "seeds' level before comparing arms")
    if spread is not None and spread > 2 * tolerance:
        values = [v for v in per_seed if math.isfinite(v)]
        sd = statistics.stdev(values)
        needed = math.ceil((1.96 * sd / tolerance) ** 2)
        return (f"the calibration seeds disagree by {spread:.4g} at this setting, more than the band's width "
                f"(2 x {tolerance:.4g}): single runs, the evaluation seeds' among them, can land outside the band; "
                f"with a seed-to-seed sd of {sd:.3g}, the mean of {len(values)} seeds has a standard error of "
                f"{sd / math.sqrt(len(values)):.3g}, and holding it within +-{tolerance:.4g} at 95% takes about "
                f"{needed} calibration seeds; or stop each evaluation run where it reaches the target "
                "(basin unlearn --stop-at, a study's stop_budget)")
    return ""


@dataclass
class _Probes:
    """The probes of one calibration folder, one setting on every calibration seed at a time: a
    (optimizer, lr, steps, seed) already in ``done`` (the folder's records) is reused, any other is
    run and its records appended at once."""

    config: CalibrationConfig
    prober: object
    target: Target
    out: Path
    objective: str
    done: dict
    log: Callable[[str], None] | None = None
    ran: int = 0
    reused: int = 0

    def per_seed(self, name: str, lr: float, steps: int) -> list[float]:
        """The forget metric of a measured setting on each calibration seed."""
        key = (self.config.metric, "forget")
        return [self.done[(name, float(lr), int(steps), int(seed))][0][key] for seed in self.config.seeds]

    def measure(self, name: str, lr: float, steps: int, phase: str) -> Probe:
        forget_key = (self.config.metric, "forget")
        per_seed, seconds = [], 0.0
        for seed in self.config.seeds:
            key = (name, float(lr), int(steps), int(seed))
            if key in self.done:
                self.reused += 1
            else:
                scores, secs = self.prober.run(name, lr, steps, seed)
                append_records(self.out / "records.jsonl", probe_records(
                    name, self.objective, lr, steps, seed, scores, secs, phase, self.target, self.config.metric,
                    self.out.name))
                self.done[key] = (scores, secs)
                self.ran += 1
            per_seed.append(self.done[key][0])
            seconds += self.done[key][1]
        probe = Probe(lr, steps, _mean([s[forget_key] for s in per_seed]), _mean([s[RETAIN_LOSS] for s in per_seed]),
                      seconds)
        if self.log is not None:
            self.log(f"  {name} {phase} lr {lr:.4g} steps {steps}: {self.config.metric} {probe.forget:.4f}, "
                     f"retain {RETAIN_LOSS[0]} {probe.retain:.4f} ({seconds:.1f} s)")
        return probe


# ----------------------------------------------------------------------------- using a calibration


def load_calibration(path) -> dict:
    """A calibration file (or a calibration folder holding ``calibration.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CALIBRATION_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BasinError(f"cannot read the calibration {path} ({err}); pass the calibration.json written by "
                         "basin calibrate, or its folder") from None
    require(isinstance(data, dict) and data.get("kind") == KIND,
            f"{path} is not a calibration written by basin calibrate")
    return data


def calibrated_fields(fields: dict, calibration) -> dict:
    """UnlearnConfig fields with ``lr``, ``steps`` and ``optimizer_args`` set from ``calibration``
    (a dict from :func:`load_calibration`, or its path) for ``fields["optimizer"]``; fields not
    given come from the calibration's own settings.

    Refuses an optimizer the calibration did not match, a seed among the calibration seeds, and a
    run whose model, benchmark, objective or batch settings differ from the calibration's (its
    setting would not apply).
    """
    cal = calibration if isinstance(calibration, dict) else load_calibration(calibration)
    merged = {**cal["unlearn"], **fields}
    names = cal["optimizers"]
    if "optimizer" not in fields and len(names) == 1:
        merged["optimizer"] = next(iter(names))
    name = merged.get("optimizer")
    require(name is not None, f"name the optimizer (--optimizer): the calibration holds {', '.join(names)}")
    entry = lookup(names, name, "calibrated optimizer")
    require(entry.get("matched"), f"optimizer {name!r} did not reach the calibration's target "
            f"({cal['target']['value']:.4g} +- {cal['target']['tolerance']:.4g}); rerun basin calibrate with more "
            "probes (--max-probes) or a wider --lr-range")
    seed = merged.get("seed", UnlearnConfig.seed)
    require(seed not in cal["calibration_seeds"], f"seed {seed} was used to calibrate ({name}); evaluate on "
            f"seeds kept apart from the calibration seeds {cal['calibration_seeds']}, e.g. "
            f"{cal['evaluation_seeds']}")
    merged.update({"lr": entry["lr"], "steps": entry["steps"], "epochs": None,
                   "optimizer_args": dict(entry["optimizer_args"])})
    run = dataclasses.asdict(UnlearnConfig.from_dict(merged))
    base = dataclasses.asdict(UnlearnConfig.from_dict({**cal["unlearn"], "optimizer": name}))
    skip = set(NEUTRAL_FIELDS) | set(CALIBRATED_FIELDS) | {"optimizer"}
    differ = [k for k in base if k not in skip and json.dumps(base[k], sort_keys=True, default=str)
              != json.dumps(run[k], sort_keys=True, default=str)]
    require(not differ, "this run differs from the calibration in " + ", ".join(
        f"{k} ({run[k]!r}, calibrated with {base[k]!r})" for k in differ) + "; calibrate for these settings")
    return merged
