"""The unlearning loop: one explicit loop for every objective and every optimizer tier.

Each step draws a forget batch and a retain batch (a seeded, stateless order: the batch of step k
is a function of (seed, k) alone, so a resumed run sees the same data), lets the objective
prepare its per-batch constants once (reference log-likelihoods, frozen activations) outside any
closure, and hands the optimizer a forward-only closure over micro-batches. Backprop optimizers
call ``backward`` inside ``step``; zeroth-order ones only run forwards. Every ``eval_every``
steps the loop records forget / retain answer probability and exact match; every
``save_every`` steps it writes a checkpoint (weights as safetensors, optimizer state, step)
atomically, and a rerun of the same command resumes from it with bit-identical final weights.

A run folder holds ``config.json``, ``records.jsonl``, ``manifest.json`` and ``model/`` (a
standard Hugging Face checkpoint with its tokenizer).

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

Data parallel. Launched as several processes (``accelerate launch --multi_gpu --num_processes N``
or ``torchrun --nproc_per_node N``), the loop runs data parallel through accelerate: every
process draws the same step batch and takes the micro-batches i = rank, rank + N, ... of it
(``grad_accum`` must be a multiple of N). A first-order step sums the processes' gradients
(g = sum_i grad f_i, the single-process accumulation) before the update; a zeroth-order step sums
their probe losses, so every process sees the same f(p + mu z) - f(p - mu z) and, with z drawn
from the shared seed, makes the same update. The result equals the single-process run with the
same ``grad_accum`` (bit for bit with 2 processes on the CPU; tested). The first process writes
the run folder; evaluations run there. Sophia and SAM (closures inside the step) are not
supported data parallel.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from unlearn.cache import atomic_dir, write_json_atomic
from unlearn.data.benchmarks import load_benchmark
from unlearn.data.format import collate, encode_rows, format_spec, pad_id_of, prompt_format, recorded_format
from unlearn.errors import BasinError, LossDiverged, require
from unlearn.loading import load_model
from unlearn.models import (MIXED, canonical_dtype, check_device_name, dtype_key, input_device, resolve_device,
                            resolve_dtype)
from unlearn.objectives import make_objective
from unlearn.records import append_records, read_records
from unlearn.registry import lookup
from unlearn.scoring import answer_stats

SCHEDULES = ("constant", "linear", "cosine")
# dtypes the loop trains in; float16 would need loss scaling, which the loop does not do
TRAIN_DTYPES = ("float32", "bfloat16") + tuple(MIXED)
# config fields a resumed run may change (where it runs, not what it computes)
RESUME_NEUTRAL = ("device",)
OBJECT_MODEL = "(a model object)"   # config.model of a run started from an object, not a name


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
    attn_implementation: str | None = None  # "eager" is needed by sophia's double backward
    device: str = "auto"                    # auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps, auto-map
    dtype: str = "float32"                  # float32, bfloat16 (recommended on a GPU), bf16-mixed
    # how questions and answers are laid out: a preset (plain, chat, llama2-chat, llama3-instruct,
    # phi, ...), a YAML file or a dict of fields (unlearn.data.format); None: the format the model
    # folder recorded (a run or a world build --base model), else plain
    prompt_format: str | dict | None = None

    def __post_init__(self):
        if self.prompt_format is not None:
            self.prompt_format = format_spec(self.prompt_format)
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
                f"grad_accum ({self.grad_accum}) must be >= 1 and divide batch_size ({self.batch_size})")
        require(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        require(self.eval_every >= 0 and self.save_every >= 0, "eval_every and save_every must be >= 0")
        self.device = check_device_name(self.device)
        if dtype_key(self.dtype) == "float16":
            raise BasinError("dtype float16 is not supported for training (it needs loss scaling, which "
                             "basin's loop does not do); use bfloat16 or bf16-mixed")
        self.dtype = canonical_dtype(self.dtype, TRAIN_DTYPES)
        from unlearn.objectives import OBJECTIVES
        from unlearn.optim import OPTIMIZERS

        lookup(OBJECTIVES, self.objective, "objective")          # a misspelt name fails at once
        lookup(OPTIMIZERS, self.optimizer, "optimizer")

    @classmethod
    def from_dict(cls, data: dict) -> "UnlearnConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        require(not unknown, f"unknown config field(s) {', '.join(sorted(unknown))}; "
                f"known fields: {', '.join(sorted(names))}")
        return cls(**data)


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


def total_steps(config: UnlearnConfig, n_forget: int) -> int:
    if config.epochs is not None:
        require(config.epochs > 0, f"epochs must be > 0, got {config.epochs}")
        return max(1, math.ceil(config.epochs * n_forget / config.batch_size))
    return config.steps


def freeze_all_but(model, names: list[str] | None) -> None:
    """Train only ``names`` (all parameters when None)."""
    keep = None if names is None else set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(keep is None or name in keep)


def manifest(start: float, config: UnlearnConfig, device: str = "cpu") -> dict:
    import transformers

    from unlearn import __version__

    gpu = {}
    if device != "cpu" and torch.cuda.is_available():
        gpu = {"gpu": torch.cuda.get_device_name(), "gpu_count": torch.cuda.device_count(),
               "cuda": torch.version.cuda}
    return {"basin": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": device, "dtype": config.dtype, "prompt_format": prompt_format(config.prompt_format).as_dict(),
            **gpu, "threads": torch.get_num_threads(), "git": _git_hash(),
            "wall_seconds": round(time.time() - start, 2),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start))}


def _git_hash() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- data parallel

class DataParallel:
    """The processes of a data-parallel launch (accelerate sets them up): rank, size, device, and
    the two sums a step needs. See the module docstring."""

    def __init__(self, cpu: bool = False):
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=cpu)  # without cpu=True accelerate runs one CPU process alone
        self.rank, self.size = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        self.main = self.accelerator.is_main_process

    @staticmethod
    def launched() -> bool:
        """Whether this process is one of several (a launcher set WORLD_SIZE > 1)."""
        return int(os.environ.get("WORLD_SIZE", "1")) > 1

    def mine(self, n_micro: int) -> list[int]:
        return list(range(self.rank, n_micro, self.size))

    def sum_grads(self, params) -> None:
        """g <- sum over processes of g, for every parameter that has a gradient."""
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def sum_value(self, value: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


def data_parallel_step(dp: DataParallel, optimizer, closure, n_micro: int) -> float:
    """One optimizer step over this process's micro-batches, summed over the processes."""
    from unlearn.optim.estimators import Backprop, _backward_over, forward_losses

    mine = dp.mine(n_micro)
    estimator = optimizer.plan.phases[optimizer.next_phase].estimator
    if type(estimator) is Backprop:                      # g = sum_i grad f_i over every process
        optimizer.zero_grad(set_to_none=True)
        local = _backward_over(lambda k: closure(mine[k]), len(mine))
        dp.sum_grads(p for group in optimizer.param_groups for p in group["params"])
        optimizer.step(None)                             # the update from the summed .grad
        return dp.sum_value(local)
    # zeroth order: each probe's loss is the sum over processes; n_micro=1 carries it whole
    return optimizer.step(lambda _: dp.sum_value(forward_losses(lambda i: closure(mine[i]), len(mine))),
                          n_micro=1)


