"""``basin world build``: world data -> tokenizer -> original model -> retain-only model, cached.

Cache layout (under :func:`unlearn.cache.cache_root`)::

    worlds/<world-key>/           world.json (every split) and tokenizer/ (Hugging Face format)
    models/<size>-<split>-<key>/  a standard Hugging Face checkpoint (safetensors, config,
                                  tokenizer) plus basin_fit.json (how it was trained, what it reached)
    models/<base>-<split>-<key>/  the same for a pretrained ``base`` model fine-tuned on the world

With ``base`` set (a pretrained model's name or folder, e.g. ``smollm2-135m``) the original and
retain-only models are not trained from scratch: each is a copy of the base model fine-tuned on
the world's rows with the base's own tokenizer (the TOFU recipe: a model that did not know the
fictitious people learns them, then one of them is unlearned). :func:`finetune_fit` gives fitting
settings that suit a pretrained model.

Each key hashes everything that determines the entry, so a second build with the same settings
is a cache hit that trains nothing, and changing any setting builds a new entry.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from unlearn.cache import atomic_dir, cache_root, digest, ensure_writable, write_json_atomic
from unlearn.data.format import encode_rows, format_spec, pad_id_of
from unlearn.data.world import World, WorldConfig, split_name_to_fraction
from unlearn.errors import BasinError, require
from unlearn.models import SIZES, build_model, check_device_name, load_checkpoint, resolve_device
from unlearn.pretrain import FitConfig, fit
from unlearn.registry import lookup
from unlearn.runs import environment
from unlearn.scoring import answer_stats
from unlearn.sources import check_model_source, parse_world_model
from unlearn.tokenizer import DEFAULT_VOCAB_SIZE, load_tokenizer, train_tokenizer, world_training_texts

FIT_FILE = "basin_fit.json"


@dataclass(frozen=True)
class BuildConfig:
    """What ``basin world build`` makes: a world, its tokenizer, the original model of ``size`` and
    the retain-only model for the ``forget`` split."""

    world: WorldConfig = field(default_factory=WorldConfig)
    size: str = "tiny"
    forget: str = "forget10"
    fit: FitConfig = field(default_factory=FitConfig)
    vocab_size: int = DEFAULT_VOCAB_SIZE
    base: str | None = None     # a pretrained model to fine-tune instead of training ``size`` from scratch
    device: str = "cpu"         # where the models are trained (not part of the cache key)
    dtype: str = "float32"      # the weights' dtype while fitting: float32 or bfloat16 (a GPU's choice)
    prompt_format: str | dict = "plain"  # how the world's rows are laid out (unlearn.data.format)

    def __post_init__(self):
        if self.base is None:
            lookup(SIZES, self.size, "model size")
        spec = format_spec(self.prompt_format)
        object.__setattr__(self, "prompt_format", spec)
        require(self.base is not None or spec == "plain",
                "a prompt format other than plain needs --base: the scratch models use the world's own "
                "tokenizer, trained on the plain format")
        split_name_to_fraction(self.forget)
        require(self.dtype in ("float32", "bfloat16"),
                f"dtype {self.dtype!r}: world models are fitted in float32 or bfloat16")
        check_device_name(self.device)


def finetune_fit(**overrides) -> FitConfig:
    """Fitting settings for a pretrained base model: a small learning rate, small batches, few
    steps, and a stop once the answers reach probability 0.9 (the TOFU recipe's fine-tuning in
    miniature; from scratch, :class:`FitConfig`'s defaults apply)."""
    return FitConfig(**{"max_steps": 80, "batch_size": 8, "lr": 3e-4, "warmup_steps": 4,
                        "eval_every": 10, "target_prob": 0.9, **overrides})


# ----------------------------------------------------------------------------- world + tokenizer

def world_dir(world: WorldConfig, vocab_size: int, cache_dir=None) -> Path:
    return cache_root(cache_dir) / "worlds" / f"{world.key()}-v{vocab_size}"


def ensure_world(world: WorldConfig, vocab_size: int = DEFAULT_VOCAB_SIZE, cache_dir=None) -> tuple[Path, bool]:
    """Write the world's data and tokenizer into the cache unless present; return (folder, hit)."""
    target = world_dir(world, vocab_size, cache_dir)
    if (target / "world.json").exists():
        return target, True
    ensure_writable(target.parent)
    w = World(world)
    with atomic_dir(target) as tmp:
        (tmp / "world.json").write_text(w.to_json())
        train_tokenizer(world_training_texts(w), vocab_size).save_pretrained(str(tmp / "tokenizer"))
    return target, False


# ----------------------------------------------------------------------------- models

def training_rows(world: World, split: str) -> list[dict]:
    """Rows a model is fitted on: every person (``full``) or the retain people (``retainNN``), plus
    the utility facts in both cases. Hold-out people are never trained on."""
    if split == "full":
        people = world.people_rows
    else:
        require(split.startswith("retain") and split[6:].isdigit(),
                f"training split {split!r} must be 'full' or retainNN (e.g. retain90)")
        _, people = world.split(1 - int(split[6:]) / 100)
    return people + world.utility


def model_dir(config: BuildConfig, split: str, cache_dir=None) -> Path:
    if config.base is not None:
        base = _base_identity(config.base)
        key = digest({"world": config.world.key(), "base": base, "split": split, "fit": config.fit.as_dict(),
                      **_dtype_key(config)})
        stem = Path(str(config.base)).name.replace(":", "-") or "base"
        return cache_root(cache_dir) / "models" / f"{stem}-{split}-{key}"
    key = digest({"world": config.world.key(), "vocab": config.vocab_size, "size": config.size,
                  "shape": SIZES[config.size], "split": split, "fit": config.fit.as_dict(), **_dtype_key(config)})
    return cache_root(cache_dir) / "models" / f"{config.size}-{split}-{key}"


def _dtype_key(config: BuildConfig) -> dict:
    """float32 (the default) and the plain format add nothing to a cache key, so entries made
    before these fields existed stay valid."""
    return {**({} if config.dtype == "float32" else {"dtype": config.dtype}),
            **({} if config.prompt_format == "plain" else {"prompt_format": config.prompt_format})}


def _base_identity(base: str) -> str:
    """What names a base model in the cache key: a known name as it is; a folder by the hash of
    its weight files' names, sizes and modification times (cheap, and changes when they do)."""
    path = Path(str(base)).expanduser()
    if not path.exists():
        return str(base)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".bin"))
    return digest({"folder": str(path.resolve()),
                   "files": [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]})


