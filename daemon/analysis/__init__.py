"""Run analysis: `metrics` (the summary every run writes) and `performance` (the
specification's PerformanceAnalyzer: returns, risk and benchmark metrics, trade statistics)."""