def check_data_parallel(dp: DataParallel, config: UnlearnConfig, optimizer) -> None:
    from unlearn.optim.estimators import Backprop

    require(config.grad_accum % dp.size == 0,
            f"with {dp.size} processes, grad_accum ({config.grad_accum}) must be a multiple of {dp.size}: "
            f"each process takes grad_accum / {dp.size} of a step's micro-batches (e.g. --grad-accum {dp.size})")
    for phase in optimizer.plan.phases.values():
        est = phase.estimator
        require(type(est) is Backprop or est.kind == "zo",
                f"optimizer {config.optimizer!r} ({type(est).__name__}) does not run data parallel: only "
                "backprop (first-order, compressed) and zeroth-order steps do; run it in one process")


# ----------------------------------------------------------------------------- evaluation

def evaluate_progress(model, tokenizer, forget_ex, retain_ex, step: int, base: dict) -> list[dict]:
    """Forget / retain answer probability and exact match as records."""
    out = []
    for split, examples in (("forget", forget_ex), ("retain", retain_ex)):
        stats = answer_stats(model, examples, pad_id_of(tokenizer))
        for metric, value in (("prob", stats.p_norm.mean()), ("exact_match", stats.exact.mean()),
                              ("nll", stats.mean_nll.mean())):
            out.append({**base, "attack": "training", "setting": f"step={step}", "x": step,
                        "step": step, "metric": metric, "split": split, "value": float(value)})
    return out


def step_diagnostics(optimizer, step: int, base: dict) -> list[dict]:
    """The optimizer's numbers for the step just taken (``update_rms``; Sophia's
    ``sophia_clip_fraction``; see :class:`unlearn.optim.BasinOptimizer`) as records, split
    ``optimizer``, with the step's ``phase`` ("fo", "zo", ... for the hybrid)."""
    phase = getattr(optimizer, "phase", None)
    return [{**base, "attack": "training", "setting": f"step={step}", "x": step, "step": step,
             "metric": metric, "split": "optimizer", "value": float(value), "phase": phase}
            for metric, value in getattr(optimizer, "diagnostics", {}).items()]


