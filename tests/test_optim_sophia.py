"""Sophia: a hand-derived step, Hutchinson's estimate, parity with pytorch-optimizer's SophiaH,
the GNB option and the double-backward error."""

from __future__ import annotations

import pytest
import torch

from unlearn.errors import BasinError
from unlearn.optim import make_optimizer
from unlearn.optim.estimators import Curvature, hutchinson_diagonal


def test_sophia_two_steps_by_hand():
    """f = 0.5 (1 x1^2 + 4 x2^2), x0 = (1, -0.5); Rademacher probes make u * (H u) = diag(H)
    = (1, 4) exactly. b1 = 0.9, b2 = 0.99, gamma = 8, lr = 0.1, curvature every k = 2 steps.
    step 1: g = (1, -2); m = 0.1 g = (0.1, -0.2); h = 0.01 (1, 4) = (0.01, 0.04)
            m / (gamma h) = (0.1/0.08, -0.2/0.32) = (1.25, -0.625) -> clip -> (1, -0.625)
            x1 = x0 - 0.1 (1, -0.625) = (0.9, -0.4375)
    step 2 (no curvature update): g = (0.9, -1.75); m = 0.9 m + 0.1 g = (0.18, -0.355)
            m / (gamma h) = (2.25, -1.109375) -> clip -> (1, -1);  x2 = (0.8, -0.3375)"""
    x = torch.tensor([1.0, -0.5], requires_grad=True)
    a = torch.tensor([1.0, 4.0])
    opt = make_optimizer("sophia", [("x", x)], lr=0.1, b1=0.9, b2=0.99, gamma=8.0, k=2,
                         distribution="rademacher")
    closure = lambda i: 0.5 * (a * x ** 2).sum()  # noqa: E731
    assert opt.step(closure) == pytest.approx(0.5 * (1 + 4 * 0.25))
    assert torch.allclose(x.detach(), torch.tensor([0.9, -0.4375]), atol=1e-7)
    assert torch.allclose(opt.state[x]["h"], torch.tensor([0.01, 0.04]), atol=1e-9)
    opt.step(closure)
    assert torch.allclose(x.detach(), torch.tensor([0.8, -0.3375]), atol=1e-7)
    assert torch.allclose(opt.state[x]["m"], torch.tensor([0.18, -0.355]), atol=1e-7)
    assert torch.allclose(opt.state[x]["h"], torch.tensor([0.01, 0.04]), atol=1e-9)  # untouched at step 2


def test_hutchinson_gaussian_estimate_is_unbiased_for_the_hessian_diagonal():
    """E[u * (H u)] = diag(H) for u ~ N(0, I), with a non-diagonal H (CLT bound, 5 sigma).
    Drawn through the estimator itself: one probe per step t, from its seeded generator."""
    H = torch.tensor([[2.0, 0.7, -0.3], [0.7, 1.0, 0.4], [-0.3, 0.4, 3.0]], dtype=torch.float64)
    x = torch.tensor([0.2, -0.1, 0.5], dtype=torch.float64, requires_grad=True)
    named = [(0, "x", x)]
    estimator = Curvature(every=1)
    n = 2000
    samples = torch.empty(n, 3, dtype=torch.float64)
    for t in range(n):
        x.grad = None                                          # the optimizer's zero_grad
        (_, _, g, extras), = estimator.estimate(named, lambda i: 0.5 * x @ H @ x, 1, t, seed=0).signals
        samples[t] = extras["hessian"]
    assert torch.allclose(g, H @ x.detach())
    se = samples.std(0) / n ** 0.5
    assert ((samples.mean(0) - H.diagonal()).abs() <= 5 * se).all()
    assert (samples.std(0) > 0.5).all(), "a Gaussian probe is noisy; a Rademacher one is not"
    u = torch.ones(3, dtype=torch.float64)
    (grad,) = torch.autograd.grad(0.5 * x @ H @ x, [x], create_graph=True)
    assert torch.allclose(hutchinson_diagonal([grad], [x], [u])[0], H @ u)


def separable(x):
    """A separable loss (diagonal Hessian 1 + 3 c x^2 that changes with x)."""
    c = torch.tensor([0.5, 2.0, 1.0, 0.1, 3.0, 0.7])
    return (0.5 * x ** 2 + 0.25 * c * x ** 4 - 0.3 * x).sum()


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_sophia_matches_pytorch_optimizer_sophiah_where_definitions_coincide():
    """SophiaH: p -= lr' clip(m / max(h, eps'), rho') with decoupled decay lr' wd'. Ours:
    p -= lr clip(m / max(gamma h, eps), 1), decay lr wd. They coincide for rho' = gamma,
    lr' = lr / gamma, eps' = eps / gamma, wd' = wd gamma, the same update period, and Rademacher
    probes on a diagonal Hessian (u * (H u) = diag(H) whatever u is, so the two RNGs need not
    match)."""
    from pytorch_optimizer import SophiaH

    lr, gamma, eps, wd, k = 0.05, 0.2, 1e-12, 0.1, 4
    x0 = torch.tensor([1.0, -0.8, 0.3, 2.0, -0.2, 0.9])
    ours = x0.clone().requires_grad_(True)
    theirs = x0.clone().requires_grad_(True)
    opt = make_optimizer("sophia", [("x", ours)], lr=lr, gamma=gamma, eps=eps, weight_decay=wd, k=k,
                         b1=0.9, b2=0.95, distribution="rademacher")
    ref = SophiaH([theirs], lr=lr / gamma, betas=(0.9, 0.95), weight_decay=wd * gamma, p=gamma,
                  eps=eps / gamma, update_period=k, hessian_distribution="rademacher", foreach=False)

    def ref_closure():
        ref.zero_grad()
        loss = separable(theirs)
        loss.backward(create_graph=True)
        return loss

    with torch.random.fork_rng():       # SophiaH draws its probes from the global RNG
        for _ in range(3 * k + 2):
            opt.step(lambda i: separable(ours))
            ref.step(ref_closure)
    assert (ours - theirs).abs().max() < 1e-6
    assert (ours - x0).abs().max() > 0.2      # they moved, and some entries were clipped


def test_sophia_gnb_uses_the_sampled_label_gradient():
    """GNB: h_est = B * g^ * g^ with g^ the gradient of the sampled-label loss."""
    x = torch.tensor([0.5, -1.0], requires_grad=True)
    opt = make_optimizer("sophia", [("x", x)], lr=0.1, hessian="gnb", gnb_scale=4, gamma=1.0, b1=0.5, b2=0.5)
    target = torch.tensor([1.0, 2.0])
    with pytest.raises(BasinError, match="gnb_closure"):
        opt.step(lambda i: (x ** 2).sum())
    opt.step(lambda i: (x ** 2).sum(), gnb_closure=lambda i: ((x - target) ** 2).mean())
    ghat = (torch.tensor([0.5, -1.0]) - target)                # d/dx mean (x - t)^2 = (x - t)
    assert torch.allclose(opt.state[x]["h"], 0.5 * 4 * ghat ** 2)


def test_sophia_explains_missing_double_backward(micro_model, micro_world, micro_tokenizer):
    from unlearn.data.format import collate, encode_qa

    rows = micro_world.people_rows[:2]
    batch = collate([encode_qa(micro_tokenizer, r["question"], r["answer"]) for r in rows],
                    micro_tokenizer.pad_token_id)
    opt = make_optimizer("sophia", micro_model, lr=1e-3)
    with pytest.raises(BasinError, match='attn_implementation="eager"'):
        opt.step(lambda i: micro_model(**batch).loss)
