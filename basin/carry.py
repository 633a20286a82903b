"""Carry a study's progress to another machine: its records without its weights.

A study that takes longer than one machine lasts (a preemptible node, a session that ends) can go
on elsewhere only if what has run goes with it. Everything a resumed study and its report read is
small (configs, records, manifests, calibrations); the weights are not (a SmolLM2-135M run keeps a
0.54 GB model). So:

- :func:`pack` writes one ``.tar.gz`` of a work folder with every *complete* job (its run finished
  and its audit, if it has one, finished), every calibration, path and plane record, and no
  weights (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``), no tokenizers and no
  ``checkpoint/``; an unfinished run or audit is left out and starts anew where the archive is
  unpacked. Beside them, ``carried-models.json`` holds the SHA-256 of every model the runs
  started from and the packing machine's environment (:func:`unlearn.runs.environment`:
  versions, CPU kernels);
- :func:`unpack` puts an archive's files into a work folder, refusing before it writes anything if
  a file there already holds something else;
- :func:`check_carried` (called by the study once its models are built) refuses to go on when a
  model built here is not, bit for bit, the one the carried runs started from: runs from two
  different starting points would be compared as if they were one experiment.

A carried job is not loaded again: :func:`basin.sweep.run_job` skips a finished run whose audit is
finished, so its missing weights are never needed. Later waves that read a run's weights (paths,
the plane) need the run where it was unlearned, or unlearned again.
"""

from __future__ import annotations

import filecmp
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from basin.calibrate import CALIBRATIONS
from basin.sweep import RUNS, partner_dir
from unlearn import runs
from unlearn.cache import atomic_file, check_writable
from unlearn.errors import BasinError
from unlearn.hub import sha256_file

CARRIED = "carried-models.json"
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")


def unfinished(work: Path) -> set[Path]:
    """The folders of ``work`` (relative to it) that :func:`pack` leaves out: every run, audit, path
    or plane that has records but no manifest (it has not finished; a calibration, which resumes
    from its recorded probes, is carried as it is), and with a run or an audit, its partner."""
    work, left = Path(work), set()
    for records in work.rglob("records.jsonl"):
        rel = records.parent.relative_to(work)
        if CALIBRATIONS in rel.parts or (records.parent / "manifest.json").exists():
            continue
        left.update(p for p in (rel, partner_dir(rel)) if p is not None)
    for manifest in work.rglob("manifest.json"):   # a finished run of an audited sweep whose audit never began
        rel = manifest.parent.relative_to(work)
        audit = partner_dir(rel)
        if audit is None:
            continue
        i = next(k for k, (a, b) in enumerate(zip(rel.parts, audit.parts)) if a != b)   # the swapped part
        if rel.parts[i] == RUNS and runs.is_finished(manifest.parent):
            audited = work.joinpath(*audit.parts[:i + 1]).is_dir()
            if audited and not (work / audit / "manifest.json").exists():
                left.update((rel, audit))
    return left


def carried_files(work: Path) -> list[Path]:
    """The files of ``work`` that :func:`pack` takes, relative to ``work``, sorted: every file but
    weights, checkpoints, temporary folders, the :func:`unfinished` folders and, of a run's saved
    model, all but its ``config.json`` (which marks the run finished; the tokenizer is the start
    model's, and without the weights nothing would load it)."""
    work = Path(work)
    left = [folder.parts for folder in unfinished(work)]
    kept = []
    for path in sorted(p for p in work.rglob("*") if p.is_file()):
        rel = path.relative_to(work)
        if (path.suffix in WEIGHTS or runs.CKPT in rel.parts or rel.name == CARRIED
                or rel.parent.name == "model" and rel.name != "config.json"   # a run's tokenizer: 0.5 MB each
                or any(part.startswith((".tmp-", ".unpack-")) for part in rel.parts)
                or any(rel.parts[:len(parts)] == parts for parts in left)):
            continue
        kept.append(rel)
    return kept


