"""Device and dtype plumbing: bfloat16 and bf16-mixed runs on the CPU, zeroth-order steps without an
autograd graph and with a bit-exact restore in bf16, one clear error for a bad device or dtype, and
the GPU check's dry run."""

import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from basin.cli import main
from unlearn.data.benchmarks import Benchmark
from unlearn.errors import BasinError
from unlearn.loading import load_model
from unlearn.models import place, resolve_device, weights_hash
from unlearn.train import UnlearnConfig, unlearn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def patched_bench(monkeypatch, micro_world):
    import unlearn.train as train

    forget, retain = micro_world.split(0.1)
    bench = Benchmark("micro:forget10", forget, retain, micro_world.holdout, {"world_facts": micro_world.utility})
    monkeypatch.setattr(train, "load_benchmark", lambda name: bench)
    return bench


def _run(model, tok, **kw):
    cfg = dict(objective="npo", optimizer="adam", lr=1e-3, steps=3, batch_size=4, eval_every=3, save_every=0,
               seed=0, device="cpu")
    cfg.update(kw)
    return unlearn(UnlearnConfig(**cfg), model=model, tokenizer=tok, progress=False)


@pytest.mark.parametrize("optimizer", ["adam", "zo-sgd"])
@pytest.mark.parametrize("dtype", ["bfloat16", "bf16-mixed"])
def test_low_precision_steps_run_on_cpu(micro_model, micro_tokenizer, patched_bench, optimizer, dtype):
    before = copy.deepcopy(micro_model).to(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    result = _run(micro_model, micro_tokenizer, optimizer=optimizer, dtype=dtype)
    want = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    assert {p.dtype for p in result.model.parameters()} == {want}
    assert result.model is micro_model  # a model object is cast in place
    values = [r["value"] for r in result.records]
    assert values and all(math.isfinite(v) for v in values)
    assert weights_hash(result.model) != weights_hash(before)  # it moved
    # the rotary frequencies stay float32, as from_pretrained(dtype=bfloat16) keeps them
    assert {b.dtype for b in result.model.buffers()} == {torch.float32}


def test_float32_default_is_untouched(micro_model, micro_tokenizer, patched_bench):
    """device="cpu" / dtype="float32" give the same bits as the defaults (no cast, no autocast)."""
    a = _run(copy.deepcopy(micro_model), micro_tokenizer)
    cfg = UnlearnConfig(objective="npo", optimizer="adam", lr=1e-3, steps=3, batch_size=4, eval_every=3,
                        save_every=0)
    assert cfg.device == "auto" and cfg.dtype == "float32"
    if not torch.cuda.is_available():
        b = unlearn(cfg, model=copy.deepcopy(micro_model), tokenizer=micro_tokenizer, progress=False)
        assert weights_hash(a.model) == weights_hash(b.model)
        assert a.records == b.records


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_zeroth_order_probes_build_no_graph_and_restore_exactly(micro_model, micro_tokenizer, micro_world, dtype):
    """A ZO step's closure runs with autograd off; with lr = 0 the weights come back bit for bit,
    also in bfloat16 (the perturb / restore round trip is exact in any dtype)."""
    from unlearn.data.format import collate, encode_rows, pad_id_of
    from unlearn.objectives import make_objective
    from unlearn.optim import make_optimizer

    model = micro_model.to(dtype)
    examples = encode_rows(micro_tokenizer, micro_world.split(0.1)[0][:4])
    batch = {"forget": collate(examples, pad_id_of(micro_tokenizer)),
             "retain": collate(examples, pad_id_of(micro_tokenizer))}
    npo = make_objective("npo")
    prep = npo.prepare(copy.deepcopy(model), batch)
    seen = []

    def closure(i):
        terms = npo(model, batch, prep)
        seen.append((torch.is_grad_enabled(), any(t.requires_grad for t in terms.values())))
        return terms

    before = weights_hash(model)
    for name in ("zo-sgd", "adazo"):
        opt = make_optimizer(name, model, lr=0.0, seed=0, q=2)
        loss = opt.step(closure)
        assert math.isfinite(loss)
        assert weights_hash(model) == before, name
    assert seen and not any(grad or req for grad, req in seen)
    assert all(p.grad is None for p in model.parameters())


def test_bad_device_or_dtype_is_one_clear_error(micro_model, micro_tokenizer, tmp_path, capsys):
    with pytest.raises(BasinError, match="dtype 'float8' is not supported.*float32, bfloat16, bf16-mixed"):
        UnlearnConfig(dtype="float8")
    with pytest.raises(BasinError, match="float16 is not supported for training.*loss scaling"):
        UnlearnConfig(dtype="fp16")
    with pytest.raises(BasinError, match="device 'tpu' is not one basin knows"):
        UnlearnConfig(device="tpu")
    assert UnlearnConfig(dtype="bf16").dtype == "bfloat16"  # aliases are stored in one spelling
    if not torch.cuda.is_available():
        with pytest.raises(BasinError, match="torch sees no CUDA GPU"):
            unlearn(UnlearnConfig(device="cuda", steps=1), model=micro_model, tokenizer=micro_tokenizer,
                    out=tmp_path / "never", progress=False)
        assert not (tmp_path / "never").exists()  # fails before anything is written
        with pytest.raises(BasinError, match="auto-map.*no CUDA GPU"):
            resolve_device("auto-map")
        assert resolve_device("auto") == "cpu"
    with pytest.raises(BasinError, match="auto-map applies to models loaded by name"):
        place(micro_model, "auto-map")
    # the command line: exit status 2 and one line, no traceback
    assert main(["unlearn", "--model", "world:micro", "--dtype", "int4", "--steps", "1",
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "basin: error: dtype 'int4' is not supported" in err and "Traceback" not in err
    assert main(["audit", "world:micro", "--device", "gpu0", "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "device 'gpu0' is not one basin knows" in capsys.readouterr().err
    from audit.runner import AuditConfig

    with pytest.raises(BasinError, match="choose one of float32, bfloat16, float16"):
        AuditConfig(dtype="bf16-mixed")


def test_load_model_places_and_casts(micro_model, micro_tokenizer, tmp_path):
    micro_model.save_pretrained(tmp_path / "m")
    micro_tokenizer.save_pretrained(tmp_path / "m")
    loaded, _ = load_model(str(tmp_path / "m"), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    plain, _ = load_model(str(tmp_path / "m"))
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    assert weights_hash(plain) == weights_hash(micro_model)
    same, _ = load_model(micro_model, micro_tokenizer)  # objects are left alone unless asked
    assert same is micro_model and next(same.parameters()).dtype == torch.float32


def test_run_folder_resumes_on_another_device_and_old_configs(micro_model, micro_tokenizer, patched_bench, tmp_path):
    out = tmp_path / "run"
    first = unlearn(UnlearnConfig(objective="npo", optimizer="adam", lr=1e-3, steps=2, batch_size=4, eval_every=2,
                                  save_every=0, device="cpu"), model=micro_model, tokenizer=micro_tokenizer,
                    out=out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"] == "cpu" and manifest["dtype"] == "float32"
    # the device may change between a run and its rerun; a folder written before the fields existed is accepted
    saved = json.loads((out / "config.json").read_text())
    for key in ("device", "dtype"):
        saved.pop(key)
    (out / "config.json").write_text(json.dumps(saved))
    again = unlearn(UnlearnConfig(objective="npo", optimizer="adam", lr=1e-3, steps=2, batch_size=4, eval_every=2,
                                  save_every=0, device="auto"), out=out, progress=False)
    assert weights_hash(again.model) == weights_hash(first.model)
    with pytest.raises(BasinError, match="different config"):
        unlearn(UnlearnConfig(objective="npo", optimizer="adam", lr=1e-3, steps=2, batch_size=4, eval_every=2,
                              save_every=0, dtype="bfloat16"), out=out, progress=False)


def test_audit_in_bfloat16(micro_model, micro_tokenizer, patched_bench):
    from audit.runner import AuditConfig, audit

    df = audit(micro_model, micro_tokenizer, progress=False, config=AuditConfig(
        benchmark=patched_bench, attacks=("noise",), attack_args={"noise": {"scales": (0.01,)}},
        metrics=("prob", "exact_match"), device="cpu", dtype="bfloat16"))
    assert next(micro_model.parameters()).dtype == torch.bfloat16  # objects are cast in place
    assert set(df.attack) == {"none", "noise"} and df["value"].map(math.isfinite).all()


def test_gpu_check_dry_run(tmp_path):
    """bench/gpu_check.py --dry-run: every stage end to end with tiny sizes, on whatever device."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    env.pop("OUT", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--budget", "120",
                           "--out", str(tmp_path / "gpu_check.json")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {name: r["status"] for name, r in result["stages"].items()}
    assert status["env"] == status["unlearn"] == status["p7"] == "ok", status
    assert status["nf4"] in ("ok", "skipped"), status
    p7 = result["stages"]["p7"]
    assert p7["fo_mfu"] > 0 and p7["zo_over_fo"] > 0 and "peak_assumed" in result
    assert "stage" in proc.stdout and "FO MFU" in proc.stdout  # the summary table
    assert seconds < 60, seconds
