"""Representation Misdirection for Unlearning (RMU), Li et al. 2024, "The WMDP Benchmark",
arXiv 2403.03218.

With h_l(x) the hidden state after decoder layer l (read with a forward hook), a fixed random
control vector u ~ U[0, 1)^d, and the frozen model before unlearning h^frozen:

    L_RMU = mean_{tokens of x_f} || h_l(x_f) - c * u / |u| ||^2 / d
            + alpha * mean_{tokens of x_r} || h_l(x_r) - h^frozen_l(x_r) ||^2 / d

Only the MLP down-projections of layers l-2..l train (:meth:`RMU.trainable`). The paper's
Zephyr-7B recipe is l = 7, c = 6.5, alpha = 1200. For the 4-layer tiny models the defaults here
are l = 2, c = 50, alpha = 20 (with Adam at lr 1e-2): the hidden state after layer 2 has a norm of
about 16 per token, and c * u/|u| (norm c) must dominate it; docs/paper_index.md has the sweep.
"""

from __future__ import annotations

import contextlib

import torch

from unlearn.errors import require, require_number


def rmu_loss(h_forget, h_retain, h_retain_frozen, control, alpha, mask_f, mask_r) -> dict:
    """The two RMU terms (masked mean over tokens of the squared error per coordinate)."""

    def masked_mse(h, target, mask):
        err = ((h.float() - target) ** 2).mean(-1)
        return (err * mask).sum() / mask.sum().clamp_min(1)

    return {"forget": masked_mse(h_forget, control, mask_f),
            "retain": alpha * masked_mse(h_retain, h_retain_frozen, mask_r)}


def decoder_layers(model):
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        with contextlib.suppress(AttributeError):
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
    raise ValueError(f"RMU cannot find the decoder layers of {type(model).__name__}")


def hidden_after_layer(model, batch, layer: int) -> torch.Tensor:
    """Run ``model`` on the batch and return the output of decoder layer ``layer`` (a hook)."""
    captured = {}

    def hook(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    return captured["h"]


class RMU:
    """RMU: steer forget activations at layer l to a random control vector, keep retain ones."""

    needs_reference = True

    def __init__(self, layer: int = 2, c: float = 50.0, alpha: float = 20.0, seed: int = 0):
        require_number("RMU layer", layer, 0, integer=True)
        require_number("RMU c", c, 0, low_open=True)
        require_number("RMU alpha", alpha, 0)
        require_number("RMU seed", seed, 0, integer=True)
        self.layer, self.c, self.alpha, self.seed = layer, c, alpha, seed
        self.control = None

    def trainable(self, model) -> list[str]:
        """Names of the parameters RMU updates: mlp.down_proj of layers l-2..l."""
        n = len(decoder_layers(model))
        require(0 <= self.layer < n, f"RMU layer {self.layer} does not exist; the model has {n} layers")
        keep = {f"layers.{i}.mlp.down_proj.weight" for i in range(max(0, self.layer - 2), self.layer + 1)}
        return [name for name, _ in model.named_parameters() if any(name.endswith(k) for k in keep)]

    def _control(self, d: int) -> torch.Tensor:
        if self.control is None or self.control.numel() != d:
            u = torch.rand(d, generator=torch.Generator().manual_seed(self.seed))
            self.control = self.c * u / u.norm()
        return self.control

    @torch.no_grad()
    def prepare(self, ref_model, batch) -> dict:
        return {"h_retain_frozen": hidden_after_layer(ref_model, batch["retain"], self.layer).float()}

    def __call__(self, model, batch, prep) -> dict:
        h_f = hidden_after_layer(model, batch["forget"], self.layer)
        h_r = hidden_after_layer(model, batch["retain"], self.layer)
        control = self._control(h_f.shape[-1]).to(h_f.device)
        return rmu_loss(h_f, h_r, prep["h_retain_frozen"], control, self.alpha,
                        batch["forget"]["attention_mask"].float(), batch["retain"]["attention_mask"].float())
