"""Estimators: the *descent signal* half of every optimizer (the transform chain is the other half).

An estimator runs the closure (the loss of micro-batch i, already divided by the number of
micro-batches) as often and under whatever grad mode it needs, and hands the optimizer a signal
``g`` per tensor:

- :class:`Backprop`: g = grad f(p), by ``backward`` accumulated over micro-batches;
- :class:`Curvature`: the gradient plus, every k steps, a diagonal curvature estimate for Sophia
  (Hutchinson or Gauss-Newton-Bartlett);
- :class:`SharpnessAware`: SAM on the forget term (Fan et al. 2025);
- :class:`~unlearn.optim.zeroth_order.ZerothOrder`: randomized finite differences (MeZO style).

``estimate`` returns an :class:`Estimate`: the step's loss and a *lazy* stream of
``(index, param, g, extras)``. The optimizer applies its chain to each item as it arrives, so an
estimator can work tensor by tensor (the zeroth-order estimator restores each tensor and builds
its g on the fly, never holding a full-model buffer).

Gradients follow the usual torch loop: when a step gets a closure, the optimizer first sets every
``.grad`` to None (``zero_grad``); backprop estimators then fill ``.grad`` and leave it there
after the update, as ``loss.backward(); opt.step()`` would. (Freeing each grad right after its
update was measured ~4% slower per step on CPU: the allocator then serves the next forward from
fresh pages.) The next step, first-order or zeroth-order, frees them; ``opt.zero_grad()`` frees
them at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from unlearn.errors import BasinError
from unlearn.optim.rng import derive_seed, generator

# (index in the optimizer's parameter list, parameter name, parameter)
NamedParams = list[tuple[int, str, torch.Tensor]]
Signals = Iterator[tuple[int, torch.Tensor, torch.Tensor, dict]]


@dataclass
class Estimate:
    loss: float
    signals: Signals


def total_loss(value) -> torch.Tensor:
    """The loss a closure returned: a scalar tensor, or a dict of terms whose sum is the loss
    (``{"forget": ..., "retain": ...}``)."""
    if isinstance(value, dict):
        if not value:
            raise BasinError("the closure returned an empty dict; return a loss tensor or "
                             "{'forget': tensor, 'retain': tensor}")
        return sum(value.values())
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=torch.float64)  # float32 would round a summed loss
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise BasinError(f"the closure must return a scalar loss tensor or a dict of them, "
                         f"got {type(value).__name__}")
    return value


def forward_losses(closure, n_micro: int) -> float:
    """f(p) = sum_i closure(i), under ``torch.no_grad()``, summed in float64 in micro-batch order."""
    with torch.no_grad():
        return sum(float(total_loss(closure(i))) for i in range(n_micro))


class Estimator:
    """Base class. ``kind`` labels the phase in logs ("fo", "so", "sam", "zo")."""

    kind = "fo"
    step_options: tuple[str, ...] = ()   # extra keyword arguments of step() this estimator uses

    def bind(self, params: NamedParams) -> None:
        """Called once with the optimizer's parameters (e.g. to select a subset)."""

    def estimate(self, params: NamedParams, closure, n_micro: int, t: int, seed: int,
                 **step_options) -> Estimate:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _backward_over(closure, n_micro: int) -> float:
    """sum_i closure(i).backward() with grads enabled; returns the loss."""
    loss = 0.0
    with torch.enable_grad():
        for i in range(n_micro):
            value = total_loss(closure(i))
            if value.requires_grad:
                value.backward()
            loss += float(value.detach())
    return loss


def _grad_signals(params: NamedParams) -> Signals:
    """Yield each parameter's ``.grad`` (tensors without one are left alone)."""
    for j, _, p in params:
        if p.grad is not None:
            yield j, p, p.grad, {}


class Backprop(Estimator):
    """g = grad f(p) by backpropagation, accumulated over the micro-batches (first order).

    With ``closure=None`` it uses the ``.grad`` already there (a drop-in for loops that call
    ``backward`` themselves); otherwise it runs every micro-batch under ``torch.enable_grad()``
    and calls ``backward`` on each, accumulating into the (cleared) ``.grad``.
    """

    kind = "fo"

    def estimate(self, params, closure, n_micro, t, seed, **step_options):
        if closure is None:
            return Estimate(float("nan"), _grad_signals(params))
        return Estimate(_backward_over(closure, n_micro), _grad_signals(params))


# ----------------------------------------------------------------------------- curvature (Sophia)

