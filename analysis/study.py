"""The study's tables, figures and landing page, from records (``basin study`` runs the models).

- :func:`load_arms`: one frame from groups of sources, each unlearned row labelled with its study
  arm (``hybrid-1:3`` and ``hybrid`` are both the ``hybrid`` optimizer, but different arms), whose
  recipe is the arm's lr, steps and name (its seeds may unlearn different fitted models);
  reference rows (original, gold) are kept from every source, so a cell whose first jobs scored
  the references elsewhere still has its ceiling and floor.
- :func:`regime_map` and :func:`plot_regime_map`: the quantization regime map, one cell per
  (lr, steps) of a single optimizer: how far the model forgot, the fraction of 4-bit codes that
  unlearning changed, whether the quantized original keeps the facts (the ceiling), and how much
  4-bit quantization brings back (Zhang et al. 2025, arXiv 2410.16454: knowledge returns when
  unlearning changed few codes).
- :func:`plot_claim_forest`: every claim judged under one attack, in every cell, as a forest plot
  (the difference and its 95% CI, coloured by the verdict), the first page's opening figures.
- :func:`write_index`: ``OUT/index.html``, the first page a reader sees: the forest plots, every
  claim's verdict in every cell, with its numbers, the test and n, then the figures, linking each
  cell's full report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.load import load_records
from analysis.names import learn_tiers, optimizer_tier
from analysis.report import CSS, esc, fmt_num, html_table, save_figure
from analysis.tables import latest_step, model_rows, recovery_per_seed
from analysis.verdicts import Claim
from unlearn.cache import write_text_atomic

QUANT_SETTINGS = ("rtn-4bit", "nf4")   # the map's 4-bit attacks (controls are separate settings)


# ----------------------------------------------------------------------------- loading

def load_arms(groups: Iterable[tuple[Sequence, dict]], shared: Sequence = ()) -> pd.DataFrame:
    """Records of every ``(sources, columns)`` group, the group's ``columns`` set on its rows
    (``arm`` also becomes the unlearned rows' ``optimizer`` and ``label``), plus the reference
    rows (role original / retain) of the ``shared`` sources."""
    frames = []
    for sources, columns in groups:
        sources = [s for s in sources if (Path(s) / "records.jsonl").exists()]
        if not sources:
            continue
        df = load_records(sources)
        for key, value in columns.items():
            df[key] = value
        if "arm" in columns:
            unl = df["role"] == "unlearned"
            learn_tiers([(columns["arm"], optimizer_tier(str(df.loc[unl, "optimizer"].iloc[0])))] if unl.any() else [])
            df.loc[unl, "optimizer"] = columns["arm"]
            df.loc[unl, "label"] = columns["arm"]
            # the arm is the comparison unit: its seeds unlearn different fitted models (a different
            # model path, so a different config hash) at one calibrated lr, steps and options
            df.loc[unl, "recipe"] = df.loc[unl, "recipe"].map(
                lambda r: re.sub(r"cfg=\S+", f"arm={columns['arm']}", r) if isinstance(r, str) and r else r)
        frames.append(df)
    shared = [s for s in shared if (Path(s) / "records.jsonl").exists()]
    if shared:
        refs = load_records(shared)
        frames.append(refs[refs["role"] != "unlearned"])
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    key = [c for c in ("model", "attack", "setting", "metric", "split", "seed", "role", "attack_seed", "step",
                       "label", "source") if c in df.columns]
    refs = df["role"] != "unlearned"   # a reference scored by two sources' audits counts once
    return pd.concat([df[~refs], df[refs].drop_duplicates(subset=[k for k in key if k != "source"])],
                     ignore_index=True)


# ----------------------------------------------------------------------------- the regime map

def regime_map(df: pd.DataFrame, metric: str = "prob", settings: Sequence[str] = QUANT_SETTINGS) -> pd.DataFrame:
    """One row per (lr, steps): seeds n; the clean forget and retain ``metric``; the fraction of
    4-bit codes changed (``code_change``, mean over ``settings``); the quantized original's and
    gold model's forget metric (``ceiling``, ``floor``) beside the clean ones; and under 4-bit,
    ``delta`` (quantized - clean forget metric) and ``recovery_gold`` (mean over seeds and
    ``settings``, with a 95% t interval over seeds)."""
    from scipy import stats  # noqa: PLC0415 (defer: scipy is slow to import and only the map needs it)

    base = latest_step(model_rows(df))
    rec = recovery_per_seed(df, metrics=[metric], splits=["forget"])
    rec = rec[(rec["attack"] == "quantize") & rec["setting"].isin(list(settings))]
    levels = {"original": reference_level(base, "original", metric),
              "ceiling": reference_level(base, "original", metric, attack="quantize", settings=settings),
              "gold": reference_level(base, "retain", metric),
              "floor": reference_level(base, "retain", metric, attack="quantize", settings=settings)}
    out = []
    unl = base[base["role"] == "unlearned"]
    for (lr, steps), cell in unl.groupby(["lr", "steps"]):
        clean = cell[(cell["attack"] == "none") & (cell["metric"] == metric)]
        codes = cell[(cell["metric"] == "code_change") & cell["setting"].isin(list(settings))]
        r = rec[rec["recipe"].isin(set(cell["recipe"]))] if "recipe" in rec.columns else rec.iloc[0:0]
        per_seed = r.groupby("seed")["recovery_gold"].mean().dropna()
        deltas = r.groupby("seed")["delta"].mean().dropna()
        n = int(per_seed.size)
        half = (float(stats.t.ppf(0.975, n - 1) * per_seed.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan)
        out.append({"lr": float(lr), "steps": int(steps), "n": n,
                    "forget": float(clean.loc[clean["split"] == "forget", "value"].mean()),
                    "retain": float(clean.loc[clean["split"] == "retain", "value"].mean()),
                    "code_change": float(codes["value"].mean()) if len(codes) else math.nan,
                    "delta": float(deltas.mean()) if deltas.size else math.nan,
                    "recovery_gold": float(per_seed.mean()) if n else math.nan,
                    "ci_low": float(per_seed.mean()) - half if n > 1 else math.nan,
                    "ci_high": float(per_seed.mean()) + half if n > 1 else math.nan,
                    **levels})
    return pd.DataFrame(out).sort_values(["steps", "lr"]).reset_index(drop=True) if out else pd.DataFrame()


def reference_level(base: pd.DataFrame, role: str, metric: str, split: str = "forget", attack: str = "none",
                    settings: Sequence[str] | None = None) -> float:
    """A reference model's (``role`` original or retain) mean ``metric`` on ``split`` under
    ``attack`` (``none``: clean), over ``settings`` of the attack if given; NaN where not scored.
    ``base``: one row per model and measurement (``latest_step(model_rows(df))``)."""
    rows = base[(base["role"] == role) & (base["metric"] == metric) & (base["split"] == split)
                & (base["attack"] == attack)]
    if settings is not None:
        rows = rows[rows["setting"].isin(list(settings))]
    return float(rows["value"].mean()) if len(rows) else math.nan


def clean_levels(df: pd.DataFrame, metric: str, split: str = "forget") -> pd.DataFrame:
    """Per study arm, the clean unlearned models' ``metric`` on ``split`` over the evaluation seeds:
    n, mean, min, max, and ``from_gold`` = (mean - gold) / (original - gold), the distance from
    the gold model in fractions of the original-gold gap (0 = at the gold model, 1 = not
    forgotten), the unit of the verdicts' gold-distance band. It shows whether a calibration
    made on other seeds carried over to the seeds the claims are judged on."""
    base = latest_step(model_rows(df))
    clean = base[(base["attack"] == "none") & (base["metric"] == metric) & (base["split"] == split)]
    ref = {role: reference_level(base, role, metric, split) for role in ("original", "retain")}
    gap = ref["original"] - ref["retain"]
    unl = clean[clean["role"] == "unlearned"]
    out = []
    for arm, rows in unl.groupby("optimizer"):   # load_arms puts the study arm here
        per_seed = rows.groupby("seed")["value"].mean()
        mean = float(per_seed.mean())
        out.append({"arm": arm, "n": int(per_seed.size), "mean": mean, "min": float(per_seed.min()),
                    "max": float(per_seed.max()),
                    "from_gold": (mean - ref["retain"]) / gap if gap and math.isfinite(gap) else math.nan})
    return pd.DataFrame(out, columns=["arm", "n", "mean", "min", "max", "from_gold"])


def grid_arm(optimizer: str, steps: int) -> str:
    """The map's arm label for ``optimizer`` run ``steps`` steps (one row of the grid)."""
    return f"{optimizer}@{steps}"


def grid_claims(claims: Iterable[Claim], optimizer: str, lrs: Sequence[float], steps: Sequence[int]) -> list[Claim]:
    """A map's claims, one per grid cell that can judge it, since runs at different settings are
    never pooled: a claim that picks two learning rates (``a_lr`` and ``b_lr``) once per steps
    value; any other claim about ``optimizer`` once per (lr, steps). They all go into one verdict
    table, so Holm's correction runs over every cell's test."""
    out = []
    for claim in claims:
        if optimizer not in claim.arms():
            out.append(claim)
            continue
        def rename(who, s):
            return grid_arm(who, s) if who == optimizer else who
        for s in steps:
            if claim.a_lr is not None and claim.b_lr is not None:
                out.append(dataclasses.replace(claim, name=f"{claim.name} [{s} steps]", text=f"{claim.text} "
                                               f"(runs of {s} steps)", a=rename(claim.a, s), b=rename(claim.b, s)))
                continue
            for lr in lrs:
                out.append(dataclasses.replace(
                    claim, name=f"{claim.name} [lr {lr:g}, {s} steps]", text=f"{claim.text} (lr {lr:g}, {s} steps)",
                    a=rename(claim.a, s), b=rename(claim.b, s), a_lr=lr if claim.a == optimizer else claim.a_lr,
                    b_lr=lr if claim.b == optimizer else claim.b_lr))
    return out


MAP_PANELS = (("forget", "clean forget answer prob."), ("code_change", "4-bit codes changed (fraction)"),
              ("delta", "forget prob.: 4-bit - clean"), ("recovery_gold", "recovery_gold under 4-bit"))


def plot_regime_map(table: pd.DataFrame, title: str = "", gold_distance: float = 0.15) -> Figure:
    """Four heatmaps over lr (columns) x steps (rows): :data:`MAP_PANELS`, each cell annotated.

    The scales are fixed so that noise does not look like an effect: probabilities and
    recovery_gold on [0, 1], code changes from 0, and the 4-bit change of the forget probability
    on a diverging scale of at least +-0.1 of the original-gold gap (white: nothing came back).
    Cells whose clean forget probability is more than ``gold_distance`` of that gap above the gold
    model's did not forget: their recovery_gold is marked, since it then measures what unlearning
    left, not what quantization brought back."""
    gap = float(table["original"].mean() - table["gold"].mean()) if len(table) else math.nan
    gap = gap if math.isfinite(gap) and gap > 0 else 1.0
    with mpl.rc_context({"font.size": 9}):
        width = max(12.0, 0.8 * len(MAP_PANELS) * (table["lr"].nunique() if len(table) else 1))
        fig = Figure(figsize=(width, 3.2 + 0.4 * max(1, table["steps"].nunique() if len(table) else 1)))
        axes = fig.subplots(1, len(MAP_PANELS))
        lrs = sorted(table["lr"].unique()) if len(table) else []
        steps = sorted(table["steps"].unique()) if len(table) else []
        grids = {}
        for column, _ in MAP_PANELS:
            grids[column] = np.full((len(steps), len(lrs)), np.nan)
            for _, row in table.iterrows():
                grids[column][steps.index(row["steps"]), lrs.index(row["lr"])] = row[column]
        forgot = grids["forget"] <= table["gold"].mean() + gold_distance * gap if len(table) else grids["forget"]
        for ax, (column, label) in zip(axes, MAP_PANELS):
            grid = grids[column]
            if column == "delta":
                half = max(float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0, 0.1 * gap)
                scale, text = {"cmap": "RdBu_r", "vmin": -half, "vmax": half}, "{:+.3f}"
            else:
                top = 1.0 if column != "code_change" else max(float(np.nanmax(grid)) if np.isfinite(grid).any() else 0, 1e-9)
                scale, text = {"cmap": "viridis", "vmin": 0.0, "vmax": top}, "{:.2f}"
            image = ax.imshow(grid, aspect="auto", origin="lower", **scale)
            for (i, j), v in np.ndenumerate(grid):
                if not np.isfinite(v):
                    continue
                note = "\nnot\nforgotten" if column == "recovery_gold" and not forgot[i, j] else ""
                dark = column != "delta" and v < 0.5 * (scale["vmin"] + scale["vmax"])
                ax.text(j, i, text.format(v) + note, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
            ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs], rotation=45)
            ax.set_yticks(range(len(steps)), [str(s) for s in steps])
            ax.set_xlabel("learning rate")
            ax.set_ylabel("steps")
            ax.set_title(label)
            fig.colorbar(image, ax=ax, shrink=0.8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the landing page

GAP_QUANTITIES = ("recovery_gold", "brought_back")   # both in fractions of the clean original-gold gap
VERDICT_COLOURS = {"reproduced": "#2a8a2a", "not reproduced": "#b22222", "inconclusive": "#8c8c8c"}
FOREST_ATTACKS = {"relearn": "relearning", "quantize": "4-bit quantization"}


def judged(versions: list[dict]) -> list[dict]:
    """Every verdict of every version, in order, with ``where``: the cell it was judged in
    (``v11: miniature / rmu / gold``), as the first page's table and forest plots name it."""
    return [{**r, "where": f"v{v['version']}: {r['regime']} / {r['objective']} / {r['target']}"}
            for v in versions for r in v.get("verdicts", [])]


def forest_rows(versions: list[dict], attack: str) -> pd.DataFrame:
    """The rows of :func:`plot_claim_forest`: every claim judged under ``attack`` on a quantity in
    fractions of the gap (:data:`GAP_QUANTITIES`) with a finite interval, one row per (claim, cell),
    in the order of ``versions``; ``where`` names the cell (version, regime, objective, target)."""
    rows = [r for r in judged(versions) if r.get("attack") == attack and r.get("quantity") in GAP_QUANTITIES
            and all(_finite(r.get(k)) for k in ("diff", "ci_low", "ci_high"))]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["claim", "where", "verdict", "diff", "ci_low", "ci_high"])


