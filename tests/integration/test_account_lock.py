"""One daemon per broker account, however its URL is written.

Found by running several daemons on one host: `http://127.0.0.1:P` and `http://127.0.0.1:P/`
were two locks (the raw base_url was hashed, the broker strips the slash), so two daemons
traded one account. The locks are built as the daemon builds them (`app._instance_lock`).
"""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.app import _instance_lock
from tradingd.config import Config
from tradingd.instance_lock import AnotherDaemonRunning, broker_account, broker_endpoint
from tradingd.stored_run import _account

KEY_ID = "PKACCOUNTLOCKTEST0001"


def _config(store: str, base_url: str) -> Config:
    c = Config()
    alpaca = dataclasses.replace(c.broker.alpaca, base_url=base_url)
    return dataclasses.replace(
        c,
        storage=dataclasses.replace(c.storage, url=store),
        broker=dataclasses.replace(c.broker, kind="alpaca", alpaca=alpaca),
    )


def _daemon_lock(store: str, base_url: str, key_id: str = KEY_ID):  # type: ignore[no-untyped-def]
    """The lock part `build_engine` gives a live engine trading Alpaca with `key_id`."""
    engine = SimpleNamespace(
        broker=SimpleNamespace(_key_id=key_id),
        run=SimpleNamespace(run_id="acct-live"),
        request_stop=lambda: None,
    )
    service = _instance_lock(_config(store, base_url), engine)  # type: ignore[arg-type]
    service.wait_s = 0.0  # the refusal at once, not after 5 s of waiting for the holder
    return service


@pytest.mark.parametrize(
    "other",
    [
        "http://127.0.0.1:18555/",
        "HTTP://LOCALHOST:18555",
        "http://localhost:18555//",
        "http://[::1]:18555",
    ],
)
async def test_one_account_under_another_spelling_of_its_url_is_refused(tmp_path, other):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    first = _daemon_lock(store, "http://127.0.0.1:18555")
    await first.start()
    try:
        second = _daemon_lock(store, other)
        with pytest.raises(AnotherDaemonRunning, match=rf"pid {os.getpid()} "):
            await second.start()
    finally:
        await first.stop()


def test_reset_halt_derives_the_daemons_account_from_any_spelling(monkeypatch):
    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("APCA_API_SECRET_KEY", "not-a-real-secret")
    daemon = _daemon_lock("sqlite:///:memory:", "https://paper-api.alpaca.markets").account
    shell = _config("sqlite:///:memory:", "https://Paper-API.alpaca.markets:443/")
    assert _account(shell, "acct-live") == daemon


_SPELLINGS = st.fixed_dictionaries(
    {
        "scheme": st.sampled_from(["http", "HTTP", "Http"]),
        "host": st.sampled_from(["127.0.0.1", "localhost", "LocalHost", "127.0.0.2", "[::1]"]),
        "slashes": st.sampled_from(["", "/", "//", "///"]),
    }
)


@settings(max_examples=60, deadline=None)
@given(port=st.integers(1, 65535), a=_SPELLINGS, b=_SPELLINGS)
def test_every_spelling_of_one_loopback_endpoint_is_one_account(port, a, b):
    def url(s: dict[str, str]) -> str:
        return f"{s['scheme']}://{s['host']}:{port}{s['slashes']}"

    assert broker_account("alpaca", KEY_ID, url(a)) == broker_account("alpaca", KEY_ID, url(b))


def test_distinct_accounts_stay_distinct():
    base = broker_account("alpaca", KEY_ID, "https://paper-api.alpaca.markets")
    assert base == broker_account("alpaca", KEY_ID, "https://paper-api.alpaca.markets:443")
    for key_id, url in [
        ("PKOTHERKEY", "https://paper-api.alpaca.markets"),
        (KEY_ID, "https://api.alpaca.markets"),
        (KEY_ID, "https://paper-api.alpaca.markets:8443"),
        (KEY_ID, "http://paper-api.alpaca.markets"),
        (KEY_ID, "https://paper-api.alpaca.markets/proxy-b"),
    ]:
        assert broker_account("alpaca", key_id, url) != base, (key_id, url)
    assert KEY_ID not in base
    assert broker_endpoint("https://user:pw@Paper-API.alpaca.markets/a//b/?x=1#f") == (
        "https://paper-api.alpaca.markets:443/a/b"
    )