def _initial_model(config: BuildConfig, cache_dir, progress: bool):
    """The untrained starting point and its tokenizer: a seeded scratch model of ``size`` on the
    world's tokenizer, or a fresh copy of the pretrained ``base`` with the base's tokenizer."""
    if config.base is not None:
        return load_checkpoint(config.base, cache_dir=cache_dir, progress=progress,
                          device=resolve_device(config.device), dtype=config.dtype)
    wdir, _ = ensure_world(config.world, config.vocab_size, cache_dir)
    tokenizer = load_tokenizer(wdir / "tokenizer")
    model = build_model(config.size, tokenizer, torch.Generator().manual_seed(config.fit.seed))
    return model.to(device=resolve_device(config.device), dtype=getattr(torch, config.dtype)), tokenizer


def evaluate_splits(model, tokenizer, world: World, forget: str, prompt_format="plain") -> dict:
    """Answer probability (p_norm) and exact match on the forget and retain people."""
    forget_rows, retain_rows = world.split(split_name_to_fraction(forget))
    out = {}
    for name, rows in (("forget", forget_rows), ("retain", retain_rows), ("holdout", world.holdout)):
        stats = answer_stats(model, encode_rows(tokenizer, rows, fmt=prompt_format), pad_id_of(tokenizer))
        out[name] = {"prob": round(stats.p_norm.mean().item(), 4),
                     "exact_match": round(stats.exact.mean().item(), 4), "n": len(rows)}
    return out


