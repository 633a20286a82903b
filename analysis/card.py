"""An audit card for one unlearned model (or one recipe over its seeds), in plain words.

The card states, with 95% CIs over seeds: how much the model forgot (the forget metric beside the
original and the retain-only gold model), the utility it kept, its forget quality, and for every
attack the worst case found (the setting that brought back the most knowledge, by recovery as
defined in :func:`analysis.tables.recovery_per_seed`), then what a reviewer should do about it.
:func:`audit_card` renders it as Markdown or as an HTML fragment.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.names import optimizer_tier
from analysis.plots import ATTACK_NAMES, METRIC_LABELS, SPLIT_LABELS
from analysis.tables import (format_ci, join_notes, knowledge_sign, lacks_records, latest_step, mean_ci,
                             model_rows, per_seed, recovery_table)
from unlearn.records import is_control

# what an attacker needs to do, per attack, in words
ATTACK_ACCESS = {
    "relearn": "fine-tune it on a few of the forgotten examples",
    "quantize": "quantize its weights",
    "noise": "add noise to its weights",
    "prune": "prune its weights",
    "precision": "change its numeric precision",
}
MODEL_ATTACKS = ("relearn", "quantize", "noise", "prune", "precision")  # attacks on one model
SEVERE, PARTIAL = 0.5, 0.1  # recovery thresholds for "most" and "part" of the knowledge back
LOW_RETAIN_PROB = 0.5       # a model scored in its own format answers its retain set better than this
MEANINGFUL_GAP = 0.05       # the original must beat the retain-only model on the forget set by this


def select_model(df: pd.DataFrame, *, model: str | None = None, optimizer: str | None = None,
                 objective: str | None = None, run: str | None = None, recipe: str | None = None) -> pd.DataFrame:
    """The unlearned rows matching every given filter, plus all reference rows (original, retain)."""
    mask = df["role"] == "unlearned"
    for col, want in (("model", model), ("optimizer", optimizer), ("objective", objective), ("run", run),
                      ("recipe", recipe)):
        if want is not None:
            mask &= df[col] == want
    return df[mask | (df["role"] != "unlearned")]


def _stats(df: pd.DataFrame, role: str, attack: str, metric: str, split: str | None) -> dict:
    sub = df[(df["role"] == role) & (df["attack"] == attack) & (df["metric"] == metric)]
    if split is not None:
        sub = sub[sub["split"] == split]
    if sub.empty:
        return mean_ci([])
    return mean_ci(per_seed(sub, ["setting"]).groupby("seed")["value"].mean())


def _fmt(st: dict, digits: int = 3) -> str:
    return format_ci(st["mean"], st["ci_half"], st["n"], digits) or "not measured"


def _val(v: float) -> str:
    return "not measured" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.0f}%"


def _recovery_reading(row) -> str:
    rec, lo, hi, n = row["recovery"], row["recovery_ci_low"], row["recovery_ci_high"], row["recovery_n"]
    if not np.isfinite(rec):
        return f"recovery undefined ({row['note'] or 'references missing'})"
    ci = (f" (95% CI {_pct(lo)} to {_pct(hi)}, {n} seeds)" if np.isfinite(lo)
          else " (1 seed: no CI)")
    if rec >= SEVERE:
        text = f"most of the forgotten knowledge came back: {_pct(rec)} of the gap to the attacked original{ci}"
    elif rec >= PARTIAL:
        text = f"part of the forgotten knowledge came back: {_pct(rec)} of the gap to the attacked original{ci}"
    else:
        text = f"little or no forgotten knowledge came back: {_pct(rec)}{ci}"
    if np.isfinite(lo) and lo <= 0 <= hi:
        text += "; not distinguishable from no recovery"
    gold = row["recovery_gold"]
    if np.isfinite(gold) and gold <= 0:
        text += "; no more than the retain-only model shows under the same attack"
    return text


def worst_cases(df: pd.DataFrame, metric: str, splits: Sequence[str]) -> pd.DataFrame:
    """Per attack and split, the setting with the highest mean recovery (ties: the first); where
    recovery is undefined everywhere, the setting with the most knowledge by the raw metric.
    Controls (``-snapback`` settings, :func:`unlearn.records.is_control`) are never a worst case."""
    rec = recovery_table(df, metrics=[metric], splits=list(splits))
    if rec.empty:
        return rec
    rec = rec[~rec["setting"].map(is_control)]
    rows = []
    sign = knowledge_sign(metric) or 1
    order = {a: i for i, a in enumerate(MODEL_ATTACKS)}
    rec = rec[rec["attack"].isin(MODEL_ATTACKS)]
    rec = rec.assign(_o=rec["attack"].map(order)).sort_values("_o", kind="stable")
    for (attack, split), g in rec.groupby(["attack", "split"], sort=False):
        if g["recovery"].notna().any():
            best = g.loc[g["recovery"].idxmax()]
        else:
            best = g.loc[(sign * g["u_attack"]).idxmax()]
        rows.append(best)
    return pd.DataFrame(rows).reset_index(drop=True)


def card_blocks(df: pd.DataFrame, *, forget_metric: str = "prob",
                forget_splits: Sequence[str] = ("forget", "forget_unseen"),
                utility_metric: str = "model_utility", name: str | None = None, **select) -> list:
    """The card's content as blocks: ("h", level, text), ("p", text), ("table", header, rows),
    ("ul", items). ``select`` takes :func:`select_model`'s filters."""
    data = latest_step(model_rows(select_model(df, **select)))
    unl = data[data["role"] == "unlearned"]
    name = name or ", ".join(f"{k}={v}" for k, v in select.items() if v is not None) or "all unlearned runs"
    blocks: list = [("h", 2, f"Audit card: {name}")]
    if unl.empty:
        return blocks + [("p", "No records of an unlearned model match this selection.")]
    optimizers = sorted(set(unl["optimizer"]) - {""})
    objectives = sorted(set(unl["objective"]) - {""})
    seeds = sorted(set(unl["seed"]))
    facts = [f"objective: {', '.join(objectives) or 'not recorded'}",
             f"optimizer: {', '.join(f'{o} ({optimizer_tier(o)})' for o in optimizers) or 'not recorded'}",
             f"seeds: {len(seeds)} ({', '.join(map(str, seeds))})",
             f"runs: {', '.join(sorted(set(unl['run'])))}"]
    blocks.append(("p", "; ".join(facts) + "."))
    setup, warnings = _setup(data, forget_metric)
    blocks += [("h", 3, "Setup"), ("ul", warnings + setup)]

    # clean model
    fsplit = forget_splits[0]
    f = {r: _stats(data, r, "none", forget_metric, fsplit) for r in ("unlearned", "original", "retain")}
    u = {r: _stats(data, r, "none", utility_metric, None) for r in ("unlearned", "original", "retain")}
    fq = _stats(data, "unlearned", "none", "forget_quality", None)
    rows = [[f"forget efficacy: {METRIC_LABELS.get(forget_metric, forget_metric)}, {SPLIT_LABELS.get(fsplit, fsplit)}",
             _fmt(f["unlearned"]), _fmt(f["original"]), _fmt(f["retain"]), _forget_reading(f, forget_metric)],
            [f"utility: {METRIC_LABELS.get(utility_metric, utility_metric)}", _fmt(u["unlearned"]),
             _fmt(u["original"]), _fmt(u["retain"]), _utility_reading(u)],
            ["forget quality (KS p-value vs the retain-only model)", _fmt(fq, 3), "", "", _fq_reading(fq)]]
    blocks += [("h", 3, "Without attack"),
               ("table", ["quantity", "this model", "original", "retain-only (gold)", "reading"], rows)]

    # attacks
    worst = worst_cases(data, forget_metric, forget_splits)
    actions = list(warnings)
    blocks.append(("h", 3, "Worst case under each attack"))
    if worst.empty:
        blocks.append(("p", "No attack records for this model: its robustness is untested."))
        actions.append("Audit this model (relearning and quantization at least) before trusting it.")
    else:
        arows = []
        for _, r in worst.iterrows():
            arows.append([ATTACK_NAMES.get(r["attack"], r["attack"]), SPLIT_LABELS.get(r["split"], r["split"]),
                          r["setting"], f"{_val(r['u_clean'])} → {_val(r['u_attack'])}",
                          f"{_pct(r['recovery'])} / {_pct(r['recovery_gold'])}", _recovery_reading(r)])
        blocks.append(("table", ["attack", "scored on", "worst setting", f"{forget_metric}: clean → attacked",
                                 "recovery / vs gold", "reading"], arows))
        blocks.append(("p", "Recovery = (attacked - clean) / (attacked original - clean): 0% = nothing "
                       "came back, 100% = as much as the original keeps under the same attack. "
                       "'vs gold' places the attacked model between the attacked retain-only model "
                       "(0%) and the attacked original (100%)."))
        actions += _actions(worst)
    if len(seeds) < 2:
        actions.append("Only one seed: no confidence intervals. Rerun with 3 or more seeds before "
                       "relying on any number here.")
    notes = sorted(set(n for n in (worst["note"] if not worst.empty else []) if n))
    blocks.append(("h", 3, "What to do"))
    blocks.append(("ul", actions or ["Nothing flagged at the settings tested."]))
    if notes:
        blocks += [("h", 3, "Caveats"), ("ul", notes)]
    return blocks


