"""Weight-space attacks: interpolation and its barrier, the plane, noise, pruning, precision, the
registry, and the isolation contract (the input model is never modified)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from audit.attacks import ATTACKS, get_attack
from audit.attacks.common import target_names
from audit.attacks.interpolate import interpolate, loss_barrier, plane, plane_coordinates
from audit.attacks.noise import RTN4_MATCHED, noise
from audit.attacks.precision import precision
from audit.attacks.prune import magnitude_masks, prune
from audit.attacks.quantize import rtn_bin_width
from unlearn.errors import BasinError
from unlearn.models import build_model, weights_hash

IDS = torch.randint(4, 500, (3, 14), generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def model_b(micro_tokenizer):
    return build_model("micro", micro_tokenizer, torch.Generator().manual_seed(1))


@pytest.fixture()
def model_c(micro_tokenizer):
    return build_model("micro", micro_tokenizer, torch.Generator().manual_seed(2))


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _loss(model):
    with torch.no_grad():
        return float(model(IDS, labels=IDS).loss)


def _mismatched(micro_tokenizer):
    from transformers import LlamaForCausalLM

    from unlearn.models import llama_config

    return LlamaForCausalLM(llama_config("micro", micro_tokenizer, intermediate_size=128))


# ---- interpolation -----------------------------------------------------------------------------

def test_interpolation_endpoints_reproduce_both_models_exactly(micro_model, model_b):
    points = [(s, a, _logits(m)) for s, a, m in interpolate(model_b, reference=micro_model)]
    assert [a for _, a, _ in points] == pytest.approx([i / 10 for i in range(11)])
    assert points[0][0] == "a=0" and points[-1][0] == "a=1" and points[3][0] == "a=0.3"
    assert torch.equal(points[0][2], _logits(micro_model))
    assert torch.equal(points[-1][2], _logits(model_b))
    assert not torch.equal(points[5][2], points[0][2])


def test_interpolation_is_the_linear_path(micro_model, model_b):
    for _, a, m in interpolate(model_b, reference=micro_model, alphas=[0.25, 1.5]):
        name = "model.layers.1.mlp.down_proj.weight"
        expected = (1 - a) * micro_model.get_parameter(name) + a * model_b.get_parameter(name)
        assert torch.allclose(m.get_parameter(name), expected, atol=1e-7)


def test_barrier_of_a_model_with_itself_is_zero(micro_model):
    twin = copy.deepcopy(micro_model)
    curve = []
    for _, a, m in interpolate(twin, reference=micro_model):
        assert weights_hash(m) == weights_hash(micro_model)  # lerp is exact when both ends agree
        curve.append((a, _loss(m)))
    assert len({loss for _, loss in curve}) == 1
    assert loss_barrier(curve) == 0.0


def test_barrier_on_hand_made_losses():
    assert loss_barrier([(0, 1.0), (0.5, 2.0), (1, 3.0)]) == 0.0          # on the chord
    assert loss_barrier([(0, 1.0), (0.5, 3.0), (1, 1.0)]) == 2.0          # a bump of 2
    assert loss_barrier([(1, 4.0), (0.25, 4.0), (0, 2.0)]) == 1.5         # 4 - (2 + 0.25 * 2), unsorted
    assert loss_barrier([(0, 2.0), (0.5, 1.0), (1, 2.0)]) == 0.0          # a valley: endpoints give 0
    with pytest.raises(BasinError, match="a=0 and a=1"):
        loss_barrier([(0, 1.0), (0.5, 2.0)])
    with pytest.raises(BasinError, match="non-finite"):
        loss_barrier([(0, 1.0), (0.5, math.nan), (1, 1.0)])


def test_interpolation_rejects_mismatch_and_missing_reference(micro_model, micro_tokenizer):
    with pytest.raises(BasinError, match="'model.layers.0.mlp.gate_proj.weight' has shape"):
        interpolate(micro_model, reference=_mismatched(micro_tokenizer))
    with pytest.raises(BasinError, match="reference"):
        interpolate(micro_model)
    with pytest.raises(BasinError, match="points"):
        interpolate(micro_model, reference=micro_model, points=1)


def test_plane_raw_vertices_are_the_three_models(micro_model, model_b, model_c):
    grid = {(x, y): _logits(m) for x, y, m in plane(micro_model, second=model_b, third=model_c,
                                                     xs=[0.0, 1.0], ys=[0.0, 1.0])}
    assert torch.equal(grid[(0.0, 0.0)], _logits(micro_model))
    assert torch.equal(grid[(1.0, 0.0)], _logits(model_b))
    assert torch.equal(grid[(0.0, 1.0)], _logits(model_c))


def test_plane_orthonormal_coordinates_locate_the_models(micro_model, model_b, model_c):
    coords = plane_coordinates(micro_model, second=model_b, third=model_c, orthonormal=True)
    (x2, y2), (x3, y3) = coords["second"], coords["third"]
    assert y2 == 0.0 and x2 > 0 and y3 > 0
    name = "model.layers.0.self_attn.v_proj.weight"
    for (x, y), target in (((x2, y2), model_b), ((x3, y3), model_c)):
        (_, _, m), = list(plane(micro_model, second=model_b, third=model_c, xs=[x], ys=[y], orthonormal=True))
        assert torch.allclose(m.get_parameter(name), target.get_parameter(name), atol=1e-5)
    with pytest.raises(BasinError, match="identical"):
        plane(micro_model, second=copy.deepcopy(micro_model), third=model_c, orthonormal=True)


# ---- noise -------------------------------------------------------------------------------------

def test_noise_scale_zero_is_identity(micro_model):
    for _, scale, m in noise(micro_model, scales=[0.0], draws=2):
        assert scale == 0.0
        assert weights_hash(m) == weights_hash(micro_model)


def test_noise_same_seed_same_bits_and_scale_relative_to_std(micro_model):
    run1 = [(s, weights_hash(m)) for s, _, m in noise(micro_model, scales=[0.1, 0.3], draws=2, seed=7)]
    run2 = [(s, weights_hash(m)) for s, _, m in noise(micro_model, scales=[0.1, 0.3], draws=2,
                                                     generator=torch.Generator().manual_seed(7))]
    other = [weights_hash(m) for _, _, m in noise(micro_model, scales=[0.1, 0.3], draws=2, seed=8)]
    assert run1 == run2
    assert [s for s, _ in run1] == ["noise-std-0.1-d0", "noise-std-0.3-d0", "noise-std-0.1-d1", "noise-std-0.3-d1"]
    assert len({h for _, h in run1} | set(other)) == 8
    name = "model.layers.0.mlp.up_proj.weight"
    w = micro_model.get_parameter(name).detach()
    deltas = {}
    for setting, scale, m in noise(micro_model, scales=[0.1, 0.3], draws=1, seed=3):
        deltas[scale] = m.get_parameter(name) - w
        assert float(deltas[scale].std() / w.std()) == pytest.approx(scale, rel=0.05)
        assert torch.equal(m.model.embed_tokens.weight, micro_model.model.embed_tokens.weight)
    assert torch.allclose(deltas[0.3], 3 * deltas[0.1], atol=1e-6)  # one eps per draw for every scale


def test_noise_relative_to_4bit_bin_width(micro_model):
    name = "model.layers.1.self_attn.q_proj.weight"
    w = micro_model.get_parameter(name).detach()
    (_, _, m), = list(noise(micro_model, scales=[RTN4_MATCHED], draws=1, relative="rtn4"))
    z = (m.get_parameter(name) - w) / rtn_bin_width(w, bits=4)
    assert float(z.std()) == pytest.approx(RTN4_MATCHED, rel=0.05)
    with pytest.raises(BasinError, match="did you mean 'rtn4'"):
        noise(micro_model, relative="rtn")
    with pytest.raises(BasinError, match="scales"):
        noise(micro_model, scales=[-0.1])


# ---- pruning -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_prune_zeroes_exactly_the_requested_fraction(micro_model, scope):
    names = target_names(micro_model)
    total = sum(micro_model.get_parameter(n).numel() for n in names)
    for setting, s, m in prune(micro_model, sparsities=[0.0, 0.3, 0.5], scope=scope):
        assert setting == f"prune-{scope}-{s:g}"
        zeros = {n: int((m.get_parameter(n) == 0).sum()) for n in names}
        if scope == "global":
            assert sum(zeros.values()) == round(s * total)
        else:
            for n in names:
                assert zeros[n] == round(s * micro_model.get_parameter(n).numel())
        kept = [m.get_parameter(n)[m.get_parameter(n) != 0] for n in names]
        assert all(torch.equal(k, micro_model.get_parameter(n)[m.get_parameter(n) != 0])
                   for k, n in zip(kept, names))
        assert torch.equal(m.model.embed_tokens.weight, micro_model.model.embed_tokens.weight)


def test_prune_global_threshold_and_ties():
    tensors = {"a": torch.tensor([3.0, -1.0, 1.0, 5.0]), "b": torch.tensor([1.0, -0.5, 2.0, 1.0])}
    keep = magnitude_masks(tensors, 0.5, "global")  # 4 of 8 smallest: 0.5, then three of the four 1s
    assert keep["a"].tolist() == [True, False, False, True]
    assert keep["b"].tolist() == [False, False, True, True]
    keep = magnitude_masks(tensors, 0.25, "tensor")
    assert keep["a"].tolist() == [True, False, True, True]
    assert keep["b"].tolist() == [True, False, True, True]


def test_prune_snapback_with_identical_models(micro_model):
    got = {s: weights_hash(m) for s, _, m in prune(copy.deepcopy(micro_model), sparsities=[0.4],
                                                   reference=micro_model)}
    assert got["prune-global-0.4"] == got["prune-global-0.4-snapback"]
    with pytest.raises(BasinError, match="sparsities"):
        prune(micro_model, sparsities=[1.5])
    with pytest.raises(BasinError, match="did you mean 'tensor'"):
        prune(micro_model, scope="tensors")


# ---- precision ---------------------------------------------------------------------------------

def test_precision_round_trip(micro_model):
    out = {s: copy.deepcopy(m) for s, _, m in precision(micro_model)}
    assert list(out) == ["bf16", "fp16"]
    for setting, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        for name, p in micro_model.named_parameters():
            got = out[setting].get_parameter(name)
            assert got.dtype == torch.float32
            assert torch.equal(got, p.to(dtype).float()), (setting, name)
    assert not torch.equal(out["bf16"].model.embed_tokens.weight, micro_model.model.embed_tokens.weight)
    with pytest.raises(BasinError, match="did you mean 'fp16'"):
        precision(micro_model, dtypes="fp61")


# ---- registry and isolation --------------------------------------------------------------------

def test_registry_lists_the_attacks_with_docstrings():
    assert {"quantize", "interpolate", "noise", "prune", "precision"} <= set(ATTACKS)
    for fn in ATTACKS.values():
        assert fn.__doc__.strip().splitlines()[0]
    assert get_attack("prune") is ATTACKS["prune"] and ATTACKS["prune"].run is prune
    with pytest.raises(BasinError, match="did you mean 'quantize'"):
        get_attack("quantise")


CALLS = {
    "quantize": dict(methods=("rtn", "nf4", "fp4", "int8")),
    "interpolate": dict(points=3),
    "noise": dict(scales=[0.1], draws=2),
    "prune": dict(sparsities=[0.5], scope="tensor"),
    "precision": dict(),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_attacks_never_modify_their_inputs_and_reuse_one_buffer(micro_model, model_b, name):
    before = weights_hash(micro_model), weights_hash(model_b)
    ids = set()
    for setting, x, m in ATTACKS[name].run(micro_model, reference=model_b, **CALLS[name]):
        ids.add(id(m))
        assert isinstance(setting, str) and (x is None or isinstance(x, float))
        assert not m.training and all(not p.requires_grad for p in m.parameters())
    assert (weights_hash(micro_model), weights_hash(model_b)) == before
    assert len(ids) == 1
