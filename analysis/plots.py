"""Figures from the tidy record frame. Every function takes a DataFrame and returns a
:class:`matplotlib.figure.Figure` built without pyplot (no global figure state, nothing shown);
save it with ``fig.savefig(path)``.

- :func:`robustness_curve`: a forget metric against the attack's strength (relearning steps,
  bits, noise scale, sparsity), one line per optimizer, mean over seeds with a 95% CI band.
- :func:`basin_1d`: loss along the linear path between two models, forget and retain, with the
  barrier marked. :func:`barrier` computes it.
- :func:`basin_2d`: a filled contour of the plane through three models, the models marked.
- :func:`flatness`: Hessian trace, largest eigenvalue and random sharpness of the forget and retain
  losses per optimizer (the ``flatness`` diagnostic), mean and 95% CI over seeds.
- :func:`barriers`: the interpolation barrier per model pair, raw and per unit of distance.
- :func:`tier_summary`: forget efficacy and utility per optimizer, clean and after each attack,
  optimizers ordered by tier (second order -> first order -> compressed -> zeroth order ->
  hybrid -> others -> sam).
- :func:`unlearning_frontier`: forget against retain and utility across learning rates, one
  Pareto front per optimizer (:func:`frontier_points`, :func:`pareto_front`).
"""

from __future__ import annotations

import math
import textwrap
import zlib
from typing import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.names import (ATTACK_AXES, ATTACK_NAMES, ATTACK_ORDER, DESCENDING_ATTACKS,  # noqa: F401
                            KNOWN_OPTIMIZERS, METRIC_LABELS,
                            TIERS, normalise_name, optimizer_rank, optimizer_tier, order_optimizers)
from analysis.tables import knowledge_sign, latest_step, mean_ci, model_rows, per_seed

# ---------------------------------------------------------------------------------------------
# names, tiers, colours

_PALETTE = ["#7f3c8d", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#17becf", "#8c564b",
            "#e377c2", "#bcbd22", "#9467bd", "#393b79", "#637939", "#8c6d31", "#843c39", "#5254a3"]
_TIER_MARKERS = {"second order": "D", "first order": "o", "compressed": "s", "zeroth order": "^",
                 "hybrid": "*", "control": "X", "other": "v", "sharpness-aware": "P"}
REFERENCE_STYLE = {"original": dict(color="black", linestyle="--", marker=None),
                   "retain-only": dict(color="#888888", linestyle=":", marker=None)}

SPLIT_LABELS = {
    "forget": "forget set (all items)",
    "forget_unseen": "forget items not used by the attack",
    "retain": "retain set",
    "holdout": "hold-out set",
    "world_facts": "world facts",
}
# attacks whose x = 0 is exactly the clean model (so the clean value can start the curve)
ZERO_IS_CLEAN = ("relearn", "noise", "prune")
FORGET_SPLITS = ("forget", "forget_unseen")
SHORT_METRICS = {"prob": "answer prob.", "exact_match": "exact match", "rouge": "ROUGE-L",
                 "model_utility": "model utility", "forget_quality": "forget quality",
                 "margin": "margin (nats)", "margin_win": "margin win rate",
                 "nll": "NLL (nats/token)", "loss": "loss (nats/token)", "mc_accuracy": "MC accuracy"}


def series_style(label: str) -> dict:
    """Colour, marker and line style of a series: fixed per known optimizer, stable otherwise."""
    if label in REFERENCE_STYLE:
        return dict(REFERENCE_STYLE[label])
    n = normalise_name(label)
    idx = KNOWN_OPTIMIZERS.index(n) if n in KNOWN_OPTIMIZERS else zlib.crc32(n.encode()) % len(_PALETTE)
    return dict(color=_PALETTE[idx % len(_PALETTE)], linestyle="-",
                marker=_TIER_MARKERS[optimizer_tier(label)])


def metric_label(metric: str, split: str | None = None) -> str:
    text = METRIC_LABELS.get(metric, metric)
    return f"{text}, {SPLIT_LABELS.get(split, split)}" if split else text


def short_label(metric: str, split: str | None = None) -> str:
    """A compact axis label: ``answer prob. (forget)``."""
    text = SHORT_METRICS.get(metric, metric)
    return f"{text} ({split})" if split else text


def _wrap(text: str, width: int) -> str:
    """Break ``text`` into lines of at most ``width`` characters (at spaces)."""
    return textwrap.fill(text, width=width, break_long_words=False)


