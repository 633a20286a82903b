"""Hand-derived values for every objective, and their behaviour on a real micro model."""

import math

import pytest
import torch

from unlearn.data.format import collate, encode_rows
from unlearn.errors import BasinError
from unlearn.objectives import OBJECTIVES, make_objective
from unlearn.objectives.common import answer_nll, kl_to_reference, reference_logits
from unlearn.objectives.ga import ga_loss
from unlearn.objectives.npo import npo_loss
from unlearn.objectives.rmu import RMU, hidden_after_layer, rmu_loss
from unlearn.objectives.simnpo import simnpo_loss


def test_npo_at_zero_log_ratio_is_2_over_beta_log2():
    for beta in (0.1, 1.0, 2.5):
        logp = torch.tensor([-3.0, -7.5])
        assert npo_loss(logp, logp.clone(), beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)


def test_npo_hand_value_and_limits():
    # one example, beta = 1, log ratio = -2: -(2) * log sigmoid(2)
    expect = -2 * math.log(1 / (1 + math.exp(-2)))
    assert npo_loss(torch.tensor([-5.0]), torch.tensor([-3.0]), 1.0).item() == pytest.approx(expect, rel=1e-6)
    # forgetting more (log ratio -> -inf) drives the loss to 0; it is bounded below, unlike GA
    assert npo_loss(torch.tensor([-1000.0]), torch.tensor([0.0]), 0.1).item() < 1e-6


def test_simnpo_hand_value():
    # logp = -6 over |y| = 3 tokens, beta = 2, delta = 0.5: -(2/2) log sigmoid(-(2/3)(-6) - 0.5)
    z = -(2 / 3) * -6 - 0.5
    expect = -math.log(1 / (1 + math.exp(-z)))
    got = simnpo_loss(torch.tensor([-6.0]), torch.tensor([3.0]), beta=2.0, delta=0.5)
    assert got.item() == pytest.approx(expect, rel=1e-6)


def test_ga_is_negative_nll():
    assert ga_loss(torch.tensor(2.5)).item() == -2.5


def test_rmu_loss_hand_value():
    h_f = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])      # 1 example, 2 tokens (2nd padded), d = 2
    control = torch.tensor([1.0, 1.0])
    h_r, h_frozen = torch.ones(1, 1, 2), torch.zeros(1, 1, 2)
    terms = rmu_loss(h_f, h_r, h_frozen, control, alpha=10.0,
                     mask_f=torch.tensor([[1.0, 0.0]]), mask_r=torch.ones(1, 1))
    assert terms["forget"].item() == pytest.approx((0 + 4) / 2)   # ((1-1)^2 + (3-1)^2) / d
    assert terms["retain"].item() == pytest.approx(10.0 * 1.0)


def _batch(tok, rows):
    return collate(encode_rows(tok, rows), tok.pad_token_id)


def test_retain_kl_of_model_with_itself_is_zero(micro_model, micro_world, micro_tokenizer):
    b = _batch(micro_tokenizer, micro_world.people_rows[:4])
    assert kl_to_reference(micro_model, b, reference_logits(micro_model, b)).item() == pytest.approx(0, abs=1e-6)


def test_npo_of_unchanged_model_equals_2_over_beta_log2(trained_micro, micro_world):
    model, tok, _ = trained_micro
    batch = {"forget": _batch(tok, micro_world.people_rows[:4]), "retain": _batch(tok, micro_world.people_rows[-4:])}
    npo = make_objective("npo", beta=0.1, gamma=0.0)
    terms = npo(model, batch, npo.prepare(model, batch))
    assert terms["forget"].item() == pytest.approx(20 * math.log(2), rel=1e-5)


def test_graddiff_terms(trained_micro, micro_world):
    model, tok, _ = trained_micro
    batch = {"forget": _batch(tok, micro_world.people_rows[:4]), "retain": _batch(tok, micro_world.people_rows[-4:])}
    gd = make_objective("graddiff", gamma=2.0)
    terms = gd(model, batch, gd.prepare(model, batch))
    assert terms["forget"].item() == pytest.approx(-answer_nll(model, batch["forget"]).item(), rel=1e-6)
    assert terms["retain"].item() == pytest.approx(2 * answer_nll(model, batch["retain"]).item(), rel=1e-6)


def test_rmu_trains_only_down_projections_and_reads_the_layer(micro_model, micro_world, micro_tokenizer):
    rmu = RMU(layer=1)
    assert rmu.trainable(micro_model) == ["model.layers.0.mlp.down_proj.weight",
                                          "model.layers.1.mlp.down_proj.weight"]
    b = _batch(micro_tokenizer, micro_world.people_rows[:2])
    h = hidden_after_layer(micro_model, b, 0)
    full = micro_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
    # hidden_states[0] is the embedding output; the last entry has the final norm applied
    assert torch.equal(h, full.hidden_states[1])
    with pytest.raises(BasinError, match="layer 5"):
        RMU(layer=5).trainable(micro_model)


def test_registry_and_bad_options():
    assert set(OBJECTIVES) == {"ga", "graddiff", "npo", "simnpo", "rmu"}
    with pytest.raises(BasinError, match="did you mean 'npo'"):
        make_objective("nop")
    with pytest.raises(BasinError, match="no option"):
        make_objective("npo", bta=0.1)
    with pytest.raises(BasinError, match="retain term"):
        make_objective("npo", retain="mse")
