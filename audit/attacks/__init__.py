"""Weight-space attacks that try to bring forgotten knowledge back.

Every attack is a generator function::

    attack(model, *, <settings>..., reference=None, <seed/generator>...) -> Iterator[(setting, x, attacked_model)]

``setting`` names the point (``rtn-4bit``, ``a=0.3``, ``prune-global-0.5``), ``x`` is its number
(bits, interpolation weight, noise scale, sparsity; ``None`` for categorical settings) and
``attacked_model`` is one buffer model, in float32 and eval mode, reused for every setting of the
sweep (deep-copy it to keep it). The input model is never modified. ``reference`` is the original
model: the other endpoint for ``interpolate`` and the snap-back control for ``quantize``,
``prune`` and ``precision``.

Diagnostics (:data:`DIAGNOSTICS`, also listed in :data:`ATTACKS`) measure the model instead of
attacking it: ``diagnostic(model, ...) -> Iterator[(setting, x, {(split, metric): value})]``
(``flatness``: Hessian trace, largest eigenvalue and random sharpness of the forget and retain
losses); the audit writes each value as one record.

:data:`ATTACKS` maps a name to the attack function; ``basin ls`` prints the first line of each
docstring. The modules keep their names (``audit.attacks.quantize`` is the module; the function is
``audit.attacks.quantize.quantize`` or ``ATTACKS["quantize"]``).
"""

from __future__ import annotations

import importlib.util

from unlearn.registry import lookup

from . import flatness as _flatness
from . import interpolate as _interpolate
from . import noise as _noise
from . import precision as _precision
from . import prune as _prune
from . import quantize as _quantize

ATTACKS = {
    "quantize": _quantize.quantize,
    "interpolate": _interpolate.interpolate,
    "noise": _noise.noise,
    "prune": _prune.prune,
    "precision": _precision.precision,
}
# Diagnostics measure the model instead of attacking it: they yield ``(setting, x, {(split,
# metric): value})`` rather than attacked models, and the audit writes those values as records.
DIAGNOSTICS = {"flatness": _flatness.flatness}
ATTACKS.update(DIAGNOSTICS)

# ---- relearn ------------------------------------------------------------------------------------
# The relearning attack lives in audit/attacks/relearn.py (written separately) and is registered
# here as "relearn" as soon as that module exists. To register it unconditionally, replace this
# block with: from . import relearn as _relearn; ATTACKS["relearn"] = _relearn.relearn
if importlib.util.find_spec(f"{__name__}.relearn") is not None:
    from . import relearn as _relearn

    ATTACKS = {"relearn": _relearn.relearn, **ATTACKS}
# -------------------------------------------------------------------------------------------------


def get_attack(name: str):
    """The attack called ``name``, or a :class:`BasinError` that suggests close names."""
    return lookup(ATTACKS, name, "attack")


__all__ = ["ATTACKS", "DIAGNOSTICS", "get_attack"]
