"""Zeroth-order (ZO) estimation: a descent signal from loss values alone, at inference memory.

Randomized gradient estimate with q directions u_i and smoothing radius mu (Nesterov & Spokoiny
2017; ZO-Bench, Zhang et al. 2024, arXiv 2402.11592):

    central difference   g = (1/q) sum_i [f(p + mu u_i) - f(p - mu u_i)] / (2 mu) * s * u_i
    forward difference   g = (1/q) sum_i [f(p + mu u_i) - f(p)] / mu * s * u_i

- ``directions="gaussian"``: u_i ~ N(0, I), s = 1.
- ``directions="sphere"``: u_i uniform on the unit sphere of the whole perturbed parameter
  vector (a Gaussian draw divided by its norm over all perturbed tensors), s = d, the number of
  perturbed parameters; without s the estimate would be d times too small. With the same mu a
  sphere probe is sqrt(d) times shorter than a Gaussian one, so scale mu up accordingly.

E[g] is the gradient of the *smoothed* loss f_mu(p) = E_v f(p + mu v) (v ~ N(0, I) for Gaussian
directions, v uniform in the unit ball for sphere directions): ZO descent is descent on a
randomly smoothed loss, the link the paper draws to robustness ("Downgrade to Upgrade", ICLR
2026, arXiv 2510.00761). On a quadratic, f_mu and f have the same gradient.

Memory (MeZO, Malladi et al. 2023, arXiv 2305.17333): u is never stored. Each direction has a
seed derived from (optimizer seed, step, direction, tensor), and a dedicated ``torch.Generator``
regenerates u tensor by tensor for every pass: perturb (+mu u), perturb (-2 mu u), restore
(+mu u), fused with the update. No ``.grad`` is allocated; besides the weights, a ZO step holds
one tensor's direction and a few scratch tensors of that size at a time. All micro-batches of a
step are evaluated at the same perturbed weights, so gradient accumulation is exact.

Bit-exact restore. Floating-point addition is not invertible: in fp32, fl(fl(p + z) - 2z) + z
differs from p in about half of the entries (by an ulp or so), and even fl(fl(p + z) - z)
differs where p + z crosses into a larger binade (|p + z| >= the next power of two above |p|),
since the sum then keeps one bit less. So the -2 mu u move is done as two unit moves through p
(restore, then -mu u), and with ``exact_restore=True`` (the default) each move records, per
tensor, the few entries its reverse move would not return exactly (found by computing the
reverse move on a scratch copy) and writes their saved values back on the way home. Weights come
back bit-for-bit in any dtype. The cost is memory for those entries (int32 index + value: 8
bytes each) while a probe is out; how many there are depends on mu against the weights' size
(about 7% of entries per side for mu = 1e-3 Gaussian probes on weights of std 0.02, about 1% on
weights of size 1; almost none for sphere probes). ``exact_restore=False`` skips the bookkeeping
(plain MeZO): the weights then drift by an ulp here and there per step, the same size as the
rounding of the update itself.
"""

from __future__ import annotations

import math
import re

import torch

from unlearn.errors import BasinError
from unlearn.optim.estimators import Estimate, Estimator, NamedParams, forward_losses
from unlearn.optim.rng import derive_seed, generator

DIRECTIONS = ("gaussian", "sphere")
DIFFERENCES = ("central", "forward")

# entries a reverse move would not restore exactly: (flat indices, their original values)
Exceptions = tuple[torch.Tensor, torch.Tensor]

_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as integers (so -0.0 != +0.0 and NaNs compare by payload)."""
    return t.view(_INT_OF_SIZE[t.element_size()])


def shift(p: torch.Tensor, z: torch.Tensor, sign: int, exact: bool) -> Exceptions | None:
    """p <- fl(p + sign * z). With ``exact``, return the entries where the reverse move
    fl(new - sign * z) would not give back p's bits, with their current values."""
    moved = p + z if sign > 0 else p - z
    exceptions = None
    if exact:
        back = moved - z if sign > 0 else moved + z
        bad = (_bits(back) != _bits(p)).view(-1).nonzero().view(-1)
        del back
        if bad.numel():
            exceptions = (bad.to(torch.int32) if p.numel() < 2 ** 31 else bad, p.view(-1)[bad])
    p.copy_(moved)
    return exceptions


def unshift(p: torch.Tensor, z: torch.Tensor, sign: int, exceptions: Exceptions | None) -> None:
    """Undo :func:`shift`: p <- fl(p - sign * z), then write back the recorded exceptions."""
    if sign > 0:
        p.sub_(z)
    else:
        p.add_(z)
    if exceptions is not None:
        p.view(-1)[exceptions[0]] = exceptions[1]


