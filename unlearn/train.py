"""The unlearning loop: one explicit loop for every objective and every optimizer tier.

It reads as config, batches, step, records:

- **config**: :class:`UnlearnConfig`; :func:`check_unlearn` refuses bad input (names, option types and
  ranges, the model and the run folder) before anything is loaded or written;
- **batches**: step k draws a forget batch and a retain batch in a seeded, stateless order (a
  function of (seed, k) alone, so a resumed run sees the same data); the objective prepares its
  per-batch constants once (reference log-likelihoods, frozen activations) outside any closure;
- **step**: the optimizer gets a forward-only closure over micro-batches. Backprop optimizers call
  ``backward`` inside ``step``; zeroth-order ones only run forwards;
- **records**: every ``eval_every`` steps, forget / retain answer probability and exact match;
- **stop**: with ``stop_at``, the loop ends at the first evaluation whose forget answer probability
  (on the forget rows ``stop_rows`` when given) is at or below it, so every run stops at the same
  forgetting whatever its batch order (matched forgetting per run); ``steps`` is then a budget,
  and the manifest's ``steps_taken`` says what was used. For the hybrid, make ``eval_every`` a
  multiple of n_fo + n_zo and ``steps`` a multiple of ``eval_every``: its blocks are aligned from
  the end of ``steps``, so every check follows a ZO block.

Every ``save_every`` steps a checkpoint is written, and a rerun of the same command resumes from it
with bit-identical final weights. Run folders, checkpoints and the manifest are :mod:`unlearn.runs`;
data parallel (an ``accelerate`` / ``torchrun`` launch) is :mod:`unlearn.parallel`: the first
process writes the run folder and evaluates, and the result equals the single-process run with
the same ``grad_accum`` (bit for bit with 2 processes on the CPU; tested).

Device and precision. ``device`` places the model, the NPO / RMU reference model and every batch
(``"auto"``: CUDA when torch sees a GPU, else the CPU; ``"auto-map"``: the layers spread over all
visible GPUs with ``device_map="auto"``, inputs on the first layer's device). ``dtype`` is
``"float32"`` (the default, and the bit-exact reference), ``"bfloat16"`` (weights, gradients and
optimizer state in bfloat16: half the memory; the usual setting on a GPU) or ``"bf16-mixed"``
(float32 master weights and optimizer state, forwards and backwards under bfloat16 autocast).
In pure bfloat16 an update smaller than half a unit in the last place of a weight (about 0.2%
of the weight's size) is rounded away; Adam at lr 1e-5 on weights of size 0.02 leaves most
entries untouched. Use ``"bf16-mixed"`` when small updates matter (the small-learning-rate
regime of the quantization attack). Zeroth-order probes run under ``torch.no_grad`` (no autograd
graph) and restore the weights bit for bit in any dtype (``exact_restore``); in ``"bf16-mixed"``
the perturbation itself is made in the float32 master weights. The reference model is a copy
of the model on the same device and in the same dtype; its per-batch constants are computed
under the same autocast as the model's forwards, so the NPO log-ratio starts at exactly 0.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from unlearn import runs
from unlearn.data.benchmarks import Benchmark, load_benchmark
from unlearn.data.format import collate, encode_rows, format_spec, pad_id_of, recorded_format
from unlearn.errors import BasinError, LossDiverged, require, require_number
from unlearn.loading import load_model
from unlearn.models import (MIXED, canonical_dtype, check_device_name, dtype_key, input_device, resolve_device,
                            resolve_dtype)
from unlearn.objectives import OBJECTIVES, make_objective
from unlearn.optim import OPTIMIZERS, make_optimizer
from unlearn.optim.aliases import build_plan
from unlearn.parallel import DataParallel, check_data_parallel, data_parallel_step
from unlearn.records import read_records, write_records
from unlearn.registry import from_fields, lookup
from unlearn.runs import OBJECT_MODEL
from unlearn.scoring import answer_stats
from unlearn.sources import check_model_source

SCHEDULES = ("constant", "linear", "cosine")
# dtypes the loop trains in; float16 would need loss scaling, which the loop does not do
TRAIN_DTYPES = ("float32", "bfloat16") + tuple(MIXED)
# attention kernels transformers knows (None: the model's default, or eager when the optimizer needs it)
ATTENTION = (None, "eager", "sdpa", "flash_attention_2", "flex_attention")


@dataclass
class UnlearnConfig:
    """Everything that determines an unlearning run (saved as the run's ``config.json``)."""

    model: str = "world:tiny"               # name or folder of the model to unlearn
    benchmark: str = "world:forget10"
    benchmark_args: dict = field(default_factory=dict)  # loader options, e.g. {"n_people": 10} for world:
    objective: str = "npo"
    objective_args: dict = field(default_factory=dict)
    optimizer: str = "adam"
    optimizer_args: dict = field(default_factory=dict)
    lr: float = 1e-4
    steps: int = 200                        # total optimizer steps (or set epochs)
    epochs: float | None = None             # if set: steps = ceil(epochs * |forget| / batch_size)
    batch_size: int = 8                     # forget examples per step (retain: the same number)
    grad_accum: int = 1                     # micro-batches per step
    schedule: str = "constant"
    warmup_steps: int = 0
    eval_every: int = 50
    eval_max_rows: int = 200                # cap on retain rows scored at each evaluation
    save_every: int = 50
    seed: int = 0
    attn_implementation: str | None = None  # None: eager when the optimizer needs it (sophia), else the default
    device: str = "auto"                    # auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps, auto-map
    dtype: str = "float32"                  # float32, bfloat16 (recommended on a GPU), bf16-mixed
    # how questions and answers are laid out: a preset (plain, chat, llama2-chat, llama3-instruct,
    # phi, ...), a YAML file or a dict of fields (unlearn.data.format); None: the format the model
    # folder recorded (a run or a world build --base model), else plain
    prompt_format: str | dict | None = None
    # matched forgetting per run: stop at the first evaluation (every eval_every steps) whose forget
    # answer probability is at or below this level; steps is then a budget (None: run every step)
    stop_at: float | None = None
    # the forget rows (indices) whose mean answer probability the stop is checked on (None: all),
    # e.g. the rows a relearning attack will not see, when its claims are judged on those
    stop_rows: list[int] | None = None

    def __post_init__(self):
        """Types, ranges and names of every field (the options' contents: :func:`check_unlearn`)."""
        if self.prompt_format is not None:
            self.prompt_format = format_spec(self.prompt_format)
        for name in ("objective", "optimizer", "schedule", "device", "dtype"):
            require(isinstance(getattr(self, name), str), f"{name} must be a string, got {getattr(self, name)!r}")
        require(isinstance(self.model, (str, Path)), f"model must be a name or folder, got {self.model!r} "
                "(pass a model object to unlearn(model=...), not in the config)")
        require(isinstance(self.benchmark, (str, Benchmark)), f"benchmark must be a name such as world:forget10 "
                f"or a Benchmark, got {self.benchmark!r}")
        for name in ("benchmark_args", "objective_args", "optimizer_args"):
            require(isinstance(getattr(self, name), dict),
                    f"{name} must be a mapping of options, got {getattr(self, name)!r}")
        require_number("lr", self.lr, 0, low_open=True)
        require_number("steps", self.steps, 1, integer=True)
        if self.epochs is not None:
            require_number("epochs", self.epochs, 0, low_open=True)
        require_number("batch_size", self.batch_size, 1, integer=True)
        require_number("grad_accum", self.grad_accum, 1, integer=True)
        require(self.batch_size % self.grad_accum == 0,
                f"grad_accum ({self.grad_accum}) must divide batch_size ({self.batch_size})")
        require(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "seed"):
            require_number(name, getattr(self, name), 0, integer=True)
        require_number("eval_max_rows", self.eval_max_rows, 1, integer=True)
        if self.stop_at is not None:
            require_number("stop_at", self.stop_at, 0, 1)
            require(self.eval_every > 0, "stop_at is checked at the evaluations, and eval_every is 0; "
                    "set eval_every (e.g. 2) or drop stop_at")
        if self.stop_rows is not None:
            require(self.stop_at is not None, "stop_rows says where stop_at is checked, and stop_at is not set; "
                    "set stop_at or drop stop_rows")
            require(isinstance(self.stop_rows, (list, tuple)) and self.stop_rows
                    and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.stop_rows),
                    f"stop_rows must be a non-empty list of forget row indices, got {self.stop_rows!r}")
            self.stop_rows = sorted(set(self.stop_rows))
        require(self.attn_implementation in ATTENTION, f"attn_implementation must be one of "
                f"{', '.join(map(str, ATTENTION))}, got {self.attn_implementation!r}")
        self.device = check_device_name(self.device)
        if dtype_key(self.dtype) == "float16":
            raise BasinError("dtype float16 is not supported for training (it needs loss scaling, which "
                             "basin's loop does not do); use bfloat16 or bf16-mixed")
        self.dtype = canonical_dtype(self.dtype, TRAIN_DTYPES)
        lookup(OBJECTIVES, self.objective, "objective")          # a misspelt name fails at once
        lookup(OPTIMIZERS, self.optimizer, "optimizer")

    @classmethod
    def from_dict(cls, data: dict) -> "UnlearnConfig":
        require(isinstance(data, dict), f"an unlearn config must be a mapping of fields, got {type(data).__name__}")
        return from_fields(cls, data, "config")