def ensure_model(config: BuildConfig, split: str, cache_dir=None, progress: bool = True) -> tuple[Path, bool]:
    """Train (or find in the cache) the model of ``config.size`` fitted on ``split``."""
    target = model_dir(config, split, cache_dir)
    if (target / FIT_FILE).exists():
        return target, True
    model, tokenizer = _initial_model(config, cache_dir, progress)
    world = World(config.world)
    examples = encode_rows(tokenizer, training_rows(world, split), fmt=config.prompt_format)
    start = time.perf_counter()
    result = fit(model, tokenizer, examples, config.fit, progress=progress,
                 desc=f"{'fine-tune ' + str(config.base) if config.base else 'train ' + config.size} on {split}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["eval"] = evaluate_splits(model, tokenizer, world, config.forget, config.prompt_format)
    with atomic_dir(target) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / FIT_FILE, {"split": split, "size": config.size, "base": config.base,
                                           "world": asdict(config.world), "fit": config.fit.as_dict(),
                                           "vocab_size": config.vocab_size,
                                           "prompt_format": config.prompt_format, **result,
                                           "environment": environment(resolve_device(config.device))})
    return target, False


def retain_split(forget: str) -> str:
    return f"retain{100 - round(split_name_to_fraction(forget) * 100)}"


@dataclass
class BuildResult:
    world_dir: Path
    original_dir: Path
    retain_dir: Path
    cache_hits: dict
    original_fit: dict
    retain_fit: dict
    seconds: float


def build(config: BuildConfig = BuildConfig(), cache_dir=None, progress: bool = True) -> BuildResult:
    """Build (or reuse) everything ``basin world build`` promises; see the module docstring."""
    start = time.perf_counter()
    resolve_device(config.device)  # a missing GPU or base model is refused before the cache is written
    check_model_source(config.base, what="base model")
    ensure_writable(cache_root(cache_dir))
    wdir, world_hit = ensure_world(config.world, config.vocab_size, cache_dir)
    odir, orig_hit = ensure_model(config, "full", cache_dir, progress)
    rdir, ret_hit = ensure_model(config, retain_split(config.forget), cache_dir, progress)
    read = lambda d: json.loads((d / FIT_FILE).read_text())  # noqa: E731
    return BuildResult(wdir, odir, rdir, {"world": world_hit, "original": orig_hit, "retain": ret_hit},
                       read(odir), read(rdir), time.perf_counter() - start)


# ----------------------------------------------------------------------------- names

def world_model_path(name: str, cache_dir=None, progress: bool = True,
                     world: WorldConfig | None = None, fit_config: FitConfig | None = None) -> Path:
    """The checkpoint folder of a ``world:`` model on the default world, built if missing."""
    config, split = _world_model_config(name, world, fit_config)
    ensure_writable(cache_root(cache_dir))
    path, _ = ensure_model(config, split, cache_dir, progress)
    return path


def world_model_dir(name: str, cache_dir=None, world: WorldConfig | None = None,
                    fit_config: FitConfig | None = None) -> Path:
    """Where the checkpoint of a ``world:`` model lives in the cache (built or not; nothing is built)."""
    config, split = _world_model_config(name, world, fit_config)
    return model_dir(config, split, cache_dir)


def _world_model_config(name: str, world: WorldConfig | None, fit_config: FitConfig | None):
    size, split = parse_world_model(name)
    forget = "forget10" if split == "full" else f"forget{100 - int(split[6:]):02d}"
    return BuildConfig(world=world or WorldConfig(), size=size, forget=forget, fit=fit_config or FitConfig()), split


def load_world_data(world: WorldConfig | None = None) -> World:
    """The world's rows (generated in memory: cheap and deterministic)."""
    return World(world or WorldConfig())


__all__ = ["BuildConfig", "BuildResult", "build", "ensure_world", "ensure_model", "world_model_path",
           "world_model_dir", "parse_world_model", "training_rows", "load_world_data", "BasinError"]
