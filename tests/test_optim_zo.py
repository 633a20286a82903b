"""Zeroth-order estimation: unbiased for the smoothed gradient, bit-exact perturb/restore, no
``.grad``, shared directions across micro-batches, parameter subsets."""

from __future__ import annotations

import pytest
import torch

from unlearn.optim import make_optimizer
from unlearn.optim.zeroth_order import ZerothOrder

# f(x) = 0.5 x^T M x + b^T x on x in R^5, held as two tensors (3,) and (2,)
M = torch.tensor([[2.0, 0.5, 0.0, 0.0, 0.3],
                  [0.5, 1.0, 0.2, 0.0, 0.0],
                  [0.0, 0.2, 3.0, 0.1, 0.0],
                  [0.0, 0.0, 0.1, 0.5, 0.0],
                  [0.3, 0.0, 0.0, 0.0, 1.5]], dtype=torch.float64)
B = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0], dtype=torch.float64)
X0 = torch.tensor([0.5, -0.3, 0.8, 1.2, -0.7], dtype=torch.float64)


def split(x):
    return [("u", x[:3].clone()), ("v", x[3:].clone())]


def draws(estimator, f, params, n):
    """n independent estimates g (one per step index t), concatenated over tensors, [n, d]."""
    estimator.bind([(j, name, p) for j, (name, p) in enumerate(params)])
    named = [(j, name, p) for j, (name, p) in enumerate(params)]
    out = torch.empty(n, sum(p.numel() for _, p in params), dtype=torch.float64)
    for t in range(n):
        est = estimator.estimate(named, lambda i: f(), 1, t, seed=11)
        out[t] = torch.cat([g.reshape(-1) for _, _, g, _ in est.signals])
    return out


def assert_mean_close(samples, target, z=5.0):
    """CLT: each coordinate's sample mean lies within z standard errors of the target
    (z = 5: a false alarm has probability < 1e-5 over the 5 coordinates)."""
    mean, se = samples.mean(0), samples.std(0) / samples.shape[0] ** 0.5
    assert ((mean - target).abs() <= z * se).all(), (mean, target, se)


@pytest.mark.parametrize("directions, difference", [
    ("gaussian", "central"), ("sphere", "central"), ("gaussian", "forward"), ("sphere", "forward")])
def test_zo_estimate_is_unbiased_for_the_gradient_of_a_quadratic(directions, difference):
    """On a quadratic, grad f_mu = grad f: E[g] = M x + b, for Gaussian directions (s = 1) and
    sphere directions scaled by s = d. Without the factor d the sphere estimate would be 5x off."""
    params = split(X0)

    def f():
        x = torch.cat([p for _, p in params])
        return 0.5 * x @ M @ x + B @ x

    mu = 0.05 if directions == "gaussian" else 0.2
    samples = draws(ZerothOrder(q=1, mu=mu, directions=directions, difference=difference), f, params, 2000)
    grad = M @ X0 + B
    assert_mean_close(samples, grad)
    if directions == "sphere":                           # the scale factor matters, measurably
        assert (samples.mean(0) / 5 - grad).abs().max() > 0.5
    assert torch.equal(torch.cat([p for _, p in params]), X0), "weights restored"


@pytest.mark.parametrize("directions", ["gaussian", "sphere"])
def test_zo_estimates_the_smoothed_gradient_not_the_gradient(directions):
    """f(x) = sum x^4 / 4 has grad x^3, but f_mu(x) = E f(x + mu v) has grad
    x^3 + 3 mu^2 E[v_i^2] x, with E[v_i^2] = 1 (Gaussian v) or 1/(d+2) (v uniform in the unit
    ball). ZO must hit the smoothed one: ZO descent is descent on a randomly smoothed loss."""
    params = split(X0)
    d, mu = 5, (0.5 if directions == "gaussian" else 1.5)

    def f():
        return sum((p ** 4).sum() / 4 for _, p in params)

    samples = draws(ZerothOrder(q=2, mu=mu, directions=directions), f, params, 2000)
    second = 1.0 if directions == "gaussian" else 1.0 / (d + 2)
    smoothed = X0 ** 3 + 3 * mu ** 2 * second * X0
    assert_mean_close(samples, smoothed)
    se = samples.std(0) / samples.shape[0] ** 0.5
    assert ((samples.mean(0) - X0 ** 3).abs() > 5 * se).any(), "distinguishable from the plain gradient"


