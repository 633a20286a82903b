"""Parsing of the repeated ``KEY=VALUE`` options that several commands share."""

from __future__ import annotations

import yaml

from unlearn.errors import BasinError


def key_values(items: list[str] | None, flag: str) -> dict:
    """Parse ``KEY=VALUE`` pairs; values are read as YAML scalars (numbers, booleans, strings)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise BasinError(f"{flag} expects KEY=VALUE, got {item!r} (e.g. {flag} beta=0.1)")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _scalar(value, flag, item)
    return out


def _scalar(value: str, flag: str, item: str):
    try:
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; a user means the number
            try:
                return float(parsed)
            except ValueError:
                return parsed
        return parsed
    except yaml.YAMLError:
        raise BasinError(f"{flag} {item!r}: the value is not a number, boolean, string or [list]; "
                         f"quote it or fix the brackets") from None


def attack_args(items: list[str] | None) -> dict:
    """Parse ``ATTACK.KEY=VALUE`` pairs into ``{attack: {key: value}}``."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        attack, dot, option = key.partition(".")
        if not sep or not dot:
            raise BasinError(f"--arg expects ATTACK.KEY=VALUE, got {item!r} (e.g. --arg relearn.lr=1e-3)")
        out.setdefault(attack.strip(), {})[option.strip().replace("-", "_")] = _scalar(value, "--arg", item)
    return out
