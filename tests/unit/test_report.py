"""The run report (`tradingd.analysis.report`): every number it shows against an independent
computation, the HTML and JSON files, extra sections, secrets, and the `tradingd report` /
`tradingd backtest --report` commands.

The run is real: `tradingd backtest` (in-process) on the bundled S&P 500 and NASDAQ index
series, momentum, 2016-2018 (754 bars, about 60 round trips, risk verdicts), written to a
record folder as the command writes it. Its returns are recomputed here from equity.csv.

Independent references: empyrical-reloaded for monthly and yearly returns
(`aggregate_returns`), the rolling Sharpe ratio (`roll_sharpe_ratio`), the maximum drawdown
and the historical VaR; the S&P 500 closes shipped with `arch` for the benchmark line; plain
counting for the histograms. Tolerance: relative 1e-10 (both sides are float64 formulas in a
different order). The browser rendering is tests/integration/test_report_browser.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from pathlib import Path

import empyrical as ep
import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tradingd.analysis.performance import PerformanceAnalyzer, PerformanceConfig, per_bar_rate
from tradingd.analysis.report import (
    REPORT_FORMAT,
    ReportConfig,
    build_report,
    monthly_returns,
    resolve_run,
    rolling_sharpe,
    write_report,
)
from tradingd.analysis.report_charts import CHART_IDS
from tradingd.core.errors import ConfigError

REL = 1e-10
RF_BAR = per_bar_rate(0.02)


def write_config(tmp: Path, extra: str = "") -> Path:
    p = tmp / "report.toml"
    p.write_text(f"""
