"""Result records -> one tidy pandas DataFrame.

``analysis`` reads the long-form records of :mod:`unlearn.records` and nothing else. A *source* is
a run or audit folder (``records.jsonl`` beside ``config.json`` and ``manifest.json``), a
``records.jsonl`` file, a saved frame (``.parquet`` / ``.csv``), a list of record dicts, or a
DataFrame. :func:`load_records` validates every record, joins the run's ``config.json`` fields
(``optimizer``, ``objective``, ``seed``, ``lr``, ``role``) where a record lacks them, and returns one
row per record with the columns of :data:`COLUMNS`:

=============  ==========================================================================
``model``      the model's display name (str)
``attack``     ``none`` for the clean model, else the attack's name (str)
``setting``    the attack's setting (str; ``""`` for the clean model when none was written)
``metric``     metric name (str)
``value``      float; NaN where the record holds ``null`` (a non-finite measurement)
``split``      which rows were scored (str)
``seed``       seed of the run that produced the model (int)
``role``       ``unlearned`` (default), ``original`` (ceiling) or ``retain`` (gold floor)
``optimizer``  optimizer name (str, ``""`` when unknown: reference models have none)
``objective``  objective name (str, ``""`` when unknown)
``run``        the run's name: the record's ``run``, else the folder's name (str)
``step``       training step of the measurement (float, NaN when absent)
``attack_seed`` seed of the attack (float, NaN when absent)
``x``          numeric axis of the setting (float): the record's ``x``, else parsed from the
               setting (``steps=20`` -> 20, ``rtn-4bit-g128`` -> 4, ``alpha=0.3`` -> 0.3)
``y``          second plane coordinate for ``plane`` settings ``x=0.5,y=0.25`` (float)
``lr``         learning rate from the record or the config (float, NaN when unknown)
``recipe``     the unlearning run's settings, everything in its config that is not the seed or
               bookkeeping (:func:`unlearn.records.recipe_of`): ``lr=0.001 steps=60 cfg=1a2b3c4d``; an audit folder
               takes it from the config of the run it audited; records without a config get
               ``lr=<lr>`` (or ``""`` when no lr is known, and always for reference models). Runs
               with different recipes are different comparison units, never pooled.
``label``      display name of the series: the optimizer for unlearned models (the model name
               when no optimizer is known), ``original`` or ``retain-only`` for references
``source``     where the record came from (folder or file name; ``"<memory>"`` for dicts)
=============  ==========================================================================

Any other keys a record carries are kept as extra columns.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from analysis.names import learn, learn_tiers
from unlearn.cache import atomic_file, portable
from unlearn.errors import BasinError
from unlearn.records import REQUIRED, recipe_of

RECORDS_FILE = "records.jsonl"
CONFIG_FILE = "config.json"
ROLES = ("unlearned", "original", "retain")
TEXT_COLUMNS = ("model", "attack", "setting", "metric", "split", "role", "optimizer", "objective",
                "run", "label", "source", "recipe")
NUMERIC_COLUMNS = ("value", "step", "attack_seed", "x", "y", "lr")
COLUMNS = ("model", "attack", "setting", "metric", "value", "split", "seed", "role", "optimizer",
           "objective", "run", "step", "attack_seed", "x", "y", "lr", "recipe", "label", "source")
CONFIG_FIELDS = ("optimizer", "objective", "seed", "lr", "role", "recipe")



class RecordError(BasinError):
    """A malformed record: the message names the record, its source and the bad field.

    A subclass of :class:`unlearn.errors.BasinError` (itself a ``ValueError``), so ``basin report``
    turns it into one line and exit status 2.
    """


# ---------------------------------------------------------------------------------------------
# validation


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _short(record: Mapping, limit: int = 200) -> str:
    text = json.dumps(dict(record), sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_record(record, where: str = "record") -> dict:
    """Check one record against the schema and return a normalised copy.

    Raises :class:`RecordError` (a ``ValueError``) naming ``where`` (e.g. ``runs/a/records.jsonl
    line 3``), the field and the record. Rules: every key of ``unlearn.records.REQUIRED`` present;
    ``model``, ``attack``, ``metric``, ``split`` non-empty strings; ``setting`` a string or a number
    (kept as a string); ``value`` a number or ``null`` (NaN: records store non-finite values as
    ``null``); ``seed`` an integer; ``role`` one of :data:`ROLES`; ``x``, ``step``, ``attack_seed``,
    ``lr`` numbers or ``null``.
    """
    if not isinstance(record, Mapping):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(record).__name__} "
                          f"{str(record)[:80]!r}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise RecordError(f"{where}: missing field{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(m) for m in missing)} (every record needs "
                          f"{', '.join(REQUIRED)}): {_short(record)}")
    out = dict(record)

    def bad(field, expected):
        return RecordError(f"{where}: field {field!r} must be {expected}, got "
                           f"{record.get(field)!r}: {_short(record)}")

    for field in ("model", "attack", "metric", "split"):
        if not isinstance(record[field], str) or not record[field].strip():
            raise bad(field, "a non-empty string")
    setting = record["setting"]
    if setting is None:
        out["setting"] = ""
    elif isinstance(setting, str):
        pass
    elif _is_number(setting):
        out["setting"] = str(setting)
    else:
        raise bad("setting", "a string")
    value = record["value"]
    if value is None:
        out["value"] = math.nan
    elif _is_number(value):
        out["value"] = float(value)
    else:
        raise bad("value", "a number (or null for a non-finite measurement)")
    seed = record["seed"]
    if not _is_number(seed) or not float(seed).is_integer():
        raise bad("seed", "an integer")
    out["seed"] = int(seed)
    role = record.get("role")
    if role is not None and role not in ROLES:
        raise bad("role", "one of " + ", ".join(ROLES))
    for field in ("x", "step", "attack_seed", "lr"):
        v = record.get(field)
        if v is not None and not _is_number(v):
            raise bad(field, "a number or null")
    for field in ("optimizer", "objective", "run", "recipe"):
        v = record.get(field)
        if v is not None and not isinstance(v, str):
            raise bad(field, "a string")
    return out


# ---------------------------------------------------------------------------------------------
# settings -> numeric axes

_KEY_VALUE = re.compile(r"^\s*[A-Za-z_][\w.-]*\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_BITS = re.compile(r"(\d+)\s*-?bit", re.IGNORECASE)
_TYPE_BITS = re.compile(r"^(?:nf|fp|int|bf|float)(\d+)\b", re.IGNORECASE)
_PLANE = re.compile(r"x\s*=\s*([-+\d.eE]+)\s*[,;]\s*y\s*=\s*([-+\d.eE]+)")


def parse_setting_x(setting: str) -> float:
    """The numeric axis of a setting string, or NaN when it has none.

    ``"steps=20"`` -> 20.0, ``"alpha=0.3"`` -> 0.3, ``"rtn-4bit-g128"`` -> 4.0 (bits), ``"0.5"``
    -> 0.5, ``"x=0.5,y=0.25"`` -> 0.5 (see :func:`parse_plane`), ``"nf4"`` / ``"int8"`` /
    ``"bf16"`` -> 4 / 8 / 16 (bits of the number type), ``"gptq"`` -> NaN.
    """
    if not isinstance(setting, str) or not setting.strip():
        return math.nan
    s = setting.strip()
    plane = _PLANE.search(s)
    if plane:
        return float(plane.group(1))
    m = _KEY_VALUE.match(s)
    if m:
        return float(m.group(1))
    try:
        return float(s)
    except ValueError:
        pass
    m = _BITS.search(s) or _TYPE_BITS.match(s)
    if m:
        return float(m.group(1))
    return math.nan


def parse_plane(setting: str) -> tuple[float, float]:
    """``"x=0.5,y=0.25"`` -> (0.5, 0.25); (NaN, NaN) when the setting is not a plane point."""
    m = _PLANE.search(setting or "")
    if not m:
        return math.nan, math.nan
    try:
        return float(m.group(1)), float(m.group(2))
    except ValueError:
        return math.nan, math.nan


# ---------------------------------------------------------------------------------------------
# config


def config_fields(config: Mapping) -> dict:
    """The fields of a run's ``config.json`` that become columns (:data:`CONFIG_FIELDS`).

    Looks at the top level first; an ``optimizer`` or ``objective`` given as an object contributes
    its ``name`` (and the optimizer's ``lr`` when the top level has none).
    """
    out: dict = {}
    for key in ("optimizer", "objective"):
        v = config.get(key)
        if isinstance(v, Mapping):
            name = v.get("name") or v.get("kind")
            if isinstance(name, str):
                out[key] = name
            if key == "optimizer" and "lr" in v and "lr" not in config:
                out["lr"] = v["lr"]
        elif isinstance(v, str):
            out[key] = v
    for key in ("seed", "lr", "role"):
        if key in config and config[key] is not None and key not in out:
            out[key] = config[key]
    recipe = recipe_of(config)
    if recipe:
        out["recipe"] = recipe
    return out


def _audited_run(folder: Path, model) -> Path | None:
    """The ``basin unlearn`` run folder an audit folder's config names (its ``model``), looked up
    as written, then relative to the audit folder's ancestors (a report read from another
    working directory, or a copied tree: ``runs/adam-s0`` beside ``audits/adam-s0``)."""
    if not isinstance(model, str) or not model:
        return None
    path = Path(model)
    ancestors = list(folder.resolve().parents)
    candidates = [path] if path.is_absolute() else [path] + [a / path for a in ancestors]
    candidates += [a / Path(*path.parts[-k:]) for k in range(len(path.parts) - 1, 0, -1) for a in ancestors]
    for c in candidates:
        if (c / CONFIG_FILE).is_file() and (c / "model").exists() and c.resolve() != folder.resolve():
            return c
    return None


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: not a readable JSON config ({err})") from None
    if not isinstance(config, Mapping):
        raise RecordError(f"{path}: the config must be a JSON object")
    return dict(config)


# ---------------------------------------------------------------------------------------------
# reading sources


def records_path(source: str | os.PathLike) -> Path:
    """The ``records.jsonl`` of a run folder (or the file itself); a clear error when absent."""
    path = Path(source)
    if not path.exists():
        raise BasinError(f"{path} does not exist; pass run or audit folders that hold {RECORDS_FILE}")
    if path.is_dir():
        path = path / RECORDS_FILE
        if not path.exists():
            raise BasinError(f"{path.parent} holds no {RECORDS_FILE}; pass a run or audit folder "
                             f"written by basin (it has config.json, {RECORDS_FILE}, manifest.json)")
    return path


def _read_jsonl(path: Path) -> list[tuple[int, object]]:
    """(line number, parsed object) for each non-empty line; a torn *last* line is skipped (an
    interrupted append), a bad line elsewhere is an error."""
    lines = path.read_text().splitlines()
    out = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append((i + 1, json.loads(line)))
        except json.JSONDecodeError as err:
            if i == last:
                continue
            raise RecordError(f"{path} line {i + 1}: not valid JSON ({err.msg}): {line[:120]!r}") from None
    return out


def _records_from_path(source) -> list[dict]:
    path = records_path(source)
    if path.suffix in (".parquet", ".csv"):
        return load_frame(path).to_dict("records")
    folder = path.parent
    _learn_manifest(folder)
    config = _read_config(folder)
    if config.get("kind") == "audit":  # an audit folder: the recipe is the audited run's
        run = _audited_run(folder, config.get("model"))
        config = _read_config(run) if run is not None else {}
    defaults = config_fields(config)
    run_name = folder.name if Path(source).is_dir() or path.name == RECORDS_FILE else path.stem
    out = []
    for line_no, rec in _read_jsonl(path):
        rec = validate_record(rec, f"{path} line {line_no}")
        for key, v in defaults.items():
            if rec.get(key) is None:
                rec[key] = v
        rec.setdefault("run", None)
        if rec["run"] is None:
            rec["run"] = run_name
        rec["source"] = str(Path(source))
        out.append(validate_record(rec, f"{path} line {line_no} (with config.json fields)"))
    return out


def _learn_manifest(folder: Path) -> None:
    """Take in what an audit's manifest says of its metrics and attacks (see :mod:`analysis.names`)."""
    path = folder / "manifest.json"
    try:
        describe = json.loads(path.read_text()).get("describe") if path.exists() else None
    except (OSError, json.JSONDecodeError, AttributeError):
        describe = None  # a manifest is a description, not data: a torn one costs labels only
    if isinstance(describe, Mapping):
        learn(describe)