def plot_claim_forest(rows: pd.DataFrame, title: str = "") -> Figure:
    """A forest plot of claims across cells: per claim (a bold line), one line per cell where it was
    judged, A − B (or one arm's quantity less the claim's threshold) with its 95% CI, coloured by the
    verdict; 0 is where the claim's direction flips. Every quantity shown is in fractions of the
    clean original-gold gap, so the lines share one axis. The verdict also needs the conditions of
    a sound comparison and Holm's correction, so a grey interval may exclude 0."""
    claims = list(dict.fromkeys(rows["claim"]))
    labels, y = [], 0
    positions = {}
    for claim in claims:
        labels.append((y, claim, True))
        y += 1
        for i in rows.index[rows["claim"] == claim]:
            positions[i] = y
            labels.append((y, rows.at[i, "where"], False))
            y += 1
    with mpl.rc_context({"font.size": 8}):
        fig = Figure(figsize=(8.5, 1.0 + 0.15 * max(y, 1)), layout="constrained")
        ax = fig.subplots()
        ax.axvline(0.0, color="black", linewidth=0.8)
        for i, pos in positions.items():
            colour = VERDICT_COLOURS.get(str(rows.at[i, "verdict"]), "#8c8c8c")
            ax.plot([rows.at[i, "ci_low"], rows.at[i, "ci_high"]], [pos, pos], color=colour, linewidth=1.6)
            ax.plot(rows.at[i, "diff"], pos, "o", color=colour, markersize=3.5)
        ax.set_yticks([p for p, _, _ in labels], [text for _, text, _ in labels])
        for tick, (_, _, header) in zip(ax.get_yticklabels(), labels):
            tick.set_fontweight("bold" if header else "normal")
        ax.set_ylim(y - 0.5, -0.7)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", top=True, labeltop=True)   # the scale at the top too: the plot is tall
        ax.set_xlabel("A − B, or one arm less the claim's threshold (fraction of the clean original-gold gap)")
        handles = [Line2D([], [], color=c, marker="o", markersize=3.5, label=v)
                   for v, c in VERDICT_COLOURS.items()]
        fig.legend(handles=handles, loc="outside upper right", ncols=len(handles), fontsize=7, frameon=False)
        if title:
            fig.suptitle(title, x=0.02, ha="left")
    return fig