[run]
run_id = "report-unit"
start = "2016-01-01"
end = "2018-12-31"
output_dir = "{tmp / "runs"}"
[orders]
brackets = false
[[signals]]
name = "momentum"
params = {{ lookback = 20 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 2, gross_exposure = 0.95 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.5 }}
[storage]
url = "sqlite:///{tmp / "s.db"}"
[log]
audit_dir = "{tmp / "audit"}"
[health]
port = 0
{extra}
""")
    return p


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from tradingd.backtest import run_backtest
    from tradingd.config import load_config

    tmp = tmp_path_factory.mktemp("report_unit")
    config = load_config([write_config(tmp)], env={})
    out = tmp / "runs" / "report-unit"
    asyncio.run(run_backtest(config, output_dir=out))
    return out


@pytest.fixture(scope="module")
def report(run_dir):
    return build_report(run_dir)


@pytest.fixture(scope="module")
def returns(run_dir) -> pd.Series:
    """Per-bar returns recomputed from equity.csv, the first against the initial capital."""
    eq = pd.read_csv(run_dir / "equity.csv")
    capital = json.loads((run_dir / "summary.json").read_text())["initial_capital"]
    e = eq["equity"].to_numpy(float)
    idx = pd.DatetimeIndex(pd.to_datetime(eq["time"], utc=True)).tz_localize(None)
    return pd.Series(e / np.concatenate(([capital], e[:-1])) - 1.0, index=idx)


def close(a, b, rel=REL):
    return a == pytest.approx(b, rel=rel, abs=1e-12, nan_ok=True)


# ----------------------------------------------------------------------------- numbers


def test_the_run_is_a_real_one(report):
    a = report.data["analysis"]
    assert a["performance"]["bars"] == 754
    assert a["performance"]["round_trips"] > 20
    assert a["summary"]["risk_verdicts"] > 0
    assert a["benchmark"]["bars"] == 754  # the bundled S&P 500 covers every bar


def test_metrics_are_the_analyzers(run_dir, report):
    ref = PerformanceAnalyzer().analyze_performance(run_dir)
    a = report.data["analysis"]
    for part in ("performance", "risk"):
        assert set(a[part]) == set(ref[part])
        for key, value in ref[part].items():
            got = a[part][key]
            assert (got is None) if math.isnan(value) else got == value, key


def test_monthly_and_yearly_returns_match_empyrical(report, returns):
    m = report.data["monthly_returns"]
    monthly = ep.aggregate_returns(returns, "monthly")
    got = {
        (y, mo): v
        for y, row in zip(m["years"], m["values"], strict=True)
        for mo, v in zip(m["months"], row, strict=True)
        if v is not None
    }
    assert set(got) == set(monthly.index)
    for key, value in monthly.items():
        assert close(got[key], value), key
    yearly = ep.aggregate_returns(returns, "yearly")
    assert m["years"] == list(yearly.index)
    for total, value in zip(m["year_total"], yearly, strict=True):
        assert close(total, value)
    # Compounding the months gives the run's total return.
    growth = np.prod([1 + v for v in got.values()])
    assert close(growth - 1, report.data["analysis"]["performance"]["total_return"])


def test_rolling_sharpe_matches_empyrical(report, returns):
    window = report.data["report_config"]["rolling_window"]
    got = np.array(report.data["series"]["rolling_sharpe"], dtype=float)
    assert np.isnan(got[: window - 1]).all()
    ref = ep.roll_sharpe_ratio(returns, window, risk_free=RF_BAR)
    assert len(ref) == len(returns) - window + 1
    for g, r in zip(got[window - 1 :], ref, strict=True):
        assert close(g, r, rel=1e-9)
    # The last window is the Sharpe ratio of the last `window` bars.
    assert close(got[-1], ep.sharpe_ratio(returns.iloc[-window:], risk_free=RF_BAR), rel=1e-9)


def test_drawdown_series_and_var(report, returns):
    s = report.data["series"]
    wealth = np.concatenate(([1.0], np.cumprod(1 + returns.to_numpy())))
    ref = 1 - wealth / np.maximum.accumulate(wealth)
    assert np.allclose(s["drawdown"], ref[1:], rtol=0, atol=1e-12)
    assert close(max(s["drawdown"]), -ep.max_drawdown(returns))
    dist = report.data["return_distribution"]
    assert close(dist["var_historical"], -ep.value_at_risk(returns, 0.05))
    # The VaR lines are drawn at -VaR.
    traces = report.figures["chart-distribution"]["data"]
    hist_line = next(t for t in traces if "historical" in t.get("name", ""))
    assert hist_line["x"] == [-dist["var_historical"]] * 2


def test_benchmark_line_is_the_sp500_rebased_to_the_initial_capital(report, returns):
    from arch.data import sp500

    close_px = sp500.load()["Close"]
    base = close_px[close_px.index < returns.index[0]].iloc[-1]
    ref = 100_000.0 * close_px.reindex(returns.index) / base
    got = report.data["series"]["benchmark_equity"]
    assert np.allclose(got, ref.to_numpy(), rtol=1e-12)
    perf = report.data["analysis"]["performance"]
    assert close(got[-1] / 100_000.0 - 1, perf["benchmark_total_return"])


def test_histograms_count_every_value_once(report, returns):
    dist = report.data["return_distribution"]
    edges, counts = dist["bin_edges"], dist["counts"]
    assert len(edges) == len(counts) + 1 == report.data["report_config"]["return_bins"] + 1
    r = returns.to_numpy()
    for i, c in enumerate(counts):
        last = i == len(counts) - 1
        inside = (r >= edges[i]) & ((r <= edges[i + 1]) if last else (r < edges[i + 1]))
        assert int(inside.sum()) == c, i
    trades = report.data["trades"]
    pnls = np.array(trades["round_trip_pnls"])
    perf = report.data["analysis"]["performance"]
    assert len(pnls) == perf["round_trips"] == sum(trades["counts"])
    assert close(float(np.mean(pnls > 0)), perf["win_rate"])
    assert close(float(np.mean(pnls[pnls < 0])), perf["avg_loss"])


def test_exposure_and_verdicts_come_from_the_record(report, run_dir):
    eq = pd.read_csv(run_dir / "equity.csv")
    assert report.data["series"]["gross_exposure"] == list(eq["gross_exposure"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report.data["risk_rules"]["verdicts_by_rule"] == summary["risk_verdicts_by_rule"]
    bars = report.figures["chart-verdicts"]["data"][0]
    assert dict(zip(bars["y"], bars["x"], strict=True)) == summary["risk_verdicts_by_rule"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-0.2, 0.2, allow_nan=False), min_size=2, max_size=60),
    st.integers(2, 30),
    st.floats(0.01, 100),
)
@example([0.0, 4.228513706980127e-162], 2, 0.5)  # squares underflow (found by hypothesis)
@example([0.1, 0.05, 0.0, 1e-162, 2e-162], 2, 0.5)  # each window by its own largest return
def test_rolling_sharpe_is_scale_free_and_windowed(r, window, scale):
    """Scaling the returns (no risk-free rate) changes no rolling Sharpe ratio, and each value
    is the Sharpe ratio of its own window."""
    # Unless the scaling itself loses the returns: a subnormal return (5e-324 x 0.5 is 0)
    # makes another series (found by hypothesis: [0.0, 5e-324] became all zeros).
    tiny = np.finfo(float).tiny
    assume(all(x == 0 or (abs(x) >= tiny and abs(x * scale) >= tiny) for x in r))
    a = rolling_sharpe(r, window)
    b = rolling_sharpe(np.array(r) * scale, window)
    assert np.allclose(a, b, rtol=1e-7, atol=1e-9, equal_nan=True)
    assert np.isnan(a[: window - 1]).all()
    for i in range(window - 1, len(r)):
        w = np.array(r[i - window + 1 : i + 1])
        sd = np.std(w, ddof=1)
        if sd > 1e-9:
            assert a[i] == pytest.approx(np.mean(w) / sd * math.sqrt(252), rel=1e-7)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-0.5, 0.5, allow_nan=False), min_size=1, max_size=200))
def test_months_compound_to_the_total(r):
    times = pd.bdate_range("2019-12-20", periods=len(r), tz="UTC")
    table = monthly_returns(times, r)
    months = table.to_numpy()[np.isfinite(table.to_numpy())]
    assert months.size == len({(t.year, t.month) for t in times})
    assert np.prod(1 + months) == pytest.approx(np.prod(1 + np.array(r)), rel=1e-9)


# ----------------------------------------------------------------------------- files


def test_json_has_every_number_and_no_nan(report):
    text = report.to_json()
    data = json.loads(text)  # allow_nan=False when written: NaN is null
    assert "NaN" not in text and "Infinity" not in text
    assert data["format"] == REPORT_FORMAT
    assert data["run_id"] == "report-unit"
    n = data["analysis"]["performance"]["bars"]
    for key, values in data["series"].items():
        assert len(values) == n, key
    assert set(CHART_IDS) == set(report.figures)


def test_html_is_self_contained_and_shows_every_metric(report):
    page = report.to_html()
    # Opens offline: no external script, stylesheet, image or font.
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)
    assert "@import" not in page and "url(http" not in page
    assert page.count("Plotly.newPlot") == 1 and "window.reportReady" in page
    assert len(page) > 3_000_000  # plotly.js is inline
    for cid in CHART_IDS:
        assert page.count(f'id="{cid}"') == 1, cid
    a = report.data["analysis"]
    for key in [*a["performance"], *a["risk"], *a["drawdown"]]:
        assert re.search(rf"<th>{key}( \([^<]*\))?</th>", page), key
    assert "<th>costs.commission_pct</th>" in page  # the run's configuration
    assert "<th>signals[0].name</th>" in page
    assert "max_position/max_position" in page  # the verdicts table


def test_the_page_says_each_sharpe_ratios_risk_free_rate_and_what_each_win_rate_counts(
    run_dir,
):
    """The headline Sharpe tile was the analysis's, at a 2% risk-free rate, beside a "Run
    summary" table and a printed summary at 0%, and "risk-free" was nowhere on the page;
    win_rate and profit_factor appeared twice, per round trip and per closing fill, with
    nothing to tell which was which (docs/REPORTS.md)."""
    for rate, said in ((0.02, "risk-free 2%"), (0.035, "risk-free 3.5%")):
        report = build_report(
            run_dir, analyzer=PerformanceAnalyzer(PerformanceConfig(risk_free_rate=rate))
        )
        page = report.to_html()
        tiles = dict(re.findall(r'<div class="k">([^<]*)</div><div class="v">([^<]*)<', page))
        assert f"Sharpe ({said})" in tiles and f"Sortino ({said})" in tiles
        assert "Win rate (per round trip)" in tiles
        for key in ("sharpe", "sortino", "alpha"):
            assert f"<th>{key} ({said})</th>" in page, key
        assert f"<th>downside_deviation (target: {said})</th>" in page
        # The run's own summary: 0%, and its trade statistics per closing fill.
        assert "<th>sharpe (risk-free 0%)</th>" in page
        for key in ("win_rate", "profit_factor", "avg_win", "avg_loss"):
            assert f"<th>{key} (per round trip)</th>" in page, key
            assert f"<th>{key} (per closing fill)</th>" in page, key
            assert f"<th>{key}</th>" not in page, key
        axis = report.figures["chart-rolling-sharpe"]["layout"]["yaxis"]["title"]["text"]
        assert said in axis
    labelled = {"sharpe", "sortino", "win_rate", "profit_factor", "avg_win", "avg_loss"}
    assert labelled <= set(report.data["analysis"]["summary"])


def test_write_report_puts_both_files_in_the_run_folder(run_dir, tmp_path):
    files = write_report(run_dir, tmp_path / "out")
    assert files.html == tmp_path / "out" / "report.html" and files.html_bytes > 3_000_000
    assert json.loads(files.json.read_text())["run_id"] == "report-unit"
    by_id = write_report("report-unit", tmp_path / "by_id", runs_root=run_dir.parent)
    assert by_id.json_bytes > 10_000


def test_progress_bar_only_when_asked(run_dir, tmp_path, capsys):
    write_report(run_dir, tmp_path / "a", progress=True)
    assert "report: writing" in capsys.readouterr().err
    write_report(run_dir, tmp_path / "b", progress=False)
    assert capsys.readouterr().err == ""


def test_run_config_never_shows_a_secret(run_dir, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("equity.csv", "fills.csv", "summary.json"):
        (folder / name).write_bytes((run_dir / name).read_bytes())
    # A record written by hand (or by an older version) with credentials in clear.
    (folder / "config.json").write_text(
        json.dumps(
            {
                "storage": {"url": "postgresql://trader:hunter2@db:5432/tradingd"},
                "broker": {"alpaca": {"api_secret": "sk-live-abc"}},
            }
        )
    )
    files = write_report(folder)
    for text in (files.html.read_text(), files.json.read_text()):
        assert "hunter2" not in text and "sk-live-abc" not in text
        assert "postgresql://trader:***@db:5432/tradingd" in text


def test_stored_config_snapshot_is_already_masked(tmp_path):
    """What `tradingd backtest` stores (config.json) is masked before the report sees it."""
    from tradingd.config import load_config

    config = load_config(
        [write_config(tmp_path)], env={"DATABASE_URL": "postgresql://u:hunter2@h:5432/db"}
    )
    assert "hunter2" not in json.dumps(config.to_public_dict(), default=str)


# ----------------------------------------------------------------------------- sections


def test_extra_sections_render_as_tables_and_go_to_the_json(run_dir):
    sections = {
        "Statistical tests": {
            "sharpe_t_test": {"statistic": 1.5, "p_value": 0.13, "significant": False},
            "jarque_bera": {"statistic": 812.0, "p_value": np.float64(1e-12)},
            "trials": 3,
        },
        "Monte Carlo": {
            "paths": 1000,
            "seed": 7,
            "final_return": {"p05": -0.1, "p95": float("nan"), "by_block": {"a": 1}},
            "folds": [{"fold": 1, "sharpe": 0.5}, {"fold": 2, "sharpe": -0.2}],
            "quantiles": [0.05, 0.5, 0.95],
        },
    }
    report = build_report(run_dir, sections=sections)
    data = json.loads(report.to_json())["sections"]
    assert data["Monte Carlo"]["final_return"]["p95"] is None  # NaN is null
    assert data["Statistical tests"]["jarque_bera"]["p_value"] == 1e-12
    page = report.to_html()
    stats = page.split("<h2>Statistical tests</h2>")[1].split("<h2>")[0]
    # Flat mappings: one grid, a row per test, a column per field.
    assert "<th>sharpe_t_test</th>" in stats and "<th>p_value</th>" in stats
    assert stats.count("<th>p_value</th>") == 1
    assert "<th>trials</th>" in stats
    mc = page.split("<h2>Monte Carlo</h2>")[1].split("<h2>")[0]
    assert "<h3>folds</h3>" in mc and "<th>sharpe</th>" in mc
    assert "<th>final_return.by_block.a</th>" in mc  # nested: dotted keys
    assert "0.05, 0.5, 0.95" in mc


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"Tests": [1, 2]}, "section 'Tests' must be a mapping"),
        ({"": {"a": 1}}, "non-empty string"),
        ({"Tests": {"a": object()}}, r"sections\['Tests'\]\['a'\]: a object is not JSON"),
        ([("Tests", {})], "sections must be a mapping"),
    ],
)
def test_bad_sections_are_value_errors_naming_them(run_dir, sections, message):
    with pytest.raises(ValueError, match=message):
        build_report(run_dir, sections=sections)


# ----------------------------------------------------------------------------- edge cases


def test_a_run_without_trades_benchmark_or_full_window_still_reports():
    times = pd.bdate_range("2030-01-01", periods=40, tz="UTC")
    results = {
        "equity_curve": pd.Series(np.linspace(100_000, 101_000, 40), index=times),
        "initial_capital": 100_000.0,
    }
    report = build_report(results, analyzer=PerformanceAnalyzer(PerformanceConfig(benchmark="")))
    d = json.loads(report.to_json())
    assert d["analysis"]["performance"]["round_trips"] == 0
    assert d["analysis"]["performance"]["win_rate"] is None
    assert all(v is None for v in d["series"]["rolling_sharpe"])  # 40 bars < 126
    assert d["run_config"] is None and d["risk_rules"]["verdicts_by_rule"] is None

    def note(cid):
        return [a["text"] for a in report.figures[cid]["layout"].get("annotations", [])]

    assert note("chart-trades") == ["no finished round trip"]
    assert note("chart-equity") == ["no benchmark for these dates"]
    assert "the run is shorter than the 126-bar window" in note("chart-rolling-sharpe")
    assert note("chart-verdicts") == ["the run record has no risk verdict counts"]
    assert "the run record has no config.json" in report.to_html()


def test_bad_inputs():
    with pytest.raises(ValueError, match="no bars"):
        build_report({"equity_curve": pd.Series([], dtype=float), "initial_capital": 1.0})
    with pytest.raises(ValueError, match="initial_capital"):
        build_report({"equity_curve": pd.Series([1.0], index=pd.DatetimeIndex(["2020-01-02"]))})
    with pytest.raises(ValueError, match="output is required"):
        write_report({"equity_curve": pd.Series([1.0]), "initial_capital": 1.0})


def test_resolve_run(run_dir, tmp_path):
    assert resolve_run("report-unit", run_dir.parent) == run_dir
    assert resolve_run(run_dir, tmp_path) == run_dir
    with pytest.raises(ValueError, match=r"run 'nope' not found: no run folder .*nope"):
        resolve_run("nope", run_dir.parent)
    # A path given, not a run id: said as given (it read "no run folder var/runs/var/runs/x").
    with pytest.raises(ValueError) as e:
        resolve_run("var/runs/nonexistent", "var/runs")
    assert str(e.value) == "run 'var/runs/nonexistent' not found: no folder at that path"
    with pytest.raises(ValueError, match=r"is not a run record: it has no equity\.csv"):
        resolve_run(tmp_path, tmp_path)


def test_report_config():
    assert ReportConfig.from_mapping({}) == ReportConfig()
    assert ReportConfig.from_mapping({"rolling_window": 63}).rolling_window == 63
    with pytest.raises(ConfigError, match=r"unknown key\(s\) report.window"):
        ReportConfig.from_mapping({"window": 63})
    with pytest.raises(ConfigError, match=r"report\.rolling_window must be >= 2"):
        ReportConfig(rolling_window=1)
    with pytest.raises(ConfigError, match=r"report\.return_bins must be an integer"):
        ReportConfig(return_bins=True)
    with pytest.raises(ConfigError, match=r"report\.trade_bins"):
        ReportConfig.from_mapping({"trade_bins": "many"})


# ----------------------------------------------------------------------------- the commands


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """`main(argv)` in-process from a fresh working directory: (exit code, stdout, stderr)."""
    from cli_runs import in_process

    return in_process(monkeypatch, tmp_path, capsys)


def test_report_command(cli, run_dir, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\noutput_dir = "{run_dir.parent}"\n')
    code, out, err = cli("report", "report-unit", "-c", str(cfg), "--output", str(tmp_path / "o"))
    assert code == 0, err
    assert out.startswith(f"report: {tmp_path / 'o' / 'report.html'} (") and " MB), " in out
    assert (tmp_path / "o" / "report.json").exists()
    assert "report:" not in err  # no progress bar when stderr is not a terminal
    # A path works too, and a report config changes what is drawn.
    (tmp_path / "a.toml").write_text(
        '[analysis]\nrisk_free_rate = 0.0\nbenchmark = ""\n[report]\nrolling_window = 21\n'
    )
    code, out, err = cli(
        "report", str(run_dir), "-c", str(cfg), "--output", str(tmp_path / "p"),
        "--analysis-config", str(tmp_path / "a.toml"),
    )  # fmt: skip
    assert code == 0, err
    d = json.loads((tmp_path / "p" / "report.json").read_text())
    assert d["report_config"]["rolling_window"] == 21
    assert d["analysis"]["config"]["risk_free_rate"] == 0.0
    assert d["analysis"]["benchmark"]["bars"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "tradingd: error: run 'nope' not found: no run folder"),
        (["{tmp}"], "is not a run record: it has no equity.csv"),
        (["report-unit", "--analysis-config", "{tmp}/bad.toml"], "analysis.risk_free_rate"),
        (["report-unit", "--analysis-config", "{tmp}/extra.toml"], "unknown table(s) risk"),
        (["report-unit", "--analysis-config", "{tmp}/missing.toml"], "analysis config"),
    ],
)
def test_report_command_errors(cli, run_dir, tmp_path, args, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\noutput_dir = "{run_dir.parent}"\n')
    (tmp_path / "bad.toml").write_text('[analysis]\nrisk_free_rate = "high"\n')
    (tmp_path / "extra.toml").write_text("[risk]\nx = 1\n")
    code, _, err = cli("report", *[a.format(tmp=tmp_path) for a in args], "-c", str(cfg))
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith("tradingd: error: ")


@pytest.fixture
def read_only_copy(run_dir, tmp_path):
    """The run folder on a read-only bind mount (root's permission bits would not stop a
    write); skipped where mounting is not allowed."""
    import shutil
    import subprocess

    src, mnt = tmp_path / "ro_src", tmp_path / "ro"
    shutil.copytree(run_dir, src / run_dir.name)
    mnt.mkdir()
    steps = (["mount", "--bind", str(src), str(mnt)], ["mount", "-o", "remount,ro,bind", str(mnt)])
    for k, step in enumerate(steps):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            if k:
                subprocess.run(["umount", str(mnt)], capture_output=True)
            pytest.skip(f"a read-only bind mount is not possible here: {done.stderr.strip()}")
    try:
        yield mnt / run_dir.name
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_read_only_run_folder_is_named_before_the_report_is_made(cli, read_only_copy, tmp_path):
    """Without --output the report goes into the run's folder: a read-only one failed with a
    traceback (OSError: Read-only file system) after the whole report had been computed."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\noutput_dir = "{read_only_copy.parent}"\n')
    code, _, err = cli("report", str(read_only_copy), "-c", str(cfg))
    assert code == 2 and "Traceback" not in err
    assert str(read_only_copy) in err and "not writable" in err and "--output" in err
    # With --output it is made elsewhere.
    code, _, err = cli(
        "report", str(read_only_copy), "-c", str(cfg), "--output", str(tmp_path / "o")
    )
    assert code == 0, err
    assert (tmp_path / "o" / "report.html").exists()


