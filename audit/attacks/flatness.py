"""Flatness measured directly: how fast the forget and retain losses rise around a model.

A model that sits in a flat region of the forget loss can be pushed back to remembering by a small
weight change (quantization, noise, a few relearning steps) without paying much; a sharp one
cannot. Three measures, each on a loss L(theta) (here the answer NLL of a set of examples, the
fine-tuning loss of :func:`unlearn.objectives.common.answer_nll`: mean over every answer token):

- **random sharpness** (Jiang et al. 2020, "Fantastic Generalization Measures and Where to Find
  Them", arXiv 1912.02178, the random-perturbation measures; per-tensor scaling as in Li et al.
  2018, "Visualizing the Loss Landscape of Neural Nets", arXiv 1712.09913):

      S_rho = L(theta + eps) - L(theta),  eps_j = rho ||theta_j|| xi_j / ||xi_j||,  xi ~ N(0, I)

  with ``norm="tensor"`` (default: every tensor j moved by exactly rho times its own norm, so
  large and small tensors are moved alike) or ``norm="global"`` (eps = rho ||theta|| xi / ||xi||
  over the whole parameter vector). Mean and max of S_rho over seeded draws.
- **trace of the Hessian** by Hutchinson's estimator (Hutchinson 1989, "A stochastic estimator of
  the trace of the influence matrix for Laplacian smoothing splines"): tr H = E[z^T H z] for
  Rademacher z, averaged over probes, with its standard error s / sqrt(n).
- **largest Hessian eigenvalue** by power iteration on Hessian-vector products (the method of
  Yao et al. 2020, "PyHessian", arXiv 1912.07145): v <- Hv / ||Hv||, lambda = v^T H v.

Hessian-vector products are exact: Hv = d/dtheta <grad L(theta), v> by double backward
(Pearlmutter 1994, "Fast Exact Multiplication by the Hessian"). Transformers models need
``attn_implementation="eager"`` for that (PyTorch's SDPA attention has no double backward on
CPU); :func:`flatness` switches its working copy to eager attention itself.

The math functions take ``loss_terms``, a function returning an iterable of scalar tensors whose
sum is L (one per micro-batch, so a large evaluation set fits in memory), and ``params``, the
tensors L is differentiated by. Every random draw comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from audit.attacks.common import as_tuple, fmt, make_buffer
from unlearn.data.format import batches, encode_rows, pad_id_of
from unlearn.errors import BasinError, require
from unlearn.scoring import token_logprobs

LossTerms = Callable[[], Iterable[torch.Tensor]]
HVP_HINT = ("a Hessian-vector product needs a double backward, which this model does not support ({err}); "
            "PyTorch's SDPA attention on CPU has none: load the model with attn_implementation=\"eager\" "
            "(flatness() does this for its working copy)")
MEASURES = ("sharpness", "trace", "eig")
NORMS = ("tensor", "global")
# what the diagnostic writes, described for the report like the registered metrics
METRICS_WRITTEN = {
    "hessian_trace": {"label": "trace of the Hessian (Hutchinson)", "higher_is_better": None, "knowledge": None},
    "hessian_trace_se": {"label": "standard error of the Hessian trace", "higher_is_better": None, "knowledge": None},
    "hessian_eig_max": {"label": "largest Hessian eigenvalue", "higher_is_better": None, "knowledge": None},
    "hessian_eig_dominant": {"label": "dominant Hessian eigenvalue (largest |λ|)", "higher_is_better": None,
                             "knowledge": None},
    "hvp_count": {"label": "Hessian-vector products used", "higher_is_better": None, "knowledge": None},
    "hessian_eig_converged": {"label": "power iteration converged (1) or hit its budget (0)",
                              "higher_is_better": None, "knowledge": None},
    "sharpness_mean": {"label": "random sharpness, mean loss rise (nats)", "higher_is_better": None,
                       "knowledge": None},
    "sharpness_max": {"label": "random sharpness, max loss rise (nats)", "higher_is_better": None,
                      "knowledge": None},
}
DEFAULTS = dict(rho=(0.001, 0.01), draws=5, probes=16, iters=20, tol=1e-3, max_rows=32, batch_size=16)


# ----------------------------------------------------------------------------- vector helpers


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """<a, b> over a list of tensors, accumulated in float64."""
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def rademacher(params: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """A Rademacher vector (entries +-1 with probability 1/2) shaped like ``params``; drawn on the
    CPU, so the same generator gives the same bits on any device."""
    return [torch.randint(0, 2, p.shape, generator=generator).to(p).mul_(2).sub_(1) for p in params]


def gaussian(params: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """A standard normal vector shaped like ``params`` (drawn on the CPU, float32)."""
    return [torch.randn(p.shape, generator=generator).to(p) for p in params]


def loss_value(loss_terms: LossTerms) -> float:
    """L = the sum of the terms, without gradients, in float64."""
    with torch.no_grad():
        return float(sum(float(t) for t in loss_terms()))


# ----------------------------------------------------------------------------- Hessian-vector products


def hvp(loss_terms: LossTerms, params: Sequence[torch.Tensor], vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """H v = d/dtheta <grad L(theta), v> (Pearlmutter 1994), one double backward per loss term.

    ``params`` must require gradients; entries of H v that L does not depend on are zero.
    """
    out = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for term in loss_terms():
            if not term.requires_grad:
                continue
            grads = torch.autograd.grad(term, params, create_graph=True, allow_unused=True)
            live = [k for k, g in enumerate(grads) if g is not None and g.requires_grad]
            if not live:
                continue
            try:
                parts = torch.autograd.grad([grads[k] for k in live], params,
                                            grad_outputs=[vector[k] for k in live], allow_unused=True)
            except (RuntimeError, NotImplementedError) as err:
                raise BasinError(HVP_HINT.format(err=str(err).splitlines()[0])) from None
            for acc, part in zip(out, parts):
                if part is not None:
                    acc.add_(part.detach())
    return out


@dataclass
class TraceEstimate:
    """Hutchinson's estimate of tr H: the mean of z^T H z over probes and its standard error."""

    mean: float
    se: float
    samples: list[float]


