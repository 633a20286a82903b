"""A self-contained report folder: ``index.html`` with every table and figure, readable offline.

Layout of ``DIR`` written by :func:`write_report`::

    index.html            verdicts, audit cards, figures (PNG, with SVG links), tables
    report.json           what was read (sources, record count) and what was written
    figures/*.png, *.svg  every figure, both formats
    tables/*.csv          every table (long form), plus records.csv: the tidy input

The folder is built in a temporary sibling and renamed into place only when complete, so an
interrupted report never leaves a half-written ``index.html``; a previous report in ``DIR`` is
replaced (a non-empty folder that is not a basin report is refused, never overwritten).
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from analysis import card as card_mod
from analysis import plots
from analysis.load import load_records, normalise_frame
from analysis.names import order_optimizers
from analysis.tables import (model_rows, pivot, recovery_per_seed, recovery_pivot, recovery_table,
                             summarize)
from analysis.verdicts import PAPER_CLAIMS, Bands, Claim, evaluate_claims, verdict_table
from unlearn.errors import BasinError

MARKER = "report.json"
FORGET_METRICS = ("prob", "exact_match", "margin", "rouge", "margin_win", "mc_accuracy",
                  "truth_ratio", "nll", "loss")
ROBUSTNESS_ATTACKS = ("relearn", "quantize", "noise", "prune", "precision")
MAX_METRICS_PER_ATTACK = 3


# ---------------------------------------------------------------------------------------------
# planning what to draw


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "x"


def plan_figures(df: pd.DataFrame, max_metrics: int = MAX_METRICS_PER_ATTACK
                 ) -> list[tuple[str, str, Callable[[], object]]]:
    """(file stem, caption, function returning a Figure) for every figure the records support
    (robustness curves for at most ``max_metrics`` forget metrics per attack)."""
    out = []
    forget_rows = df[df["split"].isin(plots.FORGET_SPLITS)]
    for attack in ROBUSTNESS_ATTACKS:
        present = set(forget_rows.loc[forget_rows["attack"] == attack, "metric"])
        metrics = [m for m in FORGET_METRICS if m in present][:max_metrics]
        for metric in metrics:
            out.append((f"robustness-{_slug(attack)}-{_slug(metric)}",
                        f"{plots.METRIC_LABELS.get(metric, metric)} under "
                        f"{plots.ATTACK_NAMES.get(attack, attack)}: one line per optimizer, mean and 95% CI "
                        "over seeds; dashed black = original model, dotted grey = retain-only model.",
                        lambda a=attack, m=metric: plots.robustness_curve(df, a, m)))
    if (df["attack"] == "interpolate").any():
        out.append(("basin-1d", "Loss along the straight line between two models (mode connectivity); "
                    "the bar marks the barrier: the largest rise above the straight chord.",
                    lambda: plots.basin_1d(df)))
    if ((df["attack"] == "interpolate") & df["metric"].isin(["barrier", "barrier_per_distance"])).any():
        out.append(("barriers", "Loss barrier of each interpolated pair, raw (left) and per unit of "
                    "weight-space distance ||θ_B − θ_A|| (right), mean and 95% CI over seeds.",
                    lambda: plots.barriers(df)))
    if (df["attack"] == "flatness").any():
        out.append(("flatness", "Flatness of the forget and retain losses around each model: "
                    "Hutchinson trace of the Hessian, its largest eigenvalue (power iteration) and "
                    "the mean / max loss rise under random weight perturbations of fixed relative norm.",
                    lambda: plots.flatness(df)))
    for model in sorted(df.loc[df["attack"] == "plane", "model"].unique())[:3]:
        out.append((f"basin-2d-{_slug(model)}", f"Loss over the plane through three models ({model}).",
                    lambda mo=model: plots.basin_2d(df, model=mo)))
    if ((df["attack"] == "calibrate") & (df["metric"] == "prob") & (df["split"] == "forget")).any():
        out.append(("frontier", "The unlearning frontier: forget-set answer probability against retain-set "
                    "probability and utility, one point per learning rate of basin calibrate's probes "
                    "(mean over the calibration seeds, small dots = single seeds); filled markers are each optimizer's Pareto front.",
                    lambda: plots.unlearning_frontier(df)))
    if (df["role"] == "unlearned").any():
        fmetric = next((m for m in FORGET_METRICS if ((df["metric"] == m) & (df["split"] == "forget")).any()), None)
        if fmetric:
            umetric, usplit = ("model_utility", None) if (df["metric"] == "model_utility").any() else (fmetric, "retain")
            out.append(("tiers", "Forgetting (top) and utility (bottom) per optimizer, ordered by tier, "
                        "clean and at each attack's worst-case setting.",
                        lambda: plots.tier_summary(df, fmetric, "forget", umetric, usplit)))
    return out


# ---------------------------------------------------------------------------------------------
# HTML pieces

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1200px; padding: 0 16px; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
table.data { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.84em; }
table.data th, table.data td { border: 1px solid #ccc; padding: 3px 6px; text-align: left;
       vertical-align: top; }
table.data th { background: #f3f3f3; }
.scroll { overflow-x: auto; max-width: 100%; }
table.sticky tr > :first-child { position: sticky; left: 0; z-index: 1; background: #fff; }
table.sticky tr > th:first-child { background: #f3f3f3; }
figure { margin: 16px 0 28px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; margin-top: 4px; }
.verdict { font-weight: bold; padding: 1px 6px; border-radius: 3px; white-space: nowrap; }
.v-reproduced { background: #d8f0d8; color: #145214; }
.v-not-reproduced { background: #f7d4d4; color: #7a1212; }
.v-inconclusive { background: #eeeeee; color: #444; }
section.card { padding: 0 16px 8px; }
details { border: 1px solid #ddd; border-radius: 6px; margin: 10px 0; }
details > summary { cursor: pointer; padding: 8px 16px; font-weight: bold; background: #f7f7f7; }
td.num, th.num { white-space: nowrap; }
.meta { color: #555; font-size: 0.9em; }
nav a { margin-right: 14px; }
.warn { background: #fff3cd; border: 1px solid #e0c36a; padding: 8px 12px; border-radius: 4px; }
"""


