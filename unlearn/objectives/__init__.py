"""Unlearning objectives, one file each, shaped like their equations.

An objective is an object with

- ``needs_reference``: whether it needs the frozen model before unlearning;
- ``prepare(ref_model, batch) -> dict``: per-batch constants (reference log-likelihoods, frozen
  activations), computed once under ``no_grad`` outside any zeroth-order closure;
- ``__call__(model, batch, prep) -> {"forget": loss, "retain": loss}``: the two terms, whose sum
  is minimised (so SAM can treat the forget term on its own);
- optionally ``trainable(model) -> [parameter names]`` (RMU trains only a few matrices).

``batch`` is ``{"forget": collated batch, "retain": collated batch}``.
"""

from __future__ import annotations

import inspect

from unlearn.errors import BasinError
from unlearn.objectives.ga import GA, GradDiff
from unlearn.objectives.npo import NPO
from unlearn.objectives.rmu import RMU
from unlearn.objectives.simnpo import SimNPO
from unlearn.registry import lookup

OBJECTIVES = {
    "ga": GA,
    "graddiff": GradDiff,
    "npo": NPO,
    "simnpo": SimNPO,
    "rmu": RMU,
}


def make_objective(name: str, **kwargs):
    """Build an objective by name with its keyword arguments (did-you-mean on a miss)."""
    cls = lookup(OBJECTIVES, name, "objective")
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise BasinError(f"objective {name!r} takes no option(s) {', '.join(sorted(unknown))}; "
                         f"its options are: {', '.join(sorted(allowed)) or 'none'}")
    return cls(**kwargs)
