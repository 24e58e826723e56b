"""Run analysis: `metrics` (the summary every run writes), `performance` (the
specification's PerformanceAnalyzer: returns, risk and benchmark metrics, trade statistics) and
`report` (the HTML and JSON report of a run)."""