@dataclass
class UnlearnResult:
    model: torch.nn.Module
    tokenizer: object
    records: list[dict]
    out: Path | None


# ----------------------------------------------------------------------------- pieces

def lr_multiplier(step: int, config: UnlearnConfig, total: int) -> float:
    """Warm-up (linear) then constant, linear decay to 0, or cosine decay to 0."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return {"constant": 1.0, "linear": 1.0 - progress,
            "cosine": 0.5 * (1 + math.cos(math.pi * progress))}[config.schedule]


def batch_indices(step: int, batch_size: int, n: int, seed: int, stream: int) -> list[int]:
    """Indices of step ``step``'s batch: positions [step*B, (step+1)*B) of an endless sequence of
    seeded permutations of range(n), one per epoch. Stateless, so resuming needs no sampler state."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(pos, n)
        perm = _permutation(n, seed, stream, epoch)
        out.append(perm[offset])
    return out


_PERMS: dict = {}


def _permutation(n: int, seed: int, stream: int, epoch: int) -> list[int]:
    key = (n, seed, stream, epoch)
    if key not in _PERMS:
        if len(_PERMS) > 256:
            _PERMS.clear()
        g = torch.Generator().manual_seed(seed * 1_000_003 + stream * 10_007 + epoch)
        _PERMS[key] = torch.randperm(n, generator=g).tolist()
    return _PERMS[key]


