"""The noise-matched control (adam-noise) and the optimizer's per-step diagnostics (update_rms,
Sophia's clip fraction), checked against hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn.errors import BasinError
from unlearn.optim import make_optimizer


def _flat_params(sizes=(120_000, 80_000)):
    """Parameters whose loss has zero gradient: Adam's direction is then exactly 0, so a step of
    adam-noise moves them by the noise alone, -lr * std * xi."""
    params = [(f"p{i}", torch.zeros(n)) for i, n in enumerate(sizes)]
    for _, p in params:
        p.requires_grad_(True)
    closure = lambda i=0: sum(0.0 * p.sum() for _, p in params)
    return params, closure


def _noise_steps(std=0.3, lr=0.01, seed=0, steps=1, sizes=(120_000, 80_000)):
    params, closure = _flat_params(sizes)
    opt = make_optimizer("adam-noise", params, lr=lr, seed=seed, noise_std=std)
    out = []
    for _ in range(steps):
        before = [p.detach().clone() for _, p in params]
        opt.step(closure)
        out.append(torch.cat([(b - p.detach()).reshape(-1) for b, (_, p) in zip(before, params)]) / lr)
    return out, opt


def test_adam_noise_adds_noise_of_the_stated_norm():
    std, (noise,), opt = 0.3, *_noise_steps(std=0.3)
    d = noise.numel()
    # ||std xi|| = std sqrt(D) (1 + O(1/sqrt(2D))): 4 standard deviations of the chi distribution
    assert abs(float(noise.norm()) / (std * math.sqrt(d)) - 1) < 4 / math.sqrt(2 * d)
    assert opt.diagnostics["update_rms"] == pytest.approx(float(noise.norm()) / math.sqrt(d), rel=1e-5)


def test_adam_noise_is_isotropic_gaussian():
    (a, b), _ = _noise_steps(std=1.0, steps=2)
    d = a.numel()
    assert abs(float(a.mean())) < 4 / math.sqrt(d)                        # centred
    assert abs(float(torch.nn.functional.cosine_similarity(a, b, dim=0))) < 4 / math.sqrt(d)  # fresh each step
    # equal energy per coordinate: each tensor's share of ||xi||^2 is its share of the coordinates
    share = float(a[:120_000].pow(2).sum() / a.pow(2).sum())
    assert abs(share - 0.6) < 4 * math.sqrt(2 * 0.6 * 0.4 / d)
    # Gaussian marginal (kurtosis 3; a uniform or sign noise would give 1.8 or 1)
    kurt = float((a - a.mean()).pow(4).mean() / (a - a.mean()).pow(2).mean() ** 2)
    assert abs(kurt - 3) < 4 * math.sqrt(24 / d)
    # over many steps on 3 coordinates, the covariance is the identity (no preferred direction)
    steps, _ = _noise_steps(std=1.0, steps=3000, sizes=(3,))
    x = torch.stack(steps).double()
    cov = x.T @ x / len(steps)
    assert torch.allclose(cov, torch.eye(3, dtype=torch.float64), atol=4 * math.sqrt(2 / 3000))


def test_adam_noise_is_seeded():
    same = [_noise_steps(seed=3)[0][0] for _ in range(2)]
    other = _noise_steps(seed=4)[0][0]
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0], other)


def test_adam_noise_is_adam_plus_the_noise_and_zero_noise_is_adam():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(50, generator=g)
    runs = {}
    for name, opts in (("adam", {}), ("adam-noise", {"noise_std": 0.0}), ("noisy", {"noise_std": 0.5})):
        x = torch.zeros(50, requires_grad=True)
        opt = make_optimizer("adam" if name == "adam" else "adam-noise", [("x", x)], lr=0.1, seed=0, **opts)
        for _ in range(5):
            opt.step(lambda i=0: ((x - target) ** 2).sum())
        runs[name] = x.detach()
    assert torch.equal(runs["adam"], runs["adam-noise"])
    assert not torch.equal(runs["adam"], runs["noisy"])
    with pytest.raises(BasinError, match="noise_std"):
        make_optimizer("adam-noise", [("x", torch.zeros(2, requires_grad=True))], noise_std=-1.0)


def test_update_rms_of_adams_first_step_is_one():
    x = torch.tensor([0.5, -2.0, 3.0, 1e-3], requires_grad=True)
    opt = make_optimizer("adam", [("x", x)], lr=0.1)
    opt.step(lambda i=0: (x ** 2).sum())
    assert opt.diagnostics == {"update_rms": pytest.approx(1.0, rel=1e-4)}  # |m^/sqrt(v^)| = 1 everywhere


@pytest.mark.parametrize("gamma, fraction", [(1.0, 0.5), (0.25, 0.75), (10.0, 0.0)])
def test_sophia_clip_fraction_on_a_diagonal_quadratic(gamma, fraction):
    # L = 1/2 sum a_i x_i^2: g = a x, H = diag(a), and a Rademacher probe gives u (H u) = a exactly.
    # With b1 = b2 = 0: m = g, h = a, so the ratio m / (gamma h) = x / gamma is clipped where |x| >= gamma.
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x = torch.tensor([0.5, 2.0, -3.0, 0.1], requires_grad=True)
    opt = make_optimizer("sophia", [("x", x)], lr=0.1, b1=0.0, b2=0.0, gamma=gamma, k=1,
                         distribution="rademacher")
    opt.step(lambda i=0: 0.5 * (a * x * x).sum())
    assert opt.diagnostics["sophia_clip_fraction"] == fraction
    ratio = torch.tensor([0.5, 2.0, -3.0, 0.1]) / gamma
    assert opt.diagnostics["update_rms"] == pytest.approx(float(ratio.clamp(-1, 1).pow(2).mean().sqrt()), rel=1e-6)