@pytest.fixture
def full_disk_copy(run_dir, tmp_path):
    """The run folder on a 1 MB tmpfs (a report.html is ~5 MB), with an earlier report in it;
    skipped where mounting is not allowed."""
    import shutil

    from conftest import small_tmpfs

    with small_tmpfs(tmp_path / "small") as mnt:
        copy = mnt / run_dir.name
        shutil.copytree(run_dir, copy)
        (copy / "report.html").write_text("<html>the earlier report</html>")
        (copy / "report.json").write_text('{"earlier": true}')
        yield copy


def test_a_report_the_disk_cannot_take_leaves_the_earlier_one_and_says_so(
    cli, full_disk_copy, tmp_path
):
    """`tradingd report` on a full disk left a truncated report.html (401 kB of 5 MB) in the
    run's folder and exited 1 with a traceback. The files are written to temporary names,
    synced and renamed, both or neither: the earlier report stays whole, nothing partial or
    temporary is left, and the error names the file, the cause and what to do, exit 2."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\noutput_dir = "{full_disk_copy.parent}"\n')
    before = {p.name: p.read_bytes() for p in full_disk_copy.iterdir()}
    code, _, err = cli("report", str(full_disk_copy), "-c", str(cfg), "--no-validation")
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert err.startswith(
        f"tradingd: error: cannot write {full_disk_copy / 'report.html'}: No space left on device"
    ), err
    assert "free space" in err and "--output FOLDER" in err
    assert {p.name: p.read_bytes() for p in full_disk_copy.iterdir()} == before


def test_report_command_names_a_ray_address_it_cannot_use(cli, run_dir, tmp_path):
    """Before: a traceback (no cluster there), or an error blaming the run's folder."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[default]')")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\noutput_dir = "{run_dir.parent}"\n')
    code, _, err = cli("report", "report-unit", "-c", str(cfg), "--ray-address", "bogus")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("tradingd: error: ray_address 'bogus' (--ray-address): "), err


