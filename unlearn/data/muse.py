"""MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models",
arXiv 2407.06460): MUSE-News (BBC articles) and MUSE-Books (Harry Potter), published as the
Hugging Face data sets ``muse-bench/MUSE-News`` and ``muse-bench/MUSE-Books`` (CC-BY-4.0).

:func:`muse_benchmark` reads MUSE's evaluation files from (first match wins)

1. the folder passed as ``path``,
2. the folder named by the environment variable ``MUSE_DIR``,
3. the hub data set through the ``datasets`` library (needs network).

A folder is laid out as MUSE's own ``load_data.py`` writes it, either one corpus
(``<folder>/knowmem/...``) or both (``<folder>/news/knowmem/...``, ``<folder>/books/...``):

=============================  =================================================  ================
file                           rows                                               used by
=============================  =================================================  ================
``verbmem/forget.json``        ``{"prompt", "gt"}``: an excerpt of a forget text  VerbMem
                               and its true continuation
``knowmem/forget_qa.json``     ``{"question", "answer"}`` about the forget texts  KnowMem (forget)
``knowmem/forget_qa_icl.json`` few-shot examples for the forget questions         KnowMem (forget)
``knowmem/retain_qa.json``     ``{"question", "answer"}`` about the retain texts  KnowMem (retain)
``knowmem/retain_qa_icl.json`` few-shot examples for the retain questions         KnowMem (retain)
``privleak/forget.json``       texts seen in training (members)                   PrivLeak
``privleak/holdout.json``      texts never seen (non-members)                     PrivLeak
``privleak/retain.json``       retain texts (optional)                            --
``raw/{forget,retain1,         the training corpora (optional): MUSE unlearns on  unlearning
retain2,holdout}.json``        ``raw/forget`` with ``raw/retain1`` as retain set
=============================  =================================================  ================

Each file is a JSON list (as MUSE writes them) or JSON Lines; privleak and raw rows are strings
or ``{"text": ...}``. Older MUSE releases name the retain files ``retain2_qa*.json`` /
``privleak/retain2.json``; those names are accepted too.

The :class:`MuseBenchmark` is TOFU-shaped so that basin's loop, attacks and TOFU-style metrics
run on it unchanged: ``forget`` / ``retain`` are the KnowMem question-answer rows. MUSE's own
metrics read the rest from ``benchmark.muse`` (:class:`MuseData`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from unlearn.data.files import read_json_rows
from unlearn.data.types import Benchmark
from unlearn.errors import BasinError, require

HUB_IDS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
CORPORA = tuple(HUB_IDS)
KNOWMEM_SETS = ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl")
PRIVLEAK_SETS = ("forget", "holdout")
RAW_SETS = ("forget", "retain1", "retain2", "holdout")
# file (relative to the corpus folder) -> alternative names of older releases
REQUIRED_FILES = {
    "verbmem/forget.json": (),
    **{f"knowmem/{s}.json": ((f"knowmem/{s.replace('retain', 'retain2')}.json",) if "retain" in s else ())
       for s in KNOWMEM_SETS},
    **{f"privleak/{s}.json": () for s in PRIVLEAK_SETS},
}
OPTIONAL_FILES = {"privleak/retain.json": ("privleak/retain2.json",),
                  **{f"raw/{s}.json": () for s in RAW_SETS}}


@dataclass
class MuseData:
    """MUSE's evaluation sets for one corpus (``news`` or ``books``)."""

    corpus: str
    verbmem: list[dict]                                    # {"prompt", "gt"}
    knowmem: dict[str, list[dict]]                         # KNOWMEM_SETS -> {"question", "answer"}
    privleak: dict[str, list[str]]                         # forget / holdout (/ retain) -> texts
    raw: dict[str, list[str]] = field(default_factory=dict)  # training corpora, when present
    source: str = ""

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.knowmem.items())
        return (f"MuseData({self.corpus!r}: verbmem={len(self.verbmem)}, knowmem[{sizes}], "
                f"privleak[{', '.join(f'{k}={len(v)}' for k, v in self.privleak.items())}], "
                f"raw[{', '.join(self.raw)}])")


@dataclass(repr=False)
class MuseBenchmark(Benchmark):
    """A :class:`Benchmark` (forget / retain = KnowMem QA rows) that carries :class:`MuseData`."""

    muse: MuseData | None = None


def _texts(rows: list, name: str) -> list[str]:
    out = []
    for i, r in enumerate(rows):
        text = r.get("text") if isinstance(r, dict) else r
        require(isinstance(text, str), f"MUSE file {name} row {i} is neither a string nor {{\"text\": ...}}")
        out.append(text)
    return out


def _fields(rows: list, keys: tuple[str, ...], name: str) -> list[dict]:
    for i, r in enumerate(rows):
        missing = [k for k in keys if not isinstance(r, dict) or k not in r]
        require(not missing, f"MUSE file {name} row {i} lacks {', '.join(missing)}")
    return [{k: str(r[k]) for k in keys} for r in rows]