def _suptitle(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width (about 11 characters per inch at 12 pt)."""
    fig.suptitle(_wrap(text, max(30, int(fig.get_figwidth() * 11))))


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained", dpi=100)
    return fig


STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 12,
         "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none"}


# ---------------------------------------------------------------------------------------------
# helpers


def _series(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``series``: the label, qualified by the objective when several objectives are present."""
    df = df.copy()
    objectives = set(df.loc[df["role"] == "unlearned", "objective"]) - {""}
    if len(objectives) > 1:
        df["series"] = [f"{lab} / {obj}" if role == "unlearned" and obj else lab
                        for lab, obj, role in zip(df["label"], df["objective"], df["role"])]
    else:
        df["series"] = df["label"]
    return df


def _ordered_series(names) -> list[str]:
    refs = [n for n in ("original", "retain-only") if n in set(names)]
    rest = sorted((n for n in dict.fromkeys(names) if n not in refs),
                  key=lambda s: optimizer_rank(s.split(" / ")[0]) + (s,))
    return rest + refs


def _curve(df: pd.DataFrame, along: str = "x") -> pd.DataFrame:
    """Mean and 95% CI over seeds of ``value`` per point of ``along`` (x, or setting)."""
    seeds = per_seed(df, ["series", "setting", along] if along != "setting" else ["series", "setting"])
    rows = []
    for key, g in seeds.groupby(["setting"] + ([along] if along != "setting" else []), dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({"setting": key[0], along: key[-1], **mean_ci(g["value"])})
    out = pd.DataFrame(rows)
    return out.sort_values([along, "setting"], na_position="last").reset_index(drop=True)


def _legend(fig: Figure, axes, title: str | None = None) -> None:
    """One figure legend below the axes (never over a title or a curve), de-duplicated by label,
    with as many columns as the figure's width allows."""
    seen: dict[str, object] = {}
    for ax in np.atleast_1d(axes).ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if not lab.startswith("_"):
                seen.setdefault(lab, h)
    if seen:
        labels, handles = list(seen.keys()), list(seen.values())
        longest = max(len(lab) for lab in labels)
        per_col = 0.45 + 0.075 * longest  # inches per legend column at 9 pt
        max_cols = max(1, min(len(labels), int(fig.get_figwidth() / per_col)))
        rows = math.ceil(len(labels) / max_cols)
        ncols = math.ceil(len(labels) / rows)  # balanced rows: 8 entries -> 4 + 4, not 7 + 1
        # matplotlib fills a legend column by column; reorder so it reads row by row, in order
        order = [r * ncols + c for c in range(ncols) for r in range(rows) if r * ncols + c < len(labels)]
        fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center",
                   ncols=ncols, title=title, frameon=False)


def _no_data(fig: Figure, text: str) -> Figure:
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return fig


# ---------------------------------------------------------------------------------------------
# robustness curves


def robustness_curve(df: pd.DataFrame, attack: str, metric: str = "prob",
                     splits: Sequence[str] | None = None, *, include_clean: bool = True,
                     references: bool = True) -> Figure:
    """``metric`` against the strength of ``attack``, one panel per split, one line per optimizer.

    Each line is the mean over seeds at each setting with a shaded 95% CI band (drawn where a
    point has two or more seeds). Settings without a distinct numeric value (``nf4`` next to
    ``rtn-4bit``) are distinct methods, not points on a scale: they are shown as categories, each
    series as markers with 95% CI bars side by side, unconnected. The original and retain-only models, when the records hold them,
    are drawn as dashed (black) and dotted (grey) reference lines: the ceiling and the floor. The
    x axis is the setting's numeric value ``x`` when every setting has one, else the settings as
    categories. For attacks whose x = 0 is the unattacked model (relearning, noise, pruning) the
    clean value is drawn at x = 0 when no x = 0 record exists (``include_clean``). Quantization's
    axis runs from many bits to few, so the attack gets stronger to the right in every panel.
    ``splits`` defaults to the forget splits present (``forget``, ``forget_unseen``).
    """
    with mpl.rc_context(STYLE):
        data = _series(latest_step(df[df["metric"] == metric]))
        if not references:
            data = data[data["role"] == "unlearned"]
        if splits is None:
            present = list(dict.fromkeys(data.loc[data["attack"] == attack, "split"]))
            splits = [s for s in FORGET_SPLITS if s in present] or present[:2]
        splits = list(splits)
        fig = _new_figure(4.2 * max(1, len(splits)) + 2.4, 4.0)
        attacked = data[data["attack"] == attack]
        if attacked.empty or not splits:
            return _no_data(fig, f"no {metric} records under the {attack} attack")
        # a numeric axis needs one x per setting and one setting per x (nf4 and rtn-4bit share 4
        # bits but are different attacks: they are then shown as categories)
        pairs = attacked[["setting", "x"]].drop_duplicates()
        numeric = bool(attacked["x"].notna().all() and pairs["setting"].is_unique and pairs["x"].is_unique)
        categories = _categories(attacked) if not numeric else None
        axes = np.atleast_1d(fig.subplots(1, len(splits), sharey=True, squeeze=False)[0])
        for ax, split in zip(axes, splits):
            sub = attacked[attacked["split"] == split]
            clean = data[(data["attack"] == "none") & (data["split"] == split)]
            n_series = _ordered_series(sub["series"])
            for name in n_series:
                pts = _curve(sub[sub["series"] == name], "x" if numeric else "setting")
                if numeric and include_clean and attack in ZERO_IS_CLEAN and not (pts["x"] == 0).any():
                    c = clean[clean["series"] == name]
                    if not c.empty:
                        c0 = mean_ci(per_seed(c, ["series"])["value"])
                        pts = pd.concat([pd.DataFrame([{"setting": "clean", "x": 0.0, **c0}]), pts],
                                        ignore_index=True)
                if numeric:
                    pts = pts.sort_values("x").reset_index(drop=True)
                    xs = pts["x"].to_numpy(float)
                else:
                    pts = pts.assign(pos=[categories.index(s) for s in pts["setting"]])
                    pts = pts.sort_values("pos").reset_index(drop=True)
                    xs = pts["pos"].to_numpy(float)
                style = series_style(name.split(" / ")[0]) if name not in REFERENCE_STYLE else series_style(name)
                n_max = int(pts["n"].max()) if len(pts) else 0
                label = f"{name} (n={n_max})" if name not in REFERENCE_STYLE else name
                if not numeric:  # distinct methods: markers with CI bars, side by side, no line
                    k = n_series.index(name)
                    xs = xs + (k - (len(n_series) - 1) / 2) * min(0.12, 0.8 / len(n_series))
                    err = (pts["ci_half"].fillna(0.0)).to_numpy(float)
                    ax.errorbar(xs, pts["mean"].to_numpy(float), yerr=err, label=label, markersize=6,
                                capsize=0, elinewidth=1.4, color=style["color"],
                                marker=style["marker"] or "o", linestyle="none")
                    continue
                ax.plot(xs, pts["mean"].to_numpy(float), label=label, markersize=5, linewidth=1.6, **style)
                band = pts["ci_low"].notna().to_numpy()
                if band.any():
                    ax.fill_between(xs[band], pts["ci_low"].to_numpy(float)[band],
                                    pts["ci_high"].to_numpy(float)[band], color=style["color"],
                                    alpha=0.15, linewidth=0)
            ax.set_title(SPLIT_LABELS.get(split, split))
            ax.grid(alpha=0.3)
            if numeric:
                ax.set_xlabel(ATTACK_AXES.get(attack, f"{attack} setting"))
                _format_x(ax, attack, attacked["x"].to_numpy(float))
            else:
                ax.set_xlabel(f"{ATTACK_NAMES.get(attack, attack)} setting")
                ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        axes[0].set_ylabel(_wrap(metric_label(metric), 34))
        _suptitle(fig, f"{METRIC_LABELS.get(metric, metric)} under {ATTACK_NAMES.get(attack, attack)} "
                  "(mean, 95% CI over seeds)")
        _legend(fig, axes)
        return fig


def _categories(df: pd.DataFrame) -> list[str]:
    """Settings ordered weak to strong (few bits last for quantization), unparsed ones last."""
    pairs = df.drop_duplicates("setting")
    descending = df["attack"].iloc[0] in DESCENDING_ATTACKS
    keyed = sorted(zip(pairs["x"], pairs["setting"]),
                   key=lambda p: (not np.isfinite(p[0]), -p[0] if descending and np.isfinite(p[0]) else p[0], p[1]))
    return [s for _, s in keyed]


def _format_x(ax, attack: str, xs: np.ndarray) -> None:
    xs = xs[np.isfinite(xs)]
    if attack in ("quantize", "precision"):
        ticks = sorted(set(xs.tolist()) | ({0.0} if False else set()))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        if not ax.xaxis_inverted():
            ax.invert_xaxis()
        return
    pos = xs[xs > 0]
    if pos.size and pos.max() / pos.min() > 100:
        ax.set_xscale("symlog", linthresh=float(pos.min()))


# ---------------------------------------------------------------------------------------------
# basins


def barrier(alphas: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Loss barrier of a path: max_a [L(a) - ((1 - a) L(a0) + a L(a1))] over the sampled points,
    with a rescaled to [0, 1] between the first and the last point. Returns (barrier, a at the
    max). Points are sorted by a; NaN values are dropped; fewer than two points give (NaN, NaN)."""
    a = np.asarray(alphas, float)
    v = np.asarray(values, float)
    ok = np.isfinite(a) & np.isfinite(v)
    a, v = a[ok], v[ok]
    if a.size < 2:
        return math.nan, math.nan
    order = np.argsort(a)
    a, v = a[order], v[order]
    t = (a - a[0]) / (a[-1] - a[0]) if a[-1] != a[0] else np.zeros_like(a)
    chord = (1 - t) * v[0] + t * v[-1]
    i = int(np.argmax(v - chord))
    return float(v[i] - chord[i]), float(a[i])


def _pair_names(model: str) -> tuple[str, str]:
    for sep in ("->", "→", " to ", "|"):
        if sep in model:
            a, b = model.split(sep, 1)
            return a.strip(), b.strip()
    return "first model", "second model"


def _landscape_rows(df: pd.DataFrame, attack: str, metric: str | None, splits) -> tuple[pd.DataFrame, str]:
    """The latest-step records of ``attack`` on ``splits`` for ``metric`` (default: the loss, else
    NLL, else the first metric there is), and that metric's name."""
    data = latest_step(df[df["attack"] == attack])
    if metric is None:
        metric = next((m for m in ("loss", "nll") if (data["metric"] == m).any()),
                      data["metric"].iloc[0] if len(data) else "loss")
    return data[(data["metric"] == metric) & data["split"].isin(list(splits))], metric


def basin_1d(df: pd.DataFrame, metric: str | None = None, splits: Sequence[str] = ("forget", "retain"),
             attack: str = "interpolate") -> Figure:
    """Linear mode connectivity: ``metric`` (default ``loss``, else ``nll``) along
    theta(a) = (1 - a) theta_1 + a theta_2, one panel per interpolated pair (the records' ``model``,
    e.g. ``original->adam``), one line per split (mean over seeds, 95% CI band), the straight chord
    between the end points dashed, and the barrier (:func:`barrier`) marked by a vertical segment
    from the chord to the curve with its value written beside it."""
    with mpl.rc_context(STYLE):
        data, metric = _landscape_rows(df, attack, metric, splits)
        pairs = sorted(data["model"].unique())
        ncols = min(3, max(1, len(pairs)))
        nrows = max(1, math.ceil(len(pairs) / ncols))
        fig = _new_figure(4.4 * ncols + 1.8, 3.8 * nrows)
        if data.empty:
            return _no_data(fig, f"no {metric} records along an interpolation path")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        colors = {"forget": "#d62728", "retain": "#1f77b4", "forget_unseen": "#ff7f0e",
                  "holdout": "#2ca02c", "world_facts": "#9467bd"}
        for ax, pair in zip(axes, pairs):
            sub = data[data["model"] == pair].assign(series=lambda d: d["split"])
            texts = []
            for split in [s for s in splits if (sub["split"] == s).any()]:
                pts = _curve(sub[sub["split"] == split], "x")
                xs, ys = pts["x"].to_numpy(float), pts["mean"].to_numpy(float)
                color = colors.get(split, "#444444")
                ax.plot(xs, ys, marker="o", markersize=4, color=color,
                        label=SPLIT_LABELS.get(split, split))
                band = pts["ci_low"].notna().to_numpy()
                if band.any():
                    ax.fill_between(xs[band], pts["ci_low"][band], pts["ci_high"][band],
                                    color=color, alpha=0.15, linewidth=0)
                ok = np.isfinite(xs) & np.isfinite(ys)
                if ok.sum() >= 2:
                    ax.plot([xs[ok][0], xs[ok][-1]], [ys[ok][0], ys[ok][-1]], linestyle="--",
                            color=color, alpha=0.6, linewidth=1, label="_chord")
                    b, at = barrier(xs, ys)
                    j = int(np.argmin(np.abs(xs - at)))
                    t = (at - xs[ok][0]) / (xs[ok][-1] - xs[ok][0])
                    chord_at = (1 - t) * ys[ok][0] + t * ys[ok][-1]
                    ax.vlines(at, chord_at, ys[j], colors=color, linewidth=2.2, label="_barrier")
                    texts.append((SPLIT_LABELS.get(split, split).split(" ")[0], b, at, color))
            first, second = _pair_names(pair)
            ax.set_title(f"{first} → {second}")
            ax.set_xlabel(f"α (0 = {first}, 1 = {second})")
            ax.set_ylabel(_wrap(metric_label(metric), 34))
            ax.grid(alpha=0.3)
            for k, (name, b, at, color) in enumerate(texts):
                ax.text(0.02, 0.97 - 0.08 * k, f"{name} barrier {b:.3g} at α={at:g}",
                        transform=ax.transAxes, color=color, va="top", fontsize=9,
                        bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
        for ax in axes[len(pairs):]:
            ax.axis("off")
        _suptitle(fig, f"Linear interpolation between models: {METRIC_LABELS.get(metric, metric)} "
                  "(dashed: straight chord; bar: barrier)")
        _legend(fig, axes)
        return fig


FLATNESS_METRICS = ("hessian_trace", "hessian_eig_max", "sharpness_mean", "sharpness_max")
_SPLIT_COLORS = {"forget": "#d62728", "retain": "#1f77b4"}


def _points(ax, data: pd.DataFrame, category: str, categories: list[str], splits: Sequence[str]) -> None:
    """Mean and 95% CI over seeds of ``value`` per category (x axis), one marker series per split,
    side by side."""
    width = 0.5 / max(1, len(splits))
    for k, split in enumerate(splits):
        sub = per_seed(data[data["split"] == split], [category])
        stats = [mean_ci(sub.loc[sub[category] == c, "value"]) for c in categories]
        xs = np.arange(len(categories)) + (k - (len(splits) - 1) / 2) * width
        means = np.array([st["mean"] for st in stats], dtype=float)
        half = np.array([st["ci_half"] for st in stats], dtype=float)
        ax.errorbar(xs, means, yerr=np.where(np.isfinite(half), half, 0.0), fmt="o", capsize=3,
                    color=_SPLIT_COLORS.get(split, "#444444"), label=SPLIT_LABELS.get(split, split))
    ax.set_xticks(np.arange(len(categories)))
    ax.set_xticklabels([_wrap(c, 14) for c in categories], rotation=30, ha="right")
    ax.axhline(0.0, color="#999999", linewidth=0.8)
    ax.grid(alpha=0.3, axis="y")


def flatness(df: pd.DataFrame, metrics: Sequence[str] = FLATNESS_METRICS,
             splits: Sequence[str] = ("forget", "retain")) -> Figure:
    """Flatness of the forget and retain losses around each model (the ``flatness`` diagnostic):
    one panel per measure (Hutchinson trace of the Hessian, largest Hessian eigenvalue, random
    sharpness at each relative norm), one column per optimizer (and the original / retain-only
    models), mean and 95% CI over seeds per split."""
    with mpl.rc_context(STYLE):
        data = _series(df[df["attack"] == "flatness"])
        panels = []
        for metric in metrics:
            for setting in sorted(data.loc[data["metric"] == metric, "setting"].unique()):
                panels.append((metric, setting))
        ncols = min(3, max(1, len(panels)))
        nrows = max(1, math.ceil(len(panels) / ncols))
        fig = _new_figure(4.6 * ncols + 0.8, 3.6 * nrows + 0.6)
        if not panels:
            return _no_data(fig, "no flatness records (audit with the flatness diagnostic)")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        names = _ordered_series(data["series"].unique())
        for ax, (metric, setting) in zip(axes, panels):
            sub = data[(data["metric"] == metric) & (data["setting"] == setting)]
            _points(ax, sub, "series", names, [s for s in splits if (sub["split"] == s).any()])
            label = METRIC_LABELS.get(metric, metric)
            ax.set_title(_wrap(f"{label}, {setting.removeprefix('sharpness-')}" if metric.startswith("sharp")
                               else label, 48))
        for ax in axes[len(panels):]:
            ax.axis("off")
        _suptitle(fig, "Flatness around each model: higher = sharper (mean and 95% CI over seeds)")
        _legend(fig, axes)
        return fig


def barriers(df: pd.DataFrame, splits: Sequence[str] = ("forget", "retain"), attack: str = "interpolate") -> Figure:
    """The loss barrier of every interpolated pair (``original->adam``, ``adam->hybrid``, ...):
    left the barrier in NLL, right the barrier per unit of weight-space distance
    ||theta_B - theta_A||; mean and 95% CI over seeds per split."""
    with mpl.rc_context(STYLE):
        data = df[(df["attack"] == attack) & (df["setting"] == "path")]
        fig = _new_figure(11.0, 4.2)
        if not data["metric"].isin(["barrier", "barrier_per_distance"]).any():
            return _no_data(fig, "no interpolation barriers in the records")
        pairs = sorted(data["model"].unique(), key=lambda m: (not m.startswith("original"), m))
        axes = fig.subplots(1, 2, squeeze=False).ravel()
        for ax, metric in zip(axes, ("barrier", "barrier_per_distance")):
            sub = data[data["metric"] == metric]
            _points(ax, sub, "model", pairs, [s for s in splits if (sub["split"] == s).any()])
            ax.set_title(METRIC_LABELS.get(metric, metric))
        _suptitle(fig, "Linear-interpolation barriers between models (0 = linearly connected)")
        _legend(fig, axes)
        return fig


def basin_2d(df: pd.DataFrame, metric: str | None = None, splits: Sequence[str] = ("forget", "retain"),
             *, model: str | None = None, corners: Sequence[str] | None = None,
             corner_xy: Sequence[tuple[float, float]] = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)),
             attack: str = "plane") -> Figure:
    """Filled contours of ``metric`` (default ``loss``, else ``nll``) over the plane
    theta(x, y) = theta_0 + x (theta_1 - theta_0) + y (theta_2 - theta_0), one panel per split, with
    the three models marked at ``corner_xy`` (default (0,0), (1,0), (0,1)) and named by
    ``corners`` (default: the record's ``model`` split on ``|`` when it names three models, else
    theta_0, theta_1, theta_2). ``model`` picks one plane when the records hold several."""
    with mpl.rc_context(STYLE):
        data, metric = _landscape_rows(df, attack, metric, splits)
        data = data[data["x"].notna() & data["y"].notna()]
        planes = sorted(data["model"].unique())
        model = model if model is not None else (planes[0] if planes else None)
        data = data[data["model"] == model]
        present = [s for s in splits if (data["split"] == s).any()]
        fig = _new_figure(4.6 * max(1, len(present)) + 0.6, 4.4)
        if data.empty:
            return _no_data(fig, f"no {metric} records on a plane of three models")
        if corners is None:
            parts = [p.strip() for p in str(model).split("|")]
            corners = parts if len(parts) == 3 else ["θ0", "θ1", "θ2"]
        axes = fig.subplots(1, len(present), squeeze=False)[0]
        for ax, split in zip(axes, present):
            seeds = per_seed(data[data["split"] == split], ["x", "y"])
            grid = seeds.groupby(["x", "y"])["value"].mean().reset_index()
            x, y, z = (grid[c].to_numpy(float) for c in ("x", "y", "value"))
            try:
                filled = ax.tricontourf(x, y, z, levels=12, cmap="viridis")
                ax.tricontour(x, y, z, levels=filled.levels, colors="white", linewidths=0.4, alpha=0.6)
            except (ValueError, RuntimeError):  # too few or collinear points: show them as dots
                filled = ax.scatter(x, y, c=z, cmap="viridis", s=60)
            cbar = fig.colorbar(filled, ax=ax, shrink=0.9)
            cbar.set_label(metric_label(metric))
            cx0, cy0 = float(np.mean(x)), float(np.mean(y))
            for (cx, cy), name, mk in zip(corner_xy, corners, ("o", "s", "^")):
                ax.plot([cx], [cy], marker=mk, markersize=9, markerfacecolor="white",
                        markeredgecolor="black", markeredgewidth=1.5, linestyle="none", label="_model")
                # label on the side facing the middle of the plane, so it stays inside the axes
                dx, dy = (8 if cx <= cx0 else -8), (8 if cy <= cy0 else -8)
                ax.annotate(name, (cx, cy), xytext=(dx, dy), textcoords="offset points", fontsize=9,
                            ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top",
                            bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="#333333",
                                      alpha=0.9))
            ax.set_title(SPLIT_LABELS.get(split, split))
            ax.set_xlabel(f"x (toward {corners[1]})")
            ax.set_ylabel(f"y (toward {corners[2]})")
            ax.set_aspect("equal", adjustable="box")
        _suptitle(fig, f"{METRIC_LABELS.get(metric, metric)} on the plane through {', '.join(corners)}")
        return fig


