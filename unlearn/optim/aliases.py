"""The named optimizers: each is an (estimator, chain) pair, or for ``hybrid`` two of them.

``OPTIMIZERS`` maps a name to a factory ``factory(params, lr=1e-3, total_steps=None, seed=0,
**options) -> BasinOptimizer``. Each factory's docstring documents its options (its first line is
what ``basin ls`` prints); the options are the keyword arguments of the recipe function below it.
Defaults come from the papers cited in each docstring.
"""

from __future__ import annotations

import inspect
import re

from unlearn.errors import BasinError, require
from unlearn.optim.estimators import Backprop, Curvature, SharpnessAware
from unlearn.optim.optimizer import Alternating, BasinOptimizer, Constant, Phase, Plan
from unlearn.optim.transforms import (AddNoise, DecoupledWeightDecay, Momentum, Quantize, ScaleByAdam,
                                      ScaleByAdaZO, ScaleBySophia, Sign)
from unlearn.optim.zeroth_order import DIFFERENCES, DIRECTIONS, ZerothOrder
from unlearn.registry import lookup

# ----------------------------------------------------------------------------- option checks


def _number(name, value, low=None, high=None, low_open=False, high_open=False, integer=False):
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise BasinError(f"{name} must be {kind}{' ' + bounds if bounds else ''}, got {value!r}")


def _beta(name, value):
    _number(name, value, 0, 1, high_open=True)


def _choice(name, value, choices):
    require(value in choices, f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _tail(weight_decay: float) -> list:
    """Every chain ends the same way: + wd * p (decoupled); the optimizer then does p -= lr * d."""
    _number("weight_decay", weight_decay, 0)
    return [DecoupledWeightDecay(weight_decay)]


def _adam_link(b1, b2, eps) -> ScaleByAdam:
    _beta("b1", b1)
    _beta("b2", b2)
    _number("eps", eps, 0)
    return ScaleByAdam(b1, b2, eps)


def _single(estimator, chain: list) -> Plan:
    """A one-phase plan, the phase named by the estimator's kind ("fo", "so", "sam", "zo")."""
    return Plan({estimator.kind: Phase(estimator.kind, estimator, chain)}, Constant(estimator.kind))


# probe options shared by every zeroth-order optimizer (MeZO defaults: Malladi et al. 2023)
ZO_OPTIONS = dict(q=1, mu=1e-3, directions="gaussian", difference="central", perturb=None,
                  exact_restore=True)


def _zeroth_order(q=1, mu=1e-3, directions="gaussian", difference="central", perturb=None,
                  exact_restore=True) -> ZerothOrder:
    _number("q (directions per step)", q, 1, integer=True)
    _number("mu (smoothing radius)", mu, 0, low_open=True)
    _choice("directions", directions, DIRECTIONS)
    _choice("difference", difference, DIFFERENCES)
    if perturb is not None:
        require(isinstance(perturb, str), f"perturb must be a regular expression string, got {perturb!r}")
        try:
            re.compile(perturb)
        except re.error as err:
            raise BasinError(f"perturb={perturb!r} is not a valid regular expression ({err})") from None
    require(isinstance(exact_restore, bool), f"exact_restore must be True or False, got {exact_restore!r}")
    return ZerothOrder(q, mu, directions, difference, perturb, exact_restore)


def _quantize_link(bits, rounding, scale) -> Quantize:
    _number("bits", bits, 1, 8, integer=True)
    _choice("rounding", rounding, ("nearest", "stochastic"))
    _choice("scale", scale, ("unit", "absmax"))
    return Quantize(bits, rounding == "stochastic", scale)


# ----------------------------------------------------------------------------- recipes


def sgd(momentum: float = 0.0, weight_decay: float = 0.0) -> Plan:
    """SGD: p -= lr * (g + wd p), optional heavy-ball momentum (first order).

    ``momentum`` beta: m = beta m + g, p -= lr * m (torch.optim.SGD semantics, dampening 0).
    ``weight_decay`` is decoupled (p -= lr * wd * p), as in every basin optimizer.
    """
    _beta("momentum", momentum)
    return _single(Backprop(), ([Momentum(momentum)] if momentum else []) + _tail(weight_decay))


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0) -> Plan:
    """Adam(W): p -= lr * (m^/(sqrt(v^)+eps) + wd p) (Kingma & Ba 2015; Loshchilov & Hutter 2019).

    Matches ``torch.optim.AdamW(betas=(b1, b2), eps=eps, weight_decay=wd)`` to rounding.
    """
    return _single(Backprop(), [_adam_link(b1, b2, eps)] + _tail(weight_decay))


