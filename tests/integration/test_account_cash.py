"""A new live run on an Alpaca account: the account's cash against the run's
`run.initial_capital` (the real alpaca-py client against the loopback fake)."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import make_panel
from fakes.alpaca_trading_server import running_fake
from structlog.testing import capture_logs

from tradingd.app import build_engine
from tradingd.config import AlpacaConfig, LiveConfig
from tradingd.core.errors import ConfigError


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=30_000.0) as server:
        yield server


def _live(engine_config, fake, capital: float):
    panel = make_panel(n_bars=70, split_at=None)
    return panel, dataclasses.replace(
        engine_config,
        live=LiveConfig(bars_per_second=400.0),
        run=dataclasses.replace(
            engine_config.run,
            start=panel.datetimes()[60].date().isoformat(),
            run_id="cash-check",
            initial_capital=capital,
        ),
        broker=dataclasses.replace(
            engine_config.broker,
            kind="alpaca",
            alpaca=AlpacaConfig(base_url=fake.url, stream_url=fake.stream_url),
        ),
    )


async def test_a_run_with_more_capital_than_the_account_has_cash_is_refused(engine_config, fake):
    """A 30,000 account was traded as a 100,000 book: orders sized for money it did not
    have, the drawdown guard and /status on an imaginary book."""
    panel, config = _live(engine_config, fake, 100_000.0)
    engine = build_engine(config, "live", panel=panel)
    with pytest.raises(ConfigError, match=r"30,000\.00 USD in cash.*initial_capital = 100,000"):
        await engine.run_until_done()
    assert fake.orders == {}  # nothing was sent


async def test_a_run_managing_part_of_the_account_starts(engine_config, fake):
    panel, config = _live(engine_config, fake, 20_000.0)
    engine = build_engine(config, "live", panel=panel)
    with capture_logs() as logs:
        result = await engine.run_until_done()
    assert result.bars == len(panel.times) - 60  # every bar after the warm-up traded
    assert result.orders > 0 and len(fake.orders) > 0
    (line,) = [e for e in logs if e["event"] == "account.cash"]
    assert line["account_cash"] == 30_000.0 and line["run_cash"] == 20_000.0