# ---------------------------------------------------------------------------------------------
# optimizer tiers


def condition_values(df: pd.DataFrame, label: str, attack: str, metric: str, split: str | None,
                     *, setting: str | None = None) -> tuple[dict, str | None]:
    """Per-seed values of ``metric`` for one series under one attack, reduced to one setting.

    ``setting`` given: that setting. Otherwise for ``attack == "none"`` the clean records; for an
    attack, the *worst case*: the setting where the mean over seeds shows the most knowledge
    (by :func:`analysis.tables.knowledge_sign`), or, for a metric without a knowledge direction,
    the per-seed mean over all settings (setting ``None``). Returns (:func:`mean_ci` dict, setting).
    """
    sub = df[(df["label"] == label) & (df["attack"] == attack) & (df["metric"] == metric)]
    if split is not None:
        sub = sub[sub["split"] == split]
    if sub.empty:
        return mean_ci([]), setting
    seeds = per_seed(sub, ["setting"])
    if setting is None and attack != "none":
        sign = knowledge_sign(metric)
        if sign is not None:
            means = seeds.groupby("setting")["value"].mean().dropna()
            if not means.empty:
                setting = str((sign * means).idxmax())
    if setting is not None:
        seeds = seeds[seeds["setting"] == setting]
    values = seeds.groupby("seed")["value"].mean()
    return mean_ci(values), setting