def esc(x) -> str:
    """``x`` as text safe inside HTML."""
    return html.escape(str(x))


def fmt_num(v, digits: int = 3) -> str:
    """A number for a table: ``digits`` decimals (significant digits below 1e-3), blank when missing."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"


def html_table(df: pd.DataFrame, raw_html_cols: Sequence[str] = (), nowrap_cols: Sequence[str] = ()) -> str:
    """A plain HTML table (cells escaped unless in ``raw_html_cols``; ``nowrap_cols`` never wrap)."""
    if df.empty:
        return "<p>(empty)</p>"
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, rec):
            text = v if col in raw_html_cols else esc(fmt_num(v) if isinstance(v, (float, np.floating)) else v)
            cls = ' class="num"' if col in nowrap_cols else ""
            cells.append(f"<td{cls}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _pivot_html(table: pd.DataFrame) -> str:
    """A wide (attack, setting) table as HTML: a two-row header (attack, then setting), the
    series names in the first column, cells that never wrap (the table scrolls sideways)."""
    names = list(table.index.names) if isinstance(table.index, pd.MultiIndex) else [table.index.name or "model"]
    index_rows = list(table.index) if isinstance(table.index, pd.MultiIndex) else [(i,) for i in table.index]
    spans: list[list] = []
    for attack, setting in table.columns:
        if spans and spans[-1][0] == attack:
            spans[-1][1] += 1
        else:
            spans.append([attack, 1])
    two_rows = any(s for _, s in table.columns)  # a second header row only when settings exist
    span = ' rowspan="2"' if two_rows else ""
    top = "".join(f'<th{span}>{esc(n if n != "label" else "model")}</th>' for n in names)
    top += "".join(f'<th colspan="{n}">{esc("clean" if a == "none" else plots.ATTACK_NAMES.get(a, a))}</th>'
                   for a, n in spans)
    second = ("<tr>" + "".join(f"<th>{esc(s if a != 'none' else '')}</th>" for a, s in table.columns)
              + "</tr>") if two_rows else ""
    body = []
    for idx, row in zip(index_rows, table.itertuples(index=False)):
        cells = "".join(f'<td class="num">{esc(i)}</td>' for i in idx)
        cells += "".join(f'<td class="num">{esc(v)}</td>' for v in row)
        body.append(f"<tr>{cells}</tr>")
    return (f'<div class="scroll"><table class="data"><thead><tr>{top}</tr>{second}</thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _verdicts_html(vt: pd.DataFrame) -> str:
    if vt.empty:
        return "<p>No claims were evaluated.</p>"
    vs = [b if isinstance(b, str) and b else f"{t:g}" for b, t in zip(vt["b"], vt["than"])]
    rows = pd.DataFrame({
        "claim": vt["text"],
        "verdict": [f'<span class="verdict v-{_slug(v)}">{esc(v)}</span>' for v in vt["verdict"]],
        "A vs B": [f"{a}{' (' + ra + ')' if ra else ''} vs {b}{' (' + rb + ')' if rb else ''}"
                   for a, ra, b, rb in zip(vt["a"], vt["recipe_a"], vs, vt["recipe_b"])],
        "compared": [f"{q} of {m} ({_text(s) or 'its only split'}) under "
                     f"{'no attack' if at == 'none' else at}" + (f" at {st}" if _text(st) else "")
                     for q, m, s, at, st in zip(vt["quantity"], vt["metric"], vt["split"], vt["attack"], vt["settings"])],
        "test (n)": [f"{t} ({na}" + (f"/{nb})" if isinstance(b, str) and b else ")") if t else f"({na}/{nb})"
                     for t, na, nb, b in zip(vt["test"], vt["n_a"], vt["n_b"], vt["b"])],
        "mean A / B": [_slashed(ma, mb) for ma, mb in zip(vt["mean_a"], vt["mean_b"])],
        "A − B [95% CI]": [f"{fmt_num(d)} [{fmt_num(lo)}, {fmt_num(hi)}]" if np.isfinite(d) else ""
                           for d, lo, hi in zip(vt["diff"], vt["ci_low"], vt["ci_high"])],
        "p (Holm)": [f"{fmt_num(p)} ({fmt_num(ph)})" if np.isfinite(p) else ""
                     for p, ph in zip(vt["p_value"], vt["p_holm"])],
        "recovery / recovery_gold / margin, A | B": [
            " | ".join(filter(None, (_slashed(ra, ga, ma), _slashed(rb, gb, mb))))
            for ra, rb, ga, gb, ma, mb in zip(vt["recovery_a"], vt["recovery_b"], vt["recovery_gold_a"],
                                              vt["recovery_gold_b"], vt["margin_a"], vt["margin_b"])],
        "why": vt["reason"],
        "conditions checked": [_conditions_html(c) for c in vt["conditions"]],
    })
    return html_table(rows, raw_html_cols=("verdict", "conditions checked"), nowrap_cols=("A − B [95% CI]",))


def _slashed(*values) -> str:
    """Numbers joined by " / ", a dash for a missing one; blank when all are missing."""
    shown = [fmt_num(v) for v in values]
    return " / ".join(v or "–" for v in shown) if any(shown) else ""


def _conditions_html(text) -> str:
    """The conditions of a sound comparison (``ok: ...; FAILED: ...``), folded under a count."""
    items = [c for c in re.split(r"; (?=(?:ok|FAILED):)", _text(text)) if c]
    if not items:
        return ""
    failed = sum(c.startswith("FAILED") for c in items)
    head = f"{failed} of {len(items)} failed" if failed else f"all {len(items)} met"
    lines = "".join(f"<li>{'<b>' + esc(c) + '</b>' if c.startswith('FAILED') else esc(c)}</li>" for c in items)
    return f"<details><summary>{head}</summary><ul>{lines}</ul></details>"


def _text(v) -> str:
    """A cell's text; empty for None / NaN."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    return str(v)