def corpus_folder(folder: Path, corpus: str) -> Path:
    """The folder of one corpus: ``folder`` itself or its ``news`` / ``books`` subfolder."""
    require(folder.is_dir(), f"MUSE folder {folder} does not exist or is not a folder; pass the folder "
                             "that holds MUSE's verbmem/, knowmem/ and privleak/ folders")
    if (folder / corpus).is_dir():
        return folder / corpus
    return folder


def _pick(folder: Path, name: str, alternatives: tuple[str, ...]) -> Path | None:
    for candidate in (name, *alternatives):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _from_folder(folder: Path, corpus: str) -> MuseData:
    folder = corpus_folder(folder, corpus)
    found = {name: _pick(folder, name, alt) for name, alt in REQUIRED_FILES.items()}
    missing = [name for name, path in found.items() if path is None]
    require(not missing, f"MUSE folder {folder} lacks {', '.join(missing)}; download these files "
                         f"from the {HUB_IDS[corpus]} data set into that folder (see docs/real_world.md)")
    rows = {name: read_json_rows(path, "MUSE") for name, path in found.items()}
    optional = {name: _pick(folder, name, alt) for name, alt in OPTIONAL_FILES.items()}
    privleak = {s: _texts(rows[f"privleak/{s}.json"], f"privleak/{s}.json") for s in PRIVLEAK_SETS}
    if optional["privleak/retain.json"] is not None:
        privleak["retain"] = _texts(read_json_rows(optional["privleak/retain.json"], "MUSE"), "privleak/retain.json")
    raw = {s: _texts(read_json_rows(optional[f"raw/{s}.json"], "MUSE"), f"raw/{s}.json")
           for s in RAW_SETS if optional[f"raw/{s}.json"] is not None}
    return MuseData(corpus, _fields(rows["verbmem/forget.json"], ("prompt", "gt"), "verbmem/forget.json"),
                    {s: _fields(rows[f"knowmem/{s}.json"], ("question", "answer"), f"knowmem/{s}.json")
                     for s in KNOWMEM_SETS}, privleak, raw, str(folder))


def _from_hub(corpus: str, raw: bool = False) -> MuseData:
    hub = HUB_IDS[corpus]
    hint = (f"download the {hub} files on a machine with network access (MUSE's load_data.py "
            "layout, see docs/real_world.md) and pass path=<folder> (or set MUSE_DIR)")
    try:
        import datasets
    except ImportError:
        raise BasinError("no MUSE folder was given and the 'datasets' package is not installed; " + hint) from None

    def load(config: str, split: str) -> list[dict]:
        try:
            return [dict(r) for r in datasets.load_dataset(hub, config, split=split)]
        except Exception as err:  # offline, hub errors, renamed splits: all mean "no data here"
            raise BasinError(f"could not load MUSE {hub} {config}/{split} from the hub "
                             f"({type(err).__name__}: {err}); {hint}") from None

    knowmem = {s: _fields(load("knowmem", s), ("question", "answer"), f"knowmem/{s}") for s in KNOWMEM_SETS}
    privleak = {s: _texts(load("privleak", s), f"privleak/{s}") for s in (*PRIVLEAK_SETS, "retain")}
    corpora = {s: _texts(load("raw", s), f"raw/{s}") for s in RAW_SETS} if raw else {}
    verbmem = _fields(load("verbmem", "forget"), ("prompt", "gt"), "verbmem/forget")
    return MuseData(corpus, verbmem, knowmem, privleak, corpora, hub)


def load_muse(corpus: str, path: str | os.PathLike | None = None, raw: bool = False) -> MuseData:
    """MUSE's evaluation sets for ``corpus`` (``news`` / ``books``) as :class:`MuseData`.

    ``path``: a folder (see the module docstring); default ``$MUSE_DIR``, else the hub (network;
    ``raw=True`` also downloads the training corpora, tens of MB). Raises
    :class:`~unlearn.errors.BasinError` for an unknown corpus, a missing file (naming it), or no
    folder and no reachable hub.
    """
    require(corpus in CORPORA, f"MUSE corpus {corpus!r} is not one of {', '.join(CORPORA)}")
    folder = path if path is not None else os.environ.get("MUSE_DIR") or None
    if folder is not None:
        return _from_folder(Path(folder).expanduser(), corpus)
    return _from_hub(corpus, raw=raw)


def muse_benchmark(split: str, path: str | os.PathLike | None = None, raw: bool = False) -> MuseBenchmark:
    """``muse:news`` / ``muse:books`` as a :class:`MuseBenchmark`: ``forget`` / ``retain`` are
    KnowMem's ``forget_qa`` / ``retain_qa`` rows (``question``, ``answer``), ``muse`` holds every
    MUSE set. ``holdout`` and ``utility`` are empty (MUSE's non-members are whole texts, scored by
    MUSE's own metrics)."""
    data = load_muse(split, path=path, raw=raw)
    return MuseBenchmark(f"muse:{split}", [dict(r) for r in data.knowmem["forget_qa"]],
                         [dict(r) for r in data.knowmem["retain_qa"]], [], {},
                         description=f"MUSE-{split.capitalize()} (Shi et al. 2024), from {data.source}",
                         muse=data)
