"""Seeded randomness for the optimizers: every random draw comes from a dedicated
``torch.Generator`` whose seed is a pure function of (optimizer seed, step, purpose, indices).

Nothing here touches the global RNG. Because a seed depends only on those keys, a resumed run
(which restores the step counter) draws exactly the same numbers as an uninterrupted one, and a
zeroth-order direction can be regenerated at will for each of MeZO's passes instead of being
stored (Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes").
"""

from __future__ import annotations

import zlib

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One round of SplitMix64 (Steele et al. 2014): a fast 64-bit mixing bijection."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*keys: int | str) -> int:
    """A 63-bit seed mixed from ``keys`` (ints, or strings naming a purpose).

    >>> derive_seed(0, 5, "zo", 1, 2) == derive_seed(0, 5, "zo", 1, 2)
    True
    >>> derive_seed(0, 5, "zo", 1, 2) != derive_seed(0, 5, "zo", 2, 1)
    True
    """
    h = 0x243F6A8885A308D3  # digits of pi: an arbitrary non-zero start
    for key in keys:
        if isinstance(key, str):
            key = zlib.crc32(key.encode())
        h = _splitmix64(h ^ (int(key) & _MASK64))
    return h >> 1


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)