def write_forests(out: Path, versions: list[dict], dpi: int = 90) -> list[dict]:
    """``out/figures/claims-<attack>.{png,svg}`` per attack of :data:`FOREST_ATTACKS` with a judged
    claim; returns their entries for the first page (png, svg, caption)."""
    folder = out / "figures"
    entries = []
    for attack, words in FOREST_ATTACKS.items():
        rows = forest_rows(versions, attack)
        if rows.empty:   # nothing judged under it: no figure, and none left from an earlier page
            for ext in ("png", "svg"):
                (folder / f"claims-{attack}.{ext}").unlink(missing_ok=True)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        caption = (f"Every claim judged under {words}, in every cell: the difference and its 95% CI, "
                   "newest version first, coloured by the verdict")
        fig = plot_claim_forest(rows, f"Claims under {words}")
        png, svg = save_figure(fig, folder, f"claims-{attack}", dpi=dpi)
        entries.append({"png": f"figures/{png}", "svg": f"figures/{svg}", "href": f"figures/{svg}", "caption": caption})
    return entries


VERDICT_COLUMNS = ("regime", "objective", "target", "claim", "verdict", "diff", "ci_low", "ci_high", "p_value",
                   "p_holm", "test", "n_a", "n_b", "mean_a", "mean_b", "reason")


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)


