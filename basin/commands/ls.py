"""``basin ls``: every registered name, with what it is."""

from __future__ import annotations

from audit.attacks import ATTACKS
from audit.attacks.quantize import METHODS
from audit.metrics import METRICS
from basin.sweep import ENGINES
from unlearn.data.benchmarks import BENCHMARK_NAMES
from unlearn.data.format import PROMPT_FORMATS
from unlearn.models import SIZES
from unlearn.objectives import OBJECTIVES
from unlearn.optim import OPTIMIZERS

# (title, registry): the registries `basin ls` shows
SECTIONS = [
    ("benchmarks", BENCHMARK_NAMES),
    ("prompt formats", PROMPT_FORMATS),
    ("model sizes", SIZES),
    ("objectives", OBJECTIVES),
    ("optimizers", OPTIMIZERS),
    ("attacks", ATTACKS),
    ("quantization methods", METHODS),
    ("metrics", METRICS),
    ("sweep engines", ENGINES),
]


def describe(value) -> str:
    """One line for a registry entry: a string, a size dict, or an object's docstring."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    text = getattr(value, "description", None) or (getattr(value, "__doc__", None) or "")
    line = text.strip().splitlines()[0] if text.strip() else ""
    hib = getattr(value, "higher_is_better", None)
    if hib is not None and getattr(value, "knowledge", None) is not None:  # knowledge: lower on forget
        good, bad = ("higher", "lower") if hib else ("lower", "higher")
        line += f" ({good} is better on retain and utility sets, {bad} on the forget set)"
    elif hib is not None:
        line += f" ({'higher' if hib else 'lower'} is better)"
    return line


def register(sub) -> None:
    p = sub.add_parser("ls", help="list every benchmark, model size, objective, optimizer, attack and metric")
    p.set_defaults(func=run)


def run(args) -> int:
    for title, registry in SECTIONS:
        print(f"{title}:")
        width = max(len(k) for k in registry)
        for name, value in registry.items():
            print(f"  {name:<{width}}  {describe(value)}")
        print()
    return 0
