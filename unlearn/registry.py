"""Registries are plain dicts; :func:`lookup` turns a miss into a did-you-mean error."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Mapping, TypeVar

from unlearn.errors import BasinError, require

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
    """Return ``registry[name]`` or raise a :class:`BasinError` that suggests close names.

    >>> lookup({"adam": 1, "sgd": 2}, "adma", "optimizer")
    Traceback (most recent call last):
    ...
    unlearn.errors.BasinError: unknown optimizer 'adma'; did you mean 'adam'? available: adam, sgd
    """
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise BasinError(f"unknown {kind} {name!r}{hint} available: {', '.join(sorted(registry))}")


def from_fields(cls, data: dict, what: str):
    """``cls(**data)`` for a dataclass ``cls``, refusing keys that are not its fields (naming the
    known ones): how every config is read from a dict or a YAML file."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    require(not unknown, f"unknown {what} field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return cls(**data)
