"""Run folders: their layout, the checks before one is written, checkpoints and the manifest.

A run folder holds::

    config.json      the UnlearnConfig (written when the run starts; a rerun must match it)
    records.jsonl    the training evaluations, appended as they happen
    checkpoint/      model.safetensors, optimizer.pt, trainer.json (step, records kept) while the
                     run is unfinished; swapped in atomically, removed when the run finishes
    model/           the unlearned Hugging Face checkpoint with its tokenizer (the run is finished
    manifest.json    once both exist: versions, device, wall time)

Nothing here runs a model. :func:`check_run_folder` only reads, so a command can refuse before it
writes; :func:`create_run_folder` is the first write of a run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import torch

from unlearn import __version__
from unlearn.cache import atomic_dir, check_writable, write_json_atomic
from unlearn.data.format import prompt_format
from unlearn.errors import BasinError
from unlearn.records import append_records

CKPT = "checkpoint"
OBJECT_MODEL = "(a model object)"   # config.model of a run started from an object, not a name
# config fields a resumed run may change (where it runs, not what it computes)
RESUME_NEUTRAL = ("device",)


# ----------------------------------------------------------------------------- the folder

def is_finished(out: Path) -> bool:
    """Whether ``out`` holds a finished run (its model and manifest)."""
    return (out / "model" / "config.json").exists() and (out / "manifest.json").exists()


def has_checkpoint(out: Path) -> bool:
    return (out / CKPT / "trainer.json").exists()


def saved_model(out: Path) -> str | None:
    """``config.model`` of the run saved in ``out`` (None when there is none)."""
    try:
        return json.loads((out / "config.json").read_text()).get("model")
    except (OSError, ValueError):
        return None


def check_run_folder(out: Path, config) -> None:
    """Refuse ``out`` unless a run of ``config`` can be written there: a new folder in a writable
    place, or a folder holding a run of the same config (to resume or reuse). Writes nothing."""
    if out.exists() and not out.is_dir():
        raise BasinError(f"--out {out} is a file, not a folder; pass a folder for the run")
    check_writable(out, "run folder", "pass a writable --out")
    saved = out / "config.json"
    if not saved.exists():
        return
    try:
        previous = json.loads(saved.read_text())
    except (OSError, ValueError):
        raise BasinError(f"{out}/config.json cannot be read as JSON; pass another --out "
                         "(or delete the folder to start over)") from None
    current = json.loads(json.dumps(asdict(config)))
    previous.setdefault("dtype", "float32")  # folders written before these fields existed
    previous.setdefault("benchmark_args", {})
    previous.setdefault("prompt_format", "plain")
    previous.setdefault("stop_at", None)
    previous.setdefault("stop_rows", None)
    if current.get("prompt_format") is None:  # not given: the model's recorded format, resolved when it runs
        previous.pop("prompt_format", None)
        current.pop("prompt_format", None)
    for key in RESUME_NEUTRAL:
        previous.pop(key, None)
        current.pop(key, None)
    if previous != current:
        started = " (it was started from a model object: pass the same object to resume it)" \
            if previous.get("model") == OBJECT_MODEL and current.get("model") != OBJECT_MODEL else ""
        raise BasinError(f"{out} holds a run with a different config{started}; pass another --out "
                         "(or delete the folder to start over)")


def create_run_folder(out: Path, config) -> None:
    """The first write of a run: the folder and its config.json (kept if it is already there)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BasinError(f"cannot create the run folder {out} ({err.strerror}); pass a writable --out") from None
    if not (out / "config.json").exists():
        write_json_atomic(out / "config.json", asdict(config))


# ----------------------------------------------------------------------------- records

def log_records(out: Path | None, records: list[dict]) -> list[dict]:
    """Append ``records`` to the run's records.jsonl (when there is a run folder); return them."""
    if out is not None:
        append_records(out / "records.jsonl", records)
    return records


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(out: Path, model, optimizer, step: int, n_records: int) -> None:
    """Weights (safetensors), optimizer state and the step, swapped in atomically."""
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
    """Restore weights and optimizer state; return (step, number of records kept)."""
    from safetensors.torch import load_model as load_weights

    folder = out / CKPT
    load_weights(model, str(folder / "model.safetensors"), strict=True)
    # on the CPU first: the optimizer moves each state tensor to its parameter's device and dtype,
    # so a run saved on a GPU resumes on another device
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"))
    info = json.loads((folder / "trainer.json").read_text())
    return info["step"], info["n_records"]


# ----------------------------------------------------------------------------- the end of a run

def environment(device: str = "cpu") -> dict:
    """What decides a computation's bits besides its inputs: versions, platform, the CPU kernels
    torch dispatches to (``cpu_capability``, e.g. AVX2 or AVX512), the thread count, the device
    and the git commit. Two runs agree bit for bit only where these agree: a matrix product sums in
    a different order on another thread count or instruction set, and training amplifies the
    difference (measured on the tiny model: one thread and two give different weights)."""
    import transformers  # deferred: transformers is slow to import and only the record needs it here

    gpu = {}
    if device != "cpu" and torch.cuda.is_available():
        gpu = {"gpu": torch.cuda.get_device_name(), "gpu_count": torch.cuda.device_count(),
               "cuda": torch.version.cuda}
    return {"basin": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "device": device, **gpu, "git": git_hash()}


def manifest(start: float, config, device: str = "cpu") -> dict:
    """A run's :func:`environment`, dtype, prompt format and wall time."""
    return {**environment(device), "dtype": config.dtype,
            "prompt_format": prompt_format(config.prompt_format).as_dict(),
            "wall_seconds": round(time.time() - start, 2),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start))}


def git_hash() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def finish_run(out: Path, model, tokenizer, config, start: float, device: str = "cpu",
               steps_taken: int | None = None) -> None:
    """Save the unlearned model and the manifest (with the steps the run took, fewer than
    ``config.steps`` when ``stop_at`` ended it), drop the checkpoint."""
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    taken = {} if steps_taken is None else {"steps_taken": steps_taken}
    write_json_atomic(out / "manifest.json", {**manifest(start, config, device), **taken})
    shutil.rmtree(out / CKPT, ignore_errors=True)
