"""Optimizer names and tiers, shared by tables, plots and cards."""

from __future__ import annotations

TIERS: list[tuple[str, tuple[str, ...]]] = [
    ("second order", ("sophia", "sophiah", "sophiag")),
    ("first order", ("sgd", "adam", "adamw")),
    ("compressed", ("signsgd", "signadam", "qsgd", "qadam")),
    ("zeroth order", ("zo-sgd", "zo-adam", "adazo")),
    ("hybrid", ("hybrid",)),
    ("other", ()),
    ("sharpness-aware", ("sam",)),
]
KNOWN_OPTIMIZERS = [name for _, names in TIERS for name in names]


def normalise_name(name: str) -> str:
    """Lower case, ``_`` -> ``-`` (``ZO_Adam`` -> ``zo-adam``)."""
    return str(name).strip().lower().replace("_", "-")


def optimizer_tier(name: str) -> str:
    """The tier of an optimizer name (see :data:`TIERS`); unknown names are ``other``."""
    n = normalise_name(name)
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
# attacks whose numeric setting gets *weaker* as it grows (more bits = gentler)
DESCENDING_ATTACKS = ("quantize", "precision")


def attack_rank(attack: str) -> tuple[int, str]:
    """Sort key: the clean model (``none``) first, then :data:`ATTACK_ORDER`, then by name."""
    if attack == "none":
        return (-1, "")
    return (ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else len(ATTACK_ORDER), attack)
