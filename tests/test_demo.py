"""End to end: `basin demo --quick` and the quick-start notebook, on the embedded default world.

Both run on the micro size (``--size micro``: the same pipeline as the default tiny one, at about a
quarter of its cost) and build its original and retain-only models on the default world once per
test session (the session's private cache is shared), so they are marked slow.
"""

import json
import os
from pathlib import Path

import pytest

from basin.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.xdist_group("micro-world")   # run in parallel, one worker builds the micro world once for both
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--size", "micro", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    index = out / "report" / "index.html"
    assert index.exists() and f"report: {index}" in printed
    verdicts = [ln.strip() for ln in printed.splitlines() if ln.startswith("  [")]
    assert len(verdicts) >= 5
    for line in verdicts:
        assert line.split("]")[0][1:] in {"reproduced", "not reproduced", "inconclusive"}
    assert printed.count("recovers less forgotten knowledge") >= 3
    html = index.read_text()
    assert "hybrid" in html and "adam" in html
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == sorted(f"{o}-s{s}" for o in ("adam", "signadam", "adazo", "hybrid", "sophia") for s in (0, 1))
    config = json.loads((out / "runs" / "adam-s0" / "config.json").read_text())
    assert config["model"] == "world:micro" and config["steps"] == 40
    # a second run resumes: every stage is reused
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("manifest.json")}
    assert main(["demo", "--quick", "--size", "micro", "--out", str(out), "--quiet"]) == 0
    assert "world and models ready in 0 s" in capsys.readouterr().out
    assert stamps and {p: p.stat().st_mtime_ns for p in out.rglob("manifest.json")} == stamps


@pytest.mark.slow
@pytest.mark.xdist_group("micro-world")
def test_quickstart_notebook_runs():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    params = next(c for c in nb.cells if c.source.startswith("# Parameters"))
    params.source = "SIZE = \"micro\"\nSTEPS = 20\nSEED = 0"
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute(env=dict(os.environ))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2


@pytest.mark.slow
def test_demo_on_a_pretrained_base(trained_micro, tmp_path):
    """`basin demo --base MODEL` in miniature: the micro model stands in for SmolLM2. The base is
    fine-tuned on a small world (original and gold model), then the adam / hybrid grid is unlearned,
    audited and reported, with verdicts only on the claims those two optimizers can test."""
    import json

    from basin.demo import DemoConfig, run_demo

    model, tok, _ = trained_micro
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    config = DemoConfig.pretrained(str(base), out=str(tmp_path / "demo"), seeds=(0, 1), steps=4,
                                   fit={"max_steps": 6, "eval_every": 3}, relearn_steps=(2,),
                                   max_retain=10, device="cpu")
    lines = []
    result = run_demo(config, cache_dir=tmp_path / "cache", progress=False, log=lines.append)
    fits = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "models").glob("*/basin_fit.json")]
    assert sorted(f["split"] for f in fits) == ["full", "retain80"]
    assert all(f["base"] == str(base) and f["steps"] <= 6 for f in fits)
    runs = sorted(p.name for p in (tmp_path / "demo" / "runs").iterdir())
    assert runs == ["adam-s0", "adam-s1", "hybrid-s0", "hybrid-s1"]
    saved = json.loads((tmp_path / "demo" / "runs" / "adam-s0" / "config.json").read_text())
    assert saved["benchmark"] == "world:forget20" and saved["benchmark_args"]["n_people"] == 10
    from analysis.verdicts import claims_for

    assert list(result["verdicts"]["claim"]) == [c.name for c in claims_for(("adam", "hybrid"))]
    assert {"hybrid-vs-adam-relearn", "hybrid-vs-adam-quantize"} <= set(result["verdicts"]["claim"])
    assert result["report"].exists() and "[3/3]" in lines[-1]
