"""Every analysis of a run annualises with the run's own bars a year (`periods_per_year` in
its summary.json, which a backtest of intraday bars records: 252 sessions of them) unless its
caller sets one, from Python as `tradingd report` does. From Python a 1-minute run's Sharpe
ratio was annualised with 252 bars a year, its report's over sqrt(390), silently.

The run is a synthetic record folder of 1-minute bars (a seeded random walk of the equity;
equity.csv and summary.json as `tradingd backtest` writes them, no fills). The references
are docs/ANALYSIS.md's formulas in numpy on equity.csv's returns.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

from tradingd.analysis.montecarlo import MonteCarloConfig, MonteCarloSimulator
from tradingd.analysis.performance import PerformanceConfig
from tradingd.analysis.validation import ValidationConfig
from tradingd.strategy_api import AttributionAnalyzer, PerformanceAnalyzer, StatisticalValidator

ONE_MINUTE_YEAR = 252.0 * 390  # 98,280: 252 sessions of 390 one-minute bars (XNYS)
BARS = 400
CAPITAL = 100_000.0
NOT_THE_RUNS = "analysis.periods_per_year_not_the_runs"


def _times() -> pd.DatetimeIndex:
    """1-minute bars of the sessions 14:30-21:00 UTC from 2017-03-01 on."""
    days = pd.bdate_range("2017-03-01", periods=2)
    minutes = pd.to_timedelta(np.arange(390), "m")
    stamps = [d + pd.Timedelta(hours=14, minutes=30) + minutes for d in days]
    return pd.DatetimeIndex(np.concatenate(stamps), tz="UTC")[:BARS]


def _equity() -> np.ndarray:
    rng = np.random.default_rng(7)
    return CAPITAL * np.cumprod(1.0 + rng.normal(2e-5, 4e-4, BARS))


def write_run(root: Path, summary_extra: dict | None = None, name: str = "intra") -> Path:
    """A record folder of 1-minute bars; `summary_extra` replaces summary.json's keys (by
    default an intraday backtest's `bar` and `periods_per_year`)."""
    out = root / "runs" / name
    out.mkdir(parents=True)
    times = _times()
    frame = pd.DataFrame(
        {"time": [t.isoformat() for t in times], "equity": _equity(), "gross_exposure": 0.5}
    )
    frame.to_csv(out / "equity.csv", index=False)
    summary = {
        "run_id": name,
        "initial_capital": CAPITAL,
        "bars": BARS,
        "end": times[-1].date().isoformat(),
        "fills": 0,
        "bar": "1m",
        "periods_per_year": ONE_MINUTE_YEAR,
        **(summary_extra or {}),
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def returns() -> np.ndarray:
    e = _equity()
    return e / np.concatenate(([CAPITAL], e[:-1])) - 1.0


def sharpe(ppy: float, rf: float = 0.02) -> float:
    """mean / sample deviation of the excess over the compounded-down rate, x sqrt(P)."""
    x = returns() - ((1.0 + rf) ** (1.0 / ppy) - 1.0)
    return float(np.mean(x) / np.std(x, ddof=1) * math.sqrt(ppy))


NO_BENCHMARK = pd.Series(dtype=float)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run(tmp_path)


def test_the_performance_analyzer_annualises_as_the_run(run):
    analyzer = PerformanceAnalyzer(benchmark=NO_BENCHMARK)
    perf = analyzer.calculate_performance_metrics(run)
    risk = analyzer.calculate_risk_metrics(str(run))
    assert perf["sharpe"] == pytest.approx(sharpe(ONE_MINUTE_YEAR), rel=1e-10)
    vol = float(np.std(returns(), ddof=1)) * math.sqrt(ONE_MINUTE_YEAR)
    assert risk["annual_volatility"] == pytest.approx(vol, rel=1e-10)
    growth = float(_equity()[-1] / CAPITAL)
    assert perf["annual_return"] == pytest.approx(growth ** (ONE_MINUTE_YEAR / BARS) - 1, rel=1e-9)
    full = analyzer.analyze_performance(run)
    assert full["config"]["periods_per_year"] == ONE_MINUTE_YEAR


def test_the_python_analysis_of_an_intraday_run_is_its_report_s(run, tmp_path, monkeypatch):
    """The specification's call on the run folder gives the Sharpe ratio `tradingd report`
    gives (it gave the report's over sqrt(390))."""
    from tradingd.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(["report", str(run), "--no-validation", "--output", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    python = PerformanceAnalyzer().calculate_performance_metrics(run)
    assert python["sharpe"] == pytest.approx(report["analysis"]["performance"]["sharpe"], rel=1e-12)
    assert python["sharpe"] == pytest.approx(sharpe(ONE_MINUTE_YEAR), rel=1e-10)
    assert report["analysis"]["config"]["periods_per_year"] == ONE_MINUTE_YEAR


def test_the_validator_and_its_monte_carlo_annualise_as_the_run(run):
    """Its Sharpe tests, PSR and per-bar risk-free rate, and the Monte Carlo it runs."""
    out = StatisticalValidator(ValidationConfig(paths=20)).validate_performance(run)
    assert out["config"]["periods_per_year"] == ONE_MINUTE_YEAR
    assert out["tests"]["sharpe_ratio"]["sharpe_ratio"] == pytest.approx(
        sharpe(ONE_MINUTE_YEAR), rel=1e-9
    )
    assert out["tests"]["probabilistic_sharpe"]["sharpe_ratio"] == pytest.approx(
        sharpe(ONE_MINUTE_YEAR), rel=1e-9
    )
    mc = out["monte_carlo"]
    assert mc["config"]["periods_per_year"] == ONE_MINUTE_YEAR
    assert mc["methods"]["iid"]["sharpe"]["observed"] == pytest.approx(
        sharpe(ONE_MINUTE_YEAR), rel=1e-9
    )


def test_the_monte_carlo_of_a_run_annualises_as_the_run(run):
    out = MonteCarloSimulator(MonteCarloConfig(paths=20)).run(run)
    assert out["config"]["periods_per_year"] == ONE_MINUTE_YEAR
    observed = out["methods"]["stationary"]["sharpe"]["observed"]
    assert observed == pytest.approx(sharpe(ONE_MINUTE_YEAR), rel=1e-9)


def test_the_attribution_s_risk_decomposition_annualises_as_the_run(run):
    times = _times()
    # A benchmark level at every bar and one before the first: every bar has its return.
    before = times[0] - pd.Timedelta(minutes=1)
    levels = pd.Series(
        100.0 * np.cumprod(1.0 + np.random.default_rng(1).normal(0, 3e-4, BARS + 1)),
        index=pd.DatetimeIndex([before, *times]),
    )
    risk = AttributionAnalyzer(benchmark=levels).risk_decomposition(run)
    assert risk["benchmark_bars"] == BARS
    vol = float(np.std(returns(), ddof=1)) * math.sqrt(ONE_MINUTE_YEAR)
    assert risk["total_volatility"] == pytest.approx(vol, rel=1e-10)


def test_a_run_that_records_no_periods_per_year_is_annualised_with_252(tmp_path):
    """A daily run's summary has none (252): removed from the folder's summary here."""
    run = write_run(tmp_path)
    data = json.loads((run / "summary.json").read_text())
    data = {k: v for k, v in data.items() if k not in ("bar", "periods_per_year")}
    (run / "summary.json").write_text(json.dumps(data))
    perf = PerformanceAnalyzer(benchmark=NO_BENCHMARK).calculate_performance_metrics(run)
    assert perf["sharpe"] == pytest.approx(sharpe(252.0), rel=1e-10)


def test_a_periods_per_year_the_caller_sets_is_used_and_one_other_than_the_run_s_is_said(run):
    """Set, it wins (as an analysis config's does in `tradingd report`), with one warning
    naming both numbers per analysis: the validator's Monte Carlo does not repeat it."""
    with capture_logs() as logs:
        perf = PerformanceAnalyzer(
            PerformanceConfig(periods_per_year=252), benchmark=NO_BENCHMARK
        ).calculate_performance_metrics(run)
    assert perf["sharpe"] == pytest.approx(sharpe(252.0), rel=1e-10)
    (said,) = [e for e in logs if e["event"] == NOT_THE_RUNS]
    assert said["log_level"] == "warning"
    assert (said["periods_per_year"], said["runs_periods_per_year"]) == (252, ONE_MINUTE_YEAR)
    assert said["setting"] == "analysis.periods_per_year"
    assert said["source"] == str(run / "summary.json")
    assert "252" in said["detail"] and "98280" in said["detail"]

    with capture_logs() as logs:
        out = StatisticalValidator(
            ValidationConfig(paths=20, periods_per_year=252)
        ).validate_performance(run)
    assert out["config"]["periods_per_year"] == out["monte_carlo"]["config"]["periods_per_year"]
    assert out["tests"]["sharpe_ratio"]["sharpe_ratio"] == pytest.approx(sharpe(252.0), rel=1e-9)
    said = [e["setting"] for e in logs if e["event"] == NOT_THE_RUNS]
    assert said == ["validation.periods_per_year"]

    # The run's own number, given: nothing to say.
    with capture_logs() as logs:
        PerformanceAnalyzer(
            PerformanceConfig(periods_per_year=ONE_MINUTE_YEAR), benchmark=NO_BENCHMARK
        ).calculate_performance_metrics(run)
    assert not [e for e in logs if e["event"] == NOT_THE_RUNS]


@pytest.mark.parametrize("value", [True, "19656", 0, -252.0, math.nan, math.inf, None])
def test_a_periods_per_year_in_summary_json_that_is_no_positive_number_is_refused(tmp_path, value):
    """`true` was read as 1 (a bool is an int) and a string was passed over without a word.
    Refused only where taken: a caller who sets their own still gets an analysis."""
    run = write_run(tmp_path, {"periods_per_year": value})
    analyzer = PerformanceAnalyzer(benchmark=NO_BENCHMARK)
    with pytest.raises(ValueError) as exc:
        analyzer.calculate_performance_metrics(run)
    text = str(exc.value)
    assert text.startswith(
        f"{run / 'summary.json'}: periods_per_year {value!r} is not a positive number"
    )
    assert "run the backtest again" in text and "analysis.periods_per_year" in text
    with pytest.raises(ValueError, match="is not a positive number"):
        MonteCarloSimulator(MonteCarloConfig(paths=5)).run(run)
    given = PerformanceAnalyzer(PerformanceConfig(periods_per_year=100), benchmark=NO_BENCHMARK)
    assert given.calculate_performance_metrics(run)["sharpe"] == pytest.approx(
        sharpe(100.0), rel=1e-10
    )


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """`main(argv)` in-process from a fresh working directory: (exit code, stdout, stderr)."""
    from cli_runs import in_process

    return in_process(monkeypatch, tmp_path, capsys)


def _report(cli, tmp_path: Path, run: Path, analysis: str, out: str) -> tuple[int, str]:
    config = tmp_path / f"{out}.toml"
    config.write_text(analysis)
    code, _, err = cli("report", str(run), "--analysis-config", str(config), "--output", out)
    return code, err


def _sharpe_of_the_tests(folder: Path) -> float:
    report = json.loads((folder / "report.json").read_text())
    detail = report["sections"]["Statistical tests"]["sharpe_ratio"]["detail"]
    return float(detail.split("sharpe_ratio=")[1].split(";")[0])


QUICK = '[analysis]\nbenchmark = ""\n[validation]\npaths = 20\n'


def test_report_tables_annualise_as_the_run_unless_the_analysis_config_sets_it(cli, tmp_path):
    """Every table of the report: the metrics, the validator's tests and its Monte Carlo.
    [analysis] periods_per_year is every table's, the run's notwithstanding."""
    run = write_run(tmp_path)
    code, err = _report(cli, tmp_path, run, QUICK, "o")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["analysis"]["config"]["periods_per_year"] == ONE_MINUTE_YEAR
    # (The section shows 6 significant digits.)
    assert _sharpe_of_the_tests(tmp_path / "o") == pytest.approx(sharpe(ONE_MINUTE_YEAR), rel=1e-5)

    own = '[analysis]\nbenchmark = ""\nperiods_per_year = 100\n[validation]\npaths = 20\n'
    code, err = _report(cli, tmp_path, run, own, "p")
    assert code == 0, err
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["analysis"]["config"]["periods_per_year"] == 100
    assert _sharpe_of_the_tests(tmp_path / "p") == pytest.approx(sharpe(100.0), rel=1e-5)
    assert "periods_per_year_not_the_runs" in err


def test_report_of_a_run_whose_periods_per_year_is_damaged_names_the_file(cli, tmp_path):
    run = write_run(tmp_path, {"periods_per_year": True})
    code, err = _report(cli, tmp_path, run, QUICK, "o")
    assert code == 2 and "Traceback" not in err
    assert f"tradingd: error: run {run}: {run / 'summary.json'}: periods_per_year True" in err
    assert "[analysis]" in err
    # An analysis config that sets it for every table does not use the summary's.
    own = '[analysis]\nbenchmark = ""\nperiods_per_year = 100\n[validation]\npaths = 5\n'
    code, err = _report(cli, tmp_path, run, own, "p")
    assert code == 0, err