def adam_noise(noise_std: float = 1.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0) -> Plan:
    """Adam + isotropic Gaussian noise: p -= lr * (m^/(sqrt(v^)+eps) + noise_std * xi), xi ~ N(0, I) (ZO control).

    The noise-matched control for zeroth-order descent: Adam's update (Kingma & Ba 2015) plus the
    random displacement a zeroth-order step makes, without the zeroth-order estimate. ``noise_std``
    is the per-coordinate root mean square of the added step in units of lr, so the noise moves
    the weights by lr * noise_std * sqrt(D) per step (D coordinates; exact for E||.||^2, within
    1/sqrt(2D) relative per step). To match a zeroth-order run, equate the step norms:
    noise_std = update_rms_ZO * lr_ZO / lr, where ``update_rms`` is the ZO run's per-step
    ||Delta p|| / (lr_ZO sqrt(D)), written to its records every step (for the hybrid: the mean
    over its ``phase == "zo"`` steps; lr_ZO = lr * zo_lr_scale). The default 1.0 is the
    size of Adam's own first step (|m^/sqrt(v^)| = 1 per coordinate). Noise is seeded by
    (seed, step, tensor) (:class:`unlearn.optim.transforms.AddNoise`).
    """
    _number("noise_std", noise_std, 0)
    return _single(Backprop(), [_adam_link(b1, b2, eps), AddNoise(float(noise_std))] + _tail(weight_decay))


def signsgd(weight_decay: float = 0.0) -> Plan:
    """signSGD: p -= lr * sign(g) (Bernstein et al. 2018); the paper's 1-bit SGD."""
    return _single(Backprop(), [Sign()] + _tail(weight_decay))


def signadam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0) -> Plan:
    """signAdam: p -= lr * sign(m^/(sqrt(v^)+eps)) = lr * sign(m); the paper's 1-bit Adam."""
    return _single(Backprop(), [_adam_link(b1, b2, eps), Sign()] + _tail(weight_decay))


def qsgd(bits: int = 4, rounding: str = "nearest", scale: str = "unit", weight_decay: float = 0.0) -> Plan:
    """N-bit SGD: p -= lr * Q(g; N), Q the per-tensor absmax uniform quantizer (the paper's intra-order downgrade).

    ``bits`` N in 1..8 (N = 1 is signSGD); ``rounding`` "nearest" or "stochastic" (unbiased,
    seeded); ``scale`` "unit" (Q in [-1, 1], the reading where N = 1 is sign) or "absmax" (Q
    rescaled by max|g|). See :func:`unlearn.optim.transforms.quantize` for the exact levels.
    """
    return _single(Backprop(), [_quantize_link(bits, rounding, scale)] + _tail(weight_decay))


def qadam(bits: int = 4, rounding: str = "nearest", scale: str = "unit", b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0) -> Plan:
    """N-bit Adam: p -= lr * Q(m^/(sqrt(v^)+eps); N) (intra-order downgrade; N = 1 is signAdam).

    Options as ``qsgd`` plus Adam's ``b1``, ``b2``, ``eps``.
    """
    chain = [_adam_link(b1, b2, eps), _quantize_link(bits, rounding, scale)] + _tail(weight_decay)
    return _single(Backprop(), chain)


def sophia(b1: float = 0.965, b2: float = 0.99, gamma: float = 0.01, eps: float = 1e-12, k: int = 10,
           hessian: str = "hutchinson", distribution: str = "gaussian", gnb_scale: float | None = None,
           weight_decay: float = 0.0) -> Plan:
    """Sophia: p -= lr * clip(m / max(gamma h, eps), 1), h from Hutchinson or GNB every k steps.

    Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer", arXiv 2305.14342.
    m = b1 m + (1-b1) g every step; h = b2 h + (1-b2) h_est at steps 0, k, 2k, ...
    ``hessian="hutchinson"``: h_est = u * (H u), u ~ N(0, I) (or ``distribution="rademacher"``);
    needs a double backward, so transformers models must use ``attn_implementation="eager"``
    (SDPA attention on CPU has none; the step raises a clear error).
    ``hessian="gnb"``: Gauss-Newton-Bartlett h_est = B * g^ * g^ with g^ the gradient of the loss
    on labels sampled from the model's softmax: pass ``step(closure, n_micro, gnb_closure=fn)``
    and ``gnb_scale`` = B (see :class:`unlearn.optim.estimators.Curvature`).
    """
    _beta("b1", b1)
    _beta("b2", b2)
    _number("gamma", gamma, 0, low_open=True)
    _number("eps", eps, 0)
    _number("k (curvature interval)", k, 1, integer=True)
    _choice("hessian", hessian, ("hutchinson", "gnb"))
    _choice("distribution", distribution, ("gaussian", "rademacher"))
    if hessian == "gnb":
        require(gnb_scale is not None, "sophia with hessian='gnb' needs gnb_scale=B, the number of terms "
                "(examples or label tokens) its sampled-label loss averages")
        _number("gnb_scale", gnb_scale, 0, low_open=True)
    return _single(Curvature(k, hessian, distribution, gnb_scale),
                   [ScaleBySophia(b1, b2, gamma, eps)] + _tail(weight_decay))


