"""Weight-space attacks that try to bring forgotten knowledge back.

Every attack is a generator function::

    attack(model, *, <settings>..., reference=None, <seed/generator>...) -> Iterator[(setting, x, attacked_model)]

``setting`` names the point (``rtn-4bit``, ``a=0.3``, ``prune-global-0.5``), ``x`` is its number
(bits, interpolation weight, noise scale, sparsity; ``None`` for categorical settings) and
``attacked_model`` is one buffer model, in float32 and eval mode, reused for every setting of the
sweep (deep-copy it to keep it). The input model is never modified. ``reference`` is the original
model: the other endpoint for ``interpolate`` and the snap-back control for ``quantize``,
``prune`` and ``precision``.

:data:`ATTACKS` maps a name to an :class:`Attack`, which describes itself: its function (whose
signature holds the attack's only defaults), the models it attacks, the reference it needs, what its
setting's number means and which way it grows, and, for relearning, which forget rows it trains
on. The audit runner reads these and has no attack-specific branches; audits write the
descriptions into their manifests for the report. ``basin ls`` prints the first line of each
docstring. The modules keep their names (``audit.attacks.quantize`` is the module; the function is
``audit.attacks.quantize.quantize`` or ``ATTACKS["quantize"].run``).

A *diagnostic* (``Attack.diagnostic``; ``flatness``) measures the model instead of attacking it:
it yields ``(setting, x, {(split, metric): value})`` and the audit writes each value as a record.

A setting named ``<setting>-snapback`` is a *control*, not an attack: the original's attacked
weights plus the unlearning update (:func:`is_control`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from unlearn.records import CONTROL_SUFFIX, is_control  # noqa: F401 - the record schema's definition
from unlearn.registry import lookup

from . import flatness, interpolate, noise, precision, prune, quantize, relearn

# the keywords the audit runner supplies to any attack that asks for them by name
CONTEXT = ("tokenizer", "forget_rows", "retain_rows", "seed", "stats", "calibration", "reference")
ALL_ROLES = ("unlearned", "original", "retain")


@dataclass(frozen=True)
class Attack:
    """A registered attack and what the runner and the report need to know of it.

    - ``run(model, *, <options>, <context>)`` yields ``(setting, x, attacked_model)``; its
      signature's defaults are the attack's defaults (:attr:`defaults`), and its other keywords
      are its options (:attr:`options`);
    - ``roles``: the models it is applied to (``unlearned``, and the ``original`` / ``retain``
      references for the ceiling and floor);
    - ``needs``: the reference the attack itself needs (``original`` for interpolation);
    - ``label`` names it; ``axis`` says what ``x`` is; ``descending``: a larger ``x`` is a gentler
      attack (more bits);
    - ``path``: its settings walk from the reference to the model, so records name the pair and
      the runner adds the loss barrier along the path;
    - ``trained_rows(n_forget, options, seed)``: the forget rows the attack trains on (the other
      ones are scored as ``forget_unseen``), or None;
    - ``endpoint``: the option that names another model to use in place of the needed reference
      (interpolate's ``endpoint``: a path between two unlearned models); the audit loads it;
    - ``diagnostic``: it yields measured values ``(setting, x, {(split, metric): value})``, not
      attacked models;
    - ``metrics``: descriptions (label, direction) of the metrics a diagnostic writes.
    """

    run: Callable
    label: str
    axis: str
    roles: tuple = ALL_ROLES
    needs: tuple = ()
    descending: bool = False
    path: bool = False
    trained_rows: Callable | None = None
    endpoint: str | None = None
    diagnostic: bool = False
    metrics: dict | None = None

    @property
    def defaults(self) -> dict:
        return {name: p.default for name, p in inspect.signature(self.run).parameters.items()
                if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and name not in CONTEXT}

    @property
    def options(self) -> list[str]:
        return [name for name, p in inspect.signature(self.run).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name not in CONTEXT]

    def unseen_rows(self, n_forget: int, options: dict, seed: int) -> list[int] | None:
        """The forget rows the attack does not train on with ``options`` (over its defaults) and
        ``seed``: the rows scored as ``forget_unseen``; None for an attack that trains on none."""
        if self.trained_rows is None:
            return None
        used = set(self.trained_rows(n_forget, {**self.defaults, **options}, seed))
        return [i for i in range(n_forget) if i not in used]

    @property
    def description(self) -> str:
        """The attack function's docstring (``basin ls`` shows its first line)."""
        return self.run.__doc__ or ""

    def describe(self) -> dict:
        """What a report needs of this attack, as JSON (written into audit manifests)."""
        return {"label": self.label, "axis": self.axis, "descending": self.descending, "path": self.path,
                "diagnostic": self.diagnostic}


def _relearn_rows(n_forget: int, options: dict, seed: int) -> list[int]:
    return relearn.relearn_subset(n_forget, options["size"], seed)


ATTACKS: dict[str, Attack] = {
    "relearn": Attack(relearn.relearn, "relearning", "relearning steps (fine-tuning on forget items)",
                      trained_rows=_relearn_rows),
    "quantize": Attack(quantize.quantize, "quantization", "bits per weight (fewer = stronger attack)",
                       descending=True),
    "interpolate": Attack(interpolate.interpolate, "linear interpolation",
                          "interpolation coefficient α (0 = first model, 1 = second)",
                          roles=("unlearned",), needs=("original",), path=True, endpoint="endpoint"),
    "noise": Attack(noise.noise, "weight noise", "weight-noise scale (std relative to the weights)"),
    "prune": Attack(prune.prune, "magnitude pruning", "sparsity (fraction of weights pruned)"),
    "precision": Attack(precision.precision, "precision change", "bits per weight (floating point)",
                        descending=True),
    "flatness": Attack(flatness.flatness, "flatness", "measure (sharpness rho, probes, iterations)",
                       diagnostic=True, metrics=flatness.METRICS_WRITTEN),
}


def get_attack(name: str) -> Attack:
    """The attack called ``name``, or a :class:`BasinError` that suggests close names."""
    return lookup(ATTACKS, name, "attack")


def describe_attacks(names) -> dict[str, dict]:
    """``{name: Attack.describe()}`` for the registered ``names`` (for an audit's manifest)."""
    return {n: ATTACKS[n].describe() for n in names if n in ATTACKS}


__all__ = ["ATTACKS", "Attack", "get_attack", "is_control", "describe_attacks"]