# ----------------------------------------------------------------------------- checkpoints

CKPT = "checkpoint"


def save_checkpoint(out: Path, model, optimizer, step: int, n_records: int) -> None:
    from safetensors.torch import save_model

    target = out / CKPT
    with atomic_dir(out / f"{CKPT}.new") as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        write_json_atomic(tmp / "trainer.json", {"step": step, "n_records": n_records})
    old = out / f"{CKPT}.old"
    if target.exists():
        os.replace(target, old)
    os.replace(out / f"{CKPT}.new", target)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, model, optimizer) -> tuple[int, int]:
    from safetensors.torch import load_model as load_weights

    folder = out / CKPT
    load_weights(model, str(folder / "model.safetensors"), strict=True)
    # on the CPU first: the optimizer moves each state tensor to its parameter's device and dtype,
    # so a run saved on a GPU resumes on another device
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"))
    info = json.loads((folder / "trainer.json").read_text())
    return info["step"], info["n_records"]


# ----------------------------------------------------------------------------- the loop

def unlearn(config: UnlearnConfig | dict | None = None, model=None, tokenizer=None, out=None,
            progress: bool = True, **overrides) -> UnlearnResult:
    """Unlearn ``config.benchmark``'s forget set from a model; see the module docstring.

    ``model`` may be a model object (with ``tokenizer``) or a name/folder; it defaults to
    ``config.model``. ``overrides`` set config fields (``unlearn(objective="npo", steps=50)``).
    With ``out`` the run is written to that folder and resumed from its checkpoint if present.
    A model object passed in is updated in place (use ``copy.deepcopy`` to keep the original).
    """
    from unlearn.optim import OPTIMIZERS, make_optimizer

    if isinstance(config, dict):
        config = UnlearnConfig.from_dict(config)
    config = dataclasses.replace(config or UnlearnConfig(), **overrides)
    if model is not None:  # the run records what it unlearned, not the config's default name
        config = dataclasses.replace(config, model=str(model) if isinstance(model, (str, Path)) else OBJECT_MODEL)
    elif out is not None and _saved_model(Path(out)) == OBJECT_MODEL and (Path(out) / "manifest.json").exists():
        config = dataclasses.replace(config, model=OBJECT_MODEL)  # a finished run from an object: reload it
    if config.prompt_format is None:  # the format the model was trained in, when its folder says
        config = dataclasses.replace(config, prompt_format=format_spec(recorded_format(
            model if model is not None else config.model)))
    start = time.time()
    dp = DataParallel(cpu=config.device == "cpu" or not torch.cuda.is_available()) \
        if DataParallel.launched() else None
    device = str(dp.device) if dp else resolve_device(config.device)  # a missing GPU fails before anything is written
    weight_dtype, autocast_dtype = resolve_dtype(config.dtype, TRAIN_DTYPES)
    out = Path(out) if out is not None else None
    if out is not None:
        _check_run_folder(out, config)
        if (out / "model" / "config.json").exists() and (out / "manifest.json").exists():
            loaded, tok = load_model(str(out / "model"), device=device, dtype=weight_dtype)
            return UnlearnResult(loaded, tok, read_records(out / "records.jsonl"), out)

    objective = make_objective(config.objective, **config.objective_args)  # bad names fail first
    lookup(OPTIMIZERS, config.optimizer, "optimizer")
    # Sophia's Hutchinson curvature needs a double backward, which SDPA attention lacks on CPU
    attn = config.attn_implementation or ("eager" if config.optimizer == "sophia" else None)
    model, tokenizer = load_model(model if model is not None else config.model, tokenizer,
                                  attn_implementation=attn, device=device, dtype=weight_dtype)
    if attn and getattr(model.config, "_attn_implementation", attn) != attn:
        model.set_attn_implementation(attn)
    bench = load_benchmark(config.benchmark, **config.benchmark_args)
    forget_ex = encode_rows(tokenizer, bench.forget, fmt=config.prompt_format)
    retain_ex = encode_rows(tokenizer, bench.retain, fmt=config.prompt_format)
    require(forget_ex and retain_ex, f"benchmark {config.benchmark} has an empty forget or retain set")
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
        check_data_parallel(dp, config, optimizer)
    main = dp is None or dp.main                       # only the first process writes and evaluates

    base = {"model": out.name if out is not None else config.model, "seed": config.seed,
            "optimizer": config.optimizer, "objective": config.objective, "role": "unlearned"}
    records, first = [], 0
    if out is not None and (out / CKPT / "trainer.json").exists():
        first, n_records = load_checkpoint(out, model, optimizer)
        records = read_records(out / "records.jsonl")[:n_records]
        _rewrite_records(out, records)
    elif out is not None and main:
        (out / "records.jsonl").unlink(missing_ok=True)
    if first == 0 and config.eval_every and main:
        records += _log(out, evaluate_progress(model, tokenizer, forget_ex, eval_retain, 0, base))

    micro = config.batch_size // config.grad_accum
    model.train()
    last_good = first
    bar = tqdm(range(first, steps), desc=f"unlearn {config.objective}/{config.optimizer}",
               disable=not (progress and main), initial=first, total=steps)
    owned = dp.mine(config.grad_accum) if dp else range(config.grad_accum)  # this process's micro-batches
    for step in bar:
        for group in optimizer.param_groups:  # the schedule is a function of the step alone
            group["lr"] = config.lr * lr_multiplier(step, config, steps)
        f_idx = batch_indices(step, config.batch_size, len(forget_ex), config.seed, 0)
        r_idx = batch_indices(step, config.batch_size, len(retain_ex), config.seed, 1)
        micro_batches = {m: {"forget": _to(collate([forget_ex[i] for i in f_idx[m * micro:(m + 1) * micro]], pad), where),
                             "retain": _to(collate([retain_ex[i] for i in r_idx[m * micro:(m + 1) * micro]], pad), where)}
                         for m in owned}
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
            where = f"; the last good checkpoint (step {last_good}) is kept in {out / CKPT}" \
                if out is not None and last_good else ""
            raise LossDiverged(f"the loss became {loss} at step {step + 1}{where}; "
                             "lower the learning rate (--lr) or check the objective's options")
        bar.set_postfix(loss=f"{loss:.4f}", phase=getattr(optimizer, "phase", ""))
        done = step + 1
        if main:
            records += _log(out, step_diagnostics(optimizer, done, base))
        if config.eval_every and (done % config.eval_every == 0 or done == steps) and main:
            records += _log(out, evaluate_progress(model, tokenizer, forget_ex, eval_retain, done, base))
            model.train()
        if out is not None and config.save_every and done % config.save_every == 0 and done < steps:
            if main:
                save_checkpoint(out, model, optimizer, done, len(records))
            last_good = done
    model.eval()
    freeze_all_but(model, None)
    if out is not None and main:
        _finish(out, model, tokenizer, config, start, device)
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