def _int(v) -> int:
    return int(v) if isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) else 0


def verdict_summary(rows: pd.DataFrame) -> str:
    """HTML: one row per (cell, claim): verdict, A - B [95% CI], p (Holm), test, n, why."""
    if rows.empty:
        return "<p>No claim has been tested yet.</p>"
    out = ['<table class="data"><tr><th>cell</th><th>claim</th><th>verdict</th><th>A − B [95% CI]</th>'
           "<th>p (Holm)</th><th>test, n</th><th>why</th></tr>"]
    for _, r in rows.iterrows():
        css = "v-" + str(r["verdict"]).replace(" ", "-")
        ci = f"{fmt_num(r['diff'])} [{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]" if _finite(r["diff"]) else ""
        n = f"{_int(r['n_a'])} vs {_int(r['n_b'])}" if _int(r["n_b"]) else f"{_int(r['n_a'])}"
        test = r["test"] if isinstance(r["test"], str) and r["test"] else "no test (conditions)"
        p = f"{fmt_num(r['p_holm'])}" + (f" ({fmt_num(r['p_value'])} raw)" if _finite(r["p_value"]) else "")
        out.append(f"<tr><td>{esc(r['regime'])} / {esc(r['objective'])} / {esc(r['target'])}</td>"
                   f"<td title=\"{esc(r['text'])}\">{esc(r['claim'])}</td>"
                   f'<td><span class="verdict {css}">{esc(r["verdict"])}</span></td><td class="num">{ci}</td>'
                   f"<td>{p}</td><td>{esc(test)}, n = {n}</td><td>{esc(r['reason'])}</td></tr>")
    return "\n".join(out) + "</table>"