# ---------------------------------------------------------------------------------------------
# writing


def save_figure(fig, folder: Path, stem: str, formats: Sequence[str] = ("png", "svg"), dpi: int = 110) -> list[str]:
    """Write ``fig`` as ``folder/stem.<fmt>`` per format; returns the file names. SVG text stays
    text (selectable, and a quarter of the size of glyph outlines) and its ids and metadata are
    fixed, so the same figure gives the same bytes; a PNG is stored with a 256-colour palette
    (about a third of the size; line plots and their light bands look the same)."""
    import matplotlib as mpl
    from PIL import Image

    names = []
    # an SVG names the first sans-serif font only (and the generic family), not the whole fallback list
    first_font = mpl.rcParams["font.sans-serif"][:1]
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": "basin", "font.sans-serif": first_font}):
        for fmt in formats:
            name = f"{stem}.{fmt}"
            if fmt == "png":
                buffer = io.BytesIO()
                fig.savefig(buffer, format="png", dpi=dpi)
                image = Image.open(buffer).convert("RGB")
                image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                    folder / name, format="PNG", optimize=True)
            else:
                fig.savefig(folder / name, format=fmt, dpi=dpi,
                            metadata={"Date": None} if fmt == "svg" else None)
            names.append(name)
    return names


def _write_csv(df: pd.DataFrame, folder: Path, name: str, files: list[str], digits: int = 6) -> str:
    """``name`` ending in ``.gz``: gzip, with no timestamp (the same table gives the same bytes).
    Numbers keep ``digits`` significant digits (the records keep 9: every float32 exactly)."""
    df.to_csv(folder / name, index=False, float_format=f"%.{digits}g",
              compression={"method": "gzip", "mtime": 0} if name.endswith(".gz") else None)
    files.append(f"tables/{name}")
    return f"tables/{name}"


