"""Quantization attack: RTN grid, bitsandbytes parity, GPTQ vs RTN, snap-back control, isolation."""

from __future__ import annotations

import copy

import pytest
import torch

from audit.attacks.common import target_names
from audit.attacks.quantize import (METHODS, code_change_fraction, fp4, gptq, int8, load_bnb_checkpoint, nf4,
                                    quantize, rtn)
from unlearn.errors import BasinError
from unlearn.models import build_model, weights_hash


@pytest.fixture()
def other_model(micro_tokenizer):
    return build_model("micro", micro_tokenizer, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def calibration(micro_world):
    from unlearn.tokenizer import world_training_texts

    return world_training_texts(micro_world)[:48]


def _bnb():
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F

    return F


def _nudged(model, scale=1e-4, seed=5):
    """A copy of ``model`` with a small update on every Linear weight (an 'unlearned' model)."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name in target_names(out):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return out


# ---- RTN ---------------------------------------------------------------------------------------

def test_rtn_hand_example():
    w = torch.tensor([[-1.0, 0.2, 0.5, 2.0]])
    # asymmetric 2 bits: s = 3/3 = 1, z = round(1) = 1, q = clamp(round(w) + 1, 0, 3) = [0, 1, 1, 3]
    q = rtn(w, bits=2, group_size=None)
    assert q.codes.tolist() == [[0, 1, 1, 3]]
    assert q.weight.tolist() == [[-1.0, 0.0, 0.0, 2.0]]
    # symmetric 2 bits: s = 2 / 1 = 2, q = clamp(round(w / 2), -1, 1) = [0, 0, 0, 1]
    q = rtn(w, bits=2, group_size=None, symmetric=True)
    assert q.codes.tolist() == [[0, 0, 0, 1]]
    assert q.weight.abs().tolist() == [[0.0, 0.0, 0.0, 2.0]]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_rtn_levels_per_group_equal_2_pow_bits_on_random_data(bits):
    w = torch.rand(6, 512, generator=torch.Generator().manual_seed(bits)) * 2 - 1
    q = rtn(w, bits=bits, group_size=128)
    for group_codes, group_vals in zip(q.codes.reshape(6, 4, 128).reshape(-1, 128),
                                       q.weight.reshape(-1, 128)):
        assert group_codes.unique().numel() == 2 ** bits
        assert group_vals.unique().numel() == 2 ** bits
    qs = rtn(w, bits=bits, group_size=128, symmetric=True)
    for group_vals in qs.weight.reshape(-1, 128):
        assert group_vals.unique().numel() == 2 ** bits - 1  # restricted symmetric range


def test_rtn_8bit_per_channel_uses_256_levels_and_never_more():
    w = torch.rand(3, 8192, generator=torch.Generator().manual_seed(0))
    q = rtn(w, bits=8, group_size=None)
    for row in q.weight:
        assert row.unique().numel() == 256
    small = rtn(torch.randn(4, 100), bits=8, group_size=None)
    assert all(row.unique().numel() <= 256 for row in small.weight)


def test_rtn_error_falls_strictly_as_bits_rise(micro_model):
    w = micro_model.model.layers[0].mlp.up_proj.weight.detach()
    for symmetric in (False, True):
        errors = [float((rtn(w, bits=b, symmetric=symmetric).weight - w).pow(2).sum()) for b in range(2, 9)]
        assert all(a > b for a, b in zip(errors, errors[1:])), errors
        assert errors[-1] > 0


def test_rtn_group_clamp_ragged_group_and_constant_group():
    w = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rtn(w, group_size=128).weight, rtn(w, group_size=None).weight)  # clamp to the row
    w = torch.randn(5, 200, generator=torch.Generator().manual_seed(2))
    q = rtn(w, group_size=128).weight
    assert torch.equal(q[:, :128], rtn(w[:, :128], group_size=None).weight)
    assert torch.equal(q[:, 128:], rtn(w[:, 128:], group_size=None).weight)  # a shorter last group
    const = torch.full((2, 128), -0.37)
    assert torch.equal(rtn(const, bits=2).weight, const)
    assert torch.equal(rtn(torch.zeros(2, 128), bits=3, symmetric=True).weight, torch.zeros(2, 128))


def test_quantize_rtn_touches_decoder_linears_only_by_default(micro_model):
    (setting, x, attacked), = list(quantize(micro_model, methods="rtn", bits=4))
    assert (setting, x) == ("rtn-4bit", 4.0)
    w = micro_model.model.layers[1].self_attn.o_proj.weight
    assert torch.equal(attacked.model.layers[1].self_attn.o_proj.weight, rtn(w, bits=4).weight)
    assert torch.equal(attacked.model.embed_tokens.weight, micro_model.model.embed_tokens.weight)
    assert torch.equal(attacked.lm_head.weight, micro_model.lm_head.weight)
    (_, _, with_emb), = list(quantize(micro_model, methods="rtn", bits=4, include_embeddings=True))
    emb = micro_model.model.embed_tokens.weight
    assert torch.equal(with_emb.model.embed_tokens.weight, rtn(emb, bits=4).weight)
    assert with_emb.lm_head.weight.data_ptr() == with_emb.model.embed_tokens.weight.data_ptr()  # still tied


# ---- bitsandbytes ------------------------------------------------------------------------------

@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bnb_4bit_path_equals_bitsandbytes_bit_for_bit(micro_model, quant_type):
    F = _bnb()
    (setting, x, attacked), = list(quantize(micro_model, methods=quant_type))
    assert (setting, x) == (quant_type, 4.0)
    for name in target_names(micro_model):
        w = micro_model.get_parameter(name).detach()
        packed, state = F.quantize_4bit(w.contiguous(), blocksize=64, quant_type=quant_type)
        expected = F.dequantize_4bit(packed, state)
        assert torch.equal(attacked.get_parameter(name), expected), name
    q = (nf4 if quant_type == "nf4" else fp4)(w)
    assert int(q.codes.max()) <= 15 and q.codes.shape == w.shape


def test_int8_path_equals_bitsandbytes_llm_int8(micro_model):
    F = _bnb()
    w = micro_model.model.layers[0].mlp.down_proj.weight.detach()
    q = int8(w)
    codes, scale, _ = F.int8_vectorwise_quant(w.half().contiguous())
    assert torch.equal(q.codes, codes)
    assert torch.equal(q.weight, F.int8_vectorwise_dequant(codes, scale).float())
    assert float((q.weight - w).abs().max()) <= float(w.abs().max()) / 127


def test_transformers_bitsandbytes_checkpoint_path_matches_fake_quant(micro_model, tmp_path):
    _bnb()
    micro_model.save_pretrained(tmp_path)
    real = load_bnb_checkpoint(tmp_path, "nf4")
    import bitsandbytes.functional as F

    lin = real.model.layers[0].self_attn.q_proj
    assert type(lin).__name__ == "Linear4bit"
    (_, _, fake), = list(quantize(micro_model, methods="nf4"))
    for name in target_names(micro_model):
        module = real.get_submodule(name.rsplit(".", 1)[0])
        assert torch.equal(F.dequantize_4bit(module.weight.data, module.weight.quant_state),
                           fake.get_parameter(name)), name
    # bitsandbytes' CPU kernel computes in bf16, so logits agree up to bf16 noise, 40x below the
    # quantization effect itself
    ids = torch.randint(4, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        r, f, o = real(ids).logits.float(), fake(ids).logits, micro_model(ids).logits
    assert float((r - f).abs().max()) < 0.1 * float((r - o).abs().max())
    real8 = load_bnb_checkpoint(tmp_path, "int8")
    lin8 = real8.model.layers[0].self_attn.q_proj
    assert torch.equal(lin8.weight.data, int8(micro_model.model.layers[0].self_attn.q_proj.weight).codes)


# ---- GPTQ --------------------------------------------------------------------------------------

def _layer_inputs(model, calibration, tokenizer):
    """Calibration inputs X of every decoder Linear of ``model`` (padding excluded)."""
    from audit.attacks.quantize import _calibration_batches

    xs, hooks = {}, []
    names = {id(m): n for n, m in model.named_modules()}
    state = {}
    for m in model.model.layers.modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out: xs.setdefault(names[id(mod)], []).append(inp[0][state["mask"]])))
    with torch.no_grad():
        for ids, mask in _calibration_batches(calibration, tokenizer, 128, 16):
            state["mask"] = mask.bool()
            model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in xs.items()}


def test_gptq_4bit_has_lower_layer_output_error_than_rtn(trained_micro, calibration):
    pytest.importorskip("gptqmodel")
    model, tok, _ = trained_micro
    inputs = _layer_inputs(model, calibration, tok)
    (setting, _, attacked), = list(quantize(model, methods="gptq", bits=4, calibration=calibration,
                                            tokenizer=tok))
    assert setting == "gptq-4bit"
    err_gptq = err_rtn = 0.0
    for name, x in inputs.items():
        w = model.get_submodule(name).weight.detach()
        w_g = attacked.get_submodule(name).weight.detach()
        w_r = rtn(w, bits=4).weight
        e_g = float((x @ (w_g - w).T).pow(2).sum())
        e_r = float((x @ (w_r - w).T).pow(2).sum())
        err_gptq += e_g
        err_rtn += e_r
        for row in w_g.reshape(-1, min(128, w.shape[1])):
            assert row.unique().numel() <= 16
    assert err_gptq < 0.8 * err_rtn, (err_gptq, err_rtn)


def test_gptq_needs_calibration_and_valid_bits(micro_model, micro_tokenizer):
    pytest.importorskip("gptqmodel")
    with pytest.raises(BasinError, match="calibration"):
        quantize(micro_model, methods="gptq", tokenizer=micro_tokenizer)
    with pytest.raises(BasinError, match="tokenizer"):
        quantize(micro_model, methods="gptq", calibration=["a b c"])
    with pytest.raises(BasinError, match="gptq supports"):
        quantize(micro_model, methods="gptq", bits=5, calibration=["a"], tokenizer=micro_tokenizer)
    with pytest.raises(BasinError, match="full precision"):
        quantize(micro_model, methods="gptq", include_embeddings=True, calibration=["a"], tokenizer=micro_tokenizer)


def test_missing_optional_libraries_give_clear_errors(micro_model, micro_tokenizer, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gptqmodel", None)
    with pytest.raises(BasinError, match="gptq method needs gptqmodel"):
        quantize(micro_model, methods="gptq", calibration=["a b"], tokenizer=micro_tokenizer)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(BasinError, match="need bitsandbytes"):
        quantize(micro_model, methods="nf4")
    assert len(list(quantize(micro_model, methods="rtn", bits=(4, 2)))) == 2  # rtn needs neither


# ---- snap-back control ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rtn", "nf4", "int8"])
def test_snapback_with_identical_models_reproduces_q_of_original(micro_model, method):
    if method != "rtn":
        _bnb()
    same = copy.deepcopy(micro_model)
    stats: dict = {}
    plain = {s: copy.deepcopy(m) for s, _, m in quantize(micro_model, methods=method)}
    got = {s: weights_hash(m) for s, _, m in quantize(same, methods=method, reference=micro_model, stats=stats)}
    for setting, model in plain.items():
        assert got[setting] == weights_hash(model)
        assert got[f"{setting}-snapback"] == weights_hash(model)
        assert stats[setting] == {"code_change": 0.0}


def test_snapback_separates_q_of_unlearned_from_original_plus_update(micro_model):
    unlearned = _nudged(micro_model, scale=2e-5)  # 0.1% of the weights' std
    stats: dict = {}
    out = {s: copy.deepcopy(m) for s, _, m in quantize(unlearned, methods="rtn", bits=(8, 4), reference=micro_model, stats=stats)}
    assert list(out) == ["rtn-8bit", "rtn-8bit-snapback", "rtn-4bit", "rtn-4bit-snapback"]
    name = "model.layers.0.mlp.up_proj.weight"
    w_o, w_u = micro_model.get_parameter(name), unlearned.get_parameter(name)
    assert torch.equal(out["rtn-4bit"].get_parameter(name), rtn(w_u, bits=4).weight)
    assert torch.allclose(out["rtn-4bit-snapback"].get_parameter(name), rtn(w_o, bits=4).weight + (w_u - w_o),
                          atol=1e-7)
    # a small update moves few 4-bit codes and more 8-bit codes (finer grid)
    assert 0 < stats["rtn-4bit"]["code_change"] < 0.02 < stats["rtn-8bit"]["code_change"] < 0.5
    assert code_change_fraction(micro_model, unlearned, bits=4) == stats["rtn-4bit"]["code_change"]


def test_gptq_snapback_with_identical_models(micro_model, micro_tokenizer, calibration):
    pytest.importorskip("gptqmodel")
    stats: dict = {}
    out = {s: weights_hash(m) for s, _, m in quantize(copy.deepcopy(micro_model), methods="gptq",
                                                     reference=micro_model, stats=stats,
                                                     calibration=calibration[:16], tokenizer=micro_tokenizer)}
    assert out["gptq-4bit"] == out["gptq-4bit-snapback"]
    assert stats["gptq-4bit"] == {"code_change": 0.0}


# ---- errors, registry, isolation ----------------------------------------------------------------

def test_bad_inputs_raise_basin_error(micro_model, micro_tokenizer):
    from unlearn.models import llama_config
    from transformers import LlamaForCausalLM

    with pytest.raises(BasinError, match="nf4 supports 4 bits, not 5"):
        quantize(micro_model, methods="nf4", bits=5)
    with pytest.raises(BasinError, match="rtn supports"):
        quantize(micro_model, methods="rtn", bits=1)
    with pytest.raises(BasinError, match="did you mean 'nf4'"):
        quantize(micro_model, methods="nf5")
    with pytest.raises(BasinError, match="group_size"):
        quantize(micro_model, group_size=0)
    other = LlamaForCausalLM(llama_config("micro", micro_tokenizer, intermediate_size=128))
    with pytest.raises(BasinError, match="model.layers.0.mlp.gate_proj.weight"):
        quantize(micro_model, reference=other)


def test_methods_registry_has_documented_entries():
    assert list(METHODS) == ["rtn", "nf4", "fp4", "int8", "gptq"]
    for fn in METHODS.values():
        assert fn.__doc__ and fn.__doc__.strip().splitlines()[0]
    assert METHODS["gptq"] is gptq


def test_quantize_never_modifies_inputs_and_reuses_one_buffer(micro_model, other_model, micro_tokenizer,
                                                              calibration):
    methods = ["rtn", "nf4", "fp4", "int8"]
    try:
        import gptqmodel  # noqa: F401
        methods.append("gptq")
    except ImportError:
        pass
    before = weights_hash(micro_model), weights_hash(other_model)
    buffers = {id(m) for _, _, m in quantize(micro_model, methods=methods, reference=other_model,
                                             calibration=calibration[:8], tokenizer=micro_tokenizer)}
    assert (weights_hash(micro_model), weights_hash(other_model)) == before
    assert len(buffers) == 1
