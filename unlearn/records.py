"""Result records: one JSON object per measured number, appended to ``records.jsonl``.

Long form, as lm-eval and open-unlearning report results, so that a report can build every
table and figure from records alone. Required keys (see :data:`REQUIRED`):

- ``model``   the model's display name (run name, ``world:tiny``, a folder name)
- ``attack``  ``none`` for the clean model, else the attack's name (``relearn``, ``quantize``, ...)
- ``setting`` the attack's setting as a string (``steps=20``, ``rtn-4bit-g128``, ``alpha=0.3``)
- ``metric``  a metric name (``prob``, ``exact_match``, ``truth_ratio``, ``forget_quality``, ...)
- ``value``   a float
- ``split``   which rows were scored (``forget``, ``retain``, ``forget_unseen``, ``holdout``, ...)
- ``seed``    the seed of the run that produced the model (or of the attack)

Optional keys that reports understand: ``role`` (``unlearned`` / ``original`` / ``retain``:
ceiling and floor references), ``optimizer``, ``objective``, ``run``, ``step``, ``attack_seed``,
``x`` (the numeric axis of a setting: steps, bits, alpha, scale), ``lr`` and ``recipe`` (the
unlearning run's settings, :func:`recipe_of`: runs with different recipes are never pooled).

A setting that ends in :data:`CONTROL_SUFFIX` (``rtn-4bit-snapback``) is a *control*, not an
attack: the original's attacked weights plus the unlearning update. Readers never count it as an
attack setting (:func:`is_control`).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from pathlib import Path
from typing import Iterable, Mapping

from unlearn.cache import atomic_file

REQUIRED = ("model", "attack", "setting", "metric", "value", "split", "seed")
CONTROL_SUFFIX = "-snapback"
# config fields that do not change what a run computes (the seed is the replicate, not the recipe)
RECIPE_IGNORED = ("seed", "device", "eval_every", "eval_max_rows", "save_every", "attn_implementation",
                  "out", "synthetic", "kind", "role")


def recipe_of(config: Mapping) -> str:
    """The comparison unit of an unlearning run's config: ``lr=<lr> steps=<steps> cfg=<hash>``.

    ``cfg`` is the first 8 hex digits of the SHA-1 of the config as canonical JSON (sorted keys)
    without the fields of :data:`RECIPE_IGNORED`, so it covers the optimizer's and the
    objective's arguments, the step count, the batch size, the schedule, the model and the
    benchmark. ``""`` when the config has no learning rate (not an unlearning run).
    """
    opt = config.get("optimizer")
    lr = config.get("lr", opt.get("lr") if isinstance(opt, Mapping) else None)
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool):
        return ""
    kept = {k: v for k, v in config.items() if k not in RECIPE_IGNORED}
    digest = hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]
    steps = config.get("steps")
    return f"lr={lr:g}" + (f" steps={steps}" if steps is not None else "") + f" cfg={digest}"


def is_control(setting) -> bool:
    """Whether a setting is a snap-back control (``rtn-4bit-snapback``), not an attack."""
    return isinstance(setting, str) and setting.endswith(CONTROL_SUFFIX)


def check_record(record: dict) -> dict:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"record {record!r} lacks {', '.join(missing)}; every record needs "
                         f"{', '.join(REQUIRED)}")
    value = record["value"]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"record value must be a number, got {value!r} in {record!r}")
    return record


def append_records(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Append records to a JSONL file in one write (each line complete; flushed and fsynced)."""
    lines = []
    for r in records:
        check_record(r)
        r = {**r, "value": float(r["value"]) if math.isfinite(float(r["value"])) else None}
        lines.append(json.dumps(r, sort_keys=True, default=str))
    if not lines:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return len(lines)


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Replace the JSONL file ``path`` by ``records``, atomically (:func:`append_records` into a
    temporary file, then a rename): a resumed run or calibration drops what came after its
    checkpoint without a moment where the file is torn."""
    with atomic_file(Path(path)) as tmp:
        return append_records(tmp, records)


def read_records(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file of records; a torn last line (an interrupted write) is skipped."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
