"""The flatness and barrier figures: the points drawn are the per-seed means of the records."""

from __future__ import annotations

import pytest

from analysis import plots
from analysis.load import load_records
from analysis.report import write_report


def _records():
    out = []
    for seed in (0, 1, 2):
        for opt, trace in (("adam", 10.0), ("adazo", 4.0)):
            base = dict(model=f"{opt}-s{seed}", role="unlearned", optimizer=opt, objective="npo", seed=seed,
                        attack="flatness")
            out.append({**base, "setting": "hutchinson-16", "x": 16.0, "metric": "hessian_trace", "split": "forget",
                        "value": trace + seed})
            out.append({**base, "setting": "hutchinson-16", "x": 16.0, "metric": "hessian_trace", "split": "retain",
                        "value": 1.0})
            out.append({**base, "setting": "power-20", "x": 20.0, "metric": "hessian_eig_max", "split": "forget",
                        "value": trace / 2})
            out.append({**base, "setting": "sharpness-tensor-0.01", "x": 0.01, "metric": "sharpness_mean",
                        "split": "forget", "value": 0.1 * trace})
        for pair, b in (("original->adam", 0.5), ("adam->adazo", 2.0)):
            common = dict(model=pair, role="unlearned", optimizer=pair.split("->")[1], objective="npo", seed=seed,
                          attack="interpolate", setting="path")
            out.append({**common, "metric": "barrier", "split": "forget", "value": b + 0.1 * seed})
            out.append({**common, "metric": "barrier_per_distance", "split": "forget", "value": b / 4})
            out.append({**common, "metric": "distance", "split": "weights", "value": 4.0})
    return load_records(out)


def _points(ax):
    """(x tick label, y) of every marker drawn, per errorbar series label."""
    names = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    out = {}
    for container in ax.containers:
        line = container.lines[0]
        out[container.get_label()] = {names[round(x)]: y for x, y in zip(line.get_xdata(), line.get_ydata())}
    return out


def test_flatness_figure_draws_the_seed_means():
    fig = plots.flatness(_records())
    titles = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    label = lambda m: plots.METRIC_LABELS.get(m, m)
    trace = _points(titles[label("hessian_trace")])
    assert trace["forget set (all items)"] == pytest.approx({"adam": 11.0, "adazo": 5.0})
    assert trace["retain set"] == pytest.approx({"adam": 1.0, "adazo": 1.0})
    eig = _points(titles[label("hessian_eig_max")])
    assert eig["forget set (all items)"] == pytest.approx({"adam": 5.0, "adazo": 2.0})


def test_barrier_figure_and_report_entries(tmp_path):
    df = _records()
    fig = plots.barriers(df)
    raw, per = (ax for ax in fig.axes if ax.get_title())
    assert _points(raw)["forget set (all items)"] == pytest.approx({"original->adam": 0.6, "adam->adazo": 2.1})
    assert _points(per)["forget set (all items)"] == pytest.approx({"original->adam": 0.125, "adam->adazo": 0.5})
    index = write_report(df, tmp_path / "r", formats=("png",))
    assert (index.parent / "figures" / "flatness.png").exists()
    assert (index.parent / "figures" / "barriers.png").exists()