def test_backtest_report_keeps_json_stdout(cli, tmp_path):
    code, out, err = cli("backtest", "-c", str(write_config(tmp_path)), "--report", "--json")
    assert code == 0, err
    summary = json.loads(out)  # one JSON object: the report's paths went to stderr
    folder = tmp_path / "runs" / "report-unit"
    assert f"report: {folder / 'report.html'}" in err
    data = json.loads((folder / "report.json").read_text())
    assert data["analysis"]["summary"]["final_equity"] == summary["final_equity"]


# ------------------------------------------------------------- the standard extra sections


def test_report_command_adds_the_validators_tests_and_monte_carlo(cli, run_dir, tmp_path):
    from tradingd.analysis.validation import StatisticalValidator, ValidationConfig

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\noutput_dir = "{run_dir.parent}"\n')
    (tmp_path / "a.toml").write_text("[validation]\npaths = 200\nseed = 5\n")
    code, _, err = cli(
        "report", "report-unit", "-c", str(cfg), "--output", str(tmp_path / "o"),
        "--analysis-config", str(tmp_path / "a.toml"),
    )  # fmt: skip
    assert code == 0, err
    d = json.loads((tmp_path / "o" / "report.json").read_text())
    expected = StatisticalValidator(ValidationConfig(paths=200, seed=5)).validate_performance(
        run_dir
    )
    tests = d["sections"]["Statistical tests"]
    assert set(tests) == set(expected["tests"])
    for name, row in expected["tests"].items():
        assert tests[name]["reject"] == row["reject"]
        assert close(tests[name]["p_value"], row["p_value"])
    verdict = d["sections"]["Statistical validation"]
    assert verdict["significant"] == expected["significant"]
    assert verdict["risk-free rate (annual)"] == 0.02  # the Sharpe tests' (the summary's: 0)
    assert verdict["Monte Carlo paths per method"] == 200
    mc = d["sections"]["Monte Carlo"]
    assert close(
        mc["stationary: max_drawdown"]["p95"],
        expected["monte_carlo"]["methods"]["stationary"]["max_drawdown"]["p95"],
    )
    html_text = (tmp_path / "o" / "report.html").read_text()
    assert "Statistical tests" in html_text and "Opdyke (2007)" in html_text
    # --no-validation leaves them out.
    code, _, err = cli(
        "report", "report-unit", "-c", str(cfg), "--output", str(tmp_path / "n"),
        "--no-validation",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "n" / "report.json").read_text())["sections"] == {}