def step_batches(step: int, config: UnlearnConfig, forget_ex, retain_ex, owned, pad: int,
                 device: torch.device) -> dict[int, dict]:
    """Step ``step``'s micro-batches ``owned`` (of ``grad_accum``), each a forget and a retain half
    of ``batch_size / grad_accum`` rows, collated and on ``device``."""
    micro = config.batch_size // config.grad_accum
    forget_idx = batch_indices(step, config.batch_size, len(forget_ex), config.seed, 0)
    retain_idx = batch_indices(step, config.batch_size, len(retain_ex), config.seed, 1)

    def part(examples, idx, m: int) -> dict:
        return _to(collate([examples[i] for i in idx[m * micro:(m + 1) * micro]], pad), device)

    return {m: {"forget": part(forget_ex, forget_idx, m), "retain": part(retain_ex, retain_idx, m)} for m in owned}


def total_steps(config: UnlearnConfig, n_forget: int) -> int:
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * n_forget / config.batch_size))
    return config.steps


def freeze_all_but(model, names: list[str] | None) -> None:
    """Train only ``names`` (all parameters when None)."""
    keep = None if names is None else set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(keep is None or name in keep)


# ----------------------------------------------------------------------------- evaluation

def evaluate_progress(model, tokenizer, forget_ex, retain_ex, step: int, base: dict,
                      stop_rows: list[int] | None = None) -> list[dict]:
    """Forget / retain answer probability and exact match as records; with ``stop_rows``, also the
    forget answer probability on those rows alone (split ``forget_stop``, from the same scores)."""
    out = []

    def record(metric, split, value):
        out.append({**base, "attack": "training", "setting": f"step={step}", "x": step,
                    "step": step, "metric": metric, "split": split, "value": float(value)})

    for split, examples in (("forget", forget_ex), ("retain", retain_ex)):
        stats = answer_stats(model, examples, pad_id_of(tokenizer))
        for metric, value in (("prob", stats.p_norm.mean()), ("exact_match", stats.exact.mean()),
                              ("nll", stats.mean_nll.mean())):
            record(metric, split, value)
        if split == "forget" and stop_rows is not None:
            record("prob", "forget_stop", stats.p_norm[list(stop_rows)].mean())
    return out