DOUBLE_BACKWARD_HINT = (
    "Sophia's Hutchinson estimate needs a double backward (a Hessian-vector product), which this "
    "model does not support ({err}); PyTorch's SDPA attention on CPU has no double backward: build "
    "or load the model with attn_implementation=\"eager\", or use hessian=\"gnb\"")


def hutchinson_diagonal(grads: list[torch.Tensor], params: list[torch.Tensor],
                        probes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Hutchinson's diagonal estimate h_est = u * (H u) (Hutchinson 1989; Sophia-H, Liu et al.
    2023, arXiv 2305.14342), with ``grads`` built with ``create_graph=True`` and
    ``probes`` u ~ N(0, I) (or Rademacher). E[u * (H u)] = diag(H). Returns H u per tensor
    (zeros where a gradient does not depend on the parameters)."""
    live = [k for k, g in enumerate(grads) if g.requires_grad]
    hvp = [torch.zeros_like(p) for p in params]
    if live:
        try:
            parts = torch.autograd.grad([grads[k] for k in live], params,
                                        grad_outputs=[probes[k] for k in live], allow_unused=True)
        except (RuntimeError, NotImplementedError) as err:
            raise BasinError(DOUBLE_BACKWARD_HINT.format(err=str(err).splitlines()[0])) from None
        hvp = [h if part is None else part for h, part in zip(hvp, parts)]
    return hvp


class Curvature(Estimator):
    """The gradient (by backprop) plus, every ``k`` steps (steps 0, k, 2k, ...), a diagonal Hessian
    estimate for Sophia (Liu et al. 2023, arXiv 2305.14342):

    - ``hessian="hutchinson"``: h_est = u * (H u), u ~ N(0, I) (``distribution="gaussian"``) or
      Rademacher, drawn from a generator seeded by (seed, step, tensor). The Hessian-vector
      product needs ``create_graph`` double backward: models must use
      ``attn_implementation="eager"`` (SDPA attention on CPU has no double backward; a clear
      error says so).
    - ``hessian="gnb"`` (Gauss-Newton-Bartlett, Sophia-G): h_est = B * g^ * g^,
      where g^ is the gradient of the loss on labels *sampled from the model's own softmax*.
      The caller supplies it: ``step(closure, n_micro, gnb_closure=fn)`` where ``fn(i)`` returns
      micro-batch i's share of the mean sampled-label loss (like ``closure``), and ``gnb_scale``
      is B, the number of terms that loss averages (examples, or label tokens for a token-mean
      loss as in the Sophia code). Only needed on curvature steps; it is not called otherwise.

    The estimate reaches the chain as ``extras["hessian"]`` (absent on other steps).
    """

    kind = "so"
    step_options = ("gnb_closure",)

    def __init__(self, every: int = 10, hessian: str = "hutchinson", distribution: str = "gaussian",
                 gnb_scale: float | None = None):
        self.every, self.hessian, self.distribution, self.gnb_scale = every, hessian, distribution, gnb_scale

    def _probe(self, p: torch.Tensor, seed: int) -> torch.Tensor:
        gen = generator(seed, p.device)
        if self.distribution == "rademacher":
            return torch.randint(0, 2, p.shape, generator=gen, device=p.device).to(p.dtype).mul_(2).sub_(1)
        return torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)

    def estimate(self, params, closure, n_micro, t, seed, gnb_closure=None, **step_options):
        if closure is None:
            raise BasinError("sophia needs a closure: call step(closure, n_micro)")
        if t % self.every != 0:
            return Estimate(_backward_over(closure, n_micro), _grad_signals(params))
        if self.hessian == "gnb":
            loss = _backward_over(closure, n_micro)
            h_est = self._gnb(params, gnb_closure, n_micro)
        else:
            loss, h_est = self._hutchinson(params, closure, n_micro, t, seed)

        def signals():
            for (j, _, p), h in zip(params, h_est):
                if p.grad is not None:
                    yield j, p, p.grad, {"hessian": h}
        return Estimate(loss, signals())

    def _hutchinson(self, params, closure, n_micro, t, seed):
        tensors = [p for _, _, p in params]
        probes = [self._probe(p, derive_seed(seed, t, "hutchinson", j)) for j, _, p in params]
        hvp = [torch.zeros_like(p) for p in tensors]
        loss = 0.0
        with torch.enable_grad():
            for i in range(n_micro):
                value = total_loss(closure(i))
                loss += float(value.detach())
                if not value.requires_grad:
                    continue
                grads = torch.autograd.grad(value, tensors, create_graph=True, allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, tensors)]
                for acc, part in zip(hvp, hutchinson_diagonal(grads, tensors, probes)):
                    acc.add_(part)
                for p, g in zip(tensors, grads):
                    p.grad = g.detach().clone() if p.grad is None else p.grad.add_(g.detach())
        return loss, [u * hu for u, hu in zip(probes, hvp)]

    def _gnb(self, params, gnb_closure, n_micro):
        if gnb_closure is None:
            raise BasinError("sophia with hessian='gnb' needs step(closure, n_micro, gnb_closure=fn), "
                             "fn(i) returning the loss on labels sampled from the model's softmax")
        tensors = [p for _, _, p in params]
        ghat = [torch.zeros_like(p) for p in tensors]
        with torch.enable_grad():
            for i in range(n_micro):
                value = total_loss(gnb_closure(i))
                parts = torch.autograd.grad(value, tensors, allow_unused=True)
                for acc, part in zip(ghat, parts):
                    if part is not None:
                        acc.add_(part)
        # Sophia-G: h_est = B * g^ (.) g^  (Liu et al. 2023)
        return [g.mul_(g).mul_(self.gnb_scale) for g in ghat]


# ----------------------------------------------------------------------------- SAM on the forget loss

class SharpnessAware(Estimator):
    """SAM on the forget loss (Fan et al. 2025, "Towards LLM Unlearning Resilient to Relearning
    Attacks: A Sharpness-Aware Minimization Perspective"; SAM: Foret et al. 2021):

        min_p  l_f(p + delta(p)) + l_r(p),   delta = rho * g_f / ||g_f||,  g_f = grad l_f(p)
        g = grad l_f(p + delta) + grad l_r(p)     (first-order SAM: delta treated as constant)

    The closure must return ``{"forget": l_f, "retain": l_r}``; a plain tensor is treated as the
    forget term alone (plain SAM). ||g_f|| is the norm over all trainable tensors. Costs two
    forward-backward passes per step and two parameter-sized buffers (g_f, and the exact weights
    to restore after the perturbed pass).
    """

    kind = "sam"

    def __init__(self, rho: float = 0.01):
        self.rho = rho

    @staticmethod
    def _terms(value) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(value, dict):
            if "forget" not in value:
                raise BasinError("sam needs the closure to return {'forget': tensor, 'retain': tensor}; "
                                 f"got keys {sorted(value)}")
            rest = [v for k, v in value.items() if k != "forget"]
            return value["forget"], (sum(rest) if rest else None)
        return total_loss(value), None

    def estimate(self, params, closure, n_micro, t, seed, **step_options):
        if closure is None:
            raise BasinError("sam needs a closure: call step(closure, n_micro)")
        tensors = [p for _, _, p in params]
        g_forget: list[torch.Tensor | None] = [None] * len(tensors)
        loss = 0.0
        with torch.enable_grad():                      # pass 1, at p: grad l_f (kept) and grad l_r (.grad)
            for i in range(n_micro):
                forget, retain = self._terms(closure(i))
                loss += float(forget.detach()) + (float(retain.detach()) if retain is not None else 0.0)
                retain_live = retain is not None and retain.requires_grad
                if forget.requires_grad:
                    parts = torch.autograd.grad(forget, tensors, retain_graph=retain_live, allow_unused=True)
                    for k, part in enumerate(parts):
                        if part is not None:
                            g_forget[k] = part if g_forget[k] is None else g_forget[k].add_(part)
                if retain_live:
                    retain.backward()
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in g_forget if g is not None))
        if norm > 0:
            saved = [p.detach().clone() for p in tensors]
            with torch.no_grad():                      # p <- p + rho * g_f / ||g_f||
                for p, g in zip(tensors, g_forget):
                    if g is not None:
                        p.add_(g.mul_(self.rho / norm))
            del g_forget
            with torch.enable_grad():                  # pass 2, at p + delta: grad l_f into .grad
                for i in range(n_micro):
                    forget, _ = self._terms(closure(i))
                    if forget.requires_grad:
                        forget.backward()
            with torch.no_grad():
                for p, old in zip(tensors, saved):
                    p.copy_(old)
        else:                                          # no forget gradient: delta = 0
            for p, g in zip(tensors, g_forget):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad.add_(g)
        return Estimate(loss, _grad_signals(params))