def test_report_attribution_replays_the_run_and_its_lines_add_up(cli, run_dir, tmp_path):
    config = run_dir.parent.parent / "report.toml"  # the configuration the run was made with
    code, _, err = cli(
        "report", str(run_dir), "-c", str(config), "--output", str(tmp_path / "o"),
        "--no-validation",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = cli(
        "report", str(run_dir), "-c", str(config), "--output", str(tmp_path / "o"),
        "--no-validation", "--attribution",
    )  # fmt: skip
    assert code == 0, err
    d = json.loads((tmp_path / "o" / "report.json").read_text())
    lines = d["sections"]["Attribution: return by component"]
    eq = pd.read_csv(run_dir / "equity.csv")["equity"].to_numpy(float)
    capital = json.loads((run_dir / "summary.json").read_text())["initial_capital"]
    parts = sum(row["return"] for name, row in lines.items() if name != "total")
    assert parts == pytest.approx(eq[-1] / capital - 1.0, abs=1e-9)
    assert "momentum" in " ".join(lines)


def test_the_analysis_benchmark_is_the_attribution_s_and_the_section_names_it(
    cli, run_dir, tmp_path
):
    """[analysis] benchmark = "NASDAQ" gave the metrics' beta against the NASDAQ and the
    attribution's against the S&P 500, in a section that did not say which."""
    config = run_dir.parent.parent / "report.toml"
    (tmp_path / "a.toml").write_text('[analysis]\nbenchmark = "NASDAQ"\n')
    code, _, err = cli(
        "report", str(run_dir), "-c", str(config), "--output", str(tmp_path / "o"),
        "--no-validation", "--attribution", "--analysis-config", str(tmp_path / "a.toml"),
    )  # fmt: skip
    assert code == 0, err
    d = json.loads((tmp_path / "o" / "report.json").read_text())
    risk = d["sections"]["Attribution: systematic and idiosyncratic risk"]
    assert d["analysis"]["benchmark"]["name"] == risk["benchmark"] == "NASDAQ"
    assert risk["benchmark_bars"] == d["analysis"]["benchmark"]["bars"] > 0
    assert close(risk["beta"], d["analysis"]["risk"]["beta"])


def test_the_analysis_tables_share_the_analysis_settings_unless_they_set_their_own(tmp_path):
    """(Which periods_per_year a run's analysis then takes, the tables' or the run's own, is
    tests/unit/test_annualise_as_the_run.py's.)"""
    from tradingd.__main__ import _analysis_tables

    own = tmp_path / "a.toml"
    own.write_text(
        "[analysis]\nrisk_free_rate = 0.0\nperiods_per_year = 100\nvar_confidence = 0.99\n"
        'benchmark = "X"\nbenchmark_source = "csv"\nbenchmark_path = "x.csv"\n'
        "[validation]\nvar_confidence = 0.9\n"
        '[attribution]\nbenchmark = "NASDAQ"\n'
    )
    tables = _analysis_tables(str(own))
    v, a = tables["validation"], tables["attribution"]
    assert (v.risk_free_rate, v.periods_per_year, v.var_confidence) == (0.0, 100, 0.9)
    # The benchmark keys go together: NASDAQ is the bundled one, not a symbol of x.csv
    assert (a.benchmark, a.benchmark_source, a.benchmark_path) == ("NASDAQ", "bundled", "")
    assert a.periods_per_year == 100
    # Not set anywhere: left to each run (None), not 252.
    tables = _analysis_tables(None)
    assert {tables[n].periods_per_year for n in ("analysis", "validation", "attribution")} == {None}


def test_report_attribution_without_a_config_replays_with_the_runs_own(cli, run_dir, tmp_path):
    """Without -c the replay took the built-in defaults and failed with "not the same run":
    the run's own configuration is in its folder."""
    code, _, err = cli(
        "report", str(run_dir), "--output", str(tmp_path / "o"), "--no-validation",
        "--attribution",
    )  # fmt: skip
    assert code == 0, err
    lines = json.loads((tmp_path / "o" / "report.json").read_text())["sections"]
    assert "momentum" in " ".join(lines["Attribution: return by component"])


def test_report_attribution_refuses_a_configuration_that_is_not_the_runs(cli, run_dir, tmp_path):
    other = write_config(tmp_path, "")
    other.write_text(other.read_text().replace("lookback = 20", "lookback = 30"))
    code, _, err = cli(
        "report", str(run_dir), "-c", str(other), "--output", str(tmp_path / "o"),
        "--no-validation", "--attribution",
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # the replay's log lines come first
    assert last.startswith("tradingd: error: run ") and "not the same run" in last


def test_report_attribution_refuses_a_record_whose_data_file_changed_before_the_replay(
    cli, tmp_path
):
    """A data file edited since the run: the replay ran in full, then ended in "not the same
    run (another model version, config or data?)", not saying which. The record's data digest
    is compared with the file's first, and the error names both; an unchanged file replays."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "bars"
    folder.mkdir()
    days = pd.bdate_range("2016-01-04", periods=260)
    for name in ("AAA", "BBB", "CCC"):
        close = 50 * np.exp(np.cumsum(rng.normal(0.0005, 0.015, len(days))))
        pd.DataFrame(
            {
                "date": days.strftime("%Y-%m-%d"),
                "open": close,
                "high": close * 1.01,
                "low": close * 0.99,
                "close": close,
                "volume": 1_000_000,
            }
        ).to_csv(folder / f"{name}.csv", index=False)
    config = write_config(tmp_path, f'[data]\nsource = "csv"\npath = "{folder}"\n')
    code, _, err = cli("backtest", "-c", str(config))
    assert code == 0, err
    run = tmp_path / "runs" / "report-unit"
    code, _, err = cli(
        "report", str(run), "--output", str(tmp_path / "o"), "--no-validation", "--attribution"
    )
    assert code == 0, err  # the same file: the replay is the run
    lines = (folder / "BBB.csv").read_text().splitlines()
    cells = lines[100].split(",")
    cells[4] = repr(float(cells[4]) * 1.01)  # one close, 1% higher
    cells[2] = repr(max(float(cells[2]), float(cells[4])))
    lines[100] = ",".join(cells)
    (folder / "BBB.csv").write_text("\n".join(lines) + "\n")
    code, _, err = cli(
        "report", str(run), "--output", str(tmp_path / "o2"), "--no-validation", "--attribution"
    )
    last = err.strip().splitlines()[-1]
    assert code == 2 and "not the same run" not in err
    assert "its data files are not those it ran on" in last
    recorded = json.loads((run / "summary.json").read_text())["data"]["sha256"]
    now = hashlib.sha256(
        "".join(
            f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
            for n in ("AAA.csv", "BBB.csv", "CCC.csv")
        ).encode()
    ).hexdigest()
    assert f"sha256 {recorded}" in last and f"now sha256 {now}" in last


def test_backtest_report_checks_the_analysis_config_before_the_replay(cli, tmp_path):
    (tmp_path / "bad.toml").write_text("[validation]\npaths = -3\n")
    code, _out, err = cli(
        "backtest", "-c", str(write_config(tmp_path)), "--report",
        "--analysis-config", str(tmp_path / "bad.toml"),
    )  # fmt: skip
    assert code == 2 and "validation.paths" in err
    assert not (tmp_path / "runs" / "report-unit").exists()  # nothing was replayed


def test_the_analysis_risk_free_rate_is_the_validation_s(cli, run_dir, tmp_path):
    """[analysis] risk_free_rate = 0 gave the metrics' Sharpe ratio at 0% and the validation's
    tests, Monte Carlo and verdict at the 2% default."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\noutput_dir = "{run_dir.parent}"\n')
    (tmp_path / "a.toml").write_text(
        "[analysis]\nrisk_free_rate = 0.0\n[validation]\npaths = 200\n"
    )
    code, _, err = cli(
        "report", "report-unit", "-c", str(cfg), "--output", str(tmp_path / "o"),
        "--analysis-config", str(tmp_path / "a.toml"),
    )  # fmt: skip
    assert code == 0, err
    d = json.loads((tmp_path / "o" / "report.json").read_text())
    sharpe = d["analysis"]["performance"]["sharpe"]
    assert close(d["sections"]["Monte Carlo"]["iid: sharpe"]["observed"], sharpe)
    # The tests and the verdict are those of a validation told rf = 0 itself
    from tradingd.analysis.validation import StatisticalValidator, ValidationConfig

    own = ValidationConfig(paths=200, risk_free_rate=0.0)
    expected = StatisticalValidator(own).validate_performance(run_dir)
    for name, row in expected["tests"].items():
        assert close(d["sections"]["Statistical tests"][name]["p_value"], row["p_value"]), name
    assert d["sections"]["Statistical validation"]["significant"] == expected["significant"]


def test_report_monte_carlo_in_worker_processes_is_the_same(cli, run_dir, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\noutput_dir = "{run_dir.parent}"\n')
    (tmp_path / "a.toml").write_text("[validation]\npaths = 300\nchunk_size = 100\n")
    sections = []
    for out, extra in (("one", []), ("two", ["--workers", "2"])):
        code, _, err = cli(
            "report", "report-unit", "-c", str(cfg), "--output", str(tmp_path / out),
            "--analysis-config", str(tmp_path / "a.toml"), *extra,
        )  # fmt: skip
        assert code == 0, err
        sections.append(json.loads((tmp_path / out / "report.json").read_text())["sections"])
    assert sections[0]["Monte Carlo"] == sections[1]["Monte Carlo"]
    assert sections[0]["Statistical tests"] == sections[1]["Statistical tests"]
    code, _, err = cli("report", "report-unit", "-c", str(cfg), "--workers", "-1")
    assert code == 2 and "--workers must be >= 0" in err


def test_report_names_the_build_that_made_a_record_of_other_code(cli, run_dir, tmp_path):
    """After an upgrade a report of an old record compared it with nothing: the record's
    environment.json named another commit, and neither the report nor its line said so."""
    import shutil

    old = tmp_path / "old-build"
    shutil.copytree(run_dir, old)
    env = json.loads((old / "environment.json").read_text())
    env["source"] = {"commit": "0123456789ab" + "0" * 28, "uncommitted_changes": False}
    # And another version: an installed copy (CI's) knows no commit of its own, and tells
    # builds apart by version then.
    env.setdefault("packages", {})["tradingd"] = "0.0.9"
    (old / "environment.json").write_text(json.dumps(env))
    code, out, err = cli("report", str(old), "--output", str(tmp_path / "o"), "--no-validation")
    assert code == 0, err
    (note,) = [line for line in out.splitlines() if line.startswith("note:")]
    assert "was made by tradingd" in note and "commit 0123456789ab;" in note
    d = json.loads((tmp_path / "o" / "report.json").read_text())
    assert d["record_build_differs"] is True
    assert d["record_build"]["commit"] == env["source"]["commit"]
    assert "the run was made by tradingd" in (tmp_path / "o" / "report.html").read_text()
    # A record of this build: no note.
    code, out, err = cli("report", str(run_dir), "--output", str(tmp_path / "p"), "--no-validation")
    assert code == 0, err
    assert "note:" not in out
    assert json.loads((tmp_path / "p" / "report.json").read_text())["record_build_differs"] is False


def test_a_report_of_a_record_whose_environment_json_cannot_be_read_says_so(cli, run_dir, tmp_path):
    """The report measures the run without the build that made it, and goes on; but it
    named no build without a word, as for a record older than environment.json."""
    import shutil

    damaged = tmp_path / "damaged-env"
    shutil.copytree(run_dir, damaged)
    (damaged / "environment.json").write_text('{"packages": ')
    code, out, err = cli("report", str(damaged), "--output", str(tmp_path / "o"), "--no-validation")
    assert code == 0, err
    said = [line for line in err.splitlines() if "report.environment_unreadable" in line]
    assert len(said) == 1 and str(damaged / "environment.json") in said[0]
    assert "note:" not in out
    assert json.loads((tmp_path / "o" / "report.json").read_text())["record_build"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "config.json holds list, not a JSON object; pass the run's configuration"),
        ('{"data": "bundled"}', "config.json cannot be read as the run's configuration (data "),
        ('{"run": ', "config.json cannot be read as JSON: "),
    ],
)
def test_report_attribution_of_a_record_whose_config_json_is_damaged_is_a_named_error(
    cli, run_dir, tmp_path, text, message
):
    """Without -c the replay takes the record's config.json: a list there ended in load_config's
    TypeError and a `data` that is no table in an AttributeError, both tracebacks."""
    import shutil

    damaged = tmp_path / "damaged-config"
    shutil.copytree(run_dir, damaged)
    (damaged / "config.json").write_text(text)
    code, _, err = cli(
        "report", str(damaged), "--output", str(tmp_path / "o"), "--no-validation",
        "--attribution",
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tradingd: error: {damaged}/{message}") and "with -c" in last


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"run_id": "report-unit", "fi', "summary.json cannot be read as JSON: "),
        ('["report-unit"]', "summary.json holds list, not a JSON object"),
    ],
)
def test_report_attribution_of_a_record_whose_summary_json_is_damaged_fails_before_the_replay(
    cli, run_dir, tmp_path, monkeypatch, text, message
):
    """The replay takes the record's run id and models from its summary.json: a damaged one
    was read as none, the whole replay ran with the configuration as it is, and only the
    comparison with the record named the file after it."""
    import shutil

    from tradingd.analysis import attribution

    replays: list[object] = []
    real = attribution.replay_run

    async def counted(*args, **kwargs):
        replays.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(attribution, "replay_run", counted)
    damaged = tmp_path / "damaged-summary"
    shutil.copytree(run_dir, damaged)
    (damaged / "summary.json").write_text(text)
    code, _, err = cli(
        "report", str(damaged), "--output", str(tmp_path / "o"), "--no-validation",
        "--attribution",
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert replays == []  # refused before the replay
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tradingd: error: run {damaged}: {damaged}/{message}")
    assert "run the backtest again" in last


def test_backtest_report_is_written_when_stdout_closes_before_the_summary(tmp_path):
    """`tradingd backtest --report --json | head -c 50`: the summary's print met the closed
    pipe and the command ended there (exit 141) without the report, after the rerun had
    removed the earlier one. The report is written; the exit still says the pipe closed."""
    import os
    import signal
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has gone before the command writes
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    cfg = write_config(tmp_path)
    command = [sys.executable, "-m", "tradingd", "backtest", "-c", str(cfg), "--report"]
    try:
        r = subprocess.run(
            [*command, "--no-validation", "--json", "--no-progress"],
            cwd=tmp_path,
            env=env,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write)
    assert r.returncode == 128 + signal.SIGPIPE, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    (run,) = [p.parent for p in (tmp_path / "runs").glob("*/summary.json")]
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert report["run_id"] == summary["run_id"] == "report-unit"
    assert "report: " in r.stderr  # its paths said where the reader could not see them


def test_report_refuses_pool_options_without_the_monte_carlo(cli, tmp_path):
    """`--workers` and `--ray-address` run the Monte Carlo chunks; with --no-validation
    there is none, and they were dropped without a word."""
    code, _, err = cli("report", "no-such-run", "--no-validation", "--workers", "2")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "tradingd: error: report: --workers run the Monte Carlo, which --no-validation "
        "leaves out: leave --workers out, or validate"
    )