class ZerothOrder(Estimator):
    """Randomized finite-difference estimator (see the module docstring for the equations).

    Parameters: ``q`` directions per step; smoothing radius ``mu``; ``directions`` "gaussian"
    or "sphere"; ``difference`` "central" (2q forward passes) or "forward" (q + 1); ``perturb``
    a regular expression over parameter names selecting the tensors to perturb and update (None:
    every trainable tensor), e.g. ``r"mlp\\."`` for the MLP weights only; ``exact_restore`` as
    in the module docstring. The step's loss is f(p) for forward differences and the mean of
    (f(p + mu u) + f(p - mu u)) / 2, which is f(p) + O(mu^2), for central ones.
    """

    kind = "zo"

    def __init__(self, q: int = 1, mu: float = 1e-3, directions: str = "gaussian",
                 difference: str = "central", perturb: str | None = None, exact_restore: bool = True):
        self.q, self.mu, self.directions, self.difference = q, mu, directions, difference
        self.perturb, self.exact_restore = perturb, exact_restore
        self._selected: NamedParams = []
        self.dim = 0

    def bind(self, params: NamedParams) -> None:
        pattern = re.compile(self.perturb) if self.perturb is not None else None
        self._selected = [(j, n, p) for j, n, p in params if pattern is None or pattern.search(n)]
        if not self._selected:
            raise BasinError(f"perturb={self.perturb!r} matches no trainable parameter; names look like "
                             f"{', '.join(n for _, n, _ in params[:3])}")
        for _, name, p in self._selected:
            if not p.is_contiguous():
                raise BasinError(f"zeroth-order probes need contiguous parameters; {name} is not")
        self.dim = sum(p.numel() for _, _, p in self._selected)

    @property
    def selected(self) -> list[str]:
        """Names of the perturbed parameters."""
        return [n for _, n, _ in self._selected]

    # -- directions ----------------------------------------------------------------------------
    def direction(self, p: torch.Tensor, t: int, i: int, j: int, seed: int) -> torch.Tensor:
        """Raw draw for direction i, tensor j at step t: N(0, I), regenerated from its own seed."""
        gen = generator(derive_seed(seed, t, "zo", i, j), p.device)
        return torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)

    def _weights(self, t: int, seed: int) -> list[float]:
        """Per direction, the factor w_i turning the raw draw into u_i = w_i * draw:
        1 for Gaussian directions, 1 / ||draw_i|| (norm over all perturbed tensors) for sphere."""
        if self.directions == "gaussian":
            return [1.0] * self.q
        out = []
        for i in range(self.q):
            sq = sum(float(torch.linalg.vector_norm(self.direction(p, t, i, j, seed), dtype=torch.float64)) ** 2
                     for j, _, p in self._selected)
            out.append(1.0 / math.sqrt(sq))
        return out

    # -- one step ------------------------------------------------------------------------------
    def estimate(self, params, closure, n_micro, t, seed, **step_options):
        if closure is None:
            raise BasinError("zeroth-order optimizers need a closure: call step(closure, n_micro)")
        with torch.no_grad():
            return self._probe(closure, n_micro, t, seed)

    def _probe(self, closure, n_micro, t, seed) -> Estimate:
        sel, exact, mu = self._selected, self.exact_restore, self.mu
        weights = self._weights(t, seed)
        f0 = forward_losses(closure, n_micro) if self.difference == "forward" else None
        coefs, centres = [], []
        exceptions: list = [None] * len(sel)
        for i in range(self.q):
            radius = mu * weights[i]
            for k, (j, _, p) in enumerate(sel):                                # p + mu u
                exceptions[k] = shift(p, self.direction(p, t, i, j, seed).mul_(radius), +1, exact)
            f_plus = forward_losses(closure, n_micro)
            if self.difference == "central":
                for k, (j, _, p) in enumerate(sel):                            # p - mu u
                    z = self.direction(p, t, i, j, seed).mul_(radius)
                    unshift(p, z, +1, exceptions[k])
                    exceptions[k] = shift(p, z, -1, exact)
                f_minus = forward_losses(closure, n_micro)
                coefs.append((f_plus - f_minus) / (2 * mu))
                centres.append((f_plus + f_minus) / 2)
                side = -1
            else:
                coefs.append((f_plus - f0) / mu)
                side = +1
            if i < self.q - 1:                                                 # back to p
                for k, (j, _, p) in enumerate(sel):
                    unshift(p, self.direction(p, t, i, j, seed).mul_(radius), side, exceptions[k])
                    exceptions[k] = None
        loss = f0 if f0 is not None else sum(centres) / len(centres)
        return Estimate(loss, self._restore_and_estimate(coefs, weights, exceptions, side, t, seed))

    def _restore_and_estimate(self, coefs, weights, exceptions, side, t, seed):
        """Per tensor: undo the last probe, then build
        g = (s/q) sum_i c_i w_i draw_i  (c_i the finite-difference coefficient, s = 1 or d)
        and hand it to the optimizer. Non-finite losses skip the update (weights are restored)."""
        s = self.dim if self.directions == "sphere" else 1
        last = self.q - 1
        finite = all(math.isfinite(c) for c in coefs)
        for k, (j, _, p) in enumerate(self._selected):
            with torch.no_grad():
                draw = self.direction(p, t, last, j, seed)
                unshift(p, draw * (self.mu * weights[last]), side, exceptions[k])
                exceptions[k] = None
                if not finite:
                    continue
                g = draw.mul_(coefs[last] * s * weights[last] / self.q)
                for i in range(last):
                    g.add_(self.direction(p, t, i, j, seed), alpha=coefs[i] * s * weights[i] / self.q)
            yield j, p, g, {}