def zo_sgd(momentum: float = 0.0, weight_decay: float = 0.0, **probe) -> Plan:
    """ZO-SGD (MeZO): p -= lr * g_zo, g_zo the randomized finite-difference estimate.

    Probe options (every zeroth-order optimizer): ``q`` directions per step (1); ``mu`` smoothing
    radius (1e-3); ``directions`` "gaussian" or "sphere" (scaled by d, the number of perturbed
    parameters); ``difference`` "central" or "forward"; ``perturb`` a regex over parameter names
    (None: all trainable; only matching tensors move); ``exact_restore`` (True: weights come
    back bit-exactly after each probe). See :mod:`unlearn.optim.zeroth_order`. Allocates no
    ``.grad``; memory stays near inference memory (without ``momentum``).
    """
    _beta("momentum", momentum)
    return _single(_zeroth_order(**probe), ([Momentum(momentum)] if momentum else []) + _tail(weight_decay))


def zo_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, **probe) -> Plan:
    """ZO-Adam (ZO-AdaMM, Chen et al. 2019): the Adam chain fed by the zeroth-order estimate.

    Adam options as ``adam``; probe options as ``zo-sgd``. Extra memory: m and v.
    """
    return _single(_zeroth_order(**probe), [_adam_link(b1, b2, eps)] + _tail(weight_decay))


def adazo(b1: float = 0.9, b2: float = 0.999, zeta: float = 1e-8, weight_decay: float = 0.0, **probe) -> Plan:
    """R-AdaZO: m = b1 m + (1-b1) g; v = b2 v + (1-b2) m^2; p -= lr m/sqrt(v+zeta) (ZO estimate g).

    Shu et al., "Refining Adaptive Zeroth-Order Optimization at Ease", ICML 2025, arXiv 2502.01014.
    Probe options as ``zo-sgd``. Extra memory: m and v.
    """
    _beta("b1", b1)
    _beta("b2", b2)
    _number("zeta", zeta, 0)
    return _single(_zeroth_order(**probe), [ScaleByAdaZO(b1, b2, zeta)] + _tail(weight_decay))


def sam(rho: float = 0.01, base: str = "adam", base_options: dict | None = None) -> Plan:
    """SAM on the forget loss (Fan et al. 2025), then an Adam or SGD update; rho = 0.01.

    g = grad l_f(p + rho g_f/||g_f||) + grad l_r(p); the closure returns {"forget", "retain"}.
    ``base`` "adam" or "sgd" picks the update chain, ``base_options`` its options (e.g.
    {"weight_decay": 0.01}). See :class:`unlearn.optim.estimators.SharpnessAware`.
    """
    _number("rho", rho, 0, low_open=True)
    _choice("base", base, ("adam", "sgd"))
    chain = build_plan(base, base_options or {}).phases["fo"].chain
    return _single(SharpnessAware(rho), chain)


