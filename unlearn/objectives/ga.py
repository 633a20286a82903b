"""Gradient ascent (GA) and gradient difference (GradDiff).

GA (Jang et al. 2023, arXiv 2210.01504; TOFU's baseline): maximise the forget NLL,

    L_GA = -NLL_f(theta).

GradDiff (Liu et al. 2022; TOFU, Maini et al. 2024, arXiv 2401.06121): ascend on forget, descend
on retain,

    L_GD = -NLL_f(theta) + gamma * NLL_r(theta)      (or gamma * KL(pi_ref || pi_theta) on retain).
"""

from __future__ import annotations

from unlearn.objectives.common import RetainTerm, answer_nll


def ga_loss(nll_forget):
    """L = -NLL_f."""
    return -nll_forget


class GA:
    """Gradient ascent on the forget answers: L = -NLL_f."""

    needs_reference = False

    def __init__(self):
        self.retain = RetainTerm("nll", 0.0)

    def prepare(self, ref_model, batch) -> dict:
        return {}

    def __call__(self, model, batch, prep) -> dict:
        return {"forget": ga_loss(answer_nll(model, batch["forget"]))}


class GradDiff(GA):
    """GradDiff: L = -NLL_f + gamma * (NLL_r or KL to the original on retain)."""

    def __init__(self, gamma: float = 1.0, retain: str = "nll"):
        self.retain = RetainTerm(retain, gamma)
        self.needs_reference = retain == "kl"

    def prepare(self, ref_model, batch) -> dict:
        return self.retain.prepare(ref_model, batch["retain"])

    def __call__(self, model, batch, prep) -> dict:
        return {"forget": ga_loss(answer_nll(model, batch["forget"])),
                "retain": self.retain(model, batch["retain"], prep)}
