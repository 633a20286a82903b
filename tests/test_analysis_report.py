"""analysis: figures, the HTML report and ``basin report``, on synthetic records."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis import plots
from analysis.load import load_records
from analysis.report import write_report
from analysis.synthetic import synthetic_records, write_synthetic_runs
from basin.cli import main

OPTIMIZERS = ("sam", "hybrid", "adam", "zo-adam")


@pytest.fixture(scope="module")
def frame():
    return load_records(synthetic_records(OPTIMIZERS, (0, 1, 2)))


def _legend_labels(fig: Figure) -> list[str]:
    """Legend entries in reading order (top row first, left to right), as drawn."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    out = []
    for legend in fig.legends:
        texts = [(t.get_window_extent(renderer), t.get_text()) for t in legend.get_texts()]
        out += [text for box, text in sorted(texts, key=lambda bt: (-round(bt[0].y0), bt[0].x0))]
    return out


def _no_overlap(fig: Figure) -> None:
    """Titles, axis labels, legends and tick labels must not overlap one another."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    boxes = [("suptitle", fig._suptitle.get_window_extent(renderer))] if fig._suptitle else []
    boxes += [(f"legend {i}", lg.get_window_extent(renderer)) for i, lg in enumerate(fig.legends)]
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        for name, art in (("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)):
            if art.get_text():
                boxes.append((f"axes {i} {name}", art.get_window_extent(renderer)))
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
        for a, b in combinations(ticks, 2):
            assert not a.overlaps(b), f"x tick labels overlap in axes {i}"
    for (na, a), (nb, b) in combinations(boxes, 2):
        assert not a.overlaps(b), f"{na} overlaps {nb}"


def test_figures_do_not_touch_pyplot_state(frame):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.robustness_curve(frame, "relearn")
    plots.tier_summary(frame)
    assert plt.get_fignums() == before


def test_robustness_curve_has_one_line_per_optimizer_and_reference(frame):
    fig = plots.robustness_curve(frame, "relearn", "prob")
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["forget set (all items)", "forget items not used by the attack"]
    for ax in axes:
        assert len(ax.get_lines()) == len(OPTIMIZERS) + 2  # + original and retain-only
        assert "relearning steps" in ax.get_xlabel()
        assert len(ax.collections) == len(OPTIMIZERS) + 2  # CI bands: 3 seeds everywhere
    labels = _legend_labels(fig)
    assert labels[:4] == ["adam (n=3)", "zo-adam (n=3)", "hybrid (n=3)", "sam (n=3)"]  # tier order
    assert labels[4:] == ["original", "retain-only"]
    assert "probability" in axes[0].get_ylabel()
    _no_overlap(fig)


def test_robustness_curve_one_seed_has_no_bands():
    df = load_records(synthetic_records(("adam", "hybrid"), (0,), basins=False))
    fig = plots.robustness_curve(df, "quantize", "prob", splits=["forget"], references=False)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 2 and len(ax.collections) == 0
    assert ax.xaxis_inverted()  # fewer bits = stronger attack, to the right


def test_robustness_curve_falls_back_to_ordered_categories():
    rows = [dict(model=f"adam{seed}", attack="quantize", setting=s, metric="prob", value=v + 0.01 * seed,
                 split="forget", seed=seed, optimizer="adam")
            for seed in (0, 1) for s, v in (("nf4", 0.3), ("rtn-4bit", 0.25), ("rtn-8bit", 0.1), ("gptq", 0.2))]
    fig = plots.robustness_curve(load_records(rows), "quantize")
    (ax,) = fig.axes
    # nf4 and rtn-4bit share 4 bits: categories, 8 bits (weakest) first, unparsed last
    assert [t.get_text() for t in ax.get_xticklabels()] == ["rtn-8bit", "nf4", "rtn-4bit", "gptq"]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [0, 1, 2, 3] and line.get_linestyle() == "None"
    assert list(line.get_ydata()) == pytest.approx([0.105, 0.305, 0.255, 0.205])
    _no_overlap(fig)


def test_barrier_hand_example():
    assert plots.barrier([0, 0.5, 1], [0.0, 1.0, 0.0]) == (1.0, 0.5)
    assert plots.barrier([0, 0.5, 1], [1.0, 2.0, 3.0])[0] == pytest.approx(0.0)
    # chord from 1 to 3; at 0.25 the chord is 1.5 and the curve 2.5
    assert plots.barrier([1, 0.25, 0], [3.0, 2.5, 1.0]) == (pytest.approx(1.0), 0.25)


def test_basin_1d_marks_each_split(frame):
    fig = plots.basin_1d(frame)
    axes = [ax for ax in fig.axes if ax.axison]
    assert len(axes) == 2  # two interpolated pairs
    for ax in axes:
        assert len(ax.get_lines()) == 4  # forget and retain curves + their chords
        assert sum("barrier" in t.get_text() for t in ax.texts) == 2
        assert "α" in ax.get_xlabel()
    assert _legend_labels(fig) == ["forget set (all items)", "retain set"]
    _no_overlap(fig)


def test_basin_2d_marks_three_models(frame):
    fig = plots.basin_2d(frame)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 and len(fig.axes) == 4  # two panels, two colour bars
    for ax in panels:
        assert sorted(t.get_text() for t in ax.texts) == sorted(["original", OPTIMIZERS[0], OPTIMIZERS[-1]])
    assert "nats" in fig.axes[1].get_ylabel() or any("nats" in a.get_ylabel() for a in fig.axes)


def test_tier_summary_orders_optimizers_by_tier(frame):
    fig = plots.tier_summary(frame)
    top, bottom = fig.axes
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["adam", "zo-adam", "hybrid", "sam"]
    labels = _legend_labels(fig)
    assert "clean (no attack)" in labels
    assert [lab for lab in labels if lab.startswith("after")] == [
        "after relearning (worst case)", "after quantization (worst case)", "after weight noise (worst case)"]
    assert top.get_ylabel() and bottom.get_ylabel()
    assert {t.get_text() for t in top.texts} >= {"first order", "zeroth order", "hybrid", "sharpness-aware"}
    _no_overlap(fig)


def test_empty_selection_gives_a_figure_that_says_so(frame):
    fig = plots.robustness_curve(frame, "prune")
    assert isinstance(fig, Figure) and "no prob records" in fig.axes[0].texts[0].get_text()


# ---------------------------------------------------------------------------------------------
# report


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("#"):
                self.links.append(attrs[key])


def _links(index: Path) -> list[str]:
    parser = _Links()
    parser.feed(index.read_text())
    return parser.links


@pytest.fixture(scope="module")
def report(tmp_path_factory, frame):
    out = tmp_path_factory.mktemp("rep") / "report"
    return write_report(frame, out)


def test_report_links_exist_and_every_file_is_linked(report):
    root = report.parent
    links = _links(report)
    assert links, "index.html links nothing"
    for link in links:
        assert "://" not in link and not link.startswith("/"), f"non-local link {link}"
        assert (root / link).is_file(), f"index.html links a missing file: {link}"
    written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    written -= {"index.html", "report.json"}
    assert written <= set(links), f"files not linked: {sorted(written - set(links))}"
    pngs = [p for p in written if p.endswith(".png")]
    assert len(pngs) >= 6 and all(p[:-4] + ".svg" in written for p in pngs)
    assert {"tables/summary.csv", "tables/recovery.csv", "tables/verdicts.csv", "tables/records.csv"} <= written
    meta = json.loads((root / "report.json").read_text())
    assert meta["records"] > 0 and "hybrid-vs-adam-relearn" in meta["verdicts"]


def test_report_says_synthetic_and_shows_verdicts(report):
    page = report.read_text()
    # each verdict's conditions fold under a count, the failed ones in bold
    verdicts = page[page.index('id="verdicts"'):page.index('id="figures"')]
    folded = re.findall(r"<details><summary>(all \d+ met|\d+ of \d+ failed)</summary><ul>(.*?)</ul></details>", verdicts)
    assert folded and all(body.count("<li>") == int(head.split()[-2 if "failed" in head else 1]) for head, body in folded)
    assert all(("<b>FAILED" in body) == ("failed" in head) for head, body in folded)
    assert "marked synthetic" in page
    # a quantity a claim does not measure (margin, for a claim on probability) shows as a dash,
    # never as an empty slot after a slash
    assert "/  |" not in verdicts and not re.search(r"/ </td>", verdicts)
    assert re.search(r"<td>-?\d\.\d{3} / -?\d\.\d{3} / – \| -?\d\.\d{3} / ", verdicts)
    from analysis.verdicts import PAPER_CLAIMS

    assert page.count('class="verdict v-') == len(PAPER_CLAIMS)
    assert "<details" in page and "Audit card: adam / npo" in page


def test_report_without_inline_tables_links_each_table_instead(tmp_path, frame, report):
    small = frame[frame["label"].isin(["adam", "original", "retain-only"])]
    margin = small[small["metric"] == "prob"].assign(metric="margin")   # a second forget metric
    page = write_report(pd.concat([small, margin]), tmp_path / "r", formats=("png",),
                        inline_tables=False).read_text()
    tables = page[page.index('id="tables"'):]
    assert "<table" not in tables and '<a href="tables/pivot-prob-forget.csv">' in tables
    assert (tmp_path / "r" / "tables" / "pivot-prob-forget.csv").is_file()
    recovery = page[page.index('id="recovery"'):page.index('id="cards"')]
    assert "<h3>recovery: answer probability" in recovery and "<h3>recovery: margin" not in recovery
    assert "The same for margin" in recovery and 'href="tables/recovery.csv"' in recovery
    inline = report.read_text()
    assert "<table" in inline[inline.index('id="tables"'):]


def test_interrupted_report_leaves_the_old_one_intact(tmp_path, frame, monkeypatch):
    out = tmp_path / "report"
    small = frame[frame["label"].isin(["adam", "original", "retain-only"])]
    write_report(small, out, formats=("png",))
    before = (out / "index.html").read_text()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "tier_summary", boom)
    with pytest.raises(KeyboardInterrupt):
        write_report(small, out, formats=("png",))
    assert (out / "index.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder left


def test_report_refuses_a_foreign_folder(tmp_path, frame):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a basin report"):
        write_report(frame, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# basin report


def test_basin_report_on_run_folders(tmp_path, capsys):
    records = synthetic_records(("adam", "hybrid"), (0, 1), basins=False)
    folders = write_synthetic_runs(tmp_path / "runs", records)
    out = tmp_path / "out"
    assert main(["report", *map(str, folders), "--out", str(out)]) == 0
    assert (out / "index.html").is_file()
    assert "index.html" in capsys.readouterr().out


def test_basin_report_bad_folders_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no records.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "records.jsonl").write_text(json.dumps({"model": "m", "value": "high"}) + "\n\n")
    assert main(["report", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "missing fields" in err
    assert not (tmp_path / "o").exists()


def test_saved_figures_are_small_and_reproducible(tmp_path):
    """SVG text stays text and the same figure gives the same bytes; PNGs carry a palette."""
    from matplotlib.figure import Figure
    from PIL import Image

    from analysis.report import save_figure

    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([0, 1, 2], [0.1, 0.5, 0.3], label="adam")
    ax.fill_between([0, 1, 2], [0, 0.4, 0.2], [0.2, 0.6, 0.4], alpha=0.2)
    ax.set_title("forget answer probability")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        assert save_figure(fig, tmp_path / folder, "fig") == ["fig.png", "fig.svg"]
    svg = (tmp_path / "a" / "fig.svg").read_text()
    assert "forget answer probability</text>" in svg and "DejaVuSans-" not in svg
    assert "font-family: 'DejaVu Sans', sans-serif" in svg and "Verdana" not in svg  # no fallback list
    assert svg == (tmp_path / "b" / "fig.svg").read_text()
    with Image.open(tmp_path / "a" / "fig.png") as image:
        assert image.mode == "P"


def test_table_metrics_limit_the_derived_tables_not_the_records(tmp_path, frame):
    small = frame[frame["label"].isin(["adam", "original", "retain-only"])]
    two = pd.concat([small, small[small["metric"] == "prob"].assign(metric="margin")])
    full = write_report(two, tmp_path / "full", formats=("png",), inline_tables=False).parent
    lean = write_report(two, tmp_path / "lean", formats=("png",), inline_tables=False, table_metrics=["prob"]).parent
    tables = {name: {d: pd.read_csv(d / "tables" / f"{name}.csv") for d in (full, lean)}
              for name in ("recovery_per_seed", "summary", "records")}
    assert all({"prob", "margin"} <= set(tables[name][full]["metric"]) for name in ("recovery_per_seed", "summary"))
    # the lean report's derived tables are the full report's rows of the chosen metric, number for number
    for name in ("recovery_per_seed", "summary"):
        want = tables[name][full][tables[name][full]["metric"] == "prob"].reset_index(drop=True)
        pd.testing.assert_frame_equal(tables[name][lean], want)
    # the records keep every metric, and the page says where the others are
    pd.testing.assert_frame_equal(tables["records"][lean], tables["records"][full])
    page = (lean / "index.html").read_text()
    assert page.count("of prob; other metrics: the records") == 2