def _records_from_dicts(records: Iterable, where: str = "record") -> list[dict]:
    out = []
    for i, rec in enumerate(records):
        rec = validate_record(rec, f"{where} {i}")
        rec.setdefault("source", "<memory>")
        out.append(rec)
    return out


def _frame_from_records(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=list(COLUMNS))
    return normalise_frame(df)


def normalise_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Give a frame every column of :data:`COLUMNS` with its dtype, derived ``x``/``y``/``label``.

    Missing optional text columns become ``""`` (``role`` becomes ``unlearned``); missing numeric
    ones NaN. ``x`` is kept where given and parsed from ``setting`` elsewhere. A ``tier`` column is
    taken in (:func:`analysis.names.learn_tiers`), so tables sort each optimizer in its recorded tier.
    """
    df = df.copy()
    for col in REQUIRED:
        if col not in df.columns:
            raise RecordError(f"the records lack the column {col!r}; every record needs "
                              f"{', '.join(REQUIRED)}")
    for col in TEXT_COLUMNS:
        if col not in df.columns:
            df[col] = ""
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    df.loc[df["role"] == "", "role"] = "unlearned"
    df.loc[df["run"] == "", "run"] = df.loc[df["run"] == "", "model"]
    for col in NUMERIC_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["seed"] = pd.to_numeric(df["seed"], errors="raise").astype("int64")
    derive = (df["recipe"] == "") & (df["role"] == "unlearned") & df["lr"].notna()
    df.loc[derive, "recipe"] = [f"lr={lr:g}" for lr in df.loc[derive, "lr"]]
    df.loc[df["role"] != "unlearned", "recipe"] = ""
    parsed_x = df["setting"].map(parse_setting_x)
    df["x"] = df["x"].where(df["x"].notna(), parsed_x)
    plane = df["attack"] == "plane"
    if plane.any():
        xy = df.loc[plane, "setting"].map(parse_plane)
        df.loc[plane, "x"] = df.loc[plane, "x"].where(df.loc[plane, "x"].notna(), [p[0] for p in xy])
        df.loc[plane, "y"] = df.loc[plane, "y"].where(df.loc[plane, "y"].notna(), [p[1] for p in xy])
    df["label"] = [series_label(r, o, m) for r, o, m in zip(df["role"], df["optimizer"], df["model"])]
    if "tier" in df.columns:   # the tier each optimizer's records carry (a study arm such as ``qadam-2bit``)
        learn_tiers(zip(df["optimizer"], df["tier"]))
    if "reference" in df.columns:   # written before references were recorded under ~ (unlearn.cache.portable)
        df["reference"] = [portable(v) if isinstance(v, str) and v else v for v in df["reference"]]
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra].reset_index(drop=True)


def series_label(role: str, optimizer: str, model: str) -> str:
    """Display name of a series: ``original``, ``retain-only``, else the optimizer (or model)."""
    if role == "original":
        return "original"
    if role == "retain":
        return "retain-only"
    return optimizer or model


def load_records(sources, *, dedupe: bool = True) -> pd.DataFrame:
    """Load any mix of sources into one tidy frame (columns: :data:`COLUMNS`, then extras).

    ``sources``: a run/audit folder, a ``records.jsonl`` / ``.parquet`` / ``.csv`` path, a
    DataFrame, a list of record dicts, or a list of any of these. A malformed record raises
    :class:`RecordError` (a ``ValueError``) naming the record and the field. With ``dedupe``,
    rows that are identical in every column (a record appended twice by a resumed run) are
    kept once.
    """
    if isinstance(sources, (str, os.PathLike, pd.DataFrame)) or isinstance(sources, Mapping):
        sources = [sources]
    sources = list(sources)
    records: list[dict] = []
    frames: list[pd.DataFrame] = []
    loose: list = []
    for item in sources:
        if isinstance(item, pd.DataFrame):
            frames.append(normalise_frame(_validated_frame(item)))
        elif isinstance(item, Mapping):
            loose.append(item)
        elif isinstance(item, (str, os.PathLike)):
            records.extend(_records_from_path(item))
        else:
            raise RecordError(f"cannot load {type(item).__name__} {str(item)[:80]!r}: pass run "
                              "folders, records.jsonl files, record dicts or a DataFrame")
    records.extend(_records_from_dicts(loose))
    if records or not frames:
        frames.insert(0, _frame_from_records(records))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df = normalise_frame(df)
    if dedupe and len(df):
        df = df.loc[~df.astype(str).duplicated()].reset_index(drop=True)
    return df


def _validated_frame(df: pd.DataFrame) -> pd.DataFrame:
    for i, rec in enumerate(df.to_dict("records")):
        clean = {k: (None if isinstance(v, float) and math.isnan(v) and k not in ("value",) else v)
                 for k, v in rec.items()}
        if isinstance(clean.get("value"), float) and math.isnan(clean["value"]):
            clean["value"] = None
        validate_record(clean, f"row {i}")
    return df


# ---------------------------------------------------------------------------------------------
# saving


def save_frame(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a frame as Parquet (``.parquet``) or CSV (``.csv``) via a temporary file + rename."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise BasinError(f"{path}: save as .parquet or .csv")
    with atomic_file(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    return path


def load_frame(path: str | os.PathLike) -> pd.DataFrame:
    """Read a frame written by :func:`save_frame` (Parquet or CSV) or a report's
    ``tables/records.csv.gz`` and normalise its columns."""
    path = Path(path)
    if not path.exists():
        raise BasinError(f"{path} does not exist")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix == ".csv" or path.name.endswith(".csv.gz"):
        df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, low_memory=False,
                         na_values={c: ["", "nan", "NaN"] for c in NUMERIC_COLUMNS})
    else:
        raise BasinError(f"{path}: load a .parquet, .csv or .csv.gz file")
    return normalise_frame(df)
