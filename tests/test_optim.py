"""The optimizer package: API, one conformance table over every registered optimizer, AdamW
parity, bad input, bit-identical resume, gradient accumulation, the hybrid schedule, SAM, and
every optimizer on a real micro Llama."""

from __future__ import annotations

import io
import math

import pytest
import torch

from unlearn.errors import BasinError
from unlearn.optim import OPTIMIZERS, BasinOptimizer, make_optimizer

# ----------------------------------------------------------------------------- small problems

# f(x) = 0.5 sum_i a_i (x_i - c_i)^2 over two tensors "w" (2,) and "b" (2,); minimum 0 at x = c
A = torch.tensor([1.0, 2.0, 3.0, 0.5])
C = torch.tensor([1.0, -1.0, 0.5, 2.0])


def quadratic():
    w, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)

    def closure(i=0):
        x = torch.cat([w, b])
        return 0.5 * (A * (x - C) ** 2).sum()
    return [("w", w), ("b", b)], closure


def mlp(seed: int = 0):
    """A tiny tanh MLP and a fixed regression batch (tanh: Sophia's double backward works)."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(16, 4, generator=g)
    y = torch.randn(16, 1, generator=g)
    return model, x, y


def mse_closure(model, x, y, n_micro: int = 1):
    """closure(i): mean squared error of micro-batch i, divided by n_micro."""
    xs, ys = x.chunk(n_micro), y.chunk(n_micro)
    return lambda i: ((model(xs[i]) - ys[i]) ** 2).mean() / n_micro


# ----------------------------------------------------------------------------- API and registry

def test_registry_lists_every_tier_with_a_docstring():
    expected = {"sgd", "adam", "adam-noise", "signsgd", "signadam", "qsgd", "qadam", "sophia", "zo-sgd", "zo-adam",
                "adazo", "hybrid", "sam"}
    assert set(OPTIMIZERS) == expected
    for name, factory in OPTIMIZERS.items():
        first = factory.__doc__.strip().splitlines()[0]
        assert len(first) > 20, name


def test_make_optimizer_accepts_module_pairs_and_reads_lr_from_groups():
    model, x, y = mlp()
    opt = make_optimizer("sgd", model, lr=0.1)
    assert isinstance(opt, BasinOptimizer) and isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["param_names"] == [n for n, _ in model.named_parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    opt.param_groups[0]["lr"] = 0.0                      # a scheduler writes here
    loss = opt.step(mse_closure(model, x, y))
    assert isinstance(loss, float) and loss > 0
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))

    frozen, _, _ = mlp()
    frozen[0].weight.requires_grad_(False)
    assert len(make_optimizer("adam", frozen).param_groups[0]["params"]) == 3


def test_scheduler_drives_the_learning_rate():
    params, closure = quadratic()
    opt = make_optimizer("sgd", params, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    w = params[0][1]
    deltas = []
    for _ in range(3):
        before = w.detach().clone()
        opt.step(closure)
        sched.step()
        deltas.append((w.detach() - before).abs().sum().item())
    # step 2 uses lr 0.05 on a gradient that shrank by (1 - 0.1 a)
    assert deltas[1] < deltas[0] * 0.6


# ----------------------------------------------------------------------------- conformance table

# name -> (lr, steps, options): every optimizer must bring the quadratic's loss from 2.875 to < 1e-2
CONFORMANCE = {
    "sgd": (0.2, 100, {}),
    "adam": (0.05, 300, {}),
    "adam-noise": (0.05, 300, {"noise_std": 0.1}),
    "signsgd": (0.01, 400, {}),
    "signadam": (0.01, 400, {}),
    "qsgd": (0.02, 300, {"bits": 3}),
    "qadam": (0.02, 300, {"bits": 2, "rounding": "stochastic"}),
    "sophia": (0.05, 300, {"gamma": 0.05}),
    "zo-sgd": (0.05, 300, {}),
    "zo-adam": (0.05, 300, {"q": 2, "directions": "sphere", "mu": 1e-2}),
    "adazo": (0.05, 300, {"difference": "forward"}),
    "hybrid": (0.01, 300, {"n_fo": 10, "n_zo": 10}),
    "sam": (0.05, 300, {}),
}


def test_conformance_table_covers_every_optimizer():
    assert set(CONFORMANCE) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(CONFORMANCE))
def test_every_optimizer_converges_on_a_quadratic(name):
    lr, steps, options = CONFORMANCE[name]
    params, closure = quadratic()
    opt = make_optimizer(name, params, lr=lr, total_steps=steps, seed=0, **options)
    first = opt.step(closure)
    assert first == pytest.approx(2.875, rel=1e-3)        # ZO: mean of f(p +- mu u) = f(p) + O(mu^2)
    for _ in range(steps - 1):
        opt.step(closure)
    assert closure().item() < 1e-2, f"{name} stalled at {closure().item():.4f}"


# ----------------------------------------------------------------------------- AdamW parity

def test_adam_matches_torch_adamw_over_20_steps():
    ours, x, y = mlp()
    theirs, _, _ = mlp()
    opt = make_optimizer("adam", ours, lr=1e-2, b1=0.8, b2=0.99, eps=1e-7, weight_decay=0.1)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1)
    for _ in range(20):
        opt.step(mse_closure(ours, x, y))
        ref.zero_grad()
        ((theirs(x) - y) ** 2).mean().backward()
        ref.step()
    diff = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), theirs.parameters()))
    moved = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), mlp()[0].parameters()))
    assert diff < 1e-6 and moved > 0.05


def test_drop_in_mode_uses_existing_grads():
    ours, x, y = mlp()
    theirs, _, _ = mlp()
    opt = make_optimizer("adam", ours, lr=1e-2)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        for model, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            o.step()
    assert max((a - b).abs().max().item() for a, b in zip(ours.parameters(), theirs.parameters())) < 1e-6


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name, options, words", [
    ("adma", {}, ["unknown optimizer 'adma'", "did you mean 'adam'"]),
    ("qsgd", {"bits": 0}, ["bits", "1", "8", "got 0"]),
    ("qadam", {"bits": 9}, ["bits", "got 9"]),
    ("qsgd", {"bits": 2.5}, ["bits", "integer"]),
    ("zo-sgd", {"q": 0}, ["q (directions per step)", ">= 1", "got 0"]),
    ("adazo", {"mu": 0.0}, ["mu (smoothing radius)", "> 0"]),
    ("zo-adam", {"mu": -1e-3}, ["mu", "> 0"]),
    ("zo-sgd", {"directions": "uniform"}, ["directions", "'gaussian'", "'sphere'"]),
    ("zo-sgd", {"perturb": "nothing_matches"}, ["perturb", "matches no trainable parameter"]),
    ("zo-sgd", {"perturb": "(unclosed"}, ["not a valid regular expression"]),
    ("adam", {"momentum": 0.9}, ["no option(s) 'momentum'", "its options are"]),
    ("adam", {"b1": 1.0}, ["b1", "< 1"]),
    ("hybrid", {}, ["needs total_steps"]),
    ("hybrid", {"total_steps": 10, "zo": "adam"}, ["zeroth-order optimizer", "'adam'"]),
    ("hybrid", {"total_steps": 10, "fo": "adazo"}, ["gradient-based"]),
    ("hybrid", {"total_steps": 10, "state": "merged"}, ["state", "'separate'", "'shared'"]),
    ("hybrid", {"total_steps": 10, "fo": "hybrid"}, ["single optimizers"]),
    ("hybrid", {"total_steps": 10, "zo_options": {"q": 0}}, ["q (directions per step)"]),
    ("hybrid", {"total_steps": 10, "fo_options": {"bits": 3}}, ["'adam' has no option(s) 'bits'"]),
    ("sophia", {"hessian": "gnb"}, ["gnb_scale"]),
    ("sam", {"rho": 0}, ["rho", "> 0"]),
])
def test_bad_input_raises_one_clear_basin_error(name, options, words):
    params, _ = quadratic()
    total = options.pop("total_steps", None)
    with pytest.raises(BasinError) as err:
        make_optimizer(name, params, lr=0.1, total_steps=total, **options)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_bad_step_arguments():
    params, closure = quadratic()
    opt = make_optimizer("adam", params)
    with pytest.raises(BasinError, match="n_micro"):
        opt.step(closure, n_micro=0)
    with pytest.raises(BasinError, match="gnb_closure"):
        opt.step(closure, gnb_closure=closure)
    with pytest.raises(BasinError, match="no trainable parameters"):
        make_optimizer("adam", torch.nn.Linear(2, 2).requires_grad_(False))
    hybrid = make_optimizer("hybrid", params, total_steps=2, n_fo=1, n_zo=1)
    hybrid.step(closure)
    hybrid.step(closure)
    with pytest.raises(BasinError, match="total_steps=2"):
        hybrid.step(closure)


# ----------------------------------------------------------------------------- resume

ROUND_TRIP = {
    "adam": {"weight_decay": 0.01},
    "adazo": {"q": 2},
    "hybrid": {"n_fo": 3, "n_zo": 3},
    "sophia": {"k": 4, "gamma": 0.5},
    "qadam": {"bits": 2, "rounding": "stochastic"},
    "sam": {"base": "sgd", "base_options": {"momentum": 0.9}},
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_state_dict_round_trip_is_bit_identical(name):
    options, total, lr = ROUND_TRIP[name], 20, 1e-2

    def run(model, opt, steps):
        for step in range(steps):
            x, y = mlp(seed=100 + opt.steps_taken)[1:]          # the data of step k depends on k only
            if name == "sam":
                opt.step(lambda i: {"forget": -((model(x) - y) ** 2).mean(), "retain": model(x).pow(2).mean()})
            else:
                opt.step(mse_closure(model, x, y))

    straight, _, _ = mlp()
    run(straight, make_optimizer(name, straight, lr=lr, total_steps=total, seed=3, **options), total)

    first, _, _ = mlp()
    opt = make_optimizer(name, first, lr=lr, total_steps=total, seed=3, **options)
    run(first, opt, 10)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed, _, _ = mlp(seed=7)                             # different weights, overwritten below
    resumed.load_state_dict(saved["model"])
    opt2 = make_optimizer(name, resumed, lr=lr, total_steps=total, seed=3, **options)
    opt2.load_state_dict(saved["optim"])
    assert opt2.steps_taken == 10 and opt2.phase == opt.phase and opt2.next_phase == opt.next_phase
    run(resumed, opt2, 10)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_load_state_dict_refuses_another_optimizer():
    params, closure = quadratic()
    adam = make_optimizer("adam", params)
    adam.step(closure)
    with pytest.raises(BasinError, match="different optimizer"):
        make_optimizer("adazo", params).load_state_dict(adam.state_dict())


# ----------------------------------------------------------------------------- accumulation

@pytest.mark.parametrize("name", ["adam", "sgd", "sophia", "qadam"])
def test_two_half_batches_equal_one_full_batch_first_order(name):
    full, x, y = mlp()
    halves, _, _ = mlp()
    opt_full = make_optimizer(name, full, lr=1e-2, seed=1)
    opt_half = make_optimizer(name, halves, lr=1e-2, seed=1)
    for _ in range(5):
        l1 = opt_full.step(mse_closure(full, x, y, 1))
        l2 = opt_half.step(mse_closure(halves, x, y, 2), n_micro=2)
        assert l1 == pytest.approx(l2, rel=1e-6)
    diff = max((a - b).abs().max().item() for a, b in zip(full.parameters(), halves.parameters()))
    assert diff < 1e-6


# ----------------------------------------------------------------------------- hybrid

def phases_of(total: int, **options) -> str:
    params, closure = quadratic()
    opt = make_optimizer("hybrid", params, lr=0.01, total_steps=total, **options)
    out = []
    for _ in range(total):
        out.append(opt.next_phase)
        opt.step(closure)
        assert opt.phase == out[-1]                          # the phase of the step just taken
    return "".join("F" if p == "fo" else "Z" for p in out)


def test_hybrid_blocks_alternate_and_always_end_with_zeroth_order():
    assert phases_of(100) == "Z" * 20 + "F" * 20 + "Z" * 20 + "F" * 20 + "Z" * 20
    assert phases_of(90) == "Z" * 10 + "F" * 20 + "Z" * 20 + "F" * 20 + "Z" * 20
    assert phases_of(7, n_fo=3, n_zo=2) == "ZZFFFZZ"
    assert phases_of(10, n_fo=4, n_zo=1) == "FZFFFFZFFFFZ"[-10:]


def test_hybrid_state_policies_separate_and_shared_differ():
    results = {}
    for policy in ("separate", "shared"):
        params, closure = quadratic()
        opt = make_optimizer("hybrid", params, lr=0.05, total_steps=12, n_fo=3, n_zo=3, state=policy, seed=0)
        for _ in range(12):
            opt.step(closure)
        results[policy] = torch.cat([p.detach() for _, p in params])
        keys = set(opt.state[params[0][1]])
        if policy == "separate":
            assert keys == {"fo/m", "fo/v", "fo/t", "zo/m", "zo/v", "zo/t"}
            assert opt.state[params[0][1]]["fo/t"] == 6 and opt.state[params[0][1]]["zo/t"] == 6
        else:
            assert keys == {"m", "v", "t"} and opt.state[params[0][1]]["t"] == 12
    assert not torch.equal(results["separate"], results["shared"])
    assert (results["separate"] - results["shared"]).abs().max() > 1e-4


def test_grads_live_until_the_next_step_and_zo_steps_start_without_them():
    params, closure = quadratic()
    opt = make_optimizer("hybrid", params, lr=0.1, total_steps=2, n_fo=1, n_zo=1)
    opt.step(closure)                                      # fo: .grad filled, as after backward()
    assert all(p.grad is not None for _, p in params)
    opt.step(closure)                                      # zo: the FO grads are gone
    assert all(p.grad is None for _, p in params)


def test_hybrid_zo_phase_moves_only_perturbed_tensors_and_scales_lr():
    params, closure = quadratic()
    opt = make_optimizer("hybrid", params, lr=0.1, total_steps=2, n_fo=1, n_zo=1, zo="zo-sgd",
                         zo_options={"perturb": "^w$"}, zo_lr_scale=0.5)
    opt.step(closure)                                      # fo: both move
    w, b = (p.detach().clone() for _, p in params)
    opt.step(closure)                                      # zo: only w
    assert torch.equal(b, params[1][1]) and not torch.equal(w, params[0][1])


# ----------------------------------------------------------------------------- SAM

def test_sam_step_matches_hand_derived_gradient():
    """forget l_f = 0.5 sum a (x - c)^2, retain l_r = 0.5 |x|^2, base SGD:
    g = A (x + rho g_f/|g_f| - c) + x with g_f = A (x - c); x <- x - lr g."""
    x = torch.tensor([0.3, -0.2, 0.1, 0.4], requires_grad=True)
    rho, lr = 0.05, 0.1
    opt = make_optimizer("sam", [("x", x)], lr=lr, rho=rho, base="sgd")
    x0 = x.detach().clone()
    loss = opt.step(lambda i: {"forget": 0.5 * (A * (x - C) ** 2).sum(), "retain": 0.5 * (x ** 2).sum()})
    g_f = A * (x0 - C)
    expected = x0 - lr * (A * (x0 + rho * g_f / g_f.norm() - C) + x0)
    assert torch.allclose(x.detach(), expected, atol=1e-6)
    assert loss == pytest.approx((0.5 * (A * (x0 - C) ** 2).sum() + 0.5 * (x0 ** 2).sum()).item(), rel=1e-6)
    # a plain tensor closure is plain SAM on the whole loss
    opt.step(lambda i: 0.5 * (A * (x - C) ** 2).sum())


# ----------------------------------------------------------------------------- a real micro Llama

# name -> (lr, options, steps); ZO probes only the MLP weights, with several directions
REAL = {
    "sgd": (0.5, {}, 3),
    "adam": (3e-3, {}, 3),
    "signsgd": (1e-3, {}, 3),
    "signadam": (1e-3, {}, 3),
    "qsgd": (1e-3, {"bits": 4}, 3),
    "qadam": (1e-3, {"bits": 2, "rounding": "stochastic"}, 3),
    "sophia": (1e-3, {"k": 2}, 3),
    "adam-noise": (1e-3, {"noise_std": 0.1}, 3),
    "sam": (3e-3, {}, 3),
    "zo-sgd": (1e-2, {"q": 4, "perturb": r"mlp\."}, 3),
    "zo-adam": (1e-2, {"q": 4, "perturb": r"mlp\."}, 3),
    "adazo": (1e-3, {"q": 4, "perturb": r"mlp\."}, 3),
    "hybrid": (1e-3, {"n_fo": 2, "n_zo": 2, "zo_options": {"q": 4, "perturb": r"mlp\."}}, 4),
}


@pytest.fixture()
def micro_batch(micro_world, micro_tokenizer):
    from unlearn.data.format import collate, encode_qa

    rows = micro_world.people_rows[:8]
    return collate([encode_qa(micro_tokenizer, r["question"], r["answer"]) for r in rows],
                   micro_tokenizer.pad_token_id)


def test_real_table_covers_every_optimizer():
    assert set(REAL) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(REAL))
def test_every_optimizer_lowers_a_real_micro_llama_loss(name, micro_model, micro_batch):
    lr, options, steps = REAL[name]
    model = micro_model
    if name == "sophia":
        model.set_attn_implementation("eager")             # Hutchinson needs a double backward
    forget, retain = micro_batch, {k: v[:4] for k, v in micro_batch.items()}

    def closure(i):
        if name == "sam":
            return {"forget": model(**forget).loss, "retain": 0.1 * model(**retain).loss}
        return model(**forget).loss

    def loss_now():
        with torch.no_grad():
            out = closure(0)
            return float(sum(out.values())) if isinstance(out, dict) else float(out)

    before = loss_now()
    opt = make_optimizer(name, model, lr=lr, total_steps=steps, seed=0, **options)
    for _ in range(steps):
        assert math.isfinite(opt.step(closure))
    after = loss_now()
    assert after < before - 1e-3, f"{name}: {before:.4f} -> {after:.4f}"
    if name.startswith(("zo", "adazo")):
        assert all(p.grad is None for p in model.parameters())
