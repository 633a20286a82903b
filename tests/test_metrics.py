"""The metric math on hand-made numbers: every expected value is worked out by hand in the comments
and, where a library defines the quantity (scipy, rouge-score), cross-checked against it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from audit.metrics import (auc, forget_quality, margin_win_rate, margins, mc_accuracy, mc_correct, min_k,
                           model_utility, normalised_probability, privleak, probability, rouge_l_recall,
                           token_zscores, truth_ratio, truth_ratio_score, truth_ratio_terms)
from unlearn.data.format import IGNORE
from unlearn.scoring import token_logprobs

# ----------------------------------------------------------------------------- TOFU


def test_probability_is_mean_p_norm_and_utility_form_normalises_over_the_wrong_answers():
    assert probability([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    # 0.5 / (0.5 + 0.25 + 0.25) = 0.5 ; 0.1 / (0.1 + 0.3 + 0.6) = 0.1
    terms = normalised_probability([0.5, 0.1], [[0.25, 0.25], [0.3, 0.6]])
    np.testing.assert_allclose(terms, [0.5, 0.1])
    assert terms.mean() == pytest.approx(0.3)


# p_norm of the paraphrase and of two perturbed answers per question:
#   geo-mean of perturbed: sqrt(.25 * .0625) = .125, sqrt(.4 * .4) = .4, sqrt(.1 * .4) = .2
#   R = P_pert / p_para:   .125 / .5 = .25,  .4 / .2 = 2,  .2 / .8 = .25
P_PARA = np.array([0.5, 0.2, 0.8])
P_PERT = np.array([[0.25, 0.0625], [0.4, 0.4], [0.1, 0.4]])
R_HAND = np.array([0.25, 2.0, 0.25])


def test_truth_ratio_is_geometric_mean_of_perturbed_over_paraphrase():
    r = truth_ratio(-np.log(P_PARA), -np.log(P_PERT))
    np.testing.assert_allclose(r, R_HAND, rtol=1e-12)
    # the same through scipy's geometric mean
    np.testing.assert_allclose(r, stats.gmean(P_PERT, axis=1) / P_PARA, rtol=1e-12)


def test_truth_ratio_aggregation_forget_vs_retain():
    # forget: min(R, 1/R) = .25, .5, .25 -> mean 1/3 ; retain: max(0, 1 - R) = .75, 0, .75 -> .5
    np.testing.assert_allclose(truth_ratio_terms(R_HAND, forget=True), [0.25, 0.5, 0.25])
    assert truth_ratio_score(R_HAND, forget=True) == pytest.approx(1 / 3)
    np.testing.assert_allclose(truth_ratio_terms(R_HAND, forget=False), [0.75, 0.0, 0.75])
    assert truth_ratio_score(R_HAND, forget=False) == pytest.approx(0.5)


def test_forget_quality_is_the_ks_p_value_by_hand():
    # Fully separated samples of 3 and 3: D = 1; the exact two-sided p-value is the share of the
    # C(6, 3) = 20 orderings that are as extreme: the 2 fully separated ones -> 0.1.
    a, b = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]
    assert forget_quality(a, b) == pytest.approx(2 / math.comb(6, 3))
    assert forget_quality(a, b) == pytest.approx(stats.ks_2samp(a, b).pvalue)
    # identical distributions -> 1 ; 1/R gives the same p-value as R (TOFU feeds 1/R)
    assert forget_quality(R_HAND, R_HAND) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    x, y = rng.lognormal(size=30), rng.lognormal(0.5, size=25)
    assert forget_quality(x, y) == pytest.approx(forget_quality(1 / x, 1 / y))
    assert forget_quality(x, y) == pytest.approx(stats.ks_2samp(x, y).pvalue)


def test_model_utility_is_the_harmonic_mean():
    # 3 / (1/.5 + 1/.25 + 1/1) = 3 / 7
    assert model_utility([0.5, 0.25, 1.0]) == pytest.approx(3 / 7)
    nine = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert model_utility(nine) == pytest.approx(stats.hmean(nine))
    assert model_utility([0.5, 0.0, 0.9]) == 0.0
    with pytest.raises(ValueError):
        model_utility([])


def test_rouge_l_recall_matches_rouge_score_and_hand_value():
    from rouge_score import rouge_scorer

    preds = ["the cats sat on the mat", "", "Paris is the capital", "completely different words"]
    refs = ["the cat sat on a mat", "anything", "The capital is Paris", "completely different words"]
    got = rouge_l_recall(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = [scorer.score(r, p)["rougeL"].recall for p, r in zip(preds, refs)]
    np.testing.assert_allclose(got, want)
    # by hand: stemming maps cats -> cat; LCS "the cat sat on mat" = 5 of the reference's 6 tokens
    assert got[0] == pytest.approx(5 / 6)
    assert got[1] == 0.0 and got[3] == 1.0
    # recall, not F1: a long prediction containing the whole reference still scores 1
    assert rouge_l_recall(["so the cat sat on a mat today"], ["the cat sat on a mat"])[0] == 1.0
    with pytest.raises(ValueError):
        rouge_l_recall(["a"], [])


# ----------------------------------------------------------------------------- membership inference

def test_auc_by_hand_and_against_pairwise_count():
    # members .9 .8 .3 vs non-members .5 .3: wins .9>.5 .9>.3 .8>.5 .8>.3, tie .3=.3 -> (4 + .5) / 6
    assert auc([0.9, 0.8, 0.3], [0.5, 0.3]) == pytest.approx(0.75)
    assert auc([1, 2], [3, 4]) == 0.0 and auc([3, 4], [1, 2]) == 1.0
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 17).astype(float), rng.integers(0, 5, 11).astype(float)
    pairs = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in itertools.product(a, b)]
    assert auc(a, b) == pytest.approx(np.mean(pairs))
    with pytest.raises(ValueError):
        auc([], [1.0])


def test_privleak():
    # (.75 - .5) / .5 * 100
    assert privleak(0.75, 0.5) == pytest.approx(50.0)
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.25, 0.5) == pytest.approx(-50.0)


def _hand_logits():
    """Two sequences over a 3-token vocabulary whose next-token probabilities are set by hand.

    Labels: position 0 is the prompt (-100); label t is predicted by the distribution at t - 1.
    Row 0 (answer of 3 tokens): labels 0, 1, 2 get p = .5, .25, .125.
    Row 1 (answer of 1 token, then padding): label 1 gets p = .5.
    """
    third = [1 / 3, 1 / 3, 1 / 3]
    probs = torch.tensor([
        [[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.75, 0.125, 0.125], third],
        [[0.25, 0.5, 0.25], third, third, third],
    ], dtype=torch.float64)
    labels = torch.tensor([[IGNORE, 0, 1, 2], [IGNORE, 1, IGNORE, IGNORE]])
    return (probs.log() + 3.0).float(), probs, labels  # a constant shift leaves the softmax as is


def test_min_k_on_hand_made_logits():
    logits, _, labels = _hand_logits()
    logp, mask = token_logprobs(logits, labels)
    lp = [math.log(0.5), math.log(0.25), math.log(0.125)]
    # row 0, T = 3: k = .4 keeps int(1.2) = 1 token (the lowest, log .125); k = .7 keeps 2;
    # k = 1 keeps all. Row 1, T = 1: always its single token, log .5.
    np.testing.assert_allclose(min_k(logp, mask, 0.4).numpy(), [lp[2], math.log(0.5)], rtol=1e-5)
    np.testing.assert_allclose(min_k(logp, mask, 0.7).numpy(), [(lp[1] + lp[2]) / 2, math.log(0.5)],
                               rtol=1e-5)
    np.testing.assert_allclose(min_k(logp, mask, 1.0).numpy(), [sum(lp) / 3, math.log(0.5)], rtol=1e-5)
    empty = min_k(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool), 0.4)
    assert torch.isnan(empty).all()
    with pytest.raises(ValueError):
        min_k(logp, mask, 0.0)


def test_min_k_plus_plus_z_scores_by_hand():
    logits, probs, labels = _hand_logits()
    z, mask = token_zscores(logits, labels)
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    for b, t in [(0, 0), (0, 1), (0, 2), (1, 0)]:
        p = probs[b, t].double().numpy()
        mu = float(np.sum(p * np.log(p)))
        sigma = math.sqrt(float(np.sum(p * np.log(p) ** 2)) - mu ** 2)
        label = int(labels[b, t + 1])
        assert float(z[b, t]) == pytest.approx((math.log(p[label]) - mu) / sigma, rel=1e-4)
    # p = (.5, .25, .25): mu = -1.0397, sigma = .3466; picking .5 gives z = 1, picking .25 z = -1
    assert float(z[0, 0]) == pytest.approx(1.0, rel=1e-4)
    assert float(z[0, 1]) == pytest.approx(-1.0, rel=1e-4)
    assert z[1, 1:].abs().sum() == 0  # unscored positions stay zero


# ----------------------------------------------------------------------------- choice and margin

def test_mc_accuracy_picks_the_highest_length_normalised_score():
    scores = np.array([[-1.0, -0.5, -2.0, -3.0],     # picks 1
                       [-0.1, -0.2, -0.3, np.nan],    # picks 0 (a missing 4th option is ignored)
                       [-5.0, -4.0, -3.0, -2.0]])     # picks 3
    np.testing.assert_array_equal(mc_correct(scores, [1, 0, 2]), [1.0, 1.0, 0.0])
    assert mc_accuracy(scores, [1, 0, 2]) == pytest.approx(2 / 3)
    assert mc_accuracy(np.full((4, 4), -1.0), [0, 1, 2, 3]) == 0.25  # ties go to option 0


def test_margin_is_minus_log_truth_ratio_and_win_rate_counts_positive_margins():
    logp_correct, logp_wrong = np.log(P_PARA), np.log(P_PERT)
    m = margins(logp_correct, logp_wrong)
    np.testing.assert_allclose(m, -np.log(R_HAND), rtol=1e-12)  # log 4, -log 2, log 4
    assert margin_win_rate(m) == pytest.approx(2 / 3)
    # NaN marks a missing wrong answer
    np.testing.assert_allclose(margins([0.0], [[-1.0, np.nan]]), [1.0])
