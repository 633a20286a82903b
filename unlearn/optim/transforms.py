"""Update transforms: the *chain* half of every optimizer (the estimator is the other half).

An optimizer step turns a descent signal ``g`` for one tensor (a gradient, a zeroth-order
estimate, ...) into a direction by passing it through a chain of small transforms, as optax does:
``adam = [ScaleByAdam, DecoupledWeightDecay]``, ``qadam`` inserts ``Quantize`` after
``ScaleByAdam``, ``zo-adam`` is the same chain fed by another estimator. The parameter then
moves by ``p -= lr * chain(g)`` (the host applies the learning rate in the same pass as the
update, optax's ``scale_by_learning_rate`` folded into ``p.add_(d, alpha=-lr)``).

The maths lives in the plain per-tensor functions below, one per equation, each citing its paper.
The ``Link`` classes only declare which state buffers a function needs and read its
hyperparameters. Two rules keep chains composable:

- a link never modifies its input ``d`` in place (it may be ``p.grad`` or another link's state);
- state buffers are named by role, not by owner: ``m`` (first moment / momentum), ``v`` (second
  moment), ``h`` (curvature). The hybrid optimizer's ``shared`` state policy relies on this: an
  Adam phase and an AdaZO phase that share state read and write the same ``m`` and ``v``.

Notation: ``g`` the descent signal, ``d`` the running direction, ``t`` the step count of this
tensor (1 at its first update), ``lr`` the learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

# ----------------------------------------------------------------------------- per-tensor maths


def adam_direction(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int,
                   b1: float, b2: float, eps: float) -> torch.Tensor:
    """Adam's direction (Kingma & Ba 2015, "Adam", Algorithm 1); updates ``m`` and ``v`` in place.

        m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
        m^ = m / (1 - b1^t)            v^ = v / (1 - b2^t)
        return m^ / (sqrt(v^) + eps)

    Moments are updated in the same order of operations as ``torch.optim.AdamW``; the bias
    corrections are folded into one denominator, bc1 * (sqrt(v) / sqrt(bc2) + eps), so the
    direction costs one pass less. The two agree to rounding (~1e-7 relative).
    """
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    denom = v.sqrt().mul_(bc1 / math.sqrt(bc2)).add_(bc1 * eps)
    return m / denom


def adazo_direction(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                    b1: float, b2: float, zeta: float) -> torch.Tensor:
    """R-AdaZO's direction (Shu et al., "Refining Adaptive Zeroth-Order Optimization at Ease",
    ICML 2025, arXiv 2502.01014); updates
    ``m`` and ``v`` in place. The second moment tracks the *first moment*, not the raw estimate:

        m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) m^2
        return m / sqrt(v + zeta)

    No bias correction, as in the paper: the first step is m / sqrt((1 - b2) m^2), i.e.
    lr / sqrt(1 - b2) (about 32 lr for b2 = 0.999) per coordinate, shrinking as v accumulates.
    """
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(m, m, value=1 - b2)
    return m / (v + zeta).sqrt_()


def sophia_direction(g: torch.Tensor, m: torch.Tensor, h: torch.Tensor, h_est: torch.Tensor | None,
                     b1: float, b2: float, gamma: float, eps: float) -> torch.Tensor:
    """Sophia's clipped direction (Liu et al. 2023, "Sophia", arXiv 2305.14342);
    updates ``m`` (every step) and ``h`` (only when a fresh curvature estimate ``h_est`` is given,
    i.e. every k steps) in place:

        m = b1 m + (1 - b1) g
        h = b2 h + (1 - b2) h_est                    (every k steps)
        return clip(m / max(gamma * h, eps), 1)      (elementwise clip to [-1, 1])
    """
    m.lerp_(g, 1 - b1)
    if h_est is not None:
        h.lerp_(h_est, 1 - b2)
    return (m / (gamma * h).clamp_min_(eps)).clamp_(-1.0, 1.0)


def add_gaussian_noise(d: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """d + std * xi, xi ~ N(0, I) from ``generator``: isotropic Gaussian noise on the direction
    (the step becomes p -= lr (d + std xi)).

    The noise of a step over D coordinates has E ||lr std xi||^2 = (lr std)^2 D, and its norm is
    lr std sqrt(D) to within a relative 1/sqrt(2D) (the chi distribution's spread), so ``std`` is
    the per-coordinate root mean square of the injected step in units of lr. Used as the
    noise-matched control of zeroth-order descent (``adam-noise``): Adam's update plus noise of the
    size a zeroth-order step moves the weights, without the zeroth-order estimate.
    """
    return d + std * torch.randn(d.shape, generator=generator, device=d.device, dtype=d.dtype)


def momentum_direction(g: torch.Tensor, m: torch.Tensor, beta: float) -> torch.Tensor:
    """Heavy-ball momentum with ``torch.optim.SGD`` semantics (dampening 0): m = beta m + g.
    Returns the buffer itself (links never modify their input, so this is safe)."""
    return m.mul_(beta).add_(g)


def sign(d: torch.Tensor) -> torch.Tensor:
    """sign(d), with sign(0) = 0: signSGD (Bernstein et al. 2018, "signSGD"). Applied to Adam's
    direction it gives signAdam, and sign(m^ / (sqrt(v^) + eps)) = sign(m)."""
    return torch.sign(d)


def quantize(d: torch.Tensor, bits: int, stochastic: bool = False,
             generator: torch.Generator | None = None, scale: str = "unit") -> torch.Tensor:
    """N-bit symmetric uniform quantizer Q(d; N) of the paper's intra-order downgrade
    ("Downgrade to Upgrade", ICLR 2026, arXiv 2510.00761, gradient compression): p -= lr * Q(d; N).

    The reading implemented here ("midrise, unit scale"):

        s = max |d|                          (per-tensor absmax scale)
        x = d / s                            in [-1, 1]
        L = 2^N levels  l_k = -1 + 2k/(L-1),  k = 0..L-1   (uniform, symmetric, no zero level)
        Q(d; N) = the level nearest to x, or with ``stochastic`` one of the two levels around x,
                  the upper one with probability proportional to the distance from the lower
                  (unbiased: E[Q] = x); and Q = 0 where d = 0.

    so N = 1 gives the levels {-1, +1}: Q(d; 1) = sign(d) exactly, and lr bounds every step as
    in signSGD. ``scale="absmax"`` multiplies back by s (the magnitude-preserving reading, where
    N = 1 is s * sign(d)). ``generator`` supplies the rounding noise.

    Computed in units of the level spacing, y = x (L-1)/2, where the levels are the
    half-integers +-1/2, ..., +-(L-1)/2 (L is even): nearest = floor(y) + 1/2, stochastic =
    floor(y - 1/2 + U) + 1/2 with U ~ U[0, 1). Working around 0 rather than from -1 keeps
    round-to-nearest sign-exact for tiny entries (1 + x would round them away).
    """
    levels = 2 ** bits
    absmax = d.abs().amax()
    if not bool(absmax > 0):
        return torch.zeros_like(d)
    half_range = (levels - 1) / 2.0
    y = d / absmax * half_range
    if stochastic:
        noise = torch.rand(d.shape, generator=generator, device=d.device, dtype=y.dtype)
        y = torch.floor(y.sub_(0.5).add_(noise)).add_(0.5)
    else:
        y = torch.floor(y).add_(0.5)
    q = y.clamp_(-half_range, half_range).div_(half_range).masked_fill_(d == 0, 0.0)
    return q * absmax if scale == "absmax" else q


def quantize_levels(bits: int) -> torch.Tensor:
    """The 2^N values Q(.; N) can take on a non-zero input, ascending (float64)."""
    levels = 2 ** bits
    return torch.arange(levels, dtype=torch.float64) * (2.0 / (levels - 1)) - 1.0


# ----------------------------------------------------------------------------- chain links


@dataclass
class UpdateContext:
    """What a link may read besides the tensor: the learning rate of the tensor's group, the
    tensor's step count ``t`` in this state namespace (1 at its first update), a factory for
    seeded generators (``rng(tag)``) and per-step extras from the estimator (e.g. ``hessian``)."""

    lr: float
    t: int
    rng: Callable[[str], torch.Generator]
    extras: dict = field(default_factory=dict)
    tallies: dict = field(default_factory=dict)  # name -> [numerators, denominator] over a step's tensors

    def tally(self, name: str, numerator, denominator: int) -> None:
        """Add to a per-step diagnostic: the optimizer reports (sum of numerators) / (sum of
        denominators) over the step's tensors in ``BasinOptimizer.diagnostics``. A numerator may
        be a 0-d device tensor; it is read back once, after the step."""
        acc = self.tallies.setdefault(name, [[], 0])
        acc[0].append(numerator)
        acc[1] += denominator


class Link:
    """One transform of a chain. ``buffers`` names the per-tensor state it keeps (zero-initialised,
    same shape and dtype as the parameter)."""

    buffers: tuple[str, ...] = ()

    def __call__(self, d: torch.Tensor, p: torch.Tensor, state: dict, ctx: UpdateContext) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class ScaleByAdam(Link):
    """d -> m^ / (sqrt(v^) + eps); see :func:`adam_direction`."""

    buffers = ("m", "v")

    def __init__(self, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.b1, self.b2, self.eps = b1, b2, eps

    def __call__(self, d, p, state, ctx):
        return adam_direction(d, state["m"], state["v"], ctx.t, self.b1, self.b2, self.eps)


class ScaleByAdaZO(Link):
    """d -> m / sqrt(v + zeta) with v tracking m^2; see :func:`adazo_direction`."""

    buffers = ("m", "v")

    def __init__(self, b1: float = 0.9, b2: float = 0.999, zeta: float = 1e-8):
        self.b1, self.b2, self.zeta = b1, b2, zeta

    def __call__(self, d, p, state, ctx):
        return adazo_direction(d, state["m"], state["v"], self.b1, self.b2, self.zeta)


class ScaleBySophia(Link):
    """d -> clip(m / max(gamma h, eps), 1); reads the curvature estimate ``ctx.extras["hessian"]``
    (present only on curvature steps); see :func:`sophia_direction`."""

    buffers = ("m", "h")

    def __init__(self, b1: float = 0.965, b2: float = 0.99, gamma: float = 0.01, eps: float = 1e-12):
        self.b1, self.b2, self.gamma, self.eps = b1, b2, gamma, eps

    def __call__(self, d, p, state, ctx):
        out = sophia_direction(d, state["m"], state["h"], ctx.extras.get("hessian"),
                               self.b1, self.b2, self.gamma, self.eps)
        # clipped coordinates step by exactly lr * sign(m): the signSGD share of the update
        ctx.tally("sophia_clip_fraction", (out.abs() == 1.0).sum(), out.numel())
        return out


class Momentum(Link):
    """d -> m = beta m + d (heavy ball); see :func:`momentum_direction`."""

    buffers = ("m",)

    def __init__(self, beta: float):
        self.beta = beta

    def __call__(self, d, p, state, ctx):
        return momentum_direction(d, state["m"], self.beta)


class Sign(Link):
    """d -> sign(d); see :func:`sign`."""

    def __call__(self, d, p, state, ctx):
        return sign(d)


class Quantize(Link):
    """d -> Q(d; bits); see :func:`quantize`. Stochastic rounding draws from ``ctx.rng("quantize")``,
    a generator seeded from (optimizer seed, step, tensor): same seed, same bits."""

    def __init__(self, bits: int, stochastic: bool = False, scale: str = "unit"):
        self.bits, self.stochastic, self.scale = bits, stochastic, scale

    def __call__(self, d, p, state, ctx):
        gen = ctx.rng("quantize") if self.stochastic else None
        return quantize(d, self.bits, self.stochastic, gen, self.scale)


class AddNoise(Link):
    """d -> d + std * xi, xi ~ N(0, I); see :func:`add_gaussian_noise`. The noise comes from
    ``ctx.rng("noise")``, a generator seeded from (optimizer seed, step, tensor): same seed, same
    bits; the tensors of a step draw independent noise."""

    def __init__(self, std: float):
        self.std = std

    def __call__(self, d, p, state, ctx):
        return add_gaussian_noise(d, self.std, ctx.rng("noise")) if self.std else d


class DecoupledWeightDecay(Link):
    """d -> d + wd * p: decoupled weight decay (Loshchilov & Hutter 2019, "AdamW"), so that
    p -= lr * (d + wd p). It is the last link of every chain, after any sign / quantization, so
    the decay itself is never compressed."""

    def __init__(self, weight_decay: float):
        self.weight_decay = weight_decay

    def __call__(self, d, p, state, ctx):
        return d.add(p, alpha=self.weight_decay) if self.weight_decay else d