def hutchinson_trace(loss_terms: LossTerms, params: Sequence[torch.Tensor], probes: int,
                     generator: torch.Generator) -> TraceEstimate:
    """tr H ~ (1/n) sum_i z_i^T H z_i, z_i Rademacher (Hutchinson 1989); SE = s / sqrt(n).

    Unbiased; the variance of one sample is 2 (||H||_F^2 - sum_i H_ii^2), so a diagonal H is
    recovered exactly by a single probe. Costs ``probes`` Hessian-vector products. The SE needs
    n >= 2 (it is NaN for n = 1).
    """
    require(isinstance(probes, int) and not isinstance(probes, bool) and probes >= 1,
            f"probes must be a positive integer, not {probes!r}")
    samples = []
    for _ in range(probes):
        z = rademacher(params, generator)
        samples.append(dot(z, hvp(loss_terms, params, z)))
    values = torch.tensor(samples, dtype=torch.float64)
    se = float(values.std(unbiased=True) / math.sqrt(probes)) if probes > 1 else float("nan")
    return TraceEstimate(float(values.mean()), se, samples)


@dataclass
class EigenEstimate:
    """The largest eigenvalue of H, the dominant one (largest |lambda|), the HVPs spent, and
    whether both iterations met the tolerance within their budget. ``largest`` is a Rayleigh
    quotient, so it never exceeds the true lambda_max: unconverged, it is a lower bound."""

    largest: float
    dominant: float
    iterations: int
    converged: bool