# ----------------------------------------------------------------------------- exact restore

def awkward_weights(dtype=torch.float32):
    """Weights of many magnitudes, with exact zeros, negative zeros and binade edges."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4000, generator=g) * 0.02
    w[:100] = torch.randn(100, generator=g) * 1e-6
    w[100:110] = 0.0
    w[110:120] = -0.0
    w[120:130] = torch.tensor([0.5, 1.0, 2.0, 0.25, 0.125, -0.5, -1.0, 4.0, 8.0, 0.0625])
    w[130:200] = torch.randn(70, generator=g) * 3
    return w.reshape(40, 100).to(dtype)


def bits(t):
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("difference, q", [("central", 1), ("central", 3), ("forward", 2)])
def test_perturb_restore_returns_weights_bit_exactly(dtype, difference, q):
    w = awkward_weights(dtype)
    before = w.clone()
    est = ZerothOrder(q=q, mu=1e-3, difference=difference)
    named = [(0, "w", w)]
    est.bind(named)
    seen = []

    def f():
        seen.append(w.clone())
        return (w.float() ** 2).sum()

    for _, _, g, _ in est.estimate(named, lambda i: f(), 1, t=0, seed=5).signals:
        assert g.shape == w.shape
    assert torch.equal(bits(w), bits(before)), "every bit back, -0.0 included"
    probes = seen[1:] if difference == "forward" else seen    # forward also evaluates f(p)
    assert all(not torch.equal(s, before) for s in probes), "the probes really moved the weights"
    assert len(probes) == (2 * q if difference == "central" else q)


def test_plain_mezo_round_trip_is_not_bit_exact_in_fp32():
    """Why exact_restore exists: fl(fl(fl(p + z) - 2z) + z) != p for many fp32 entries."""
    w = awkward_weights()
    z = torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) * 1e-3
    naive = ((w + z) - 2 * z) + z
    assert (naive != w).float().mean() > 0.1
    est = ZerothOrder(mu=1e-3, exact_restore=False)
    est.bind([(0, "w", w)])
    before = w.clone()
    list(est.estimate([(0, "w", w)], lambda i: (w ** 2).sum(), 1, t=0, seed=5).signals)
    scale = before.abs().clamp_min(8e-3)                   # |z| <= 8e-3: ulps of the probed value
    ulp = torch.nextafter(scale, torch.tensor(float("inf"))) - scale
    drift = (w - before).abs()
    assert (drift > 0).any() and (drift <= 2 * ulp).all(), "without the bookkeeping, ulp-sized drift"


def test_zo_sgd_allocates_no_grad_and_moves_only_selected_tensors(micro_model, micro_world, micro_tokenizer):
    from unlearn.data.format import collate, encode_qa

    rows = micro_world.people_rows[:4]
    batch = collate([encode_qa(micro_tokenizer, r["question"], r["answer"]) for r in rows],
                    micro_tokenizer.pad_token_id)
    model = micro_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer("zo-sgd", model, lr=1e-2, perturb=r"layers\.0\.mlp\.", q=2)
    grad_modes = []

    def closure(i):
        grad_modes.append(torch.is_grad_enabled())
        return model(**batch).loss

    for _ in range(2):
        opt.step(closure)
    assert not any(grad_modes), "probes run under no_grad"
    assert all(p.grad is None for p in model.parameters())
    assert not any(isinstance(v, torch.Tensor) for s in opt.state.values() for v in s.values()), \
        "ZO-SGD keeps no per-tensor buffers"
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != name.startswith("model.layers.0.mlp."), name


def test_zo_micro_batches_share_directions_and_accumulate_exactly():
    """Same seed, same loss values -> identical updates, whether the loss comes in one piece or
    as two micro-batches (float64 losses add exactly the same way in both cases)."""
    g = torch.Generator().manual_seed(0)
    data = torch.randn(8, 3, generator=g, dtype=torch.float64)
    results = {}
    for n_micro in (1, 2):
        w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        opt = make_optimizer("adazo", [("w", w)], lr=0.05, seed=4, q=2)

        def half(i):
            return ((data[4 * i:4 * i + 4] @ w - 1.0) ** 2).sum()

        closure = (lambda i: half(0) + half(1)) if n_micro == 1 else half
        losses = [opt.step(closure, n_micro=n_micro) for _ in range(5)]
        results[n_micro] = (w.detach().clone(), losses)
    assert torch.equal(results[1][0], results[2][0])
    assert results[1][1] == results[2][1]
    assert not torch.equal(results[1][0], torch.zeros(3, dtype=torch.float64))


def test_zo_same_seed_same_bits_and_seed_matters():
    def run(seed):
        w = torch.tensor([0.5, -0.2, 0.1], requires_grad=True)
        opt = make_optimizer("zo-adam", [("w", w)], lr=0.01, seed=seed, directions="sphere", mu=0.01)
        for _ in range(4):
            opt.step(lambda i: (w ** 2).sum())
        return w.detach()
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_zo_moment_buffers_are_its_only_state():
    w = torch.zeros(10, requires_grad=True)
    for name, keys in (("zo-sgd", {"t"}), ("zo-adam", {"m", "v", "t"}), ("adazo", {"m", "v", "t"})):
        opt = make_optimizer(name, [("w", w)], lr=0.01)
        opt.step(lambda i: ((w - 1) ** 2).sum())
        assert set(opt.state[w]) == keys, name


# ----------------------------------------------------------------------------- blocks, threads, kept draws

def _step_bits(n, steps=2, **options):
    """Weights after ``steps`` zo-sgd steps on f(w) = sum (w - 0.3)^2 over a tensor of n entries."""
    w = (torch.randn(n, generator=torch.Generator().manual_seed(3)) * 0.02).requires_grad_()
    opt = make_optimizer("zo-sgd", [("w", w)], lr=1e-3, seed=7, **options)
    for _ in range(steps):
        opt.step(lambda i: ((w - 0.3) ** 2).sum())
    return w.detach().clone()


def test_draws_do_not_depend_on_threads_and_keeping_them_changes_no_bit():
    """A tensor of 2.5 blocks: the same bits with 1 or 3 workers, and with the draws kept for
    the step instead of regenerated; bfloat16-kept draws are another (valid) run."""
    from unlearn.optim.zeroth_order import BLOCK

    n = 2 * BLOCK + BLOCK // 2
    start = _step_bits(n, steps=0)
    one = _step_bits(n, workers=1)
    assert not torch.equal(one, start)
    assert torch.equal(_step_bits(n, workers=3), one)
    assert torch.equal(_step_bits(n, workers=2, keep_directions=True), one)
    half = _step_bits(n, keep_directions="bfloat16")
    moved = (one - start).norm()
    assert not torch.equal(half, one) and (half - one).norm() < 0.02 * moved, "a nearby run"


@pytest.mark.parametrize("options", [{"workers": 2}, {"keep_directions": "bfloat16", "q": 2}])
def test_blocked_probes_restore_bit_exactly(options):
    from unlearn.optim.zeroth_order import BLOCK

    w = torch.cat([awkward_weights().view(-1)] * (BLOCK // 4000 + 2))    # more than one block
    before = w.clone()
    est = ZerothOrder(mu=1e-3, **options)
    est.bind([(0, "w", w)])
    moved = []
    list(est.estimate([(0, "w", w)], lambda i: moved.append(not torch.equal(w, before)) or (w ** 2).sum(),
                      1, t=0, seed=5).signals)
    assert all(moved) and torch.equal(bits(w), bits(before))


def test_blocked_draws_are_standard_normal_and_independent():
    """The direction of a tensor of 16 blocks: moments of N(0, 1), a Kolmogorov-Smirnov distance
    below its 1% critical value (1.63 / sqrt(n)), uncorrelated blocks and steps."""
    from unlearn.optim.zeroth_order import BLOCK

    est = ZerothOrder()
    p = torch.empty(16 * BLOCK)
    u = est.direction(p, t=0, i=0, j=0, seed=1).double()
    n = u.numel()
    assert abs(u.mean()) < 5 / n ** 0.5 and abs(u.var() - 1) < 5 * (2 / n) ** 0.5
    assert abs((u ** 3).mean()) < 5 * (15 / n) ** 0.5 and abs((u ** 4).mean() - 3) < 5 * (96 / n) ** 0.5
    x = u.sort().values
    cdf = torch.special.ndtr(x)
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = torch.maximum(grid - cdf, cdf - (grid - 1 / n)).max()
    assert ks < 1.63 / n ** 0.5, float(ks)
    blocks = u.view(16, BLOCK)
    corr = torch.corrcoef(blocks)[~torch.eye(16, dtype=torch.bool)]
    assert corr.abs().max() < 5 / BLOCK ** 0.5
    other = est.direction(p, t=1, i=0, j=0, seed=1).double()
    assert abs(torch.corrcoef(torch.stack([u, other]))[0, 1]) < 5 / n ** 0.5


# ----------------------------------------------------------------------------- random-sign control

def test_random_sign_coefficients_carry_no_loss_information():
    """coefficients="random-sign": g = (1/q) sum_i e_i * sign_scale * u_i with e_i = +-1, the same
    directions as ZO, and the same update whatever the loss."""
    def run(loss, steps=3, **options):
        w = torch.linspace(-1, 1, 7, dtype=torch.float64).requires_grad_()
        opt = make_optimizer("zo-sgd", [("w", w)], lr=0.1, seed=4, **options)
        for _ in range(steps):
            opt.step(lambda i: loss(w))
        return w.detach().clone()

    options = {"coefficients": "random-sign", "sign_scale": 0.5}
    a = run(lambda w: (w ** 2).sum(), **options)
    b = run(lambda w: torch.cos(3 * w).sum() * 100, **options)
    assert torch.equal(a, b), "no loss information"
    assert not torch.equal(a, run(lambda w: (w ** 2).sum()))

    est = ZerothOrder(q=1, coefficients="random-sign", sign_scale=0.5)
    w = torch.zeros(5, dtype=torch.float64)
    est.bind([(0, "w", w)])
    signs = []
    for t in range(200):
        (_, _, g, _), = list(est.estimate([(0, "w", w)], lambda i: (w ** 2).sum(), 1, t, seed=2).signals)
        ratio = g / est.direction(w, t, 0, 0, seed=2)          # the same direction u as ZO
        assert torch.allclose(ratio, ratio[0].expand(5)) and abs(float(ratio[0])) == 0.5
        signs.append(float(ratio[0]) > 0)
    assert 70 < sum(signs) < 130, "a fair coin (5 sigma)"
    assert torch.equal(w, torch.zeros(5, dtype=torch.float64)), "no probe moved the weights"


def test_sphere_directions_do_not_depend_on_threads():
    from unlearn.optim.zeroth_order import BLOCK

    n = 3 * BLOCK + 5
    runs = [_step_bits(n, directions="sphere", mu=0.05, workers=w) for w in (1, 2, 3)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_hybrid_randsign_is_the_hybrid_with_random_sign_zo_blocks():
    from unlearn.optim import OPTIMIZERS

    w = torch.linspace(-1, 1, 6).requires_grad_()
    opt = make_optimizer("hybrid-randsign", [("w", w)], lr=0.01, total_steps=4, n_fo=1, n_zo=1, sign_scale=2.0)
    zo = opt.plan.phases["zo"].estimator
    assert (zo.coefficients, zo.sign_scale) == ("random-sign", 2.0)
    assert type(opt.plan.phases["fo"].chain[0]).__name__ == "ScaleByAdam"
    assert "hybrid-randsign" in OPTIMIZERS and "sign_scale" in OPTIMIZERS["hybrid-randsign"].options
    phases = []
    for _ in range(4):
        opt.step(lambda i: ((w - 0.5) ** 2).sum())
        phases.append(opt.phase)
    assert phases == ["fo", "zo", "fo", "zo"] and torch.isfinite(w).all()