def _column_values(data: pd.DataFrame, column: str, role: str | None = None) -> list[str]:
    if column not in data:
        return []
    sub = data if role is None else data[data["role"] == role]
    return sorted({str(v) for v in sub[column].dropna() if str(v)})


def _setup(data: pd.DataFrame, metric: str) -> tuple[list[str], list[str]]:
    """The card's setup lines (prompt format, references, whether the ceiling and floor mean
    anything) and its warnings (a chat template the format leaves unused, with a low retain score)."""
    lines, warnings = [], []
    formats = _column_values(data, "prompt_format")
    lines.append(f"prompt format: {', '.join(formats)}" if formats else
                 "prompt format: not recorded (records written before basin recorded it were scored in plain)")
    refs = {role: _column_values(data, "reference", role) or
            (["given"] if (data["role"] == role).any() else []) for role in ("original", "retain")}
    lines.append("references: " + "; ".join(
        f"{label} = {', '.join(refs[role]) if refs[role] else 'none given'}"
        for role, label in (("original", "original (ceiling)"), ("retain", "retain-only (floor)"))))
    o = _stats(data, "original", "none", metric, "forget")["mean"]
    r = _stats(data, "retain", "none", metric, "forget")["mean"]
    if not refs["original"] or not refs["retain"]:
        lines.append("ceiling and floor: incomplete; without both references recovery and 'vs gold' are "
                     "undefined or one-sided, so attack results are inconclusive")
    elif np.isfinite(o) and np.isfinite(r) and (knowledge_sign(metric) or 1) * (o - r) >= MEANINGFUL_GAP:
        lines.append(f"ceiling and floor: meaningful (clean {metric} on the forget set: original {o:.3f}, "
                     f"retain-only {r:.3f}; the original knows what the retain-only model does not)")
    elif np.isfinite(o) and np.isfinite(r):
        lines.append(f"ceiling and floor: NOT meaningful (clean {metric} on the forget set: original {o:.3f}, "
                     f"retain-only {r:.3f}, a gap under {MEANINGFUL_GAP}): recovery is a ratio of a tiny gap; "
                     "read every attack result as inconclusive")
    hints = _column_values(data, "prompt_hint", "unlearned")
    retain_prob = _stats(data, "unlearned", "none", "prob", "retain")["mean"]
    if hints and np.isfinite(retain_prob) and retain_prob < LOW_RETAIN_PROB:
        warnings.append(
            f"Prompt format warning: the model's tokenizer has a chat template that the prompt format "
            f"({', '.join(formats) or 'plain'}) leaves unused, and the model answers its retain set with "
            f"probability only {retain_prob:.3f} (under {LOW_RETAIN_PROB}). It was probably trained in another "
            f"format, and every number here may measure the wrong thing: audit it again with "
            f"--prompt-format {' or '.join(hints)} (or the format its publisher used).")
    return lines, warnings


