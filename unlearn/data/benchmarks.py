"""Benchmarks: a forget set, a retain set, hold-out rows and utility sets, by name.

Every benchmark is a :class:`Benchmark` with TOFU-shaped rows (``question``, ``answer``,
``paraphrased_answer``, ``perturbed_answer``, ...). Names are ``<family>:<split>``, e.g.
``world:forget10`` (the embedded world) or ``tofu:forget10`` (the real TOFU data set; see
:mod:`unlearn.data.tofu`). ``BENCHMARKS`` maps each family to a loader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from unlearn.data.files import read_json_rows
from unlearn.data.muse import muse_benchmark
from unlearn.data.tofu import tofu_benchmark
from unlearn.data.types import Benchmark
from unlearn.data.world import World, WorldConfig, split_name_to_fraction
from unlearn.errors import require
from unlearn.registry import lookup


def world_benchmark(split: str, world: WorldConfig | None = None, **fields) -> Benchmark:
    """The embedded world's benchmark for a forget split such as ``forget10``. ``world`` (or its
    fields as keywords, e.g. ``n_people=10``: what a config's ``benchmark_args`` holds) picks a
    world other than the default one."""
    if fields:
        require(world is None, "pass either world=WorldConfig(...) or its fields, not both")
        known = set(WorldConfig.__dataclass_fields__)
        unknown = set(fields) - known
        require(not unknown, f"unknown world option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}")
        world = WorldConfig(**fields)
    w = World(world or WorldConfig())
    forget, retain = w.split(split_name_to_fraction(split))
    return Benchmark(f"world:{split}", forget, retain, w.holdout, {"world_facts": w.utility},
                     description="embedded fictitious-people world (generated, offline)")


# ----------------------------------------------------------------------------- plain-text corpora

TEXT_FIELD = "text"


def is_text_row(row: dict) -> bool:
    """A plain-text row (``{"text": ...}``, no question): a corpus passage, not a QA pair."""
    return TEXT_FIELD in row and "question" not in row


def text_benchmark(name: str, forget, retain, holdout=(), *, max_rows: int | None = None,
                   min_chars: int = 0, description: str = "") -> Benchmark:
    """A :class:`Benchmark` whose forget / retain / holdout rows are plain text (``{"text": ...}``),
    as RMU's WMDP corpora and MUSE's raw corpora are. Each of ``forget``, ``retain``, ``holdout``
    is a list of strings or of ``{"text": ...}`` rows; passages shorter than ``min_chars`` are
    dropped and at most ``max_rows`` kept per set (the first ones, so the choice is stable).

    Text rows are for training objectives that read the whole sequence (RMU's activations, GA /
    NPO on the passage's tokens); the TOFU-style metrics need question-answer rows."""
    def rows(items, which: str) -> list[dict]:
        out = []
        for i, item in enumerate(items):
            text = item.get(TEXT_FIELD) if isinstance(item, dict) else item
            require(isinstance(text, str), f"{name} {which} row {i} is neither a string nor "
                                           '{"text": ...}')
            if len(text) >= min_chars:
                out.append({TEXT_FIELD: text})
            if max_rows is not None and len(out) >= max_rows:
                break
        return out

    return Benchmark(name, rows(forget, "forget"), rows(retain, "retain"), rows(holdout, "holdout"),
                     {}, description=description)


WMDP_CORPORA = ("bio", "cyber")


def wmdp_corpus_benchmark(split: str, path=None, max_rows: int | None = None,
                          min_chars: int = 50) -> Benchmark:
    """RMU's WMDP unlearning corpora (Li et al. 2024, arXiv 2403.03218; ``cais/wmdp-corpora``) as a
    text :class:`Benchmark`: ``<split>-forget-corpus.jsonl`` and ``<split>-retain-corpus.jsonl``
    (rows with ``text``) from ``path`` or ``$WMDP_CORPORA_DIR``. The bio forget corpus is gated:
    request it from the WMDP authors. Passages under 50 characters are dropped (as RMU's code does)."""
    require(split in WMDP_CORPORA, f"WMDP corpus {split!r} is not one of {', '.join(WMDP_CORPORA)}")
    folder = path if path is not None else os.environ.get("WMDP_CORPORA_DIR") or None
    require(folder is not None, "the WMDP corpora are read from a local folder: download "
                                f"{split}-forget-corpus.jsonl and {split}-retain-corpus.jsonl (cais/wmdp-corpora; "
                                "the bio forget corpus on request) and pass path=<folder> or set WMDP_CORPORA_DIR")
    folder = Path(folder).expanduser()
    names = [f"{split}-forget-corpus.jsonl", f"{split}-retain-corpus.jsonl"]
    missing = [n for n in names if not (folder / n).is_file()]
    require(not missing, f"WMDP corpora folder {folder} lacks {', '.join(missing)}")
    forget, retain = (read_json_rows(folder / n, "WMDP corpus") for n in names)
    return text_benchmark(f"wmdp-corpus:{split}", forget, retain, max_rows=max_rows, min_chars=min_chars,
                          description=f"WMDP {split} unlearning corpora (RMU), from {folder}")


# family -> loader(split, **kwargs)
BENCHMARKS: dict[str, Callable[..., Benchmark]] = {
    "world": world_benchmark,
    "tofu": tofu_benchmark,
    "muse": muse_benchmark,
    "wmdp-corpus": wmdp_corpus_benchmark,
}

# What `basin ls` prints: every concrete name users can pass.
BENCHMARK_NAMES = {
    "world:forget01": "embedded world, forget 1% of the people",
    "world:forget05": "embedded world, forget 5% of the people",
    "world:forget10": "embedded world, forget 10% of the people",
    "tofu:forget01": "TOFU (locuslab/TOFU or a local folder via TOFU_DIR), forget 1%",
    "tofu:forget05": "TOFU, forget 5%",
    "tofu:forget10": "TOFU, forget 10%",
    "muse:news": "MUSE-News (muse-bench/MUSE-News or a local folder via MUSE_DIR): KnowMem QA as "
                 "forget/retain rows; VerbMem, KnowMem, PrivLeak when audited (--generate for the first two)",
    "muse:books": "MUSE-Books (muse-bench/MUSE-Books or MUSE_DIR), as muse:news",
    "wmdp-corpus:bio": "RMU's WMDP bio forget/retain text corpora (a local folder via WMDP_CORPORA_DIR)",
    "wmdp-corpus:cyber": "RMU's WMDP cyber forget/retain text corpora (WMDP_CORPORA_DIR)",
}


def load_benchmark(name, **kwargs) -> Benchmark:
    """A :class:`Benchmark` from a name like ``world:forget10``, or the object itself."""
    if isinstance(name, Benchmark):
        return name
    require(isinstance(name, str) and ":" in name,
            f"benchmark {name!r} must look like family:split, e.g. world:forget10")
    family, split = name.split(":", 1)
    return lookup(BENCHMARKS, family, "benchmark family")(split, **kwargs)
