"""Flatness measures: Hutchinson's trace, power iteration and random sharpness against exact values."""

from __future__ import annotations

import math

import pytest
import torch

from audit.attacks.flatness import (dot, flatness, hutchinson_trace, hvp, perturbation, power_iteration,
                                    random_sharpness)
from unlearn.errors import BasinError


def _quadratic(matrix: torch.Tensor):
    """L(x) = 1/2 x^T A x (A symmetric): H = A everywhere."""
    x = torch.randn(matrix.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x.requires_grad_(True)
    return (lambda: [0.5 * x @ matrix @ x]), [x]


def _symmetric(n: int, seed: int, eigenvalues=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64) if eigenvalues is not None \
        else torch.randn(n, generator=g, dtype=torch.float64)
    return q @ torch.diag(lam) @ q.T


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.8)
        self.b1 = torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64) * 0.3)
        self.w2 = torch.nn.Parameter(torch.randn(2, 5, generator=g, dtype=torch.float64) * 0.8)

    def forward(self, x):
        return torch.tanh(x @ self.w1.T + self.b1) @ self.w2.T


def _mlp_problem():
    net = _MLP()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=g)
    params = list(net.parameters())
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def loss_flat(flat):  # the same loss as a function of one flat vector (for the autograd Hessian)
        parts = torch.split(flat, sizes)
        w1, b1, w2 = (t.reshape(s) for t, s in zip(parts, shapes))
        logits = torch.tanh(x @ w1.T + b1) @ w2.T
        return torch.nn.functional.cross_entropy(logits, y)

    def terms():  # two micro-batches whose sum is the mean loss
        for part in (slice(0, 6), slice(6, 16)):
            n = part.stop - part.start
            yield torch.nn.functional.cross_entropy(net(x[part]), y[part]) * n / 16
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    exact = torch.autograd.functional.hessian(loss_flat, flat)
    return terms, params, exact


def test_hvp_equals_the_autograd_hessian_times_v_on_an_mlp():
    terms, params, exact = _mlp_problem()
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(params)]
    flat_v = torch.cat([t.reshape(-1) for t in v])
    got = torch.cat([t.reshape(-1) for t in hvp(terms, params, v)])
    torch.testing.assert_close(got, exact @ flat_v, rtol=1e-10, atol=1e-12)


def test_hutchinson_trace_on_a_quadratic_is_unbiased_within_its_standard_error():
    a = _symmetric(12, 0)
    terms, params = _quadratic(a)
    est = hutchinson_trace(terms, params, 400, torch.Generator().manual_seed(0))
    exact = float(torch.trace(a))
    # one sample's variance is 2 (||A||_F^2 - sum A_ii^2); the SE estimates its root over sqrt(n)
    true_se = math.sqrt(2 * (float((a ** 2).sum()) - float((torch.diagonal(a) ** 2).sum())) / 400)
    assert abs(est.se - true_se) / true_se < 0.15
    assert abs(est.mean - exact) < 3.5 * true_se
    assert len(est.samples) == 400


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    a = torch.diag(torch.tensor([1.0, -2.0, 3.5, 0.25], dtype=torch.float64))
    terms, params = _quadratic(a)
    est = hutchinson_trace(terms, params, 3, torch.Generator().manual_seed(5))
    assert est.samples == pytest.approx([2.75] * 3, abs=1e-12)
    assert est.se == pytest.approx(0.0, abs=1e-12)


def test_hutchinson_trace_on_a_tiny_mlp_matches_the_autograd_hessian():
    terms, params, exact = _mlp_problem()
    est = hutchinson_trace(terms, params, 300, torch.Generator().manual_seed(0))
    true_sd = math.sqrt(2 * (float((exact ** 2).sum()) - float((torch.diagonal(exact) ** 2).sum())))
    assert abs(est.mean - float(torch.trace(exact))) < 3.5 * true_sd / math.sqrt(300)
    assert abs(est.se - true_sd / math.sqrt(300)) / (true_sd / math.sqrt(300)) < 0.2


def test_hutchinson_same_seed_same_numbers_other_seed_other_numbers():
    terms, params, _ = _mlp_problem()
    first = hutchinson_trace(terms, params, 5, torch.Generator().manual_seed(7)).samples
    again = hutchinson_trace(terms, params, 5, torch.Generator().manual_seed(7)).samples
    other = hutchinson_trace(terms, params, 5, torch.Generator().manual_seed(8)).samples
    assert first == again and first != other


@pytest.mark.parametrize("eigenvalues", [[5.0, 3.0, 1.0, -0.5, 0.2, 2.0],          # PSD-dominant
                                         [2.0, 1.0, -6.0, 0.5, -1.0, 0.0]])        # negative dominant
def test_power_iteration_finds_the_largest_eigenvalue(eigenvalues):
    a = _symmetric(6, 2, eigenvalues)
    terms, params = _quadratic(a)
    est = power_iteration(terms, params, 500, torch.Generator().manual_seed(0), tol=1e-12)
    lam = torch.linalg.eigvalsh(a)
    assert est.largest == pytest.approx(float(lam[-1]), rel=1e-6)
    assert est.dominant == pytest.approx(float(lam[lam.abs().argmax()]), rel=1e-6)
    assert est.converged


