"""The shape every benchmark shares: :class:`Benchmark`."""

from __future__ import annotations

from dataclasses import dataclass, field


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
