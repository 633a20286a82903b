"""analysis: result records -> tables, robustness curves, basin plots, audit cards, verdicts and an
offline HTML report. It reads records (and the descriptions of metrics, attacks and optimizer tiers
they carry, :mod:`analysis.names`) and never trains, attacks or loads a model.

- :mod:`analysis.load`      ``load_records(sources)`` -> tidy DataFrame; ``save_frame`` / ``load_frame``
- :mod:`analysis.tables`    ``mean_ci``, ``summarize``, ``pivot``, ``recovery_per_seed``, ``recovery_table``
- :mod:`analysis.plots`     ``robustness_curve``, ``basin_1d``, ``basin_2d``, ``tier_summary`` (-> Figure)
- :mod:`analysis.card`      ``audit_card(df, optimizer=...)`` -> Markdown or HTML
- :mod:`analysis.verdicts`  ``Claim``, ``Bands``, ``PAPER_CLAIMS``, ``claims_for``, ``evaluate_claims``, ``verdict_table``
- :mod:`analysis.report`    ``write_report(data, out_dir)`` -> ``out_dir/index.html`` (atomic)
- :mod:`analysis.synthetic` made-up records for tests and trying the report (marked synthetic)

Submodules are imported on demand so that ``basin --help`` stays fast.
"""
