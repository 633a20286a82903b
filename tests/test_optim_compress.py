"""Compressed first-order optimizers: sign, the N-bit quantizer and its stochastic rounding."""

from __future__ import annotations

import pytest
import torch

from unlearn.optim import make_optimizer
from unlearn.optim.transforms import quantize, quantize_levels, sign


def dense(n=100_000, seed=0):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_one_bit_quantizer_is_sign_including_zeros():
    d = torch.tensor([0.3, -2.0, 0.0, 1e-9, -1e-9, 5.0, -0.0])
    assert torch.equal(quantize(d, 1), sign(d))
    assert torch.equal(quantize(d, 1), torch.tensor([1.0, -1.0, 0.0, 1.0, -1.0, 1.0, 0.0]))


def test_qsgd_with_one_bit_is_signsgd_and_qadam_with_one_bit_is_signadam():
    def run(name, **options):
        torch.manual_seed(0)  # only for building the same layer twice; the optimizers use no global RNG
        layer = torch.nn.Linear(5, 3)
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
        opt = make_optimizer(name, layer, lr=0.01, **options)
        for _ in range(5):
            opt.step(lambda i: layer(x).pow(2).mean())
        return torch.cat([p.detach().reshape(-1) for p in layer.parameters()])
    assert torch.equal(run("qsgd", bits=1), run("signsgd"))
    assert torch.equal(run("qadam", bits=1), run("signadam"))
    assert not torch.equal(run("qsgd", bits=2), run("signsgd"))


@pytest.mark.parametrize("bits", range(1, 9))
def test_quantizer_uses_exactly_the_2_to_the_n_symmetric_levels(bits):
    d = dense() * 3.0
    q = quantize(d, bits).double()
    levels = quantize_levels(bits)
    assert len(levels) == 2 ** bits
    assert torch.allclose(levels, -levels.flip(0))                       # symmetric
    assert torch.allclose(levels.diff(), torch.full((2 ** bits - 1,), 2.0 / (2 ** bits - 1), dtype=torch.float64))
    values = torch.unique(q)
    assert len(values) == 2 ** bits and torch.allclose(values, levels, atol=1e-6)
    assert q.abs().max() == 1.0                                          # absmax maps to +-1
    # round to nearest: no entry is further than half a level spacing from d / absmax
    assert ((q - d.double() / d.abs().max()).abs() <= 1.0 / (2 ** bits - 1) + 1e-6).all()
    assert torch.allclose(quantize(d, bits, scale="absmax"), quantize(d, bits) * d.abs().max())


def test_quantizer_keeps_zero_and_all_zero_tensors():
    assert torch.equal(quantize(torch.zeros(3, 4), 4), torch.zeros(3, 4))
    q = quantize(torch.tensor([0.0, 1.0, -0.5]), 3)
    assert q[0] == 0.0 and q[1] == 1.0


def test_stochastic_rounding_is_unbiased():
    """E[Q(d; N)] = d / max|d| under stochastic rounding (not under round-to-nearest). Each draw
    has variance <= (spacing / 2)^2, so the mean of n draws is within 5 spacing / (2 sqrt(n))."""
    d = torch.tensor([1.0, 0.9, 0.52, 0.3, 0.1, -0.05, -0.37, -0.8])
    bits, n = 2, 4000
    draws = torch.stack([quantize(d, bits, stochastic=True, generator=torch.Generator().manual_seed(s))
                         for s in range(n)])
    spacing = 2.0 / (2 ** bits - 1)
    assert ((draws.mean(0) - d).abs() <= 5 * spacing / (2 * n ** 0.5)).all()
    nearest = quantize(d, bits)
    assert (nearest - d).abs().max() > 0.1                               # nearest is biased here


def test_stochastic_rounding_same_seed_same_bits():
    d = dense(1000)
    a = quantize(d, 3, True, torch.Generator().manual_seed(7))
    b = quantize(d, 3, True, torch.Generator().manual_seed(7))
    c = quantize(d, 3, True, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)

    def run(seed):
        w = torch.linspace(-1, 1, 50).requires_grad_(True)
        opt = make_optimizer("qadam", [("w", w)], lr=0.01, bits=2, rounding="stochastic", seed=seed)
        for _ in range(3):
            opt.step(lambda i: (w ** 3).sum())
        return w.detach()
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    with torch.random.fork_rng():                                        # the global RNG plays no part
        torch.manual_seed(123)
        first = run(0)
        torch.manual_seed(456)
        assert torch.equal(first, run(0))
