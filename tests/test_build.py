"""`basin world build`: cache hits, atomic entries, the CLI's bad-input handling."""

import os
import time

import pytest
import torch

import unlearn.build as build_mod
from unlearn.build import BuildConfig, build
from basin.cli import main
from unlearn.data.world import WorldConfig
from unlearn.pretrain import FitConfig

SMALL = BuildConfig(world=WorldConfig(n_people=10, n_holdout=2, n_countries=2), size="micro",
                    forget="forget10", fit=FitConfig(max_steps=20, eval_every=10, batch_size=8),
                    vocab_size=300)


def test_second_build_is_a_cache_hit(tmp_path, monkeypatch):
    first = build(SMALL, cache_dir=tmp_path, progress=False)
    assert first.cache_hits == {"world": False, "original": False, "retain": False}
    assert (first.original_dir / "model.safetensors").exists()
    assert (first.original_dir / "tokenizer.json").exists()
    assert first.original_fit["steps"] == 20 and "forget" in first.original_fit["eval"]

    def no_training(*a, **k):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(build_mod, "fit", no_training)
    start = time.perf_counter()
    second = build(SMALL, cache_dir=tmp_path, progress=False)
    assert second.cache_hits == {"world": True, "original": True, "retain": True}
    assert second.original_dir == first.original_dir and time.perf_counter() - start < 5


def test_interrupted_build_leaves_no_entry(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(SMALL, cache_dir=tmp_path, progress=False)
    models = tmp_path / "models"
    assert not models.exists() or os.listdir(models) == []


def test_cli_build_and_errors(tmp_path, capsys):
    args = ["world", "build", "--people", "10", "--holdout", "2", "--countries", "2", "--size", "micro",
            "--max-steps", "10", "--cache", str(tmp_path), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "original" in out and "retain" in out and "answer prob" in out
    assert main(args) == 0 and "cache hit" in capsys.readouterr().out


def test_cli_build_on_a_pretrained_base(trained_micro, tmp_path, capsys):
    """--base fine-tunes a copy of a pretrained model (here the micro model) on the world, with the
    base's tokenizer, in the dtype asked for, and prints how to name the small world."""
    import json

    from safetensors.torch import load_file

    model, tok, _ = trained_micro
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    args = ["world", "build", "--base", str(base), "--people", "5", "--holdout", "1", "--countries", "1",
            "--forget", "0.2", "--max-steps", "3", "--dtype", "bfloat16", "--cache", str(tmp_path / "c"), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "--benchmark world:forget20 --benchmark-arg n_people=5 --benchmark-arg n_holdout=1" in out
    folders = sorted((tmp_path / "c" / "models").iterdir())
    assert [f.name.split("-")[1] for f in folders] == ["full", "retain80"]
    for folder in folders:
        fit_info = json.loads((folder / "basin_fit.json").read_text())
        assert fit_info["base"] == str(base) and fit_info["steps"] == 3
        # what decides the bits besides the settings: the build records it (threads, CPU kernels)
        env = fit_info["environment"]
        assert env["threads"] == torch.get_num_threads() and env["device"] == "cpu"
        assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["torch"] == torch.__version__
        weights = load_file(folder / "model.safetensors")
        assert all(w.dtype == torch.bfloat16 for w in weights.values())
        assert (folder / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    assert main(args) == 0 and capsys.readouterr().out.count("cache hit") == 3


@pytest.mark.parametrize("extra, message", [
    (["--people", "0"], "n_people"),
    (["--forget", "1.5"], "strictly between 0 and 1"),
    (["--forget", "0"], "strictly between 0 and 1"),
    (["--size", "tinny"], "did you mean 'tiny'"),
    (["--dtype", "float16"], "fitted in float32 or bfloat16"),
])
def test_cli_bad_arguments(tmp_path, capsys, extra, message):
    assert main(["world", "build", "--cache", str(tmp_path), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "models").exists()


def test_cli_unwritable_cache(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["world", "build", "--cache", str(blocker / "cache"), "--quiet"]) == 2
    assert "cannot write to the cache folder" in capsys.readouterr().err


def test_cli_ls_and_unknown_command(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "world:forget10" in out and "tiny" in out
    with pytest.raises(SystemExit) as exc:
        main(["lss"])
    assert exc.value.code == 2


def test_an_interrupted_atomic_write_leaves_the_old_file_whole(tmp_path):
    from unlearn.cache import atomic_file
    from unlearn.records import append_records, read_records, write_records
    rows = [dict(model="m", attack="none", setting="0", metric="loss", value=v, split="forget", seed=0)
            for v in (1.5, 2.5, 3.5)]
    path = tmp_path / "records.jsonl"
    assert append_records(path, rows) == 3
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_file(path) as tmp:
            tmp.write_text('{"model": "m", "val')          # a torn line that must never be seen
            raise RuntimeError("interrupted")
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]   # no temporary left
    assert write_records(path, rows[:2]) == 2               # a resumed run keeps what its checkpoint saw
    assert [r["value"] for r in read_records(path)] == [1.5, 2.5]
    assert write_records(path, []) == 0 and path.read_text() == "" and sorted(tmp_path.iterdir()) == [path]