def _power(apply: Callable[[list[torch.Tensor]], list[torch.Tensor]], start: list[torch.Tensor],
           iters: int, tol: float, offset: float = 0.0) -> tuple[float, int, bool]:
    """Power iteration v <- A v / ||A v||, lambda = v^T A v (Rayleigh quotient); stops when lambda
    changes by at most tol |offset + lambda| between iterations (``offset``: the shift, so that
    the tolerance is relative to the eigenvalue of H, not of the shifted matrix). Returns
    (lambda, iterations, converged)."""
    norm = math.sqrt(dot(start, start))
    v = [t / norm for t in start]
    lam = None
    for k in range(1, iters + 1):
        av = apply(v)
        new = dot(v, av)
        size = math.sqrt(dot(av, av))
        if size == 0.0:
            return 0.0, k, True
        v = [t / size for t in av]
        if lam is not None and abs(new - lam) <= tol * abs(offset + new):
            return new, k, True
        lam = new
    return lam, iters, False


def power_iteration(loss_terms: LossTerms, params: Sequence[torch.Tensor], iters: int, generator: torch.Generator,
                    tol: float = 1e-3) -> EigenEstimate:
    """The largest eigenvalue lambda_max of H by power iteration on Hessian-vector products.

    Power iteration converges to the *dominant* eigenvalue mu (largest |lambda|; Yao et al. 2020,
    "PyHessian", arXiv 1912.07145). Away from a minimum (the forget loss of an unlearned model, for
    one) mu can be negative; then a second power iteration on H - mu I, whose eigenvalues
    lambda - mu lie in [0, lambda_max - mu], gives lambda_max = mu + its dominant eigenvalue. At
    most ``iters`` HVPs per run; each stops once its estimate of the eigenvalue of H changes by at
    most ``tol`` relative. The shifted run converges at the rate (lambda_2 - mu) / (lambda_max - mu),
    slowly when |mu| >> lambda_max; every estimate is a Rayleigh quotient, hence a lower bound
    on lambda_max, and ``converged`` says whether the tolerance was met. The start vectors are
    Gaussian from ``generator``.
    """
    require(isinstance(iters, int) and not isinstance(iters, bool) and iters >= 1,
            f"iters must be a positive integer, not {iters!r}")
    require(isinstance(tol, (int, float)) and tol >= 0, f"tol must be a number >= 0, not {tol!r}")
    start = gaussian(params, generator)
    mu, used, ok = _power(lambda v: hvp(loss_terms, params, v), start, iters, tol)
    if mu >= 0:
        return EigenEstimate(mu, mu, used, ok)
    shifted, more, ok_shift = _power(lambda v: [h - mu * t for h, t in zip(hvp(loss_terms, params, v), v)],
                                     gaussian(params, generator), iters, tol, offset=mu)
    return EigenEstimate(mu + shifted, mu, used + more, ok and ok_shift)


# ----------------------------------------------------------------------------- random sharpness


def perturbation(params: Sequence[torch.Tensor], rho: float, norm: str, generator: torch.Generator) -> list[torch.Tensor]:
    """eps with ||eps_j|| = rho ||theta_j|| for every tensor j (``norm="tensor"``), or
    ||eps|| = rho ||theta|| over the whole vector (``norm="global"``); direction xi / ||xi||,
    xi ~ N(0, I). A tensor (or model) of norm 0 gets eps = 0."""
    require(norm in NORMS, f"norm must be one of {', '.join(NORMS)}, not {norm!r}")
    xi = gaussian(params, generator)
    if norm == "tensor":
        scales = [rho * float(p.double().norm()) / max(float(x.double().norm()), 1e-300) for p, x in zip(params, xi)]
    else:
        scale = rho * math.sqrt(dot(params, params)) / max(math.sqrt(dot(xi, xi)), 1e-300)
        scales = [scale] * len(params)
    return [x.mul_(s) for x, s in zip(xi, scales)]


@dataclass
class SharpnessEstimate:
    """L(theta) and the rises L(theta + eps_d) - L(theta) over the draws d."""

    base: float
    rises: list[float]

    @property
    def mean(self) -> float:
        return sum(self.rises) / len(self.rises)

    @property
    def max(self) -> float:
        return max(self.rises)


