"""The real TOFU benchmark (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs",
arXiv 2401.06121), published as the Hugging Face data set ``locuslab/TOFU`` (MIT licence).

:func:`tofu_benchmark` reads TOFU's own files, from (first match wins)

1. the folder passed as ``path``,
2. the folder named by the environment variable ``TOFU_DIR``,
3. the hub data set ``locuslab/TOFU`` through the ``datasets`` library (needs network).

The files are JSON Lines despite their ``.json`` suffix. What each split of the
:class:`~unlearn.data.benchmarks.Benchmark` holds:

- ``forget``: ``forgetXX_perturbed.json`` (the last 2 / 10 / 20 authors, 20 questions each), with
  ``paraphrased_answer`` and 5 ``perturbed_answer`` per question;
- ``retain``: ``retain_perturbed.json``, TOFU's *evaluation* retain set (the first 20 authors,
  400 questions), with the same fields. The complement used to *train* a retain-only model is
  ``retainYY.json`` (3600+ rows); it is not loaded here;
- ``utility``: ``real_authors`` and ``world_facts`` from ``*_perturbed.json`` (``answer``, a short
  span, and 3 ``perturbed_answer``; there is no paraphrase, so the truth ratio uses ``answer``),
  each row joined by its question with the multiple-choice form in ``real_authors.json`` /
  ``world_facts.json`` (``option1..4`` -> ``options``, and ``label`` = the index of ``answer``);
- ``holdout``: empty unless the folder also has ``holdoutXX.json`` (later TOFU releases add
  hold-out authors for membership inference); the local copy has none.

Forget and retain rows carry ``author``, the author's index among TOFU's 200 (20 rows each), so
that relearning and other per-author splits can group them.
"""

from __future__ import annotations

import os
from pathlib import Path

from unlearn.data.files import read_json_rows
from unlearn.data.types import Benchmark
from unlearn.errors import BasinError, require

HUB_ID = "locuslab/TOFU"
SPLITS = {"forget01": 40, "forget05": 200, "forget10": 400}  # split -> rows (20 per author)
N_AUTHORS = 200
ROWS_PER_AUTHOR = 20
UTILITY_SETS = ("real_authors", "world_facts")


def required_files(split: str) -> list[str]:
    """The TOFU files :func:`tofu_benchmark` reads for ``split``."""
    return [f"{split}_perturbed.json", "retain_perturbed.json",
            *(f"{name}_perturbed.json" for name in UTILITY_SETS),
            *(f"{name}.json" for name in UTILITY_SETS)]


def _from_folder(folder: Path, split: str) -> dict[str, list[dict]]:
    require(folder.is_dir(), f"TOFU folder {folder} does not exist or is not a folder; pass the folder "
                             "that holds TOFU's JSON files (e.g. forget10_perturbed.json)")
    missing = [name for name in required_files(split) if not (folder / name).is_file()]
    require(not missing, f"TOFU folder {folder} lacks {', '.join(missing)}; download these files "
                         f"from the {HUB_ID} data set into that folder")
    files = {name[:-len(".json")]: read_json_rows(folder / name, "TOFU") for name in required_files(split)}
    holdout = folder / f"holdout{split[len('forget'):]}.json"
    files["holdout"] = read_json_rows(holdout, "TOFU") if holdout.is_file() else []
    return files


def _from_hub(split: str) -> dict[str, list[dict]]:
    hint = (f"download the {HUB_ID} JSON files on a machine with network access and pass "
            "path=<folder> (or set TOFU_DIR to that folder)")
    try:
        import datasets
    except ImportError:
        raise BasinError("no TOFU folder was given and the 'datasets' package is not installed; "
                         + hint) from None
    files = {}
    for name in required_files(split):
        config = name[:-len(".json")]
        try:
            files[config] = [dict(r) for r in datasets.load_dataset(HUB_ID, config, split="train")]
        except Exception as err:  # offline, hub errors, missing configs: all mean "no data here"
            raise BasinError(f"could not load TOFU config {config!r} from the hub "
                             f"({type(err).__name__}: {err}); {hint}") from None
    files["holdout"] = []
    return files


def _with_options(rows: list[dict], choice_rows: list[dict], name: str) -> list[dict]:
    """Join multiple-choice ``option1..4`` onto the perturbed rows by question."""
    by_question = {r["question"]: r for r in choice_rows}
    out = []
    for r in rows:
        row = {"question": r["question"], "answer": r["answer"],
               "perturbed_answer": list(r["perturbed_answer"])}
        mc = by_question.get(r["question"])
        if mc is not None:
            options = [mc[f"option{j}"] for j in range(1, 5) if f"option{j}" in mc]
            if mc.get("answer") in options:
                row["options"] = options
                row["label"] = options.index(mc["answer"])
        out.append(row)
    require(out and all(r["perturbed_answer"] for r in out),
            f"TOFU utility set {name} has no rows or rows without perturbed_answer")
    return out


def _qa_rows(rows: list[dict], first_author: int, name: str) -> list[dict]:
    out = []
    for i, r in enumerate(rows):
        missing = [k for k in ("question", "answer", "paraphrased_answer", "perturbed_answer") if k not in r]
        require(not missing, f"TOFU file {name} row {i} lacks {', '.join(missing)}")
        out.append({**r, "perturbed_answer": list(r["perturbed_answer"]),
                    "author": first_author + i // ROWS_PER_AUTHOR})
    return out


def tofu_benchmark(split: str, path: str | os.PathLike | None = None,
                   utility_rows: int | None = None) -> Benchmark:
    """TOFU's ``forget01`` / ``forget05`` / ``forget10`` task as a :class:`Benchmark`.

    ``path``: a folder with TOFU's JSON files; default ``$TOFU_DIR``, else the hub (network).
    ``utility_rows``: keep at most this many rows of each utility set, evenly spaced (a quick look
    on a CPU: greedy generation over the 217 utility questions dominates a small run).
    Raises :class:`~unlearn.errors.BasinError` for an unknown split, a folder that lacks a file
    (naming it), or no folder and no reachable hub.
    """
    require(split in SPLITS, f"TOFU split {split!r} is not one of {', '.join(SPLITS)}")
    folder = path if path is not None else os.environ.get("TOFU_DIR") or None
    if folder is not None:
        files = _from_folder(Path(folder).expanduser(), split)
        source = str(folder)
    else:
        files = _from_hub(split)
        source = HUB_ID
    forget_raw = files[f"{split}_perturbed"]
    require(len(forget_raw) == SPLITS[split],
            f"TOFU {split}_perturbed.json has {len(forget_raw)} rows, expected {SPLITS[split]}; "
            "the file may be truncated: download it again")
    forget = _qa_rows(forget_raw, N_AUTHORS - len(forget_raw) // ROWS_PER_AUTHOR, f"{split}_perturbed.json")
    retain = _qa_rows(files["retain_perturbed"], 0, "retain_perturbed.json")
    utility = {name: _with_options(files[f"{name}_perturbed"], files[name], name) for name in UTILITY_SETS}
    if utility_rows is not None:
        require(isinstance(utility_rows, int) and utility_rows >= 1,
                f"utility_rows must be a positive whole number, got {utility_rows!r}")
        utility = {name: rows[::max(1, -(-len(rows) // utility_rows))] for name, rows in utility.items()}
    return Benchmark(f"tofu:{split}", forget, retain, files["holdout"], utility,
                     description=f"TOFU (Maini et al. 2024) {split}, from {source}")
