"""basin.carry: a sweep's progress packed without weights on one machine goes on on another from
the finished jobs (not loaded again), and never merges into other runs or other starting models."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from basin.carry import CARRIED, carried_files, check_carried, pack, unpack
from basin.sweep import run_sweep
from test_sweep import sweep_spec
from unlearn.errors import BasinError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_machines(start_model, tmp_path_factory):
    """A sweep of three jobs on machine A, the second stopped while it was audited and the third
    before its audit began, packed."""
    root = tmp_path_factory.mktemp("carry")
    spec = sweep_spec(start_model, root / "a", grid={"optimizer": ["adam"], "seed": [0, 1, 2]})
    run_sweep(spec, progress=False)
    (root / "a" / "audits" / "adam-s1" / "manifest.json").unlink()   # adam-s1's audit never finished
    shutil.rmtree(root / "a" / "audits" / "adam-s2")                  # adam-s2's never began
    done = pack(root / "a", root / "progress.tar.gz", [start_model])
    return root, spec, done


def test_the_archive_holds_finished_jobs_records_without_weights(two_machines, start_model):
    root, _, done = two_machines
    with tarfile.open(root / "progress.tar.gz") as tar:
        names = set(tar.getnames())
        digests = json.load(tar.extractfile(CARRIED))
    assert done["jobs"] == 1 and done["files"] == len(names) - 1
    assert {"runs/adam-s0/config.json", "runs/adam-s0/records.jsonl", "runs/adam-s0/manifest.json",
            "runs/adam-s0/model/config.json", "audits/adam-s0/records.jsonl", "audits/adam-s0/manifest.json"} <= names
    assert not any(n.endswith(".safetensors") or "checkpoint" in n or "tokenizer" in n for n in names)
    assert not any("adam-s1" in n or "adam-s2" in n for n in names)   # the unfinished jobs start anew
    assert [str(p) for p in carried_files(root / "a")] == sorted(names - {CARRIED})
    # the digest of the start model, computed independently
    assert digests["models"] == {start_model: {"model.safetensors": _sha(Path(start_model) / "model.safetensors")}}
    assert digests["environment"]["torch"] == torch.__version__ and digests["environment"]["cpu_capability"]


def test_an_unpacked_sweep_goes_on_from_its_finished_jobs_without_their_weights(two_machines):
    root, spec, _ = two_machines
    unpack(root / "progress.tar.gz", root / "b")
    assert not (root / "b" / "runs" / "adam-s0" / "model" / "model.safetensors").exists()
    again = run_sweep(sweep_spec(spec.unlearn["model"], root / "b", grid=spec.grid), progress=False)
    assert [(r["name"], r["audited"]) for r in again] == [("adam-s0", False), ("adam-s1", True), ("adam-s2", True)]
    def records(machine, kind, name):   # every field but wall-clock times
        lines = (root / machine / kind / name / "records.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in ("time", "wall")} for x in lines]

    for name in ("adam-s0", "adam-s1", "adam-s2"):   # as on machine A: adam-s0's carried, the others redone
        assert records("a", "runs", name) == records("b", "runs", name), name
    assert records("a", "audits", "adam-s0") == records("b", "audits", "adam-s0")
    # a changed config is still refused for a carried run, though its model is never loaded
    changed = sweep_spec(spec.unlearn["model"], root / "b", grid=spec.grid, recipes={"adam": {"lr": 2e-3}})
    with pytest.raises(BasinError, match="holds a run with a different config"):
        run_sweep(changed, progress=False)


def test_unpack_never_overwrites_what_is_there_and_refuses_foreign_archives(two_machines, tmp_path):
    root, _, _ = two_machines
    work = tmp_path / "w"
    unpack(root / "progress.tar.gz", work)
    assert unpack(root / "progress.tar.gz", work)["new"] == 0          # the same files again: nothing to do
    records = work / "audits" / "adam-s0" / "records.jsonl"
    records.write_text(records.read_text() + "\n")
    before = sorted(p for p in work.rglob("*"))
    with pytest.raises(BasinError, match="1 file\\(s\\) there hold something else"):
        unpack(root / "progress.tar.gz", work)
    assert sorted(p for p in work.rglob("*")) == before
    # a member that climbs out of the work folder: refused, nothing written outside
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(BasinError, match="cannot read the archive"):
        unpack(evil, tmp_path / "w2")
    assert not (tmp_path / "outside.txt").exists()
    with pytest.raises(BasinError, match="no archive at"):
        unpack(tmp_path / "missing.tar.gz", work)


def test_runs_carried_from_other_starting_weights_are_refused(two_machines, start_model, tmp_path):
    root, _, _ = two_machines
    work = tmp_path / "w"
    unpack(root / "progress.tar.gz", work)
    check_carried(work, [start_model])                                  # the same bits: go on
    other = tmp_path / "other"
    other.mkdir()
    weights = bytearray((Path(start_model) / "model.safetensors").read_bytes())
    weights[-1] ^= 1                                                   # one bit of one weight
    (other / "model.safetensors").write_bytes(bytes(weights))
    carried = json.loads((work / CARRIED).read_text())
    carried["models"][str(other)] = carried["models"][start_model]
    (work / CARRIED).write_text(json.dumps(carried))
    with pytest.raises(BasinError, match="runs from two starting points") as err:
        check_carried(work, [start_model, str(other)])
    assert "the same versions and kernels" in str(err.value)
    there = "AVX2" if carried["environment"]["cpu_capability"] == "AVX512" else "AVX512"
    carried["environment"]["cpu_capability"] = there                   # built on another processor
    (work / CARRIED).write_text(json.dumps(carried))
    with pytest.raises(BasinError, match=f"cpu_capability {there} there, .* here"):
        check_carried(work, [start_model, str(other)])
    check_carried(tmp_path / "nothing-carried", [str(other)])          # no archive unpacked: no check


def test_the_study_command_packs_and_unpacks_its_work_folder(two_machines, tmp_path, capsys):
    from basin.cli import main
    from test_study import SMOKE

    root, _, _ = two_machines
    study = tmp_path / "smoke.yaml"
    study.write_text(SMOKE)
    work = tmp_path / "work" / "mini"
    shutil.copytree(root / "a", work)                       # a regime's work folder (what the sweep wrote)
    assert main(["study", str(study), "--work", str(tmp_path / "work"), "--pack", str(tmp_path / "p.tar.gz")]) == 0
    assert "'jobs': 1" in capsys.readouterr().out
    assert main(["study", str(study), "--work", str(tmp_path / "there"), "--unpack", str(tmp_path / "p.tar.gz")]) == 0
    assert (tmp_path / "there" / "mini" / "audits" / "adam-s0" / "manifest.json").exists()
    assert not (tmp_path / "there" / "mini" / "runs" / "adam-s1").exists()
    assert main(["study", str(study), "--work", str(tmp_path / "none"), "--pack", str(tmp_path / "q.tar.gz")]) == 2
    assert "nothing to pack: the work folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):                         # one of --report-only, --pack, --unpack
        main(["study", str(study), "--report-only", "--pack", str(tmp_path / "r.tar.gz")])
