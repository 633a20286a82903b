"""The house rules, checked: one-way packages (import contracts in pyproject.toml), no imports of
our own code hidden inside functions, no private names across modules, and registries that describe
themselves to the report."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("basin", "analysis", "audit", "unlearn")
DEFER_NOTE = re.compile(r"#.*\bdefer", re.IGNORECASE)


def _sources(*packages: str):
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_import_contracts_hold():
    """lint-imports on pyproject.toml's contracts (layers, forbidden arrows, no sibling cycles)."""
    proc = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--no-cache"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def _own_imports_in_functions(path: Path):
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
                yield node
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in PACKAGES for a in node.names):
                yield node


def test_no_import_of_our_own_code_inside_functions():
    """Allowed only to defer a heavy optional dependency, with a comment saying so."""
    offenders = []
    for path in _sources(*PACKAGES):
        lines = path.read_text().splitlines()
        for node in _own_imports_in_functions(path):
            context = " ".join(lines[max(node.lineno - 2, 0):node.lineno])
            if not DEFER_NOTE.search(context):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "imports of basin's own code inside functions: " + ", ".join(offenders)


def test_no_private_names_imported_across_modules():
    offenders = []
    for path in _sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
                module = node.module or ""
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                if private or any(part.startswith("_") and part != "__init__" for part in module.split(".")):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {module} {private}")
    assert not offenders, offenders


def test_unlearn_never_names_the_packages_above_it():
    """Not even in strings: the bottom package knows nothing of audit, analysis or the app layer."""
    pattern = re.compile(r"\b(audit|analysis)\b", re.IGNORECASE)
    offenders = []
    for path in _sources("unlearn"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_every_metric_the_audit_writes_is_described_for_the_report():
    from analysis import names
    from audit.metrics import METRICS
    from audit.runner import AUDIT_METRICS

    described = {**{n: m.describe() for n, m in METRICS.items()}, **AUDIT_METRICS}
    for name, info in described.items():
        assert info["label"] and info["label"] != name, name
        assert "higher_is_better" in info and "knowledge" in info, name
    names.learn({"metrics": described})
    for name, info in described.items():
        assert names.METRIC_LABELS[name] == info["label"]
        sign = None if info["knowledge"] is None else (1 if info["knowledge"] else -1)
        assert names.KNOWLEDGE_SIGN.get(name) == sign


def test_every_attack_and_optimizer_describes_itself():
    from audit.attacks import ATTACKS
    from unlearn.optim import OPTIMIZERS

    for name, attack in ATTACKS.items():
        info = attack.describe()
        assert info["label"] and info["axis"], name
        assert set(attack.defaults) <= set(attack.options), name
    assert ATTACKS["quantize"].defaults["methods"] == ("rtn", "nf4")  # the audit's one source of defaults
    tiers = {"second order", "first order", "compressed", "zeroth order", "hybrid", "sharpness-aware",
             "control"}
    for name, factory in OPTIMIZERS.items():
        assert factory.tier in tiers, name


@pytest.mark.parametrize("snippet, ok", [
    ("def f():\n    from unlearn.models import build_model\n", False),
    ("def f():\n    # deferred: bitsandbytes is a heavy optional dependency\n    from audit.attacks import quantize\n", True),
    ("def f():\n    import numpy\n", True),
])
def test_the_inside_function_rule_itself(tmp_path, snippet, ok):
    path = tmp_path / "m.py"
    path.write_text(snippet)
    found = list(_own_imports_in_functions(path))
    lines = snippet.splitlines()
    flagged = [n for n in found if not DEFER_NOTE.search(" ".join(lines[max(n.lineno - 2, 0):n.lineno]))]
    assert (not flagged) == ok
