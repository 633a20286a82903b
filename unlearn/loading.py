"""Loading a model by *name or object*, the one way every entry point of basin takes a model (see
:mod:`unlearn.models` for the names it understands)."""

from __future__ import annotations

from pathlib import Path

import torch

from unlearn.build import world_model_path
from unlearn.errors import BasinError
from unlearn.models import load_checkpoint, load_tokenizer_any, place, resolve_device


def load_model(model, tokenizer=None, *, allow_pickle: bool = False, trust_remote_code: bool = False,
               cache_dir=None, dtype=None, attn_implementation: str | None = None,
               progress: bool = True, device: str | None = None, device_map=None):
    """Resolve a model name or object to ``(model, tokenizer)``; see the module docstring.

    ``dtype`` (a name such as ``"bfloat16"`` or a ``torch.dtype``) is the weights' dtype: names
    and folders load in it (float32 when None); a model object is cast to it in place (left as it
    is when None). ``device`` (see :func:`resolve_device`; None: the CPU for loaded models, where it
    is for objects) places the model; ``"auto-map"`` loads with ``device_map="auto"``.
    ``device_map`` is passed to ``from_pretrained`` as it is (it overrides ``device``).
    """
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise BasinError("a model object needs its tokenizer: pass tokenizer=...")
        if device_map is not None:
            raise BasinError("device_map applies to models loaded by name or folder; place a model "
                             "object yourself or pass device=...")
        place(model, None if device is None else resolve_device(device), dtype)
        return model, (load_tokenizer_any(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer)
    options = dict(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, cache_dir=cache_dir,
                   dtype=dtype, attn_implementation=attn_implementation, progress=progress, device=device,
                   device_map=device_map)
    if str(model).startswith("world:"):  # the embedded world's models, built and cached on first use
        return load_checkpoint(world_model_path(str(model), cache_dir=cache_dir, progress=progress),
                               tokenizer, **options)
    return load_checkpoint(model, tokenizer, **options)