def _card_selections(df: pd.DataFrame) -> list[dict]:
    unl = model_rows(df)
    unl = unl[unl["role"] == "unlearned"]
    objectives = sorted(set(unl["objective"]))
    sels = []
    for obj in objectives:
        for opt in order_optimizers(set(unl.loc[unl["objective"] == obj, "optimizer"])):
            recipes = sorted(set(unl.loc[(unl["objective"] == obj) & (unl["optimizer"] == opt), "recipe"]))
            for recipe in recipes:  # runs at different settings get a card each
                sel = {"optimizer": opt or None, "objective": obj or None,
                       "recipe": recipe if len(recipes) > 1 else None}
                name = " / ".join(x for x in (opt, obj, recipe if len(recipes) > 1 else "") if x) or "unlearned model"
                sels.append({"name": name, **sel})
    return sels


def _overview(df: pd.DataFrame) -> list[str]:
    unl = model_rows(df)
    unl = unl[unl["role"] == "unlearned"]
    return [f"{len(df)} records from {len(set(df['source']))} source(s)",
            f"optimizers: {', '.join(order_optimizers(set(unl['optimizer']) - {''})) or 'none recorded'}",
            f"objectives: {', '.join(sorted(set(unl['objective']) - {''})) or 'none recorded'}",
            f"attacks: {', '.join(sorted(set(df['attack'])))}",
            "seeds per optimizer: " + (", ".join(f"{k} {v}" for k, v in
                                                 unl.groupby('label')['seed'].nunique().items()) or "n/a"),
            "references: " + (", ".join(r for r in ("original", "retain") if (df["role"] == r).any())
                              or "none (recovery needs the original and retain-only models)")]


def _verdicts_section(verdicts, table: Callable[[pd.DataFrame, str], str]) -> str:
    vt = verdict_table(verdicts)
    link = table(vt, "verdicts.csv")
    return ("<p>Each claim is fixed in advance (optimizers and their recipes, attack and the settings "
            "pooled, metric, split, quantity). A comparison under an attack first checks its conditions "
            "(both arms forgot alike and near the gold model, the attack leaves knowledge in the original, "
            "utility alike); a failed one makes the verdict inconclusive. The test is the paired t on "
            "per-seed differences where seeds pair the runs, else Welch's t (TOST for equivalence claims), "
            "with p Holm-corrected across this report's claims: significant on the claimed side = "
            "reproduced, on the other = not reproduced, otherwise inconclusive. An exact permutation test "
            "is given beside (in the CSV); its smallest attainable p is 1/2^n with n paired seeds (0.125 at "
            "3, 0.031 at 5) and 1/C(n_a + n_b, n_a) unpaired (0.05 at 3 + 3, 0.004 at 5 + 5). "
            f'<a href="{link}">CSV</a></p>' + _verdicts_html(vt))