def pack(work, archive, models: list[str]) -> dict:
    """Write ``archive`` (a ``.tar.gz``, atomically) with :func:`carried_files` of ``work`` and the
    SHA-256 of each model folder in ``models`` that exists here. Returns what it holds."""
    work, archive = Path(work), Path(archive)
    if not work.is_dir():
        raise BasinError(f"nothing to pack: the work folder {work} does not exist; run the study first "
                         "(or pass the --work it ran in)")
    check_writable(archive.parent, "archive folder", "pass an archive path in a writable folder")
    files = carried_files(work)
    digests = {str(m): {f.name: sha256_file(f) for f in sorted(Path(m).glob("*.safetensors"))}
               for m in models if Path(m).is_dir()}
    jobs = [f.parent for f in files if f.name == "config.json" and RUNS in f.parts and "model" not in f.parts]
    with atomic_file(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for rel in files:
            tar.add(work / rel, arcname=str(rel), recursive=False)
        carried = {"models": digests, "environment": runs.environment()}
        blob = (json.dumps(carried, indent=2, sort_keys=True) + "\n").encode()
        info = tarfile.TarInfo(CARRIED)
        info.size, info.mode = len(blob), 0o644
        tar.addfile(info, io.BytesIO(blob))
    return {"archive": str(archive), "files": len(files), "jobs": len(jobs), "models": len(digests),
            "bytes": archive.stat().st_size}


def unpack(archive, work) -> dict:
    """Put the files of ``archive`` (written by :func:`pack`) into ``work``. Files already there with
    the same bytes are kept; one with other bytes refuses the whole archive before anything is
    written (the work folder is never half-merged)."""
    archive, work = Path(archive), Path(work)
    if not archive.is_file():
        raise BasinError(f"no archive at {archive}; pass the .tar.gz that `basin study FILE --pack` wrote")
    check_writable(work, "study work folder", "pass a writable --work")
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=_existing(work)) as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")   # no absolute paths, no links out, no devices
        except (tarfile.TarError, OSError, EOFError) as err:
            raise BasinError(f"cannot read the archive {archive} ({err}); pass an archive written by "
                             "`basin study FILE --pack`") from None
        files = sorted(p.relative_to(tmp) for p in Path(tmp).rglob("*") if p.is_file())
        if CARRIED not in {str(f) for f in files}:
            raise BasinError(f"{archive} has no {CARRIED}: it was not written by `basin study FILE --pack`")
        clash = [f for f in files if (work / f).exists() and not filecmp.cmp(Path(tmp) / f, work / f, shallow=False)]
        if clash:
            raise BasinError(f"cannot unpack {archive} into {work}: {len(clash)} file(s) there hold something "
                             f"else (first: {clash[0]}); unpack into an empty --work, or remove that run")
        new = [f for f in files if not (work / f).exists()]
        for f in new:
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(tmp) / f, work / f)
    return {"work": str(work), "files": len(files), "new": len(new)}


def _existing(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_carried(work, models: list[str]) -> None:
    """Refuse to go on when a model built here differs from the one the carried runs started from
    (the digests :func:`pack` wrote into ``work/carried-models.json``), naming what differs between
    the two machines' environments (versions, CPU kernels). No file: nothing carried."""
    saved = Path(work) / CARRIED
    if not saved.exists():
        return
    carried = json.loads(saved.read_text())
    for model in models:
        for name, expected in carried["models"].get(str(model), {}).items():
            here = sha256_file(Path(model) / name) if (Path(model) / name).exists() else "missing"
            if here == expected:
                continue
            now = runs.environment()
            differs = [f"{k} {v} there, {now.get(k)} here" for k, v in sorted(carried["environment"].items())
                       if k not in ("git", "basin", "threads", "device") and now.get(k) != v]
            raise BasinError(
                f"the runs carried into {work} started from {model}/{name} with SHA-256 {expected[:12]}..., "
                f"and the one built here is {here[:12]}... ({'; '.join(differs) or 'the same versions and kernels'}): "
                "runs from two starting points would be compared as one experiment; build the models where "
                "the runs were made, or start this study in an empty --work")
