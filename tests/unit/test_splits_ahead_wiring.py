"""Where a live run asks for the corporate actions, and what it says when it does not."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from conftest import make_panel
from structlog.testing import capture_logs

from tradingd.app import build_engine, corporate_actions_url
from tradingd.config import AlpacaConfig, AlpacaFeedConfig, FeedConfig


def _with(config: Any, *, data_url: str = "", base_url: str, feed: FeedConfig) -> Any:
    return dataclasses.replace(
        config,
        feed=feed,
        data=dataclasses.replace(config.data, symbols=("AAA",)),
        broker=dataclasses.replace(
            config.broker, alpaca=AlpacaConfig(base_url=base_url, data_url=data_url)
        ),
    )


def test_the_alpaca_feed_s_data_host_is_asked_when_data_url_is_empty(engine_config: Any) -> None:
    feed = FeedConfig(source="alpaca", alpaca=AlpacaFeedConfig(base_url="http://data.proxy:8080"))
    trading = "https://paper-api.alpaca.markets"
    config = _with(engine_config, base_url=trading, feed=feed)
    assert corporate_actions_url(config) == "http://data.proxy:8080"
    # data_url still decides when set; another feed or none of its own: as before.
    assert (
        corporate_actions_url(_with(config, data_url="http://x:1", base_url=trading, feed=feed))
        == "http://x:1"
    )
    assert (
        corporate_actions_url(_with(config, base_url=trading, feed=FeedConfig(source="alpaca")))
        == "https://data.alpaca.markets"
    )
    assert (
        corporate_actions_url(_with(config, base_url="http://proxy:9", feed=FeedConfig()))
        == "http://proxy:9"
    )


def test_a_live_run_without_alpaca_says_splits_are_not_looked_up(
    engine_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    with capture_logs() as logs:
        engine = build_engine(engine_config, "live", panel=make_panel(n_bars=30, split_at=None))
    assert engine.splits_ahead is None
    [off] = [e for e in logs if e["event"] == "split.ahead_off"]
    assert "Simulated" in off["reason"] and "broker.kind" in off["reason"]