def tier_summary(df: pd.DataFrame, forget_metric: str = "prob", forget_split: str = "forget",
                 utility_metric: str = "model_utility", utility_split: str | None = None,
                 attacks: Sequence[str] | None = None) -> Figure:
    """Forget efficacy (top) and utility (bottom) per optimizer, clean and after each attack.

    Optimizers run left to right in tier order (:data:`TIERS`: second order, first order,
    compressed, zeroth order, hybrid, others, sharpness-aware last), tiers separated by shaded
    bands and named above the top panel. Each condition (clean, then each attack at its worst-case
    setting for the forget metric, see :func:`condition_values`; the utility is read at that same
    setting) is one marker with a 95% CI error bar, offset sideways. Horizontal lines mark the clean
    original (dashed) and retain-only (dotted) models. ``utility_split`` None accepts any split.
    """
    with mpl.rc_context(STYLE):
        data = latest_step(model_rows(df))
        labels = order_optimizers(data.loc[data["role"] == "unlearned", "label"])
        if attacks is None:
            present = set(data["attack"]) - {"none"}
            attacks = [a for a in ATTACK_ORDER if a in present] + sorted(present - set(ATTACK_ORDER))
        conditions = ["none"] + [a for a in attacks if a != "none"]
        fig = _new_figure(max(7.5, 0.95 * len(labels) + 4.5), 6.6)
        if not labels:
            return _no_data(fig, "no unlearned models in the records")
        ax_f, ax_u = fig.subplots(2, 1, sharex=True)
        width = 0.8 / len(conditions)
        markers = ["o", "s", "^", "D", "v", "P", "X", "h"]
        cmap = mpl.colormaps["tab10"]
        for k, cond in enumerate(conditions):
            offs = (k - (len(conditions) - 1) / 2) * width
            f_stats, u_stats = [], []
            for lab in labels:
                f, used = condition_values(data, lab, cond, forget_metric, forget_split)
                u, _ = condition_values(data, lab, cond, utility_metric, utility_split,
                                        setting=used if cond != "none" else None)
                f_stats.append(f)
                u_stats.append(u)
            name = "clean (no attack)" if cond == "none" else f"after {ATTACK_NAMES.get(cond, cond)} (worst case)"
            for ax, st in ((ax_f, f_stats), (ax_u, u_stats)):
                xs = np.arange(len(labels)) + offs
                ys = np.array([s["mean"] for s in st], float)
                err = np.array([s["ci_half"] if np.isfinite(s["ci_half"]) else 0.0 for s in st], float)
                if np.isfinite(ys).any():
                    ax.errorbar(xs, ys, yerr=err, fmt=markers[k % len(markers)], color=cmap(k % 10),
                                markersize=6, capsize=3, linewidth=1.2, label=name)
        for ax, metric, split in ((ax_f, forget_metric, forget_split), (ax_u, utility_metric, utility_split)):
            for ref, ls in (("original", "--"), ("retain-only", ":")):
                ref_stats, _ = condition_values(data, ref, "none", metric, split)
                if np.isfinite(ref_stats["mean"]):
                    ax.axhline(ref_stats["mean"], color="black" if ref == "original" else "#777777",
                               linestyle=ls, linewidth=1.2, label=f"{ref} (clean)")
            ax.set_ylabel(short_label(metric, split))
            ax.grid(axis="y", alpha=0.3)
        _tier_bands(ax_f, ax_u, labels)
        ax_u.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax_u.set_xlabel("optimizer (grouped by tier)")
        sign = knowledge_sign(forget_metric)
        hint = {1: ": lower = more forgotten", -1: ": higher = more forgotten"}.get(sign, "")
        ax_f.set_title(f"forget efficacy{hint}", pad=22)
        ax_u.set_title("utility: higher is better")
        _suptitle(fig, "Optimizer tiers: forgetting and utility before and after each attack "
                  "(mean, 95% CI over seeds)")
        _legend(fig, [ax_f, ax_u])
        return fig


