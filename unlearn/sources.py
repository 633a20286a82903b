"""Where a model name points, found without loading, building or fetching anything.

:func:`unlearn.models.load_model` takes a name (``world:<size>``, ``smollm2-135m``, a run folder,
a checkpoint folder, a hub id) and may train, convert or download to get there. A command checks
its models here first, so that a bad name, a folder without weights or two models of different
architectures are refused before any of that work (or any write) starts: :func:`check_model_source`
reads only the file system; :func:`check_same_shapes` reads only safetensors headers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unlearn.errors import BasinError, require
from unlearn.hub import HUB_MODELS
from unlearn.models import SIZES, check_model_folder
from unlearn.registry import lookup


def parse_world_model(name: str) -> tuple[str, str]:
    """``world:tiny`` -> ('tiny', 'full'); ``world:tiny:retain90`` -> ('tiny', 'retain90')."""
    parts = name.split(":")
    require(parts[0] == "world" and len(parts) in (2, 3),
            f"model name {name!r} must look like world:<size> or world:<size>:retainNN")
    size = parts[1]
    lookup(SIZES, size, "model size")
    split = parts[2] if len(parts) == 3 else "full"
    if split != "full":
        require(split.startswith("retain") and split[6:].isdigit() and 0 < int(split[6:]) < 100,
                f"model name {name!r}: the third part must be retainNN, e.g. retain90")
    return size, split


def local_folder(model) -> Path | None:
    """The checkpoint folder a model name or folder stands for (a run folder's ``model/``), or None
    for names that are not folders here."""
    if not isinstance(model, (str, Path)) or str(model).startswith("world:"):
        return None
    path = Path(str(model)).expanduser()
    if (path / "model" / "config.json").exists():
        return path / "model"
    return path if path.is_dir() else None


def check_model_source(model, *, allow_pickle: bool = False, what: str = "model") -> None:
    """Refuse a model name or folder that :func:`~unlearn.models.load_model` could not load: a
    malformed ``world:`` name, a missing folder, a file, a folder without config.json or weights.
    Model objects, known names and hub ids (owner/name) pass."""
    if not isinstance(model, (str, Path)):
        return
    name = str(model)
    if name.startswith("world:"):
        parse_world_model(name)
        return
    if name.lower() in HUB_MODELS:
        return
    path = local_folder(name)
    if path is not None:
        check_model_folder(path, allow_pickle=allow_pickle, what=what)
    elif Path(name).expanduser().exists():
        raise BasinError(f"{what} {name!r} is a file, not a checkpoint folder; pass its folder")
    elif name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise BasinError(f"{what} {name!r} is neither a local folder nor a known name; pass a checkpoint "
                         "folder, a run folder, a hub id (owner/name) or world:<size>")


# the config fields that fix a decoder's tensor shapes (those the world sizes set, plus the vocabulary)
SHAPE_FIELDS = tuple(SIZES["tiny"]) + ("vocab_size",)


def architecture(model) -> dict | None:
    """The shape-fixing config fields of a model (:data:`SHAPE_FIELDS`), from its config.json, a
    ``world:`` size or a model object's config; None for names not at hand (a hub model)."""
    if isinstance(model, torch.nn.Module):
        config = getattr(model, "config", None)
        return {k: getattr(config, k) for k in SHAPE_FIELDS if hasattr(config, k)} if config is not None else None
    if isinstance(model, (str, Path)) and str(model).startswith("world:"):
        return dict(SIZES[parse_world_model(str(model))[0]])
    path = local_folder(model)
    if path is None or not (path / "config.json").is_file():
        return None
    config = json.loads((path / "config.json").read_text())
    return {k: config[k] for k in SHAPE_FIELDS if k in config}


def weight_shapes(model) -> dict[str, tuple] | None:
    """Tensor name -> shape of a model, from a folder's safetensors headers (nothing is loaded) or a
    model object's state dict; None when neither is at hand (a name not yet built or fetched)."""
    if isinstance(model, torch.nn.Module):
        return _untied({k: tuple(v.shape) for k, v in model.state_dict().items()})
    path = local_folder(model)
    files = sorted(path.glob("*.safetensors")) if path is not None else []
    if not files:
        return None
    shapes = {}
    for file in files:
        with open(file, "rb") as f:  # a safetensors file: 8 bytes of header length, then a JSON header
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return _untied(shapes)


def check_same_shapes(first, second, what: str = "models") -> None:
    """Refuse two models of different architectures before either is loaded or built: first their
    shape-fixing config fields (:func:`architecture`), then, for two folders, every tensor's name
    and shape from the safetensors headers. What is not at hand passes (it is compared once loaded)."""
    a, b = architecture(first), architecture(second)
    if a is not None and b is not None:
        for key in (k for k in SHAPE_FIELDS if k in a and k in b and a[k] != b[k]):
            raise BasinError(f"the {what} have different architectures: {key} is {a[key]} in the first and "
                             f"{b[key]} in the second; pass models of the same architecture")
    a, b = weight_shapes(first), weight_shapes(second)
    if a is None or b is None:
        return
    for name in list(a) + [n for n in b if n not in a]:
        if name not in a or name not in b:
            where = "the first" if name in a else "the second"
            raise BasinError(f"the {what} have different architectures: tensor {name!r} exists only in "
                             f"{where} model; pass models of the same architecture")
        if a[name] != b[name]:
            raise BasinError(f"the {what} have different architectures: tensor {name!r} has shape "
                             f"{a[name]} in the first and {b[name]} in the second; pass models of the same "
                             "architecture")


def _untied(shapes: dict) -> dict:
    """Shapes without ``lm_head.weight`` when it is tied to the input embedding (a checkpoint stores
    a tied pair once, a live model lists both)."""
    emb = next((v for k, v in shapes.items() if k.endswith("embed_tokens.weight")), None)
    return {k: v for k, v in shapes.items() if not (k == "lm_head.weight" and v == emb)}
