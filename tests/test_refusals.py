"""Commands refuse before they write: a table of bad inputs across every command.

Each case runs ``basin ...`` in process and must give exit status 2, one line on stderr without a
traceback, and leave the scratch folder and the model cache exactly as they were (every file's
path and bytes); the run and audit folders some cases point at stay byte-identical. Refusals are
cheap by construction (nothing is trained), so the whole table runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from basin.cli import main

BENCH = ["--benchmark", "world:forget10", "--benchmark-arg", "n_people=20", "--benchmark-arg", "n_holdout=4",
         "--benchmark-arg", "n_countries=4"]
UNLEARN = ["unlearn", "--model", "{model}", *BENCH, "--steps", "2", "--device", "cpu", "--out", "{tmp}/run",
           "--quiet"]
AUDIT = ["audit", "{run}", "--device", "cpu", "--out", "{tmp}/audit", "--quiet"]
WORLD = ["world", "build", "--cache", "{tmp}/cache", "--quiet"]


def spec(**fields) -> dict:
    """A sweep spec on the micro model, with ``fields`` changed."""
    base = {"out": "{tmp}/sweep", "unlearn": {"model": "{model}", "benchmark": "world:forget10",
                                              "benchmark_args": {"n_people": 20, "n_holdout": 4, "n_countries": 4},
                                              "steps": 2, "device": "cpu"},
            "grid": {"optimizer": ["adam"], "seed": [0]}, "audit": {"attacks": ["quantize"], "device": "cpu"}}
    return {**base, **fields}


STUDY = """
name: refusals
version: 1
question: q
out: {tmp}/report
work: {tmp}/work
min_seeds: 2
claims: [hybrid-vs-adam-relearn]
regimes:
  mini:
    model: {size: micro}
    seeds: [0, 1]
    objectives: {npo: {}}
    unlearn: {steps: 2}
    arms:
      adam: {optimizer: adam, start: 1.0e-3}
      hybrid: {optimizer: hybrid, optimizer_args: {n_fo: 1, n_zo: 1}, start: 1.0e-3}
    calibration: {targets: [gold], seeds: [1000], max_probes: 1}
    audit: {attacks: {quantize: {methods: [rtn], bits: [4]}}}