def verdict_matrix(versions: list[dict]) -> str:
    """HTML: the answer first, one row per claim and one column per judged cell (version, regime,
    objective, target), columns in the order of ``versions``: the verdict and A - B (or the failed
    condition, shortened)."""
    rows = judged(versions)
    if not rows:
        return "<p>No claim has been tested yet.</p>"
    cells = list(dict.fromkeys(r["where"] for r in rows))
    claims = list(dict.fromkeys(r["claim"] for r in rows))
    table = {(r["claim"], r["where"]): r for r in rows}
    head = "".join(f"<th>{esc(c)}</th>" for c in cells)
    body = []
    for claim in claims:
        tds = []
        for c in cells:
            r = table.get((claim, c))
            if r is None:
                tds.append("<td></td>")
                continue
            css = "v-" + str(r["verdict"]).replace(" ", "-")
            two_arms = isinstance(r.get("b"), str) and r.get("b") and r.get("b") != r.get("a")
            detail = ((f"{r['a']} − {r['b']}: " if two_arms else "")   # which way the difference points
                      + f"{fmt_num(r['diff'])} [{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]"
                      if _finite(r["diff"]) and _finite(r.get("ci_low")) and r["ci_low"] != r["ci_high"]
                      else _short_reason(str(r["reason"])))
            # beside a tested claim only: where unlearning left the model near the original, the
            # attack's own recovery divides by almost nothing and means nothing
            own = (f"<br><small>the attack's own: {fmt_num(r['recovery_a'])}</small>"
                   if r.get("quantity") == "recovery_gold" and not isinstance(r.get("b"), str)
                   and _finite(r.get("recovery_a")) and _finite(r["diff"]) else "")
            tds.append(f'<td title="{esc(r["reason"])}"><span class="verdict {css}">{esc(r["verdict"])}</span>'
                       f"<br><small>{esc(detail)}</small>{_holm_note(r)}{own}</td>")
        text = next(r["text"] for r in rows if r["claim"] == claim)
        body.append(f'<tr><td title="{esc(text)}">{esc(claim)}</td>{"".join(tds)}</tr>')
    return ("<p>Every claim in every cell judged so far: the verdict and A − B "
            "[95% CI] (the quantity, test and n are in the tables below; hover for the full reason). "
            "Inconclusive without an interval means a condition of a sound comparison failed. "
            "recovery_gold places the attacked model between the attacked gold model (0) and the attacked "
            "original (1), so it counts what unlearning left as well as what the attack brought back; a "
            "claim that an attack undoes one arm's unlearning tests brought_back instead: the attack's own "
            "rise in the unlearned model less what it gives the gold model, in fractions of the clean gap. "
            "Reports that tested such a claim on recovery_gold (before that rule) show \"the attack's "
            "own\" beside it: (attacked - clean) / (attacked original - clean), per seed.</p>"
            f'<div class="scroll"><table class="data sticky"><tr><th>claim</th>{head}</tr>{"".join(body)}</table></div>')