def test_the_benchmark_line_and_total_keep_the_move_across_a_missing_benchmark_day():
    """The line compounded the per-bar returns with a missing one taken as 0, and a missing
    day leaves two bars without a return: levels 100, 101, [110 missing], 111, 112, 113 drew
    a line ending at 102.8 and a benchmark total return of 2.8%, not 13%. The per-bar
    statistics keep their documented NaN handling (`benchmark_bars` 3)."""
    t = pd.bdate_range("2020-01-06", periods=6, tz="UTC")
    levels = pd.Series([100.0, 101.0, 110.0, 111.0, 112.0, 113.0], index=t).drop(t[2])
    equity = pd.Series([1e5, 1.01e5, 1.02e5, 1.01e5, 1.03e5, 1.04e5], index=t)
    run = {"equity_curve": equity, "initial_capital": 1e5}
    report = build_report(run, analyzer=PerformanceAnalyzer(benchmark=levels))
    line = report.data["series"]["benchmark_equity"]
    assert line == pytest.approx([1e5, 1.01e5, 1.01e5, 1.11e5, 1.12e5, 1.13e5], rel=1e-12)
    p = report.data["analysis"]["performance"]
    assert p["benchmark_total_return"] == pytest.approx(0.13, rel=1e-12)
    assert p["benchmark_bars"] == 3 and report.data["series"]["benchmark_returns"][2] is None