"""

# (id, argv, files to write first: name -> text or a sweep spec dict)
CASES = [
    # basin world build
    ("world-one-person", [*WORLD, "--people", "1"], {}),
    ("world-zero-people", [*WORLD, "--people", "0"], {}),
    ("world-people-not-a-number", [*WORLD, "--people", "many"], {}),
    ("world-no-holdout", [*WORLD, "--holdout", "0"], {}),
    ("world-negative-countries", [*WORLD, "--countries", "-3"], {}),
    ("world-forget-zero", [*WORLD, "--forget", "0"], {}),
    ("world-forget-above-one", [*WORLD, "--forget", "1.5"], {}),
    ("world-forget-selects-nobody", [*WORLD, "--forget", "0.001"], {}),
    ("world-unknown-size", [*WORLD, "--size", "huge"], {}),
    ("world-unknown-device", [*WORLD, "--device", "tpu"], {}),
    ("world-missing-gpu", [*WORLD, "--device", "cuda:99"], {}),
    ("world-float16", [*WORLD, "--dtype", "float16"], {}),
    ("world-zero-steps", [*WORLD, "--max-steps", "0"], {}),
    ("world-missing-base", [*WORLD, "--base", "{tmp}/nowhere"], {}),
    ("world-base-without-weights", [*WORLD, "--base", "{empty}"], {}),
    ("world-cache-is-a-file", ["world", "build", "--cache", "{file}", "--quiet"], {}),
    # basin unlearn
    ("unlearn-misspelt-objective", [*UNLEARN, "--objective", "npoo"], {}),
    ("unlearn-misspelt-optimizer", [*UNLEARN, "--optimizer", "adma"], {}),
    ("unlearn-npo-beta-zero", [*UNLEARN, "--obj", "beta=0"], {}),
    ("unlearn-npo-beta-text", [*UNLEARN, "--obj", "beta=fast"], {}),
    ("unlearn-negative-gamma", [*UNLEARN, "--obj", "gamma=-1"], {}),
    ("unlearn-unknown-objective-option", [*UNLEARN, "--obj", "bogus=1"], {}),
    ("unlearn-objective-option-without-value", [*UNLEARN, "--obj", "beta"], {}),
    ("unlearn-rmu-fractional-layer", [*UNLEARN, "--objective", "rmu", "--obj", "layer=1.5"], {}),
    ("unlearn-simnpo-negative-beta", [*UNLEARN, "--objective", "simnpo", "--obj", "beta=-2"], {}),
    ("unlearn-adam-b1-above-one", [*UNLEARN, "--opt", "b1=1.5"], {}),
    ("unlearn-adam-has-no-q", [*UNLEARN, "--opt", "q=4"], {}),
    ("unlearn-hybrid-zero-block", [*UNLEARN, "--optimizer", "hybrid", "--opt", "n_fo=0"], {}),
    ("unlearn-zo-unknown-directions", [*UNLEARN, "--optimizer", "adazo", "--opt", "directions=diagonal"], {}),
    ("unlearn-qsgd-nine-bits", [*UNLEARN, "--optimizer", "qsgd", "--opt", "bits=9"], {}),
    ("unlearn-hybrid-options-not-a-mapping", [*UNLEARN, "--optimizer", "hybrid", "--opt", "fo_options=3"], {}),
    ("unlearn-config-unknown-attention", [*UNLEARN, "--config", "{tmp}/a.yaml"], {"a.yaml": "attn_implementation: magic\n"}),
    ("unlearn-zero-lr", [*UNLEARN, "--lr", "0"], {}),
    ("unlearn-zero-steps", [*UNLEARN, "--steps", "0"], {}),
    ("unlearn-accum-not-dividing", [*UNLEARN, "--batch-size", "8", "--grad-accum", "3"], {}),
    ("unlearn-unknown-schedule", [*UNLEARN, "--schedule", "warp"], {}),
    ("unlearn-negative-epochs", [*UNLEARN, "--epochs", "-1"], {}),
    ("unlearn-no-eval-rows", [*UNLEARN, "--eval-max-rows", "0"], {}),
    ("unlearn-negative-save-every", [*UNLEARN, "--save-every", "-1"], {}),
    ("unlearn-unknown-device", [*UNLEARN, "--device", "tpu"], {}),
    ("unlearn-missing-gpu", [*UNLEARN, "--device", "cuda:99"], {}),
    ("unlearn-float16", [*UNLEARN, "--dtype", "float16"], {}),
    ("unlearn-missing-model", [*UNLEARN, "--model", "{tmp}/nowhere"], {}),
    ("unlearn-model-without-config", [*UNLEARN, "--model", "{empty}"], {}),
    ("unlearn-unknown-world-size", [*UNLEARN, "--model", "world:huge"], {}),
    ("unlearn-bad-split", [*UNLEARN, "--benchmark", "world:forget150"], {}),
    ("unlearn-unknown-benchmark", [*UNLEARN, "--benchmark", "wrold:forget10"], {}),
    ("unlearn-misspelt-benchmark-arg", [*UNLEARN, "--benchmark-arg", "n_peple=20"], {}),
    ("unlearn-config-not-a-mapping", [*UNLEARN, "--config", "{tmp}/list.yaml"], {"list.yaml": "- lr\n- steps\n"}),
    ("unlearn-config-lr-text", [*UNLEARN, "--config", "{tmp}/lr.yaml"], {"lr.yaml": "lr: fast\n"}),
    ("unlearn-config-options-not-a-mapping", [*UNLEARN, "--config", "{tmp}/o.yaml"], {"o.yaml": "objective_args: 3\n"}),
    ("unlearn-config-unknown-field", [*UNLEARN, "--config", "{tmp}/f.yaml"], {"f.yaml": "learning_rate: 1\n"}),
    ("unlearn-missing-config", [*UNLEARN, "--config", "{tmp}/none.yaml"], {}),
    ("unlearn-out-is-a-file", [*UNLEARN[:-3], "--out", "{file}"], {}),
    ("unlearn-existing-run-other-config", [*UNLEARN[:-3], "--out", "{run}", "--lr", "0.5"], {}),
    # basin audit
    ("audit-misspelt-attack", [*AUDIT, "--attacks", "relearn,quantise"], {}),
    ("audit-arg-for-attack-not-run", [*AUDIT, "--attacks", "relearn", "--arg", "quantize.bits=4"], {}),
    ("audit-misspelt-attack-option", [*AUDIT, "--attacks", "relearn", "--arg", "relearn.lrr=1"], {}),
    ("audit-attack-option-text", [*AUDIT, "--attacks", "relearn", "--arg", "relearn.lr=fast"], {}),
    ("audit-attack-option-list-item", [*AUDIT, "--attacks", "relearn", "--arg", "relearn.steps=[1,x]"], {}),
    ("audit-attack-option-without-dot", [*AUDIT, "--arg", "relearn=3"], {}),
    ("audit-relearn-subset-too-large", [*AUDIT, "--attacks", "relearn", "--arg", "relearn.size=50"], {}),
    ("audit-interpolate-one-point", [*AUDIT, "--attacks", "interpolate", "--arg", "interpolate.points=1"], {}),
    ("audit-unknown-quantizer", [*AUDIT, "--attacks", "quantize", "--arg", "quantize.methods=[rtn,gptx]"], {}),
    ("audit-prune-above-one", [*AUDIT, "--attacks", "prune", "--arg", "prune.sparsities=[0.5,1.5]"], {}),
    ("audit-misspelt-metric", [*AUDIT, "--metrics", "prob,nlll"], {}),
    ("audit-original-other-size", [*AUDIT, "--original", "world:tiny"], {}),
    ("audit-original-other-shapes", [*AUDIT, "--original", "{wide}"], {}),
    ("audit-missing-retain", [*AUDIT, "--retain", "{tmp}/nowhere"], {}),
    ("audit-interpolate-without-original", ["audit", "{model}", *BENCH, "--attacks", "interpolate", "--device",
                                            "cpu", "--out", "{tmp}/audit"], {}),
    ("audit-missing-model", ["audit", "{tmp}/nowhere", "--out", "{tmp}/audit"], {}),
    ("audit-unknown-device", [*AUDIT, "--device", "tpu"], {}),
    ("audit-unknown-dtype", [*AUDIT, "--dtype", "int8"], {}),
    ("audit-negative-max-retain", [*AUDIT, "--max-retain", "-1"], {}),
    ("audit-misspelt-muse-option", [*AUDIT, "--muse-arg", "limt=3"], {}),
    ("audit-lmeval-arg-without-task", [*AUDIT, "--lmeval-arg", "limit=5"], {}),
    ("audit-misspelt-benchmark-arg", [*AUDIT, "--benchmark-arg", "n_peple=20"], {}),
    ("audit-into-a-run-folder", [*AUDIT[:-3], "--out", "{run}"], {}),
    ("audit-existing-audit-bad-attack", [*AUDIT[:-3], "--out", "{audit}", "--attacks", "bogus"], {}),
    ("audit-out-is-a-file", [*AUDIT[:-3], "--out", "{file}"], {}),
    # basin report
    ("report-missing-folder", ["report", "{tmp}/nowhere", "--out", "{tmp}/report"], {}),
    ("report-folder-without-records", ["report", "{empty}", "--out", "{tmp}/report"], {}),
    ("report-malformed-records", ["report", "{tmp}/bad.jsonl", "--out", "{tmp}/report"], {"bad.jsonl": "{oops\n"}),
    ("report-record-without-value", ["report", "{tmp}/r.jsonl", "--out", "{tmp}/report"],
     {"r.jsonl": '{"metric": "prob", "split": "forget"}\n'}),
    ("report-into-an-audit-folder", ["report", "{run}", "--out", "{audit}"], {}),
    ("report-out-is-a-file", ["report", "{run}", "--out", "{file}"], {}),
    ("report-no-runs", ["report", "--out", "{tmp}/report"], {}),
    # basin sweep
    ("sweep-missing-spec", ["sweep", "{tmp}/none.yaml"], {}),
    ("sweep-spec-not-a-mapping", ["sweep", "{tmp}/s.yaml"], {"s.yaml": "- adam\n"}),
    ("sweep-unknown-field", ["sweep", "{tmp}/s.yaml"], {"s.yaml": spec(jobs=3)}),
    ("sweep-misspelt-optimizer", ["sweep", "{tmp}/s.yaml"], {"s.yaml": spec(grid={"optimizer": ["adma"]})}),
    ("sweep-empty-grid-values", ["sweep", "{tmp}/s.yaml"], {"s.yaml": spec(grid={"seed": []})}),
    ("sweep-misspelt-engine", ["sweep", "{tmp}/s.yaml", "--engine", "rya"], {"s.yaml": spec()}),
    ("sweep-recipe-for-unknown-optimizer", ["sweep", "{tmp}/s.yaml"], {"s.yaml": spec(recipes={"adma": {"lr": 1}})}),
    ("sweep-local-engine-option", ["sweep", "{tmp}/s.yaml"], {"s.yaml": spec(engine_args={"num_cpus": 1})}),
    ("sweep-npo-beta-zero", ["sweep", "{tmp}/s.yaml"],
     {"s.yaml": spec(unlearn={**spec()["unlearn"], "objective_args": {"beta": 0}})}),
    ("sweep-arg-for-attack-not-run", ["sweep", "{tmp}/s.yaml"],
     {"s.yaml": spec(audit={"attacks": ["quantize"], "attack_args": {"relearn": {"lr": 1}}})}),
    ("sweep-missing-model", ["sweep", "{tmp}/s.yaml"], {"s.yaml": spec(unlearn={"model": "{tmp}/nowhere"})}),
    ("sweep-out-is-a-file", ["sweep", "{tmp}/s.yaml", "--out", "{file}"], {"s.yaml": spec()}),
    # basin study
    ("study-missing-file", ["study", "{tmp}/none.yaml"], {}),
    ("study-file-not-a-mapping", ["study", "{tmp}/s.yaml"], {"s.yaml": "- adam\n"}),
    ("study-misspelt-regime", ["study", "{tmp}/s.yaml", "--regime", "minii"], {"s.yaml": STUDY}),
    ("study-misspelt-objective", ["study", "{tmp}/s.yaml", "--objective", "npoo"], {"s.yaml": STUDY}),
    ("study-too-few-seeds", ["study", "{tmp}/s.yaml"], {"s.yaml": STUDY.replace("seeds: [0, 1]", "seeds: [0]")}),
    ("study-misspelt-arm-optimizer", ["study", "{tmp}/s.yaml"], {"s.yaml": STUDY.replace("optimizer: adam,", "optimizer: adma,")}),
    ("study-misspelt-claim", ["study", "{tmp}/s.yaml"], {"s.yaml": STUDY.replace("hybrid-vs-adam-relearn", "hybrid-vs-adam-relern")}),
    ("study-work-is-a-file", ["study", "{tmp}/s.yaml", "--work", "{file}"], {"s.yaml": STUDY}),
    ("study-out-is-a-file", ["study", "{tmp}/s.yaml", "--out", "{file}"], {"s.yaml": STUDY}),
    ("study-local-engine-option", ["study", "{tmp}/s.yaml"],
     {"s.yaml": STUDY.replace("    audit:", "    engine_args: {num_cpus: 1}\n    audit:")}),
    ("study-misspelt-engine", ["study", "{tmp}/s.yaml", "--engine", "rya"], {"s.yaml": STUDY}),
    # basin demo
    ("demo-zero-seeds", ["demo", "--seeds", "0", "--out", "{tmp}/demo"], {}),
    ("demo-float16", ["demo", "--dtype", "float16", "--out", "{tmp}/demo"], {}),
    ("demo-misspelt-engine", ["demo", "--engine", "rya", "--out", "{tmp}/demo"], {}),
    ("demo-unknown-device", ["demo", "--device", "tpu", "--out", "{tmp}/demo"], {}),
    ("demo-missing-gpu", ["demo", "--device", "cuda:99", "--out", "{tmp}/demo"], {}),
    ("demo-missing-base", ["demo", "--base", "{tmp}/nowhere", "--out", "{tmp}/demo"], {}),
    ("demo-cache-is-a-file", ["demo", "--cache", "{file}", "--out", "{tmp}/demo"], {}),
    ("demo-out-is-a-file", ["demo", "--out", "{file}"], {}),
    ("demo-misspelt-size", ["demo", "--size", "mikro", "--out", "{tmp}/demo"], {}),
    ("demo-size-and-base", ["demo", "--size", "micro", "--base", "smollm2-135m", "--out", "{tmp}/demo"], {}),
]


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``: relative path -> SHA-256 of the bytes ("dir" for folders)."""
    out = {}
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        rel = str(path.relative_to(folder))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory, micro_tokenizer):
    """A micro model folder, a model of other shapes, a finished two-step run, an audit folder, an
    empty folder and a plain file, in one folder every case may point at."""
    from unlearn.models import build_model

    root = tmp_path_factory.mktemp("scene")
    model = build_model("micro", micro_tokenizer, torch.Generator().manual_seed(0))
    model.save_pretrained(root / "model")
    micro_tokenizer.save_pretrained(root / "model")
    wide = build_model("tiny", micro_tokenizer, torch.Generator().manual_seed(0))
    wide.save_pretrained(root / "wide")
    micro_tokenizer.save_pretrained(root / "wide")
    assert main([a.replace("{model}", str(root / "model")).replace("{tmp}/run", str(root / "run"))
                 for a in UNLEARN] + ["--eval-every", "1"]) == 0
    (root / "audit").mkdir()
    (root / "audit" / "config.json").write_text(json.dumps({"kind": "audit", "attacks": ["quantize"]}))
    (root / "audit" / "records.jsonl").write_text((root / "run" / "records.jsonl").read_text())
    (root / "empty").mkdir()
    (root / "file").write_text("not a folder\n")
    return root