def _holm_note(r: dict) -> str:
    """Beside an inconclusive verdict whose own test passed (p below alpha: a difference whose
    interval excludes 0, or an equivalence shown) but not after the multiple-comparison
    correction: both p values, so the reader sees why an interval that looks decisive is not a
    verdict."""
    p, p_holm, alpha = r.get("p_value"), r.get("p_holm"), r.get("alpha", 0.05)
    if r.get("verdict") != "inconclusive" or not (_finite(p) and _finite(p_holm) and _finite(alpha)):
        return ""
    return (f"<br><small>p {p:.3g}; not after Holm's correction ({p_holm:.3g})</small>"
            if p < alpha <= p_holm else "")


def _short_reason(reason: str) -> str:
    """The failed condition of an inconclusive verdict, in a few words."""
    for key, short in (("forgotten to within", "forgetting differs"), ("from the gold model", "far from the gold model"),
                       ("of the gap from", "far from the target"), ("matched by design", "matched by design (stopped runs)"),
                       ("retain utility", "retain utility differs"), ("zero width", "no spread (every seed alike)"),
                       ("no records", "not run"), ("no usable records", "no records"),
                       ("unseen facts (attack seeds", "references on other unseen facts"), ("ceiling", "no ceiling")):
        if key in reason:
            return short
    return reason[:60]


