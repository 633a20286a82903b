"""Benchmarks: a forget set, a retain set, hold-out rows and utility sets, by name.

Every benchmark is a :class:`Benchmark` with TOFU-shaped rows (``question``, ``answer``,
``paraphrased_answer``, ``perturbed_answer``, ...). Names are ``<family>:<split>``, e.g.
``world:forget10`` (the embedded world) or ``tofu:forget10`` (the real TOFU data set; see
:mod:`unlearn.data.tofu`). ``BENCHMARKS`` maps each family to a loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from unlearn.data.world import World, WorldConfig, split_name_to_fraction
from unlearn.errors import require
from unlearn.registry import lookup


@dataclass
class Benchmark:
    """Rows of one unlearning task. ``utility`` maps a set's name to its rows; rows with
    ``options`` / ``label`` are multiple choice."""

    name: str
    forget: list[dict]
    retain: list[dict]
    holdout: list[dict] = field(default_factory=list)
    utility: dict[str, list[dict]] = field(default_factory=dict)
    description: str = ""

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.utility.items())
        return (f"Benchmark({self.name!r}: forget={len(self.forget)}, retain={len(self.retain)}, "
                f"holdout={len(self.holdout)}, utility[{sizes}])")


def world_benchmark(split: str, world: WorldConfig | None = None) -> Benchmark:
    """The embedded world's benchmark for a forget split such as ``forget10``."""
    w = World(world or WorldConfig())
    forget, retain = w.split(split_name_to_fraction(split))
    return Benchmark(f"world:{split}", forget, retain, w.holdout, {"world_facts": w.utility},
                     description="embedded fictitious-people world (generated, offline)")


def _tofu(split: str, **kwargs) -> Benchmark:
    from unlearn.data.tofu import tofu_benchmark

    return tofu_benchmark(split, **kwargs)


# family -> loader(split, **kwargs)
BENCHMARKS: dict[str, Callable[..., Benchmark]] = {
    "world": world_benchmark,
    "tofu": _tofu,
}

# What `basin ls` prints: every concrete name users can pass.
BENCHMARK_NAMES = {
    "world:forget01": "embedded world, forget 1% of the people",
    "world:forget05": "embedded world, forget 5% of the people",
    "world:forget10": "embedded world, forget 10% of the people",
    "tofu:forget01": "TOFU (locuslab/TOFU or a local folder via TOFU_DIR), forget 1%",
    "tofu:forget05": "TOFU, forget 5%",
    "tofu:forget10": "TOFU, forget 10%",
}


def load_benchmark(name, **kwargs) -> Benchmark:
    """A :class:`Benchmark` from a name like ``world:forget10``, or the object itself."""
    if isinstance(name, Benchmark):
        return name
    require(isinstance(name, str) and ":" in name,
            f"benchmark {name!r} must look like family:split, e.g. world:forget10")
    family, split = name.split(":", 1)
    return lookup(BENCHMARKS, family, "benchmark family")(split, **kwargs)