def fill(text: str, scene: Path, tmp: Path) -> str:
    for key, path in (("{tmp}", tmp), ("{model}", scene / "model"), ("{wide}", scene / "wide"),
                      ("{run}", scene / "run"), ("{audit}", scene / "audit"), ("{empty}", scene / "empty"),
                      ("{file}", scene / "file")):
        text = text.replace(key, str(path))
    return text


@pytest.mark.parametrize("argv, files", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_before_anything_is_written(argv, files, scene, tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.setenv("BASIN_CACHE", os.environ["BASIN_CACHE"])  # demo --cache sets it; restore it
    for name, content in files.items():
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        (tmp_path / name).write_text(fill(text, scene, tmp_path))
    cache = Path(os.environ["BASIN_CACHE"])
    before = (tree(tmp_path), tree(scene), tree(cache))
    capsys.readouterr()
    try:
        status = main([fill(a, scene, tmp_path) for a in argv])
    except SystemExit as exit_:  # argparse refuses by exiting
        status = exit_.code
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("basin"), err
    assert (tree(tmp_path), tree(scene), tree(cache)) == before, f"a refused command wrote: {err}"


def test_catalogue_covers_every_command():
    commands = {c[1][0] for c in CASES}
    assert commands == {"world", "unlearn", "audit", "report", "sweep", "demo", "study"} and len(CASES) >= 40


def test_the_python_api_refuses_the_same_way(scene, tmp_path):
    """unlearn() and audit() refuse before writing, like the commands in front of them."""
    from audit.runner import AuditConfig, audit
    from unlearn.errors import BasinError
    from unlearn.train import UnlearnConfig, unlearn

    world = {"n_people": 20, "n_holdout": 4, "n_countries": 4}
    config = UnlearnConfig(model=str(scene / "model"), benchmark_args=world, objective_args={"beta": 0}, device="cpu")
    with pytest.raises(BasinError, match="NPO beta must be a number > 0"):
        unlearn(config, out=tmp_path / "run")
    with pytest.raises(BasinError, match="which this audit does not run"):
        audit(str(scene / "run"), config=AuditConfig(attacks=("quantize",), attack_args={"noise": {"draws": 2}},
                                                     device="cpu"), out=tmp_path / "audit")
    with pytest.raises(BasinError, match="different architectures: hidden_size is 128 in the first and 64"):
        audit(str(scene / "run"), original=str(scene / "wide"), config=AuditConfig(device="cpu"),
              out=tmp_path / "audit")
    assert tree(tmp_path) == {}