def write_index(out: Path, versions: list[dict]) -> Path:
    """``out/index.html`` over every study version written under ``out`` (each ``version`` dict:
    its ``summary.json`` plus ``folder``): per version, the question, the verdict table, the
    calibration table, the figures and links; newest version first, in the answer's columns too
    (the latest evidence is the first a reader sees, not the last column of a wide table)."""
    newest = sorted(versions, key=_version_number, reverse=True)
    parts = ["<h2>The answer so far</h2>"]
    parts += [_figure_html(fig) for fig in write_forests(out, newest)]
    parts.append(verdict_matrix(newest))
    for v in newest:
        folder = v["folder"]
        rows = pd.DataFrame(v["verdicts"]) if v["verdicts"] else pd.DataFrame(columns=VERDICT_COLUMNS + ("text",))
        counts = rows["verdict"].value_counts().to_dict() if len(rows) else {}
        parts.append(f'<h2 id="v{v["version"]}">{esc(v["name"])}, version {v["version"]} '
                     f'<small>(<a href="{esc(folder)}/study.yaml">the study file</a>)</small></h2>')
        parts.append(f"<p>{esc(v['question'])}</p>")
        parts.append(f"<p class=\"meta\">{esc(v.get('status', ''))}</p>")
        parts.append("<p>" + ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())) + "</p>" if counts else "")
        parts.append("<h3>Verdicts</h3>" + verdict_summary(rows))
        if v.get("calibration"):
            cal = pd.DataFrame(v["calibration"])
            first = [c for c in ("regime", "objective", "target", "arm", "lr", "steps", "metric", "forget at calibration",
                                 "spread over calibration seeds", "forget, evaluation seeds",
                                 "from gold (gap fraction)", "forget, evaluation seeds (forget_unseen)",
                                 "from gold (gap fraction) (forget_unseen)", "matched") if c in cal.columns]
            parts.append("<h3>Matched forgetting (calibration)</h3><p>Each arm's learning rate was chosen on "
                         "calibration seeds and models kept apart from the evaluation seeds, to bring the "
                         "forget metric into the target band (the mean over the calibration seeds; <b>spread</b>: "
                         "max − min over them, empty for one seed); controls copy their arm's setting. <b>forget, "
                         "evaluation seeds</b> is the same metric on the clean unlearned models the claims are "
                         "judged on (mean, range, n); <b>from gold</b> is its distance from the gold model in "
                         "fractions of the original-gold gap (0 = at the gold model, 1 = not forgotten). Where "
                         "it is far from 0 the calibration did not carry over to the evaluation seeds. Where a "
                         "regime stops each run at the target (<b>steps taken</b>), the calibrated lr sets the "
                         "pace and each evaluation run stops at its first check at or below the target; the "
                         "<b>(forget_unseen)</b> columns, where it stops on the facts its relearning attack does "
                         "not train on (the split the relearning claims are judged on), show where it landed "
                         "there.</p>"
                         + html_table(cal[first + [c for c in cal.columns if c not in first]]))
        parts += [_figure_html(fig) for fig in v.get("figures", [])]
        if any(any(isinstance(x, float) and x > 0 for x in c.values()) for c in v.get("compute", [])):
            parts.append("<h3>Compute</h3><p>Minutes of wall time each stage's manifests recorded (one "
                         "process each; two ran side by side on 2 CPU cores).</p>" + html_table(pd.DataFrame(v["compute"])))
        if v.get("regime_map"):
            parts.append("<h3>Quantization regime map</h3>" + html_table(pd.DataFrame(v["regime_map"])))
        links = " · ".join(f'<a href="{esc(c["href"])}">{esc(c["name"])}</a>' for c in v.get("cells", []))
        if links:
            parts.append(f"<p>Full report of each cell (every table, figure and audit card): {links}</p>")
    page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>basin study</title>"
            f"<style>{CSS}</style></head><body><h1>basin study: does downgrading the optimizer make unlearning "
            "harder to undo?</h1>" + "\n".join(parts) + "</body></html>")
    path = out / "index.html"
    write_text_atomic(path, page)
    return path


def _figure_html(fig: dict) -> str:
    return (f'<figure><a href="{esc(fig["href"])}"><img src="{esc(fig["png"])}" alt="{esc(fig["caption"])}">'
            f'</a><figcaption>{esc(fig["caption"])} (<a href="{esc(fig["svg"])}">SVG</a>)</figcaption></figure>')


def read_summaries(out: Path) -> list[dict]:
    """Every ``out/v*/summary.json`` (one per study version written there), in version order
    (v2 before v11)."""
    found = []
    for path in out.glob("v*/summary.json"):
        data = json.loads(path.read_text())
        data["folder"] = path.parent.name
        found.append(data)
    return sorted(found, key=lambda d: (_version_number(d), d["folder"]))


def _version_number(summary: dict) -> float:
    try:
        return float(summary.get("version", summary["folder"][1:]))
    except (TypeError, ValueError):
        return math.inf
