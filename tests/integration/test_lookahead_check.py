"""`tradingd lookahead-check`: a plugin that reads the future is caught, naming the plugin and
the bar; a built-in strategy passes; a nondeterministic plugin is told apart."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from conftest import _StubEntryPoint, engine_toml, make_panel

from tradingd.__main__ import main
from tradingd.config import PluginSpec
from tradingd.core.errors import TradingdError
from tradingd.lookahead_check import cut_panel, lookahead_check


@dataclass(frozen=True)
class _NoParams:
    pass


class PeeksAhead:
    """Long what rises tomorrow: the next row of `ret_1`, through the feature's `.base`
    (the whole history's matrix), where there is one."""

    kind: ClassVar[str] = "signal"
    Config = _NoParams

    def __init__(self, config, symbols):
        self.name = "peeks_ahead"

    def required_features(self):
        return ("ret_1",)

    def score(self, ctx):
        whole = ctx.features["ret_1"].base
        i = ctx.index + 1
        if whole is None or i >= len(whole):
            return np.full(len(ctx.symbols), np.nan)
        return np.clip(np.asarray(whole[i]) * 50.0, -1.0, 1.0)


class ReadsTomorrowsClose:
    """Tomorrow's close over today's through the bar's `.base` (the panel's whole close),
    without asking whether there is a tomorrow: it raises where the data ends."""

    kind: ClassVar[str] = "signal"
    Config = _NoParams

    def __init__(self, config, symbols):
        self.name = "reads_tomorrow"

    def required_features(self):
        return ()

    def score(self, ctx):
        close = ctx.bar.close.base
        return np.clip(np.nan_to_num(close[ctx.index + 1] / close[ctx.index] - 1) * 50, -1, 1)


class CoinFlip:
    """Scores drawn without a seed: another run, other scores."""

    kind: ClassVar[str] = "signal"
    Config = _NoParams

    def __init__(self, config, symbols):
        self.name = "coin_flip"
        self._rng = np.random.default_rng()

    def required_features(self):
        return ()

    def score(self, ctx):
        return self._rng.uniform(-1.0, 1.0, len(ctx.symbols))


@pytest.fixture
def test_plugins(monkeypatch):
    from tradingd.engine import plugins as registry

    eps = dict(registry.available())
    eps["peeks_ahead"] = _StubEntryPoint("peeks_ahead", PeeksAhead)
    eps["coin_flip"] = _StubEntryPoint("coin_flip", CoinFlip)
    eps["reads_tomorrow"] = _StubEntryPoint("reads_tomorrow", ReadsTomorrowsClose)
    monkeypatch.setattr(registry, "available", lambda: eps)


def _with_signal(config, name):
    return dataclasses.replace(config, signals=(PluginSpec(name),))


def _panel():
    return make_panel(n_symbols=5, n_bars=220, split_at=None)


def test_a_built_in_strategy_has_no_lookahead(engine_config, tmp_path):
    # In two worker processes: the runs and their decisions travel by pickle.
    report = lookahead_check(engine_config, panel=_panel(), cuts=3, workers=2)
    assert report.ok, report.to_dict()
    assert len(report.cuts) == 3 and report.repeat is not None and report.repeat.ok
    assert all(c.bars_compared > 20 for c in report.cuts)
    # In memory: no store file, no audit log, no run folder.
    assert not (tmp_path / "store.db").exists()
    assert not (tmp_path / "audit").exists() and not (tmp_path / "runs").exists()


def test_a_plugin_reading_the_next_row_is_caught_at_the_last_bar_before_each_cut(
    engine_config, test_plugins
):
    panel = _panel()
    config = _with_signal(engine_config, "peeks_ahead")
    report = lookahead_check(config, panel=panel, cuts=2)
    assert not report.ok and report.reproducible
    times = panel.datetimes()
    for c in report.cuts:
        assert not c.ok
        d = c.first
        assert d is not None
        assert d.stage == "signal peeks_ahead" and d.plugin == "peeks_ahead"
        # Where the peek shows: the cut run has no next row there, the whole run has.
        assert d.time == c.cut and d.last_bar and c.cut in times[:-1]
        assert c.differing_bars == 1
        assert "score (combined)" in d.also
        assert d.values and all(a == "nan" and b != "nan" for _, a, b in d.values)


def test_a_plugin_that_fails_at_the_data_s_end_is_an_error_naming_it(engine_config, test_plugins):
    """Reading past the last row fails the whole-history run too: nothing to compare."""
    config = _with_signal(engine_config, "reads_tomorrow")
    with pytest.raises(TradingdError, match=r"whole-history backtest failed.*reads_tomorrow") as e:
        lookahead_check(config, panel=_panel(), cuts=1)
    # The line named is the plugin's, in this file, not the check's wrapper around it.
    assert f"{__file__}:" in str(e.value) and "/daemon/lookahead_check.py" not in str(e.value)


def test_a_run_end_past_the_cuts_is_not_warned_about_at_each_cut_run(engine_config):
    """A cut run is a backtest with run.end at its cut: the configured run.end (the data's
    last day) was warned about as data missing (run.window_clipped) at every cut run."""
    from structlog.testing import capture_logs

    panel = _panel()
    last = panel.datetimes()[-1]
    config = dataclasses.replace(
        engine_config, run=dataclasses.replace(engine_config.run, end=f"{last:%Y-%m-%d}")
    )
    with capture_logs() as logs:
        report = lookahead_check(config, panel=panel, cuts=2, repeat=False)
    assert report.ok and len(report.cuts) == 2
    assert [e for e in logs if e["event"] == "run.window_clipped"] == []


def test_a_cut_panel_reaches_nothing_after_its_cut():
    panel = _panel()
    cut = cut_panel(panel, 99)
    assert cut.close.shape == (100, 5)
    row = cut.row(99, cut.datetimes()[99])
    assert row.close.base.shape[0] == 100  # not the whole panel's 220 rows
    np.testing.assert_array_equal(cut.close, panel.close[:100])


def test_a_nondeterministic_plugin_is_reported_as_not_reproducible(engine_config, test_plugins):
    config = _with_signal(engine_config, "coin_flip")
    report = lookahead_check(config, panel=_panel(), cuts=1)
    assert not report.ok and not report.reproducible
    assert report.repeat is not None and report.repeat.first is not None
    assert report.repeat.first.plugin == "coin_flip"
    # The first bar decided differs already: far from any cut.
    assert not report.repeat.first.last_bar


def _csv_config(tmp_path, signal: str) -> list[str]:
    panel = _panel()
    rows = [
        {
            "time": t.date().isoformat(),
            "symbol": sym,
            **{f: float(getattr(panel, f)[i, j]) for f in ("open", "high", "low", "close")},
            "volume": float(panel.volume[i, j]),
        }
        for j, sym in enumerate(panel.symbols)
        for i, t in enumerate(panel.datetimes())
        if not np.isnan(panel.close[i, j])
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "bars.csv", index=False)
    # engine_config's file, then this run's data and signal.
    path = tmp_path / f"{signal}.toml"
    path.write_text(
        f"""
[run]
run_id = "look"
[data]
source = "csv"
path = "{(tmp_path / "bars.csv").as_posix()}"
layout = "long"
[cache]
data = false
features = false
[[signals]]
name = "{signal}"
"""
    )
    return ["-c", str(engine_toml(tmp_path)), "-c", str(path)]


def test_cli_exit_codes_and_json(tmp_path, test_plugins, capsys):
    peek = _csv_config(tmp_path, "peeks_ahead")
    # No --no-progress: stderr is not a terminal here, so no progress bar is drawn into it.
    assert main(["lookahead-check", *peek, "--at", "2020-06-01"]) == 1
    out, err = capsys.readouterr()
    assert "%|" not in err and "\r" not in err
    assert "signal plugin 'peeks_ahead'" in out and "2020-06-01" in out
    assert "the last bar before the cut" in out and "LOOKAHEAD" in out

    fair = _csv_config(tmp_path, "momentum")
    assert main(["lookahead-check", *fair, "--cuts", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and len(result["cuts"]) == 2 and result["backtests"] == 4

    # A cut after the data's last bar cuts nothing: a usage error.
    assert main(["lookahead-check", *fair, "--at", "2030-01-01"]) == 2
    assert "nothing is cut" in capsys.readouterr().err
