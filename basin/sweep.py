"""``basin sweep``: a grid of unlearning runs (optimizer x objective x seed x ...), each audited,
run on an existing engine.

A sweep is a list of independent *jobs*. One job unlearns one configuration into
``OUT/runs/<name>`` and audits it into ``OUT/audits/<name>``, in the same record format as
``basin unlearn`` and ``basin audit``, so ``basin report OUT/runs/* OUT/audits/*`` (or
:func:`analysis.load.load_records`) merges any number of sweeps. Jobs are idempotent: a finished
run or audit is reused and an interrupted one resumes, so rerunning a sweep finishes what is
missing and nothing else. Before any job runs, the engine refuses jobs whose models would not fit
on the disk (:func:`check_space`; a SmolLM2-135M run keeps a 0.54 GB model).

Engines (:data:`ENGINES`), none of them a scheduler of basin's own:

- ``local``: the jobs one after the other in this process;
- ``ray``: one Ray task per job (``pip install 'basin[sweep]'``). ``ray.init()`` starts a local
  Ray instance by default; ``engine_args={"address": "auto"}`` joins a running cluster, so the
  same spec runs on a laptop or on many machines. ``num_cpus`` / ``num_gpus`` reserve resources
  per job. Every worker must see the same file system (the output folder and the model cache).

A spec (``SweepConfig``, or YAML with the same fields)::

    out: reports/sweep
    unlearn: {model: world:tiny, benchmark: world:forget10, objective: npo, steps: 60, batch_size: 8}
    grid: {optimizer: [adam, hybrid], seed: [0, 1, 2]}      # UnlearnConfig fields -> values
    recipes: {adam: {lr: 1.0e-3}, hybrid: {lr: 1.0e-3, optimizer_args: {n_fo: 10, n_zo: 10}}}
    audit: {attacks: [relearn, quantize], max_retain: 60}   # AuditConfig fields; null: no audit
    original: world:tiny                                     # default: unlearn.model
    retain: world:tiny:retain90
    engine: ray
    engine_args: {num_cpus: 1}
    calibrated: runs/calibration   # optional: lr, steps, optimizer options from basin calibrate
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from audit.runner import AuditConfig, audit, check_audit
from basin.calibrate import calibrated_fields, load_calibration
from unlearn import runs
from unlearn.build import world_model_dir, world_model_path
from unlearn.cache import check_writable, digest
from unlearn.errors import BasinError, require
from unlearn.models import DTYPES, dtype_key
from unlearn.registry import from_fields, lookup
from unlearn.optim import OPTIMIZERS
from unlearn.train import UnlearnConfig, check_unlearn, unlearn


@dataclass
class SweepConfig:
    out: str = "reports/sweep"
    unlearn: dict = field(default_factory=dict)      # UnlearnConfig fields shared by every run
    grid: dict = field(default_factory=lambda: {"optimizer": ["adam"], "seed": [0]})
    recipes: dict = field(default_factory=dict)      # optimizer -> UnlearnConfig overrides (lr, ...)
    audit: dict | None = field(default_factory=dict)  # AuditConfig fields; None: unlearn only
    original: str | None = None                       # default: the unlearned model's start
    retain: str | None = None                         # the retain-only model (floor, forget quality)
    references: bool = True                           # attack original / retain once (ceiling, floor)
    engine: str = "local"
    engine_args: dict = field(default_factory=dict)
    calibrated: str | None = None                     # basin calibrate's file: lr, steps, optimizer options

    def __post_init__(self):
        """Types and names of every field (what they hold is checked job by job: :func:`check_sweep`)."""
        require(isinstance(self.out, str) and self.out, f"out must be a folder name, got {self.out!r}")
        for name in ("unlearn", "recipes", "engine_args"):
            require(isinstance(getattr(self, name), dict), f"{name} must be a mapping, got {getattr(self, name)!r}")
        require(self.audit is None or isinstance(self.audit, dict),
                f"audit must be a mapping of AuditConfig fields or null, got {self.audit!r}")
        fixed = sorted({"lr", "steps", "epochs", "optimizer_args"} & set(self.grid))
        require(not (self.calibrated and fixed), f"grid over {', '.join(fixed)} conflicts with calibrated: "
                "the calibration sets them; drop one of the two")
        require(isinstance(self.grid, dict) and self.grid, "grid must map UnlearnConfig fields to lists of values")
        for key, values in self.grid.items():
            require(isinstance(values, (list, tuple)) and len(values) > 0,
                    f"grid[{key!r}] must be a non-empty list, got {values!r}")
        for name, recipe in self.recipes.items():
            lookup(OPTIMIZERS, name, "optimizer in recipes")
            require(isinstance(recipe, dict), f"recipes[{name!r}] must map UnlearnConfig fields to values")
        engine_of(self.engine, self.engine_args)

    @classmethod
    def from_yaml(cls, path) -> "SweepConfig":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise BasinError(f"cannot read the sweep spec {path}: {err}") from None
        require(isinstance(data, dict), f"the sweep spec {path} must be a mapping of SweepConfig fields")
        return from_fields(cls, data, "sweep")


RUNS, AUDITS = "runs", "audits"


def job_dirs(folder, cell: str) -> tuple[str, str]:
    """Where a job's run and its audit go: ``folder/runs/<cell>`` and ``folder/audits/<cell>``
    (``cell`` may hold a ``/``). :func:`partner_dir` goes from one to the other."""
    return str(Path(folder) / RUNS / cell), str(Path(folder) / AUDITS / cell)


def partner_dir(path) -> Path | None:
    """The audit folder of a run folder laid out by :func:`job_dirs`, or the run folder of an audit
    folder (the last ``runs`` or ``audits`` part of ``path`` swapped); None for any other folder."""
    parts = Path(path).parts
    for i in reversed(range(len(parts))):
        if parts[i] in (RUNS, AUDITS):
            return Path(*parts[:i], AUDITS if parts[i] == RUNS else RUNS, *parts[i + 1:])
    return None


@dataclass(frozen=True)
class Job:
    """One run and its audit; everything a worker needs, as plain data."""

    name: str
    unlearn: dict
    audit: dict | None
    original: str | None
    retain: str | None
    run_dir: str
    audit_dir: str


def job_name(values: dict) -> str:
    """``{"optimizer": "adam", "seed": 0}`` -> ``adam-s0``; grid values in grid order."""
    parts = []
    for key, value in values.items():
        if key == "seed":
            parts.append(f"s{value}")
        elif isinstance(value, (dict, list)):
            parts.append(f"{key}{digest(value)[:6]}")
        elif isinstance(value, str):
            parts.append(value.replace("/", "_").replace(":", "_"))
        else:
            parts.append(f"{key}{value:g}" if isinstance(value, float) else f"{key}{value}")
    return "-".join(parts)


def plan_jobs(config: SweepConfig) -> list[Job]:
    """The grid's cartesian product as jobs (checked before anything runs: bad fields, names)."""

    out = Path(config.out)
    keys = list(config.grid)
    jobs = []
    if config.calibrated:
        calibration = load_calibration(config.calibrated)
    for combo in itertools.product(*(config.grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        fields = {**config.unlearn, **values}
        fields.update(config.recipes.get(fields.get("optimizer", UnlearnConfig.optimizer), {}))
        fields.update(values)                          # the grid wins over a recipe
        if config.calibrated:                          # the calibration wins over both (and checks the seed)
            fields = calibrated_fields(fields, calibration)
        unlearn_config = UnlearnConfig.from_dict(fields)  # bad fields fail here, before any run
        audit = None
        if config.audit is not None:
            audit = {"benchmark": unlearn_config.benchmark, "benchmark_args": unlearn_config.benchmark_args,
                     **config.audit, "score_references": config.references and not jobs}
            AuditConfig(**audit)
        name = job_name(values)
        jobs.append(Job(name, dataclasses.asdict(unlearn_config), audit,
                        config.original or unlearn_config.model, config.retain,
                        *job_dirs(out, name)))
    names = [j.name for j in jobs]
    require(len(set(names)) == len(names), "two grid points give the same run name; use distinct values")
    return jobs


def check_sweep(config: SweepConfig, jobs: list[Job]) -> None:
    """Refuse a sweep before any job runs or anything is written: every job's unlearn config
    (options, model, its run folder) and audit config (attack options, models and their
    architectures, its audit folder), and the output folder."""
    check_writable(Path(config.out), "sweep folder", "pass a writable out (or --out)")
    for job in jobs:
        unlearn_config = UnlearnConfig.from_dict(job.unlearn)
        check_unlearn(unlearn_config, out=job.run_dir)
        if job.audit is not None:  # the unlearned model will have its start's architecture
            check_audit(AuditConfig(**job.audit), unlearn_config.model, original=job.original, retain=job.retain,
                        out=job.audit_dir)


def run_job(job: Job, progress: bool = False) -> dict:
    """Unlearn (or resume, or reuse) and audit one grid point; return what was done and its time."""
    start = time.perf_counter()
    config = UnlearnConfig.from_dict(job.unlearn)
    to_audit = job.audit is not None and not (Path(job.audit_dir) / "manifest.json").exists()
    if to_audit or not runs.is_finished(Path(job.run_dir)):
        unlearn(config, out=job.run_dir, progress=progress)
    else:   # nothing left to do, so the model is not loaded (its weights may be gone: basin.carry)
        runs.check_run_folder(Path(job.run_dir), config)
    if to_audit:
        audit(job.run_dir, original=job.original, retain=job.retain, config=AuditConfig(**job.audit),
              out=job.audit_dir, progress=progress)
    return {"name": job.name, "run": job.run_dir, "audit": job.audit_dir if job.audit is not None else None,
            "audited": to_audit, "seconds": round(time.perf_counter() - start, 1), "pid": os.getpid()}


# ----------------------------------------------------------------------------- disk space

def _parameters(model) -> int:
    """The number of parameters of a checkpoint folder, read from its safetensors headers (0 when
    ``model`` is not a folder on this machine yet: a hub name, an object, a model not built)."""
    from safetensors import safe_open

    if isinstance(model, str) and model.startswith("world:"):
        model = world_model_dir(model)
    if not isinstance(model, (str, Path)) or not Path(model).is_dir():
        return 0
    total = 0
    for file in Path(model).glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def check_space(jobs: list[Job], workers: int = 1) -> None:
    """Refuse jobs whose unlearned models cannot fit on the disk of their run folders, before any
    of them runs (rather than an I/O error hours in).

    Each job that has not finished leaves its model (its start's parameters in its dtype); each of
    the ``workers`` jobs running at a time that saves checkpoints (``save_every``) also holds one
    (the weights and the optimizer state, up to three times the weights) beside the one it
    replaces: need = sum of the models + 6 x the largest checkpointing model x workers. Models
    whose size is not known here (hub names) count as 0."""
    todo = [j for j in jobs if not runs.is_finished(Path(j.run_dir))]
    if not todo:
        return
    parameters: dict = {}   # start model -> its parameter count (read once)
    each, checkpointing = [], [0]
    for job in todo:
        model = job.unlearn["model"]
        if str(model) not in parameters:
            parameters[str(model)] = _parameters(model)
        weights = DTYPES.get(dtype_key(job.unlearn.get("dtype", "float32")), torch.float32)  # bf16-mixed: fp32
        each.append(parameters[str(model)] * weights.itemsize)
        if job.unlearn.get("save_every"):
            checkpointing.append(each[-1])
    need = sum(each) + 6 * max(checkpointing) * max(1, min(workers, len(todo)))
    folder = Path(todo[0].run_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > free:
        raise BasinError(
            f"not enough disk space: the {len(todo)} runs still to do will write about {_size(need)} of "
            f"models and checkpoints under {Path(todo[0].run_dir).parent} ({_size(max(each))} per model), and "
            f"{_size(free)} is free there; free space on that disk or write the runs to a larger one "
            f"(finished runs are kept, so the same command goes on where it stopped)")


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


# ----------------------------------------------------------------------------- engines

def run_local(jobs: list[Job], progress: bool = True) -> list[dict]:
    """Each job in turn, in this process."""
    check_space(jobs)
    return [run_job(job, progress=progress) for job in tqdm(jobs, desc="sweep", disable=not progress)]


def run_ray(jobs: list[Job], progress: bool = True, address: str | None = None, num_cpus: float = 1,
            num_gpus: float = 0, **init_args) -> list[dict]:
    """One Ray task per job, on a local Ray instance or a cluster (address auto or ray://host:port).

    ``address=None`` starts a local instance and shuts it down afterwards; results come back in job
    order; ``num_cpus`` / ``num_gpus`` are reserved per job."""
    try:
        import ray
    except ImportError:
        raise BasinError("the ray engine needs Ray: pip install 'basin[sweep]' (or use engine local)") from None
    started = not ray.is_initialized()
    if started:
        env = {k: os.environ[k] for k in ("BASIN_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                          "OMP_WAIT_POLICY") if k in os.environ}
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env}, **init_args)
    try:
        check_space(jobs, workers=int(ray.cluster_resources().get("CPU", 1) // max(num_cpus, 1e-9)))
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(run_job)
        pending = {task.remote(job): i for i, job in enumerate(jobs)}
        results: list = [None] * len(jobs)
        with tqdm(total=len(jobs), desc="sweep (ray)", disable=not progress) as bar:
            waiting = list(pending)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                try:
                    results[pending[done[0]]] = ray.get(done[0])
                except ray.exceptions.RayTaskError as err:
                    cause = err.cause if isinstance(getattr(err, "cause", None), Exception) else err
                    raise BasinError(f"sweep job {jobs[pending[done[0]]].name} failed: {cause}") from None
                bar.update()
        return results
    finally:
        if started:
            ray.shutdown()


ENGINES = {"local": run_local, "ray": run_ray}


def engine_of(name: str, args: dict):
    """The engine ``name`` (did-you-mean on a typo), its options ``args`` checked against what it
    takes (``local`` takes none, ``ray`` passes unknown ones on to ``ray.init``)."""
    engine = lookup(ENGINES, name, "sweep engine")
    require(isinstance(args, dict), f"engine_args must be a mapping, got {args!r}")
    accepted = inspect.signature(engine).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        options = {k: k for k in accepted if k not in ("jobs", "progress")}
        for key in args:
            lookup(options, key, f"option of the {name} engine")
    return engine


def switch_engine(engine: str, args: dict, new: str) -> tuple[str, dict]:
    """``--engine NEW`` over a file's ``engine`` and ``engine_args``: the options stay only where the
    engine does (``num_cpus`` is Ray's; the local engine takes none)."""
    engine_of(new, {})
    return new, (dict(args) if new == engine else {})


def _prepare_models(jobs: list[Job]) -> None:
    """Build the embedded world's models once, here, before workers need them (two workers would
    otherwise train the same cached model side by side)."""
    names = {j.unlearn["model"] for j in jobs} | {j.original for j in jobs} | {j.retain for j in jobs}
    for name in sorted(n for n in names if isinstance(n, str) and n.startswith("world:")):
        world_model_path(name)


def run_sweep(config: SweepConfig, progress: bool = True) -> list[dict]:
    """Plan the jobs, make sure the shared models exist, run the jobs on ``config.engine``."""
    jobs = plan_jobs(config)
    check_sweep(config, jobs)
    _prepare_models(jobs)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    return engine_of(config.engine, config.engine_args)(jobs, progress=progress, **config.engine_args)


def sweep_sources(config: SweepConfig) -> list[Path]:
    """The run and audit folders of a sweep's jobs that hold records (for :func:`load_records`)."""
    out = []
    for job in plan_jobs(config):
        out += [Path(p) for p in (job.run_dir, job.audit_dir) if (Path(p) / "records.jsonl").exists()]
    return out
