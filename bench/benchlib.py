"""The preamble the benchmark scripts in bench/ share: environment defaults, basin's own code on
the import path, the machine's load as text, and the kernel's resident-set counters.

Import it before torch (``import benchlib`` sorts before ``import torch``): on import it sets,
unless already set, ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning on
a shared machine), ``TOKENIZERS_PARALLELISM=false`` and ``HF_HUB_OFFLINE`` /
``HF_DATASETS_OFFLINE=1`` (nothing is downloaded), and puts the repository root on ``sys.path``
(basin's code without ``pip install -e .``). The scripts run as ``python bench/<script>.py``, so
bench/ is ``sys.path[0]`` and this module imports by its bare name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _name, _value in (("OMP_WAIT_POLICY", "PASSIVE"), ("TOKENIZERS_PARALLELISM", "false"),
                      ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1")):
    os.environ.setdefault(_name, _value)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_text() -> str:
    """The load average in one line, e.g. ``load average 1.02 / 0.87 / 0.80 (1 / 5 / 15 min) on 2 cpus``."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} cpus"


def status_bytes(field: str) -> int:
    """A field of /proc/self/status (``VmRSS``, ``VmHWM``, ...) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Reset the peak resident set (``VmHWM``) to the current one, through /proc/self/clear_refs."""
    Path("/proc/self/clear_refs").write_text("5")