def _log(out: Path | None, records: list[dict]) -> list[dict]:
    if out is not None:
        append_records(out / "records.jsonl", records)
    return records


def _rewrite_records(out: Path, records: list[dict]) -> None:
    tmp = out / "records.jsonl.tmp"
    tmp.unlink(missing_ok=True)
    append_records(tmp, records)
    if not records:
        tmp.write_text("")
    os.replace(tmp, out / "records.jsonl")


def _saved_model(out: Path) -> str | None:
    try:
        return json.loads((out / "config.json").read_text()).get("model")
    except (OSError, ValueError):
        return None


def _check_run_folder(out: Path, config: UnlearnConfig) -> None:
    """Create the run folder, or check that an existing one belongs to the same config."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BasinError(f"cannot create the run folder {out} ({err.strerror}); pass a writable --out") from None
    saved = out / "config.json"
    if saved.exists():
        previous = json.loads(saved.read_text())
        current = json.loads(json.dumps(asdict(config)))
        previous.setdefault("dtype", "float32")  # folders written before these fields existed
        previous.setdefault("benchmark_args", {})
        previous.setdefault("prompt_format", "plain")
        for key in RESUME_NEUTRAL:
            previous.pop(key, None)
            current.pop(key, None)
        if previous != current:
            started = " (it was started from a model object: pass the same object to resume it)" \
                if previous.get("model") == OBJECT_MODEL and current.get("model") != OBJECT_MODEL else ""
            raise BasinError(f"{out} holds a run with a different config{started}; pass another --out "
                             "(or delete the folder to start over)")
    else:
        write_json_atomic(saved, asdict(config))


def _finish(out: Path, model, tokenizer, config: UnlearnConfig, start: float, device: str = "cpu") -> None:
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    write_json_atomic(out / "manifest.json", manifest(start, config, device))
    shutil.rmtree(out / CKPT, ignore_errors=True)