def test_a_benchmark_that_ends_before_the_run_is_not_drawn_flat_to_its_end():
    t = pd.bdate_range("2020-01-06", periods=5, tz="UTC")
    levels = pd.Series([50.0, 55.0, 60.0], index=t[:3])
    equity = pd.Series(np.full(5, 1e5), index=t)
    report = build_report(
        {"equity_curve": equity, "initial_capital": 1e5},
        analyzer=PerformanceAnalyzer(benchmark=levels),
    )
    assert report.data["series"]["benchmark_equity"][:3] == pytest.approx([1e5, 1.1e5, 1.2e5])
    assert report.data["series"]["benchmark_equity"][3:] == [None, None]
    assert report.data["analysis"]["performance"]["benchmark_total_return"] == pytest.approx(0.2)


def test_the_page_marks_the_annual_figures_of_a_run_under_a_quarter_of_a_year(report):
    t = pd.bdate_range("2020-01-06", periods=5, tz="UTC")
    equity = pd.Series([1.001e5, 1.0005e5, 1.002e5, 1.003e5, 1.0025e5], index=t)
    short = build_report(
        {"equity_curve": equity, "initial_capital": 1e5},
        analyzer=PerformanceAnalyzer(PerformanceConfig(benchmark="")),
    ).to_html()
    assert "* annualised from 5 bars, under a quarter of a year of 252" in short
    tiles = dict(re.findall(r'<div class="k">([^<]*)</div><div class="v">([^<]*)<', short))
    assert "Annual return (CAGR) *" in tiles and "Volatility *" in tiles
    assert "annualised from" not in report.to_html()  # the shared run: years of bars