def test_power_iteration_with_a_small_budget_is_a_lower_bound_and_says_so():
    # the dominant eigenvalue is -50, far below lambda_max = 1: the shifted run converges at the
    # rate (0.9 + 50) / (1 + 50), so 5 iterations cannot meet a 1e-6 tolerance
    a = _symmetric(8, 4, [1.0, 0.9, 0.5, 0.1, -0.2, -1.0, -3.0, -50.0])
    terms, params = _quadratic(a)
    est = power_iteration(terms, params, 5, torch.Generator().manual_seed(0), tol=1e-6)
    assert not est.converged and est.iterations == 10
    assert est.largest <= 1.0 + 1e-9


def test_power_iteration_on_a_tiny_mlp_matches_eigvalsh():
    terms, params, exact = _mlp_problem()
    est = power_iteration(terms, params, 1000, torch.Generator().manual_seed(0), tol=1e-12)
    assert est.largest == pytest.approx(float(torch.linalg.eigvalsh(exact)[-1]), rel=1e-5)
    assert est.iterations <= 2000


@pytest.mark.parametrize("norm", ["tensor", "global"])
def test_perturbation_has_exactly_the_stated_relative_norm(norm):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(7, 3, generator=g) * 5, torch.randn(11, generator=g) * 0.01, torch.zeros(4)]
    eps = perturbation(params, 0.05, norm, torch.Generator().manual_seed(1))
    if norm == "tensor":
        for p, e in zip(params, eps):
            assert float(e.double().norm()) == pytest.approx(0.05 * float(p.double().norm()), rel=1e-6, abs=1e-30)
    else:
        assert math.sqrt(dot(eps, eps)) == pytest.approx(0.05 * math.sqrt(dot(params, params)), rel=1e-6)
        assert float(eps[2].norm()) > 0  # global: a zero tensor is moved too
    again = perturbation(params, 0.05, norm, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(eps, again))


def test_random_sharpness_of_a_quadratic_and_exact_restore():
    # L = 1/2 ||x||^2 at x: L(x + eps) - L(x) = <x, eps> + 1/2 ||eps||^2; mean over draws -> rho^2 L
    x = torch.randn(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    before = x.detach().clone()
    terms = lambda: [0.5 * (x * x).sum()]
    est = random_sharpness(terms, [x], 0.1, 4, torch.Generator().manual_seed(0))
    base = 0.5 * float((before ** 2).sum())
    assert est.base == pytest.approx(base)
    g = torch.Generator().manual_seed(0)
    expected = []
    for _ in range(4):
        e = perturbation([before], 0.1, "tensor", g)[0]
        expected.append(float((before * e).sum() + 0.5 * (e * e).sum()))
    assert est.rises == pytest.approx(expected, rel=1e-9)
    assert est.max == max(est.rises) and est.max == pytest.approx(max(expected), rel=1e-9)
    assert torch.equal(x.detach(), before)  # restored bit for bit
    assert abs(est.mean - 0.01 * base) < 0.5 * 0.01 * base  # the <x, eps> terms average out


def test_flatness_on_a_micro_model_is_seeded_and_leaves_the_model_alone(micro_model, micro_world, micro_tokenizer):
    from unlearn.models import weights_hash

    forget, retain = micro_world.split(0.25)
    before = weights_hash(micro_model)
    kw = dict(tokenizer=micro_tokenizer, forget_rows=forget[:6], retain_rows=retain[:6], rho=(0.01,), draws=2,
              probes=2, iters=3, max_rows=6, batch_size=3, seed=0)
    first = {(s, x): v for s, x, v in flatness(micro_model, **kw)}
    again = {(s, x): v for s, x, v in flatness(micro_model, **kw)}
    assert first == again
    assert weights_hash(micro_model) == before
    assert [s for s, _ in first] == ["loss", "sharpness-tensor-0.01", "hutchinson-2", "power-3"]
    trace = first[("hutchinson-2", 2.0)]
    assert set(trace) == {("forget", "hessian_trace"), ("forget", "hessian_trace_se"),
                          ("retain", "hessian_trace"), ("retain", "hessian_trace_se")}
    assert all(math.isfinite(v) for vals in first.values() for v in vals.values())
    other = {(s, x): v for s, x, v in flatness(micro_model, **{**kw, "seed": 1})}
    assert other[("hutchinson-2", 2.0)] != trace
    assert other[("loss", None)] == first[("loss", None)]


def test_flatness_rejects_bad_options(micro_model, micro_tokenizer):
    with pytest.raises(BasinError, match="measure"):
        flatness(micro_model, tokenizer=micro_tokenizer, forget_rows=[{"question": "q", "answer": "a"}],
                 measures=("trace", "hessian"))
    with pytest.raises(BasinError, match="norm"):
        flatness(micro_model, tokenizer=micro_tokenizer, forget_rows=[{"question": "q", "answer": "a"}], norm="layer")


def test_hvp_without_double_backward_says_how_to_fix_it(micro_model, micro_world, micro_tokenizer):
    from audit.attacks.flatness import answer_loss
    from unlearn.data.format import encode_rows

    micro_model.set_attn_implementation("sdpa")
    params = [p for p in micro_model.parameters()]
    forget, _ = micro_world.split(0.25)
    loss = answer_loss(micro_model, encode_rows(micro_tokenizer, forget[:2]), micro_tokenizer.pad_token_id, 2)
    with pytest.raises(BasinError, match="eager"):
        hvp(loss, params, [torch.ones_like(p) for p in params])