def random_sharpness(loss_terms: LossTerms, params: Sequence[torch.Tensor], rho: float, draws: int,
                     generator: torch.Generator, norm: str = "tensor") -> SharpnessEstimate:
    """S_rho = L(theta + eps) - L(theta) for ``draws`` seeded perturbations eps of relative norm
    ``rho`` (:func:`perturbation`). ``params`` are moved in place and restored bit for bit (their
    values are saved, not subtracted back)."""
    require(isinstance(rho, (int, float)) and not isinstance(rho, bool) and math.isfinite(rho) and rho >= 0,
            f"rho must be a finite number >= 0, not {rho!r}")
    require(isinstance(draws, int) and not isinstance(draws, bool) and draws >= 1,
            f"draws must be a positive integer, not {draws!r}")
    base = loss_value(loss_terms)
    saved = [p.detach().clone() for p in params]
    rises = []
    try:
        for _ in range(draws):
            eps = perturbation(saved, rho, norm, generator)
            with torch.no_grad():
                for p, s, e in zip(params, saved, eps):
                    p.copy_(s + e)
            rises.append(loss_value(loss_terms) - base)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return SharpnessEstimate(base, rises)


# ----------------------------------------------------------------------------- on a language model


def answer_loss(model: nn.Module, examples, pad_id: int, batch_size: int) -> LossTerms:
    """L = mean NLL over every answer token of ``examples`` (prompt masked), as terms: batch c
    contributes -sum(log p of its answer tokens) / N, N the answer tokens of all examples."""
    device = next(model.parameters()).device
    chunks = [{k: v.to(device) for k, v in b.items()} for b in batches(examples, batch_size, pad_id)]
    total = sum(int((b["labels"][:, 1:] != -100).sum()) for b in chunks)
    require(total > 0, "the examples have no answer tokens to score")

    def terms():
        for b in chunks:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            logp, _ = token_logprobs(logits, b["labels"])
            yield -logp.sum() / total
    return terms


def evenly_spaced(rows: list, n: int) -> list:
    """``n`` evenly spaced rows (all of them if there are at most ``n``)."""
    if n <= 0 or len(rows) <= n:
        return list(rows)
    return [rows[int(i * len(rows) / n)] for i in range(n)]