def _tier_bands(ax_top, ax_bottom, labels: list[str]) -> None:
    tiers = [optimizer_tier(lab) for lab in labels]
    start = 0
    shade = False
    for i in range(1, len(labels) + 1):
        if i == len(labels) or tiers[i] != tiers[start]:
            for ax in (ax_top, ax_bottom):
                if shade:
                    ax.axvspan(start - 0.5, i - 0.5, color="#eeeeee", zorder=0, linewidth=0)
            ax_top.text((start + i - 1) / 2, 1.01, tiers[start], transform=ax_top.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=8, color="#444444")
            shade = not shade
            start = i
    ax_top.set_xlim(-0.5, len(labels) - 0.5)


# ---------------------------------------------------------------------------------------------
# the unlearning frontier


def pareto_front(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Mask of the points no other point beats on both axes, with less ``x`` (less knowledge of the
    forget set) and more ``y`` (more retain knowledge or utility) better: point i is on the front
    unless some j has x_j <= x_i and y_j >= y_i with one of the two strict. NaN is never on it."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    front = ok.copy()
    for i in np.flatnonzero(ok):
        beats = ok & (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        front[i] = not beats.any()
    return front


def frontier_points(df: pd.DataFrame, forget: tuple[str, str] = ("prob", "forget"),
                    other: tuple[str, str] = ("prob", "retain"), attack: str = "calibrate") -> pd.DataFrame:
    """One row per (series, steps, lr): the forget and the ``other`` (metric, split) as mean and 95% CI
    over seeds, and whether the point is on its series' Pareto front (:func:`pareto_front`).

    Reads the records of ``attack``: ``calibrate``, the probes of ``basin calibrate`` (with ``lr`` and
    ``steps``), or ``training``, the last evaluation of each ``basin unlearn`` run (a sweep over
    learning rates; ``lr`` comes from the run's config). References (original, retain-only) come out
    as rows of their own with ``lr`` NaN. Columns: series, role, steps, lr, x, x_half, y, y_half, n,
    pareto, and x_seeds / y_seeds (the per-seed values, paired by seed)."""
    data = df[df["attack"] == attack]
    if attack == "training" and len(data):   # each run's final evaluation
        data = data[data["step"] == data.groupby("run")["step"].transform("max")]
    if "steps" not in data.columns:
        data = data.assign(steps=np.nan)
    data = data.assign(steps=pd.to_numeric(data["steps"], errors="coerce"), series=data["label"])
    keys = ["series", "role", "steps", "lr"]
    rows = []
    for key, g in data.groupby(keys, dropna=False, sort=False):
        stats, seeds = {}, {}
        for name, (metric, split) in (("x", forget), ("y", other)):
            sub = g[(g["metric"] == metric) & (g["split"] == split)]
            seeds[name] = latest_step(sub).groupby("seed")["value"].mean()
            stats[name] = mean_ci(seeds[name])
        if stats["x"]["n"] == 0 or stats["y"]["n"] == 0:
            continue
        paired = pd.concat(seeds, axis=1).dropna()
        rows.append({**dict(zip(keys, key)), "x": stats["x"]["mean"], "x_half": stats["x"]["ci_half"],
                     "y": stats["y"]["mean"], "y_half": stats["y"]["ci_half"],
                     "n": min(stats["x"]["n"], stats["y"]["n"]),
                     "x_seeds": paired["x"].tolist(), "y_seeds": paired["y"].tolist()})
    cols = keys + ["x", "x_half", "y", "y_half", "n", "pareto", "x_seeds", "y_seeds"]
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows).sort_values(["series", "steps", "lr"], na_position="last").reset_index(drop=True)
    out["pareto"] = False
    for idx in out[out["role"] == "unlearned"].groupby("series").groups.values():
        out.loc[idx, "pareto"] = pareto_front(out.loc[idx, "x"], out.loc[idx, "y"])
    return out[cols]


def unlearning_frontier(df: pd.DataFrame, forget: tuple[str, str] = ("prob", "forget"),
                        others: Sequence[tuple[str, str]] = (("prob", "retain"), ("prob", "world_facts")),
                        attack: str = "calibrate") -> Figure:
    """The unlearning frontier: forget knowledge (x, less = more forgotten) against retain knowledge
    and utility (y, more = better), one panel per (metric, split) in ``others`` that the records hold.

    Each optimizer is one colour; each point one learning rate (and step count), the mean over seeds
    (large marker; each seed a small dot beside it, as 95% CIs from two or three seeds span the whole
    axis), joined in lr order. Filled markers
    are the series' Pareto front (no other of its points forgets more *and* keeps more), hollow ones
    are dominated; front points are labelled with their lr. The original model (black star) and the
    retain-only gold model (grey cross) mark the two ends, and the calibration target, when the
    records carry one in the plotted metric (``target_metric``), is a dotted vertical line. The x
    axis is logarithmic when the points span more than a factor of 100 (forgetting near the floor).
    Points come from :func:`frontier_points`.
    """
    with mpl.rc_context(STYLE):
        data = df[df["attack"] == attack]
        present = [(m, s) for m, s in others if ((data["metric"] == m) & (data["split"] == s)).any()]
        fig = _new_figure(4.6 * max(1, len(present)) + 1.0, 4.6)
        if data.empty or not present or not ((data["metric"] == forget[0]) & (data["split"] == forget[1])).any():
            return _no_data(fig, f"no {forget[0]} ({forget[1]}) records at several learning rates "
                            f"(attack {attack!r}): run basin calibrate, or a sweep over lr")
        axes = np.atleast_1d(fig.subplots(1, len(present), squeeze=False)[0])
        target = pd.Series([], dtype=float)   # drawn only when the records' target is in the plotted metric
        if {"target", "target_metric"} <= set(data.columns) and forget[1] == "forget":
            target = pd.to_numeric(data.loc[data["target_metric"] == forget[0], "target"], errors="coerce").dropna()
        for ax, other in zip(axes, present):
            pts = frontier_points(data, forget, other, attack)
            for name in _ordered_series(pts["series"]):
                sub = pts[pts["series"] == name]
                if name in REFERENCE_STYLE:
                    r = sub.iloc[0]
                    ax.plot([r["x"]], [r["y"]], linestyle="none", markersize=11, label=name,
                            marker="*" if name == "original" else "X", color=REFERENCE_STYLE[name]["color"])
                    continue
                style = series_style(name)
                several_steps = sub["steps"].nunique() > 1
                for steps, line in sub.groupby("steps", dropna=False):
                    label = f"{name} ({steps:g} steps)" if several_steps and np.isfinite(steps) else name
                    line = line.sort_values("lr")
                    ax.plot(line["x"], line["y"], color=style["color"], linewidth=1.0, alpha=0.6,
                            linestyle="-" if not several_steps else ["-", "--", ":", "-."][
                                sorted(sub["steps"].unique()).index(steps) % 4])
                    sx = [v for vs in line["x_seeds"] for v in vs]
                    sy = [v for vs in line["y_seeds"] for v in vs]
                    if line["n"].max() > 1:
                        ax.plot(sx, sy, linestyle="none", marker=".", markersize=4, color=style["color"], alpha=0.4)
                    for on, face in ((True, style["color"]), (False, "white")):
                        part = line[line["pareto"] == on]
                        if not part.empty:
                            ax.plot(part["x"], part["y"], linestyle="none", marker=style["marker"], markersize=6,
                                    color=style["color"], markerfacecolor=face,
                                    label=label if on else "_" + label)
                    for r in line[line["pareto"]].itertuples():
                        ax.annotate(f"{r.lr:.2g}", (r.x, r.y), textcoords="offset points", xytext=(4, 3),
                                    fontsize=7, color=style["color"])
            if not target.empty:
                ax.axvline(float(target.median()), color="#555555", linestyle=":", linewidth=1.2,
                           label="calibration target")
            xs = np.concatenate([pts["x"].to_numpy(float)] + [np.asarray(v, float) for v in pts["x_seeds"]])
            xs = xs[np.isfinite(xs)]
            if (xs > 0).all() and xs.max() / xs.min() > 100:   # near the floor: a log axis keeps points apart
                ax.set_xscale("log")
                edge = xs.max() * 1e-4                        # collapsed models: drawn at the edge, counted
                if xs.min() < edge:
                    ax.set_xlim(left=edge / 2)
                    below = int((pts["x"] < edge / 2).sum())
                    ax.text(0.01, 0.01, f"{below} point(s) below {edge / 2:.0e} off the axis", fontsize=7,
                            transform=ax.transAxes, color="#555555")
            ax.set_xlabel(short_label(*forget) + ": lower = more forgotten")
            ax.set_ylabel(short_label(*other) + ": higher = better")
            ax.set_title(SPLIT_LABELS.get(other[1], other[1]))
            ax.grid(alpha=0.3)
        _suptitle(fig, "The unlearning frontier: forgetting against what is kept, one point per learning rate "
                  "(mean over seeds, dots = single seeds; filled = Pareto front)")
        _legend(fig, axes)
        return fig