def hybrid(total_steps: int | None = None, fo: str = "adam", zo: str = "adazo", n_fo: int = 20, n_zo: int = 20,
           state: str = "separate", fo_options: dict | None = None, zo_options: dict | None = None,
           zo_lr_scale: float = 1.0) -> Plan:
    """Hybrid FO-ZO (the paper's method): n_fo first-order steps, n_zo zeroth-order, ..., ending ZO.

    "Downgrade to Upgrade" (ICLR 2026, arXiv 2510.00761): blocks of ``n_fo`` steps of ``fo``
    (default adam) alternate with blocks of ``n_zo`` steps of ``zo`` (default adazo); n_fo = n_zo
    = 20 by default (the paper's best ratio is 1:1). Blocks are aligned from the end so the run
    always ends with a full ZO block: this needs ``total_steps``. ``fo_options`` / ``zo_options``
    are the two optimizers' options; the ZO phase's learning rate is the group's lr times
    ``zo_lr_scale``.

    ``state`` decides what happens to optimizer state at a switch:
    - "separate" (default): each phase keeps its own buffers (Adam's m, v for FO; AdaZO's m, v
      for ZO), untouched while the other phase runs. Default because, in a small test, carrying
      Adam moments built from noisy ZO estimates into an FO block stalled learning badly.
    - "shared": both phases read and write the same buffers by role (m, v), so each phase starts
      from the moments the other left; Adam's bias-correction count runs on across phases.
    """
    require(total_steps is not None, "hybrid needs total_steps (its blocks are aligned so the run ends "
            "with a zeroth-order block): pass total_steps=...")
    _number("total_steps", total_steps, 1, integer=True)
    _number("n_fo", n_fo, 1, integer=True)
    _number("n_zo", n_zo, 1, integer=True)
    _choice("state", state, ("separate", "shared"))
    _number("zo_lr_scale", zo_lr_scale, 0)
    require("hybrid" not in (fo, zo), "hybrid's fo and zo must be single optimizers, not 'hybrid'")
    fo_plan, zo_plan = build_plan(fo, fo_options or {}), build_plan(zo, zo_options or {})
    (fo_phase,), (zo_phase,) = fo_plan.phases.values(), zo_plan.phases.values()
    require(fo_phase.name != "zo", f"hybrid's fo must be a gradient-based optimizer, not {fo!r}")
    require(zo_phase.name == "zo",
            f"hybrid's zo must be a zeroth-order optimizer ({', '.join(ZO_NAMES)}), got {zo!r}")
    phases = {"fo": Phase("fo", fo_phase.estimator, fo_phase.chain),
              "zo": Phase("zo", zo_phase.estimator, zo_phase.chain, lr_scale=float(zo_lr_scale))}
    return Plan(phases, Alternating(n_fo, n_zo, total_steps), state_policy=state)


RECIPES = {
    "sgd": sgd, "adam": adam, "adam-noise": adam_noise,
    "signsgd": signsgd, "signadam": signadam, "qsgd": qsgd, "qadam": qadam,
    "sophia": sophia,
    "zo-sgd": zo_sgd, "zo-adam": zo_adam, "adazo": adazo,
    "hybrid": hybrid, "sam": sam,
}
ZO_NAMES = ("zo-sgd", "zo-adam", "adazo")
# each recipe's tier in the paper's ladder (written into records, so a report needs no table)
TIERS = {
    "sophia": "second order",
    "sgd": "first order", "adam": "first order",
    "signsgd": "compressed", "signadam": "compressed", "qsgd": "compressed", "qadam": "compressed",
    "zo-sgd": "zeroth order", "zo-adam": "zeroth order", "adazo": "zeroth order",
    "hybrid": "hybrid",
    "sam": "sharpness-aware",
    "adam-noise": "control",  # Adam + a zeroth-order step's worth of noise: a control, not a rung
}


def option_names(name: str) -> list[str]:
    """The options a named optimizer accepts."""
    recipe = lookup(RECIPES, name, "optimizer")
    params = inspect.signature(recipe).parameters.values()
    names = [p.name for p in params if p.kind is not p.VAR_KEYWORD and p.name != "total_steps"]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        names += list(ZO_OPTIONS)
    return names


def build_plan(name: str, options: dict, total_steps: int | None = None) -> Plan:
    """Validate ``options`` for optimizer ``name`` and build its plan."""
    recipe = lookup(RECIPES, name, "optimizer")
    allowed = option_names(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise BasinError(f"optimizer {name!r} has no option(s) {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(allowed) or 'none'}")
    if "total_steps" in inspect.signature(recipe).parameters:
        options = {**options, "total_steps": total_steps}
    return recipe(**options)


def _factory(name: str):
    recipe = RECIPES[name]

    def factory(params, lr: float = 1e-3, total_steps: int | None = None, seed: int = 0,
                **options) -> BasinOptimizer:
        return BasinOptimizer(params, build_plan(name, options, total_steps), lr=lr, seed=seed,
                              total_steps=total_steps, name=name)

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = recipe.__doc__
    factory.options = option_names(name)
    factory.tier = TIERS[name]
    return factory


OPTIMIZERS = {name: _factory(name) for name in RECIPES}


def make_optimizer(name: str, params, lr: float = 1e-3, total_steps: int | None = None, seed: int = 0,
                   **options) -> BasinOptimizer:
    """Build the optimizer ``name`` (one of ``OPTIMIZERS``) over ``params`` (an ``nn.Module``'s
    trainable parameters, or (name, tensor) pairs). ``total_steps`` is required by ``hybrid``;
    ``seed`` seeds every random draw (ZO directions, Hutchinson probes, stochastic rounding);
    ``options`` are the optimizer's own (see its docstring, or ``OPTIMIZERS[name].options``)."""
    return lookup(OPTIMIZERS, name, "optimizer")(params, lr=lr, total_steps=total_steps, seed=seed, **options)