def reached(evaluation: list[dict], stop_at: float | None) -> bool:
    """Whether an evaluation's forget answer probability (on the ``stop_rows`` when they were given:
    split ``forget_stop``) is at or below ``stop_at`` (the run's matched-forgetting stop; see
    :class:`UnlearnConfig`)."""
    if stop_at is None:
        return False
    probs = {r["split"]: r["value"] for r in evaluation if r["metric"] == "prob"}
    return probs.get("forget_stop", probs["forget"]) <= stop_at


def step_diagnostics(optimizer, step: int, base: dict) -> list[dict]:
    """The optimizer's numbers for the step just taken (``update_rms``; Sophia's
    ``sophia_clip_fraction``; see :class:`unlearn.optim.BasinOptimizer`) as records, split
    ``optimizer``, with the step's ``phase`` ("fo", "zo", ... for the hybrid)."""
    phase = getattr(optimizer, "phase", None)
    return [{**base, "attack": "training", "setting": f"step={step}", "x": step, "step": step,
             "metric": metric, "split": "optimizer", "value": float(value), "phase": phase}
            for metric, value in getattr(optimizer, "diagnostics", {}).items()]


# ----------------------------------------------------------------------------- checks

@dataclass
class Checked:
    """What :func:`check_unlearn` built while checking: the objective and the benchmark."""

    objective: object
    benchmark: object