def _forget_reading(f: dict, metric: str) -> str:
    m, o, r = f["unlearned"]["mean"], f["original"]["mean"], f["retain"]["mean"]
    if not np.isfinite(m):
        return "not measured"
    if np.isfinite(o) and np.isfinite(r) and abs(o - r) > 1e-9:
        pos = (m - r) / (o - r)
        where = f"position {_pct(pos)} on a scale from the gold model (0%) to the original (100%)"
        if pos < -0.1:
            return (f"below the gold model ({where}): over-forgetting can itself reveal what was "
                    "removed")
        if pos <= 0.1:
            return f"at the gold model's level ({where})"
        return f"forgetting incomplete ({where})"
    return "no reference models to compare with"


def _utility_reading(u: dict) -> str:
    m, o = u["unlearned"]["mean"], u["original"]["mean"]
    if not np.isfinite(m):
        return "not measured"
    if np.isfinite(o) and o != 0:
        return f"{_pct(m / o)} of the original's utility"
    return ""


def _fq_reading(fq: dict) -> str:
    m = fq["mean"]
    if not np.isfinite(m):
        return "not measured (needs the retain-only model's truth ratios)"
    if m >= 0.05:
        return "p ≥ 0.05: its forget-set answers cannot be told apart from the gold model's"
    return "p < 0.05: its forget-set answers are distinguishable from the gold model's"


