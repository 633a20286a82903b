"""What the report knows of optimizers, metrics and attacks: tiers, labels, directions.

basin's records describe themselves: an audit's ``manifest.json`` holds ``describe`` (each written
metric's label, direction and whether higher means more knowledge; each attack's label, axis and
whether a larger setting is gentler), and audit records carry the optimizer's ``tier``.
:func:`learn` and :func:`learn_tiers` take these in as :func:`analysis.load.load_records` reads
them; every lookup below prefers what the records said. The tables here are only the fallback
for *foreign* records (another tool's, or basin's from before records described themselves).
"""

from __future__ import annotations

from typing import Mapping

# what the records read so far in this process said of themselves
_LEARNT: dict[str, dict] = {"metrics": {}, "attacks": {}, "tiers": {}}


def learn(describe: Mapping) -> None:
    """Take in an audit manifest's ``describe`` block: ``{"metrics": {...}, "attacks": {...}}``."""
    for kind in ("metrics", "attacks"):
        for name, info in (describe.get(kind) or {}).items():
            if isinstance(info, Mapping):
                _LEARNT[kind][str(name)] = dict(info)


def learn_tiers(pairs) -> None:
    """Take in (optimizer, tier) pairs that records carried."""
    for name, tier in pairs:
        if isinstance(name, str) and name and isinstance(tier, str) and tier:
            _LEARNT["tiers"][normalise_name(name)] = tier


class Described(Mapping):
    """A read-only name -> value table: the value the records described (``field`` of their
    ``kind`` description, passed through ``convert``), else the fallback table's."""

    def __init__(self, kind: str, field: str, fallback: Mapping, convert=lambda v: v):
        self.kind, self.field, self.fallback, self.convert = kind, field, dict(fallback), convert

    def _described(self, key):
        info = _LEARNT[self.kind].get(key)
        if info is not None and self.field in info:
            return self.convert(info[self.field])
        return self.fallback.get(key)

    def __getitem__(self, key):
        value = self._described(key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self):
        return iter(dict.fromkeys([*self.fallback, *_LEARNT[self.kind]]))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class DescribedSet(Described):
    """The names whose described ``field`` is true (``"quantize" in DESCENDING_ATTACKS``)."""

    def __contains__(self, key) -> bool:
        return bool(self._described(key))


# fallback for foreign records
_METRIC_LABELS = {
    "prob": "answer probability (per-token normalised)",
    "exact_match": "exact match (fraction of answers)",
    "rouge": "ROUGE-L recall",
    "truth_ratio": "truth ratio",
    "forget_quality": "forget quality (KS-test p-value)",
    "model_utility": "model utility (harmonic mean)",
    "mia_auc": "membership-inference AUC",
    "privleak": "PrivLeak (%)",
    "mc_accuracy": "multiple-choice accuracy",
    "margin": "latent margin (nats, correct - wrong)",
    "margin_win": "margin win rate (fraction correct > wrong)",
    "nll": "NLL (nats per token)",
    "loss": "loss (nats per token)",
}
_KNOWLEDGE = {"prob": True, "exact_match": True, "rouge": True, "margin": True, "margin_win": True,
              "mc_accuracy": True, "accuracy": True, "nll": False, "loss": False}
_ATTACK_NAMES = {"relearn": "relearning", "quantize": "quantization", "noise": "weight noise",
                 "prune": "magnitude pruning", "precision": "precision change",
                 "interpolate": "linear interpolation", "plane": "plane of three models", "none": "no attack"}
_ATTACK_AXES = {
    "relearn": "relearning steps (fine-tuning on forget items)",
    "quantize": "bits per weight (fewer = stronger attack)",
    "noise": "weight-noise scale (std relative to the weights)",
    "prune": "sparsity (fraction of weights pruned)",
    "precision": "bits per weight (floating point)",
    "interpolate": "interpolation coefficient α (0 = first model, 1 = second)",
}

METRIC_LABELS = Described("metrics", "label", _METRIC_LABELS)
# +1 if a higher value means more knowledge, -1 if lower does; metrics without one are absent
KNOWLEDGE_SIGN = Described("metrics", "knowledge", {k: 1 if v else -1 for k, v in _KNOWLEDGE.items()},
                           convert=lambda v: None if v is None else (1 if v else -1))
ATTACK_NAMES = Described("attacks", "label", _ATTACK_NAMES)
ATTACK_AXES = Described("attacks", "axis", _ATTACK_AXES)
# attacks whose numeric setting gets *weaker* as it grows (more bits = gentler)
DESCENDING_ATTACKS = DescribedSet("attacks", "descending", {"quantize": True, "precision": True})

TIERS: list[tuple[str, tuple[str, ...]]] = [
    ("second order", ("sophia", "sophiah", "sophiag")),
    ("first order", ("sgd", "adam", "adamw")),
    ("compressed", ("signsgd", "signadam", "qsgd", "qadam")),
    ("zeroth order", ("zo-sgd", "zo-adam", "adazo")),
    ("hybrid", ("hybrid",)),
    ("control", ("adam-noise",)),
    ("other", ()),
    ("sharpness-aware", ("sam",)),
]
KNOWN_OPTIMIZERS = [name for _, names in TIERS for name in names]


def normalise_name(name: str) -> str:
    """Lower case, ``_`` -> ``-`` (``ZO_Adam`` -> ``zo-adam``)."""
    return str(name).strip().lower().replace("_", "-")


def optimizer_tier(name: str) -> str:
    """The tier of an optimizer: what its records said, else by name (see :data:`TIERS`);
    unknown names are ``other``."""
    n = normalise_name(name)
    if n in _LEARNT["tiers"]:
        return _LEARNT["tiers"][n]
    if n.startswith("hybrid"):
        return "hybrid"
    if n == "sam" or n.startswith("sam-"):
        return "sharpness-aware"
    for tier, names in TIERS:
        if n in names:
            return tier
    if n.startswith("zo"):
        return "zeroth order"
    if n.startswith("sophia"):
        return "second order"
    return "other"


def optimizer_rank(name: str) -> tuple[int, int, str]:
    """Sort key: tier order, then the order within the tier in :data:`TIERS`, then the name."""
    tier = optimizer_tier(name)
    t = [t for t, _ in TIERS].index(tier)
    names = dict(TIERS)[tier]
    n = normalise_name(name)
    return (t, names.index(n) if n in names else len(names), n)


def order_optimizers(names) -> list[str]:
    """Unique names in tier order."""
    return sorted(dict.fromkeys(names), key=optimizer_rank)


# attacks on one model, in the order tables and figures show them
ATTACK_ORDER = ("relearn", "quantize", "noise", "prune", "precision")


def attack_rank(attack: str) -> tuple[int, str]:
    """Sort key: the clean model (``none``) first, then :data:`ATTACK_ORDER`, then by name."""
    if attack == "none":
        return (-1, "")
    return (ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else len(ATTACK_ORDER), attack)
