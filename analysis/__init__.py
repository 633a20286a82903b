"""basin.analysis: result records -> tables, robustness curves, basin plots and reports."""