def working_copy(model: nn.Module) -> tuple[nn.Module, list[torch.Tensor]]:
    """A float32 eval-mode copy of ``model`` with eager attention (double backward) and every
    floating-point parameter requiring gradients (tied parameters listed once)."""
    buffer = make_buffer(model)
    config = getattr(buffer, "config", None)
    if config is not None and getattr(config, "_attn_implementation", "eager") != "eager" \
            and hasattr(buffer, "set_attn_implementation"):
        buffer.set_attn_implementation("eager")
    params = [p for p in buffer.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    return buffer, params


def flatness(model: nn.Module, *, tokenizer, forget_rows: list[dict], retain_rows: list[dict] | None = None,
             measures: str | Sequence[str] = MEASURES, rho: float | Sequence[float] = DEFAULTS["rho"],
             draws: int = DEFAULTS["draws"], norm: str = "tensor", probes: int = DEFAULTS["probes"],
             iters: int = DEFAULTS["iters"], tol: float = DEFAULTS["tol"], max_rows: int = DEFAULTS["max_rows"],
             batch_size: int = DEFAULTS["batch_size"], seed: int = 0,
             generator: torch.Generator | None = None, prompt_format=None) -> Iterator[tuple[str, float | None, dict]]:
    """Flatness around a model: random sharpness, Hessian trace (Hutchinson), largest eigenvalue.

    A diagnostic on the forget and retain answer NLL: it yields measured values, not models.

    Yields ``(setting, x, {(split, metric): value})``:

    - ``"loss"`` (x None): ``nll``, the loss the measures are taken on;
    - ``f"sharpness-{norm}-{rho}"`` (x = rho) per rho: ``sharpness_mean``, ``sharpness_max`` over
      ``draws`` perturbations of relative norm rho (``norm`` "tensor" or "global");
    - ``f"hutchinson-{probes}"`` (x = probes): ``hessian_trace`` and its standard error
      ``hessian_trace_se``;
    - ``f"power-{iters}"`` (x = iters): ``hessian_eig_max`` (largest eigenvalue),
      ``hessian_eig_dominant`` (largest |lambda|), ``hvp_count`` (HVPs used) and
      ``hessian_eig_converged`` (1 if the tolerance was met within ``iters``, else 0: then
      ``hessian_eig_max`` is a lower bound).

    ``measures`` picks among "sharpness", "trace", "eig". The loss is the mean answer-token NLL
    on ``max_rows`` evenly spaced rows of each split (laid out in ``prompt_format``, the audit's;
    default ``plain``), in micro-batches of ``batch_size``. Random
    draws come from ``generator`` or ``torch.Generator().manual_seed(seed)``: each (split, measure)
    gets its own seed drawn from it up front, so the same seed gives the same numbers whichever
    measures are run. Works on a float32 copy with eager attention; ``model`` is not modified.
    """
    measures = as_tuple(measures, "measures")
    for m in measures:
        require(m in MEASURES, f"unknown flatness measure {m!r}; choose from {', '.join(MEASURES)}")
    rhos = [float(r) for r in as_tuple(rho, "rho")]
    for r in rhos:
        require(math.isfinite(r) and r >= 0, f"rho must be finite numbers >= 0, not {r!r}")
    require(norm in NORMS, f"norm must be one of {', '.join(NORMS)}, not {norm!r}")
    for name, value in (("draws", draws), ("probes", probes), ("iters", iters), ("max_rows", max_rows),
                        ("batch_size", batch_size)):
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive integer, not {value!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    splits = {"forget": forget_rows, **({"retain": retain_rows} if retain_rows else {})}
    seeds = {(s, m): int(torch.randint(0, 2 ** 62, (1,), generator=gen)) for s in splits for m in MEASURES}
    pad = pad_id_of(tokenizer)
    examples = {s: encode_rows(tokenizer, evenly_spaced(rows, max_rows), fmt=prompt_format)
                for s, rows in splits.items()}
    return _measure(model, examples, pad, measures, rhos, draws, norm, probes, iters, tol, batch_size, seeds)


def _measure(model, examples, pad, measures, rhos, draws, norm, probes, iters, tol, batch_size, seeds):
    buffer, params = working_copy(model)
    losses = {s: answer_loss(buffer, ex, pad, batch_size) for s, ex in examples.items()}

    def rng(split, measure):
        return torch.Generator().manual_seed(seeds[(split, measure)])

    yield "loss", None, {(s, "nll"): loss_value(f) for s, f in losses.items()}
    if "sharpness" in measures:
        for r in rhos:
            values = {}
            for s, f in losses.items():
                est = random_sharpness(f, params, r, draws, rng(s, "sharpness"), norm)
                values.update({(s, "sharpness_mean"): est.mean, (s, "sharpness_max"): est.max})
            yield f"sharpness-{norm}-{fmt(r)}", r, values
    if "trace" in measures:
        values = {}
        for s, f in losses.items():
            est = hutchinson_trace(f, params, probes, rng(s, "trace"))
            values.update({(s, "hessian_trace"): est.mean, (s, "hessian_trace_se"): est.se})
        yield f"hutchinson-{probes}", float(probes), values
    if "eig" in measures:
        values = {}
        for s, f in losses.items():
            est = power_iteration(f, params, iters, rng(s, "eig"), tol)
            values.update({(s, "hessian_eig_max"): est.largest, (s, "hessian_eig_dominant"): est.dominant,
                           (s, "hvp_count"): float(est.iterations),
                           (s, "hessian_eig_converged"): float(est.converged)})
        yield f"power-{iters}", float(iters), values