def resolve_config(config: UnlearnConfig | dict | None, model=None, out=None, **overrides) -> UnlearnConfig:
    """The run's config: a dict or None made a :class:`UnlearnConfig`, ``overrides`` applied, and
    ``model`` recorded as what was unlearned (its name, or that it was an object)."""
    if isinstance(config, dict):
        config = UnlearnConfig.from_dict(config)
    require(config is None or isinstance(config, UnlearnConfig),
            f"config must be an UnlearnConfig or a dict of its fields, got {type(config).__name__}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(UnlearnConfig)}
    require(not unknown, f"unlearn() got unknown config field(s) {', '.join(sorted(unknown))}")
    config = dataclasses.replace(config or UnlearnConfig(), **overrides)
    if model is not None:  # the run records what it unlearned, not the config's default name
        config = dataclasses.replace(config, model=str(model) if isinstance(model, (str, Path)) else OBJECT_MODEL)
    elif out is not None and runs.saved_model(Path(out)) == OBJECT_MODEL and runs.is_finished(Path(out)):
        config = dataclasses.replace(config, model=OBJECT_MODEL)  # a finished run from an object: reload it
    if config.prompt_format is None:  # the format the model was trained in, when its folder says
        config = dataclasses.replace(config, prompt_format=format_spec(recorded_format(
            model if model is not None else config.model)))
    return config


def check_unlearn(config: UnlearnConfig, model=None, out=None) -> Checked:
    """Refuse bad input before anything is loaded or written: the run folder (writable, or a run
    of the same config), the objective's options, the benchmark, the optimizer's options and the
    model's name or folder. Raises :class:`BasinError`; builds the objective and the benchmark
    (cheap: no model) and returns them."""
    if out is not None:
        runs.check_run_folder(Path(out), config)
    objective = make_objective(config.objective, **config.objective_args)
    bench = load_benchmark(config.benchmark, **config.benchmark_args)
    require(bench.forget and bench.retain, f"benchmark {config.benchmark} has an empty forget or retain set")
    build_plan(config.optimizer, config.optimizer_args, total_steps(config, len(bench.forget)))
    if config.stop_rows is not None:
        require(config.stop_rows[-1] < len(bench.forget), f"stop_rows names forget row {config.stop_rows[-1]}, "
                f"and {config.benchmark} has {len(bench.forget)} forget rows (0 to {len(bench.forget) - 1})")
    if model is None or isinstance(model, (str, Path)):
        check_model_source(model if model is not None else config.model)
    return Checked(objective, bench)


# ----------------------------------------------------------------------------- the loop

def unlearn(config: UnlearnConfig | dict | None = None, model=None, tokenizer=None, out=None,
            progress: bool = True, **overrides) -> UnlearnResult:
    """Unlearn ``config.benchmark``'s forget set from a model; see the module docstring.

    ``model`` may be a model object (with ``tokenizer``) or a name/folder; it defaults to
    ``config.model``. ``overrides`` set config fields (``unlearn(objective="npo", steps=50)``).
    With ``out`` the run is written to that folder and resumed from its checkpoint if present.
    A model object passed in is updated in place (use ``copy.deepcopy`` to keep the original).
    Bad input is refused (:func:`check_unlearn`) before anything is loaded or written.
    """
    config = resolve_config(config, model, out, **overrides)
    start = time.time()
    dp = DataParallel(cpu=config.device == "cpu" or not torch.cuda.is_available()) \
        if DataParallel.launched() else None
    device = str(dp.device) if dp else resolve_device(config.device)  # a missing GPU fails before anything is written
    weight_dtype, autocast_dtype = resolve_dtype(config.dtype, TRAIN_DTYPES)
    out = Path(out) if out is not None else None
    if out is not None and runs.is_finished(out):
        runs.check_run_folder(out, config)
        loaded, tok = load_model(str(out / "model"), device=device, dtype=weight_dtype)
        return UnlearnResult(loaded, tok, read_records(out / "records.jsonl"), out)
    checked = check_unlearn(config, model, out)
    objective, bench = checked.objective, checked.benchmark

    attn = config.attn_implementation or ("eager" if OPTIMIZERS[config.optimizer].needs_eager_attention else None)
    model, tokenizer = load_model(model if model is not None else config.model, tokenizer,
                                  attn_implementation=attn, device=device, dtype=weight_dtype)
    if attn and getattr(model.config, "_attn_implementation", attn) != attn:
        model.set_attn_implementation(attn)
    forget_ex = encode_rows(tokenizer, bench.forget, fmt=config.prompt_format)
    retain_ex = encode_rows(tokenizer, bench.retain, fmt=config.prompt_format)
    eval_retain = retain_ex[: config.eval_max_rows]
    pad = pad_id_of(tokenizer)
    steps = total_steps(config, len(forget_ex))

    where = input_device(model)                        # batches go where the first layer is
    amp = _autocast(where, autocast_dtype)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if objective.needs_reference else None
    freeze_all_but(model, objective.trainable(model) if hasattr(objective, "trainable") else None)
    optimizer = make_optimizer(config.optimizer, model, lr=config.lr, total_steps=steps, seed=config.seed,
                               **config.optimizer_args)
    if dp is not None:
        check_data_parallel(dp, config.grad_accum, optimizer)
        require(config.stop_at is None, "stop_at is decided by the first process's evaluation, which the "
                "other processes of a data-parallel launch do not see; run it in one process")
    main = dp is None or dp.main                       # only the first process writes and evaluates
    if out is not None:                                # every check passed: the first write
        runs.create_run_folder(out, config)

    base = {"model": out.name if out is not None else config.model, "seed": config.seed,
            "optimizer": config.optimizer, "objective": config.objective, "role": "unlearned"}
    records, first = [], 0
    if out is not None and runs.has_checkpoint(out):
        first, n_records = runs.load_checkpoint(out, model, optimizer)
        records = read_records(out / "records.jsonl")[:n_records]
        write_records(out / "records.jsonl", records)
    elif out is not None and main:
        (out / "records.jsonl").unlink(missing_ok=True)
    if first == 0 and config.eval_every and main:
        records += runs.log_records(out, evaluate_progress(model, tokenizer, forget_ex, eval_retain, 0, base,
                                                           config.stop_rows))

    model.train()
    last_good = done = first
    bar = tqdm(range(first, steps), desc=f"unlearn {config.objective}/{config.optimizer}",
               disable=not (progress and main), initial=first, total=steps)
    owned = dp.mine(config.grad_accum) if dp else range(config.grad_accum)  # this process's micro-batches
    for step in bar:
        for group in optimizer.param_groups:  # the schedule is a function of the step alone
            group["lr"] = config.lr * lr_multiplier(step, config, steps)
        micro_batches = step_batches(step, config, forget_ex, retain_ex, owned, pad, where)
        with amp():
            preps = {m: objective.prepare(reference, mb) for m, mb in micro_batches.items()}

        def closure(i: int):
            with amp():
                terms = objective(model, micro_batches[i], preps[i])
            return {k: v / config.grad_accum for k, v in terms.items()}

        if dp is None:
            loss = optimizer.step(closure, n_micro=config.grad_accum)
        else:
            loss = data_parallel_step(dp, optimizer, closure, config.grad_accum)
        if not math.isfinite(loss):
            kept = f"; the last good checkpoint (step {last_good}) is kept in {out / runs.CKPT}" \
                if out is not None and last_good else ""
            raise LossDiverged(f"the loss became {loss} at step {step + 1}{kept}; "
                             "lower the learning rate (--lr) or check the objective's options")
        bar.set_postfix(loss=f"{loss:.4f}", phase=getattr(optimizer, "phase", ""))
        done = step + 1
        if main:
            records += runs.log_records(out, step_diagnostics(optimizer, done, base))
        if config.eval_every and (done % config.eval_every == 0 or done == steps) and main:
            evaluation = evaluate_progress(model, tokenizer, forget_ex, eval_retain, done, base, config.stop_rows)
            records += runs.log_records(out, evaluation)
            model.train()
            if reached(evaluation, config.stop_at):
                break
        if out is not None and config.save_every and done % config.save_every == 0 and done < steps:
            if main:
                runs.save_checkpoint(out, model, optimizer, done, len(records))
            last_good = done
    model.eval()
    freeze_all_but(model, None)
    if out is not None and main:
        runs.finish_run(out, model, tokenizer, config, start, device, steps_taken=done)
    if dp is not None:
        dp.barrier()                                   # the run folder is complete for every process
    return UnlearnResult(model, tokenizer, records, out)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated batch on ``device`` (the same tensors when they are already there)."""
    return {k: v.to(device) for k, v in batch.items()}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """A context factory: ``torch.autocast`` in ``dtype`` on the device's type, or nothing."""
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