def _actions(worst: pd.DataFrame) -> list[str]:
    out = []
    for attack, g in worst.groupby("attack", sort=False):
        name = ATTACK_NAMES.get(attack, attack).capitalize()
        notes = join_notes(g["note"])
        g = g[g["recovery"].notna()]
        if g.empty and notes and not lacks_records(notes):   # references present, the ratio undefined
            out.append(f"{name}: recovery is undefined at every setting tested ({notes}); judge it by "
                       "where the attacked model sits between the attacked references (recovery_gold).")
            continue
        if g.empty:
            out.append(f"{name}: recovery could not be measured "
                       "(see caveats); add the original and retain-only references to this audit.")
            continue
        r = g.loc[g["recovery"].idxmax()]
        access = ATTACK_ACCESS.get(attack, f"apply {attack}")
        if r["recovery"] >= SEVERE:
            out.append(f"Do not treat this model as unlearned against anyone who can {access}: at "
                       f"{r['setting']} {_pct(r['recovery'])} of the knowledge came back.")
        elif r["recovery"] >= PARTIAL:
            out.append(f"Partial leak when someone can {access} (worst: {_pct(r['recovery'])} at "
                       f"{r['setting']}); consider a more robust optimizer tier or objective.")
        else:
            out.append(f"{name}: no material recovery at the "
                       f"settings tested (worst {_pct(r['recovery'])} at {r['setting']}).")
    return out


# ---------------------------------------------------------------------------------------------
# rendering


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list) -> str:
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "table":
            header, rows = b[1], b[2]
            lines = ["| " + " | ".join(map(_md_cell, header)) + " |",
                     "|" + "|".join(" --- " for _ in header) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def render_html(blocks: list) -> str:
    e = html.escape
    out = ['<section class="card">']
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1] + 1}>{e(b[2])}</h{b[1] + 1}>")
        elif b[0] == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "ul":
            out.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
            out.append(f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
    out.append("</section>")
    return "\n".join(out)


def audit_card(df: pd.DataFrame, *, model: str | None = None, optimizer: str | None = None,
               objective: str | None = None, run: str | None = None, recipe: str | None = None,
               fmt: str = "markdown",
               forget_metric: str = "prob", forget_splits: Sequence[str] = ("forget", "forget_unseen"),
               utility_metric: str = "model_utility", name: str | None = None) -> str:
    """The audit card of the unlearned model(s) selected by ``model`` / ``optimizer`` /
    ``objective`` / ``run`` / ``recipe`` (seeds pooled), as ``fmt`` = ``markdown`` or ``html``."""
    if fmt not in ("markdown", "html"):
        raise ValueError(f"fmt must be 'markdown' or 'html', got {fmt!r}")
    blocks = card_blocks(df, forget_metric=forget_metric, forget_splits=forget_splits,
                         utility_metric=utility_metric, name=name, model=model, optimizer=optimizer,
                         objective=objective, run=run, recipe=recipe)
    return render_markdown(blocks) if fmt == "markdown" else render_html(blocks)
