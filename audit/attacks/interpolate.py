"""Linear mode connectivity: the straight path between two models, its loss barrier, and the 2-D
plane through three models (the "basin picture").

Frankle et al. 2020 (arXiv 1912.05671) define the path and the barrier; Garipov et al. 2018
(arXiv 1802.10026) draw loss surfaces on the plane through three networks. An unlearned model
that sits in the original's basin (no barrier on the path) is suspect: the knowledge is a short,
flat walk away.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch import nn

from audit.attacks.common import check_same_architecture, fmt, load_from, make_buffer, named_tensors
from unlearn.errors import BasinError

DEFAULT_POINTS = 11


def _alphas(points: int | None, alphas: Sequence[float] | None) -> list[float]:
    if alphas is not None:
        out = [float(a) for a in alphas]
        if not out or any(not math.isfinite(a) for a in out):
            raise BasinError("alphas must be a non-empty list of finite numbers")
        return out
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise BasinError(f"points must be an integer >= 2 (both endpoints), not {points!r}")
    return [i / (points - 1) for i in range(points)]


def interpolate(model: nn.Module, *, reference: nn.Module | None = None, points: int = DEFAULT_POINTS,
                alphas: Sequence[float] | None = None,
                endpoint: nn.Module | None = None) -> Iterator[tuple[str, float, nn.Module]]:
    """Linear mode connectivity: theta(a) = (1 - a) theta_reference + a theta_model, every tensor, fp32.

    Yields ``(f"a={a:g}", a, model)`` for ``points`` evenly spaced a in [0, 1] (default 11: 0, 0.1,
    ..., 1) or for the given ``alphas`` (values outside [0, 1] extrapolate). a = 0 is the
    ``reference`` (e.g. the original model), a = 1 is ``model`` (e.g. the unlearned one); both are
    reproduced bit for bit: each tensor is computed as ``torch.lerp(theta_ref, theta_model, a)``,
    which is exact at both ends and when the two tensors are equal (Frankle et al. 2020, arXiv
    1912.05671). One buffer model for the whole path; neither input is modified. Score each point
    and pass ``[(a, loss), ...]`` to :func:`loss_barrier`.

    ``endpoint``, when given, is the model at a = 0 instead of ``reference``: a path between two
    unlearned models (adam -> hybrid, seed 0 -> seed 1) rather than from the original. (The audit
    takes a run folder or model name here and loads it.)
    """
    reference = endpoint if endpoint is not None else reference
    if reference is None:
        raise BasinError("interpolate needs the other endpoint: pass reference=<model at a=0>")
    check_same_architecture(reference, model, "models to interpolate")
    path = _alphas(points, alphas)
    return _path(model, reference, path)


def _path(model, reference, path):
    buffer = make_buffer(model)
    load_from(buffer, model)  # integer buffers (if any) come from `model`
    dst, ours = named_tensors(buffer), named_tensors(model)
    ends = [(dst[n], t_ref, ours[n]) for n, t_ref in named_tensors(reference).items() if n in dst and n in ours]
    for a in path:
        with torch.no_grad():
            for out, t_ref, t_mod in ends:
                if t_ref.dtype == t_mod.dtype == torch.float32:
                    torch.lerp(t_ref, t_mod, a, out=out)
                else:
                    out.copy_(torch.lerp(t_ref.float(), t_mod.float(), a))
        yield f"a={fmt(a)}", a, buffer


def loss_barrier(curve: Sequence[tuple[float, float]]) -> float:
    """Loss barrier of a path: max_a [L(theta(a)) - ((1 - a) L(theta(0)) + a L(theta(1)))].

    ``curve`` is a list of ``(a, loss)`` that includes a = 0 and a = 1 (Frankle et al. 2020,
    arXiv 1912.05671). The linear term is computed as L0 + a (L1 - L0), so a flat curve gives
    exactly 0; the endpoints contribute 0, so the barrier is never negative.
    """
    points = [(float(a), float(loss)) for a, loss in curve]
    ends = {a: loss for a, loss in points if a in (0.0, 1.0)}
    if 0.0 not in ends or 1.0 not in ends:
        raise BasinError("loss_barrier needs the losses at a=0 and a=1 in the curve; "
                         "interpolate with the default points or include alphas 0 and 1")
    if any(not math.isfinite(loss) for _, loss in points):
        raise BasinError("loss_barrier got a non-finite loss; check the model at that point")
    l0, l1 = ends[0.0], ends[1.0]
    return max(loss - (l0 + a * (l1 - l0)) for a, loss in points)


def distance(first: nn.Module, second: nn.Module) -> float:
    """||theta_second - theta_first||: the Euclidean length of the interpolation path, over the
    tensors :func:`interpolate` moves (every floating-point tensor, tied ones once), in float64.

    ``loss_barrier / distance`` is the barrier per unit of weight-space distance: two pairs of
    models whose paths differ in length can then be compared (a barrier grows with the distance
    it is measured over; the same model pair at twice the distance would show a higher bump).
    """
    check_same_architecture(first, second, "models to measure the distance between")
    a, b = named_tensors(first), named_tensors(second)
    total = 0.0
    with torch.no_grad():
        for name, t in a.items():
            if name in b:
                total += float((b[name].double() - t.double()).pow(2).sum())
    return math.sqrt(total)


def plane(model: nn.Module, *, second: nn.Module, third: nn.Module, xs: Sequence[float] | None = None,
          ys: Sequence[float] | None = None, orthonormal: bool = False) -> Iterator[tuple[float, float, nn.Module]]:
    """The 2-D plane through three models: yields ``(x, y, model)`` on the grid ``xs`` x ``ys``.

    Raw coordinates (default): theta = theta_1 + x (theta_2 - theta_1) + y (theta_3 - theta_1),
    computed as (1 - x - y) theta_1 + x theta_2 + y theta_3, so theta_1, theta_2 and theta_3 are
    exactly (0, 0), (1, 0) and (0, 1). ``orthonormal=True`` uses the Gram-Schmidt basis of the same
    plane (Garipov et al. 2018, arXiv 1802.10026): u = d2 / |d2|, v = (d3 - <d3, u> u) / |...|
    with d_k = theta_k - theta_1 over all tensors, theta = theta_1 + x u + y v; x and y are then
    distances in weight space, and :func:`plane_coordinates` gives where the three models sit.
    ``model`` is theta_1. Default grid: 9 x 9 points on [-0.5, 1.5]. One buffer model.
    """
    check_same_architecture(model, second, "models of the plane (first and second)")
    check_same_architecture(model, third, "models of the plane (first and third)")
    xs = [float(v) for v in (xs if xs is not None else torch.linspace(-0.5, 1.5, 9).tolist())]
    ys = [float(v) for v in (ys if ys is not None else torch.linspace(-0.5, 1.5, 9).tolist())]
    if not xs or not ys:
        raise BasinError("xs and ys must be non-empty")
    basis = _basis(model, second, third) if orthonormal else None
    return _plane(model, second, third, xs, ys, basis)


def _basis(first, second, third):
    """(|d2|, <d3, u>, |d3 - <d3, u> u|) for the Gram-Schmidt basis, summed over every tensor."""
    t1, t2, t3 = named_tensors(first), named_tensors(second), named_tensors(third)
    n22 = n33 = n23 = 0.0
    with torch.no_grad():
        for name, a in t1.items():
            d2 = t2[name].double() - a.double()
            d3 = t3[name].double() - a.double()
            n22 += float((d2 * d2).sum())
            n33 += float((d3 * d3).sum())
            n23 += float((d2 * d3).sum())
    norm2 = math.sqrt(n22)
    if norm2 == 0:
        raise BasinError("the first and second models are identical: the plane is not defined")
    c = n23 / norm2  # <d3, u>
    rest = n33 - c * c
    norm_v = math.sqrt(max(rest, 0.0))
    if norm_v <= 1e-12 * max(math.sqrt(n33), 1e-30):
        raise BasinError("the three models lie on one line: the plane is not defined")
    return norm2, c, norm_v


def plane_coordinates(model: nn.Module, *, second: nn.Module, third: nn.Module,
                      orthonormal: bool = False) -> dict[str, tuple[float, float]]:
    """Where the three models sit in :func:`plane` coordinates (``first``, ``second``, ``third``)."""
    if not orthonormal:
        return {"first": (0.0, 0.0), "second": (1.0, 0.0), "third": (0.0, 1.0)}
    norm2, c, norm_v = _basis(model, second, third)
    return {"first": (0.0, 0.0), "second": (norm2, 0.0), "third": (c, norm_v)}


def _plane(first, second, third, xs, ys, basis):
    buffer = make_buffer(first)
    load_from(buffer, first)
    dst = named_tensors(buffer)
    t1, t2, t3 = named_tensors(first), named_tensors(second), named_tensors(third)
    for x in xs:
        for y in ys:
            with torch.no_grad():
                for name, out in dst.items():
                    a, b, c3 = t1[name].float(), t2[name].float(), t3[name].float()
                    if basis is None:  # (1 - x - y) theta_1 + x theta_2 + y theta_3
                        out.copy_(a * (1.0 - x - y)).add_(b, alpha=x).add_(c3, alpha=y)
                    else:  # theta_1 + x u + y v, u = d2/|d2|, v = (d3 - c u)/|.|
                        norm2, c, norm_v = basis
                        d2 = b - a
                        d3 = c3 - a
                        u_coef = x / norm2 - y * c / (norm_v * norm2)
                        out.copy_(a).add_(d2, alpha=u_coef).add_(d3, alpha=y / norm_v)
            yield x, y, buffer
