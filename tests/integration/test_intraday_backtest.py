"""A backtest of intraday bars counts sessions of them, as the live run of the same bars does:
periods_per_year for the plugins and the summary's annual figures, the day's loss from the
previous session's close."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import make_panel

from tradingd.app import bar_of_data, build_engine
from tradingd.backtest import run_backtest
from tradingd.core.errors import ConfigError
from tradingd.feeds.panel import Panel


def intraday_panel(minutes: int = 5, sessions: int = 8, n_symbols: int = 4) -> Panel:
    """78 five-minute bars a session (09:30-16:00 New York in winter: 14:30-21:00 UTC)."""
    rng = np.random.default_rng(3)
    days = pd.bdate_range("2024-01-08", periods=sessions)
    per = 390 // minutes
    times = np.concatenate(
        [
            (
                d
                + pd.Timedelta(hours=14, minutes=30)
                + pd.to_timedelta(np.arange(per) * minutes, "m")
            ).to_numpy(dtype="datetime64[ns]")
            for d in days
        ]
    )
    n = len(times)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.002, size=(n, n_symbols)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.0005, size=close.shape))
    return Panel(
        times=times,
        symbols=tuple(f"S{i}" for i in range(n_symbols)),
        open=open_,
        high=np.maximum(open_, close) * 1.001,
        low=np.minimum(open_, close) * 0.999,
        close=close,
        volume=np.full(close.shape, 1e6),
        split=np.ones_like(close),
        dividend=np.zeros_like(close),
    )


def test_the_bar_of_a_replays_data_is_found_from_its_times():
    daily = make_panel(n_bars=300, split_at=None)
    assert bar_of_data(daily) == "1d"
    # Sessions labelled at their close in UTC (21:00, 20:00 in summer): still daily bars.
    closes = pd.DatetimeIndex(daily.times).tz_localize("America/New_York") + pd.Timedelta(hours=16)
    at_close = dataclasses.replace(
        daily, times=closes.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[ns]")
    )
    assert bar_of_data(at_close) == "1d"
    assert bar_of_data(intraday_panel(5)) == "5m"
    assert bar_of_data(intraday_panel(15)) == "15m"
    with pytest.raises(ConfigError, match="10 minutes apart"):
        bar_of_data(intraday_panel(10))
    # Spacings under a minute, or not whole minutes, are refused too (they were read in whole
    # minutes: 30 s as 0, so daily; 90 s as 1 minute).
    for seconds in (30, 90):
        panel = intraday_panel(5)
        start = panel.times[0]
        spaced = start + np.arange(len(panel.times)) * np.timedelta64(seconds, "s")
        with pytest.raises(ConfigError, match=f"{seconds} seconds apart"):
            bar_of_data(dataclasses.replace(panel, times=spaced))


async def test_a_backtest_of_five_minute_bars_annualises_and_sizes_by_sessions(
    engine_config, tmp_path
):
    """It ran them as daily bars: the summary annualised with 252 bars a year (a -59% run
    over two months printed an annual return of -5.9%), and kelly_garch read a bar's
    volatility as a day's."""
    panel = intraday_panel(5)
    config = dataclasses.replace(
        engine_config, run=dataclasses.replace(engine_config.run, start="", run_id="intra")
    )
    engine = build_engine(config, "backtest", panel=panel)
    try:
        assert engine.data_bar == "5m"  # type: ignore[attr-defined]
    finally:
        engine.close_held()
    outcome = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    m = outcome.summary
    bars, total = m["bars"], m["total_return"]
    # 252 sessions of 78 bars a year: the annual return compounds the run's over its years.
    assert m["annual_return"] == pytest.approx((1 + total) ** (252 * 78 / bars) - 1, rel=1e-9)
    assert not math.isclose(m["annual_return"], (1 + total) ** (252 / bars) - 1, rel_tol=1e-3)
    assert m["bar"] == "5m" and m["periods_per_year"] == 252 * 78

    # The report of the run annualises the same way (it read 252 bars a year: a year of
    # 5-minute bars as 78), unless its analysis config says otherwise.
    import structlog

    from tradingd.__main__ import main

    # The command configures logging for the process: put back what the other tests use
    # (capture_logs cannot see loggers cached under the command's configuration).
    saved = structlog.get_config()
    try:
        _report_annualises(main, tmp_path, m)
    finally:
        structlog.configure(**saved)


def _report_annualises(main, tmp_path, m) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\noutput_dir = "{tmp_path}"\n')
    assert (
        main(["report", str(tmp_path / "out"), "-c", str(cfg), "--output", str(tmp_path / "r")])
        == 0
    )
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["analysis"]["config"]["periods_per_year"] == 252 * 78
    assert report["analysis"]["performance"]["annual_return"] == pytest.approx(m["annual_return"])
    own = tmp_path / "a.toml"
    own.write_text("[analysis]\nperiods_per_year = 252\n")
    args = ["report", str(tmp_path / "out"), "-c", str(cfg), "--output", str(tmp_path / "r2")]
    assert main([*args, "--analysis-config", str(own)]) == 0
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["analysis"]["config"]["periods_per_year"] == 252


def test_every_table_of_the_report_annualises_as_the_run(tmp_path):
    """Only the performance table took the run's periods_per_year: the validation's per-bar
    risk-free rate (2% / 252 on every 5-minute bar), its tests and the attribution kept 252."""
    from tradingd.__main__ import _analysis_tables, _annualise_as_the_run

    (tmp_path / "summary.json").write_text(json.dumps({"periods_per_year": 19656.0}))
    tables = _analysis_tables(None)
    _annualise_as_the_run(tables, tmp_path, None)
    assert {n: tables[n].periods_per_year for n in ("analysis", "validation", "attribution")} == {
        "analysis": 19656.0, "validation": 19656.0, "attribution": 19656.0
    }  # fmt: skip
    own = tmp_path / "a.toml"
    own.write_text("[validation]\nperiods_per_year = 252\n")
    tables = _analysis_tables(str(own))
    _annualise_as_the_run(tables, tmp_path, str(own))
    assert tables["validation"].periods_per_year == 252
    assert tables["analysis"].periods_per_year == 19656.0