def _figures_section(df: pd.DataFrame, folder: Path, formats, dpi: int, max_metrics: int, files: list[str]) -> str:
    out = []
    for stem, caption, make in plan_figures(df, max_metrics):
        names = save_figure(make(), folder / "figures", stem, formats, dpi)
        files += [f"figures/{n}" for n in names]
        img = next((n for n in names if n.endswith(".png")), names[0])
        others = " · ".join(f'<a href="figures/{esc(n)}">{esc(n.rsplit(".", 1)[1].upper())}</a>' for n in names)
        out.append(f'<figure><img src="figures/{esc(img)}" alt="{esc(caption)}">'
                   f"<figcaption>{esc(caption)} {others}</figcaption></figure>")
    return "\n".join(out) or "<p>No figure: the records hold no attack curves.</p>"


def _only(metrics: Sequence[str] | None) -> str:
    """What a derived table leaves out when it covers ``metrics`` only (a link's suffix)."""
    return "" if metrics is None else f" of {', '.join(metrics)}; other metrics: the records"


def _recovery_section(df: pd.DataFrame, table: Callable[[pd.DataFrame, str], str], big: str,
                      inline: bool = True, metrics: Sequence[str] | None = None) -> str:
    """Recovery pivots per forget metric and split (``inline=False``: the first metric's only; the
    others are in the CSV); the per-seed table covers ``metrics`` (None: every forget metric)."""
    rec = recovery_table(df, splits=None)
    rec = rec[rec["metric"].isin(FORGET_METRICS) & rec["split"].str.startswith("forget")] if not rec.empty else rec
    link = table(rec, "recovery" + big)
    per_seed = [m for m in FORGET_METRICS if metrics is None or m in metrics]   # as ``rec``
    link_seed = table(recovery_per_seed(df, metrics=per_seed), "recovery_per_seed" + big)
    body = ["<p><b>recovery</b> = (attacked − clean) / (attacked original − clean), per seed, then mean "
            "[95% CI]: 0 = nothing came back, 1 = as much as the original keeps under the same attack; "
            "undefined for a seed whose attacked original knows less than a tenth of the clean "
            "original-gold gap more than its clean model (too little left to recover for a ratio). "
            "<b>vs gold</b> = (attacked − attacked retain-only) / (attacked original − attacked "
            "retain-only): at or below 0 = no more than a model that never saw the forget data. "
            f'<a href="{link}">All numbers (CSV)</a> · '
            f'<a href="{link_seed}">per seed (CSV{esc(_only(metrics))})</a></p>']
    if rec.empty:
        return "\n".join(body + ["<p>No attack on an unlearned model with a clean counterpart in the records.</p>"])
    pairs = _metric_splits(rec)
    if not inline:
        shown = [p for p in pairs if p[0] == pairs[0][0]]
        if len(shown) < len(pairs):
            others = sorted({m for m, _ in pairs} - {pairs[0][0]})
            body.append(f"<p>Below: {esc(plots.metric_label(pairs[0][0], ''))}. The same for "
                        f'{esc(", ".join(others))}: <a href="{link}">the CSV</a>.</p>')
        pairs = shown
    for metric, split in pairs:
        for column, what in (("recovery", "recovery"), ("recovery_gold", "vs gold")):
            pivoted = recovery_pivot(rec, metric, split, column=column)
            if not pivoted.empty:
                body.append(f"<h3>{esc(what)}: {esc(plots.metric_label(metric, split))}</h3>" + _pivot_html(pivoted))
    notes = sorted({n for cell in rec["note"] for n in str(cell).split("; ") if n})
    if notes:
        body.append("<p>Caveats:</p><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(body)


def _cards_section(df: pd.DataFrame) -> str:
    """One audit card per optimizer (and objective), folded so the page stays scannable."""
    cards = []
    for i, sel in enumerate(_card_selections(df)):
        name = sel.pop("name")
        body = card_mod.audit_card(df, fmt="html", name=name, **sel)
        cards.append(f"<details{' open' if i == 0 else ''}><summary>{esc(name)}</summary>{body}</details>")
    return ("<p>One card per optimizer (click a name to unfold it).</p>" + "\n".join(cards)) if cards else ""


def _tables_section(df: pd.DataFrame, table: Callable[[pd.DataFrame, str], str], big: str,
                    inline: bool = True, metrics: Sequence[str] | None = None) -> str:
    link = table(summarize(df if metrics is None else df[df["metric"].isin(metrics)]), "summary" + big)
    blocks = [f'<p>Mean ± 95% CI half-width over seeds per model, attack and setting. '
              f'<a href="{link}">All numbers with n, sd and CI bounds (CSV{esc(_only(metrics))})</a></p>']
    single, listed = model_rows(df), []
    for (metric, split) in _metric_splits(single):
        pivoted = pivot(single, metric, split)
        if pivoted.empty:
            continue
        flat = pivoted.copy()
        flat.columns = [f"{a}:{s}" for a, s in flat.columns]
        plink = table(flat.reset_index().rename(columns={"label": "model"}),
                      f"pivot-{_slug(metric)}-{_slug(split)}.csv")
        n = pivoted.attrs.get("n")
        seeds = f"{n} seed{'s' if n != 1 else ''} per cell" if n else "seeds per cell as shown"
        label = esc(plots.metric_label(metric, split))
        if inline:
            blocks.append(f"<h3>{label} <small>({esc(seeds)}; "
                          f'<a href="{plink}">CSV</a>)</small></h3>' + _pivot_html(pivoted))
        else:
            listed.append(f'<li><a href="{plink}">{label}</a> <small>({esc(seeds)})</small></li>')
    if listed:
        blocks.append("<p>One table per metric and split, model by attack setting (CSV):</p><ul>"
                      + "".join(listed) + "</ul>")
    return "\n".join(blocks)


def build_report(df: pd.DataFrame, folder: Path, *, claims: Iterable[Claim] | None = None,
                 title: str = "basin report", formats: Sequence[str] = ("png", "svg"), dpi: int = 110,
                 sources: Sequence[str] = (), bands: Bands = Bands(), compress_records: bool = False,
                 max_metrics: int = MAX_METRICS_PER_ATTACK, inline_tables: bool = True,
                 table_metrics: Sequence[str] | None = None) -> dict:
    """Write the report's files into ``folder`` (which must exist); returns its metadata.
    :func:`write_report` calls this on a temporary folder and renames it into place."""
    (folder / "figures").mkdir()
    (folder / "tables").mkdir()
    files: list[str] = []
    big = ".csv.gz" if compress_records else ".csv"   # the long tables, gzipped on request

    def table(frame: pd.DataFrame, name: str, digits: int = 6) -> str:
        return _write_csv(frame, folder / "tables", name, files, digits)

    overview = _overview(df) + [f'<a href="{table(df, "records" + big, 9)}">the records this report was built '
                                "from (CSV)</a>"]
    verdicts = evaluate_claims(df, list(PAPER_CLAIMS if claims is None else claims), bands)
    recovery = _recovery_section(df, table, big, inline_tables, table_metrics)
    sections = [("verdicts", "Verdicts on the paper's claims", _verdicts_section(verdicts, table)),
                ("figures", "Figures", _figures_section(df, folder, formats, dpi, max_metrics, files)),
                ("recovery", "Recovery of forgotten knowledge", recovery),
                ("cards", "Audit cards", _cards_section(df)),
                ("tables", "Tables", _tables_section(df, table, big, inline_tables, table_metrics))]
    sections = [s for s in sections if s[2]]
    nav = [(anchor, heading) for anchor, heading, _ in sections]
    parts = [f'<h2 id="{anchor}">{esc(heading)}</h2>\n{body}' for anchor, heading, body in sections]
    meta = {"title": title, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "sources": list(sources), "records": int(len(df)), "files": sorted(files) + ["index.html"],
            "verdicts": {v.claim.name: v.verdict for v in verdicts}}
    if is_synthetic(df):
        parts.insert(0, '<p class="warn">These records are marked synthetic: made-up numbers for '
                     "trying the pipeline, not results.</p>")
    page = _page(title, overview, nav, parts, meta["created"])
    (folder / "index.html").write_text(page, encoding="utf-8")
    (folder / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def is_synthetic(df: pd.DataFrame) -> bool:
    """True when any record carries ``synthetic: true``."""
    if "synthetic" not in df.columns:
        return False
    return bool(df["synthetic"].astype(str).str.lower().isin(["true", "1", "1.0"]).any())


def _metric_splits(df: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = df[["metric", "split"]].drop_duplicates()
    order = {m: i for i, m in enumerate(FORGET_METRICS + ("model_utility", "forget_quality"))}
    split_order = {s: i for i, s in enumerate(("forget", "forget_unseen", "retain", "holdout", "world_facts"))}
    return sorted(map(tuple, pairs.itertuples(index=False)),
                  key=lambda p: (order.get(p[0], 99), p[0], split_order.get(p[1], 99), p[1]))


def _page(title: str, overview: list[str], nav: list[tuple[str, str]], parts: list[str], created: str) -> str:
    links = "".join(f'<a href="#{a}">{esc(h)}</a>' for a, h in nav)
    items = "".join(f"<li>{o if o.startswith('<a ') else esc(o)}</li>" for o in overview)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{esc(title)}</h1>\n"
            f'<p class="meta">Generated {esc(created)} from result records only.</p>\n'
            f"<ul>{items}</ul>\n<nav>{links}</nav>\n" + "\n".join(parts) + "\n</body></html>\n")


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BasinError(f"{out} is a file; choose a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise BasinError(f"{out} is a non-empty folder that is not a basin report; choose a new or "
                         "empty folder (a previous report there would be replaced)")


def write_report(data, out_dir: str | os.PathLike, *, claims: Iterable[Claim] | None = None,
                 title: str = "basin report", formats: Sequence[str] = ("png", "svg"),
                 dpi: int = 110, bands: Bands = Bands(), compress_records: bool = False,
                 max_metrics: int = MAX_METRICS_PER_ATTACK, inline_tables: bool = True,
                 table_metrics: Sequence[str] | None = None) -> Path:
    """Build the report for ``data`` (a record frame, or sources for
    :func:`analysis.load.load_records`) into ``out_dir`` atomically; returns ``out_dir/index.html``.

    ``claims`` defaults to :data:`analysis.verdicts.PAPER_CLAIMS`, judged under the conditions
    ``bands``; ``compress_records`` writes the long tables (records, recovery, per-seed recovery,
    summary) gzipped (``tables/records.csv.gz``, ...); ``inline_tables=False`` lists the per-metric
    tables as links to their CSV files instead of printing them on the page, and prints the
    recovery of the first forget metric only; ``table_metrics`` limits the two tables derived per
    seed and group (per-seed recovery, summary) to those metrics (the records keep every metric, so
    ``analysis.tables.recovery_per_seed`` / ``summarize`` on them give the rest; a committed report
    stays small). The report is written into a
    temporary sibling folder, then renamed over ``out_dir`` (an older report there is moved aside
    and deleted only after the new one is in place).
    """
    out = Path(out_dir)
    _check_target(out)
    if isinstance(data, pd.DataFrame):
        df, sources = normalise_frame(data), sorted(set(data.get("source", pd.Series(dtype=str)).astype(str)))
    else:
        df = load_records(data)
        sources = [str(s) for s in (data if isinstance(data, (list, tuple)) else [data])
                   if isinstance(s, (str, os.PathLike))]
    if df.empty:
        raise BasinError("no records to report on; the run folders' records.jsonl files are empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        build_report(df, tmp, claims=claims, title=title, formats=formats, dpi=dpi, sources=sources, bands=bands,
                     compress_records=compress_records, max_metrics=max_metrics, inline_tables=inline_tables,
                     table_metrics=table_metrics)
        os.chmod(tmp, 0o755)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".old-{out.name}-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
