"""Start the loopback vendor fakes by hand, to try `tradingd run`'s live path (an Alpaca broker,
a vendor feed) without an Alpaca account or the internet. From the checkout:

    python -m tests.fakes --alpaca --yahoo

starts the chosen fakes on 127.0.0.1 (free ports unless `--<fake>-port` names one), prints the
`export` lines that point `tradingd run` at them (the fakes' keys, base URLs, a store of its
own) and stays up until SIGINT or SIGTERM, when it stops them and exits 0.

The servers are the tests' own (tests/fakes/*.py), over one synthetic market (`BarBook`)
whose time is the wall clock's, so a real-time daemon finds the bar that just closed. Orders
at the Alpaca fake are matched every `MARKET_TICK_S` at the last price of that market (the
close of the symbol's newest daily bar: during a session the price now, outside it the last
close), as `fill_open_orders_every` does for the daemon tests. The Alpaca fake answers with
the recorded bodies of the shared fixtures (`TRADINGD_SHARED_FIXTURES`): without them
`--alpaca` is refused, naming the folder. They bind loopback only, unless `--host` names
another address and `--allow-non-loopback` says that is meant: the fakes take any order and
check only their own fake keys.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import signal
import sys
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from aiohttp import web

from . import BarBook, LoopThread
from .alpaca_data_server import AlpacaDataFake
from .alpaca_trading_server import ALPACA, AlpacaTradingFake, fixtures_available
from .alphavantage_server import AlphaVantageFake
from .yahoo_server import YahooFake

# How often the Alpaca fake's open orders are matched at the market's last price.
MARKET_TICK_S = 0.5
# The fakes keep every request for tests to inspect; a launcher up for days keeps the last ones.
KEPT_REQUESTS = 1000
# The daemon's run name and store for a try-out: its rows and audit log stay apart from a real
# paper run's (config/paper.toml: run "paper", var/paper.db).
RUN_NAME = "fakes"
STORE_URL = "sqlite:///var/fakes.db"


class WallClockBook(BarBook):
    """The fakes' market at the wall clock's time (a BarBook's is fixed, for tests), so a
    real-time daemon's warm-up and each bar at its close are there when asked for."""

    @property  # type: ignore[override]
    def now(self) -> datetime:
        return datetime.now(UTC)

    @now.setter
    def now(self, _value: datetime) -> None:
        """BarBook's constructor sets a time; this market keeps the wall clock's."""


def last_price(book: BarBook, symbol: str) -> float:
    """The symbol's last trade: its newest daily bar's close (the session in progress: now)."""
    today = book.today()
    return book.daily(symbol, today - timedelta(days=10), today)[-1].close


@dataclass
class Started:
    """One running fake and the address the operator reaches it at."""

    name: str
    fake: LoopThread
    url: str


def _url_host(host: str) -> str:
    """How a client on this machine writes the bound address in a URL."""
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:  # bound on every interface: this machine reaches it on loopback
        return "127.0.0.1" if ip.version == 4 else "[::1]"
    return host if ip.version == 4 else f"[{host}]"


async def _rebind(fake: LoopThread, host: str, port: int) -> int:
    """Move a started fake (the fakes bind 127.0.0.1 and a free port, their tests' need) to
    `host`:`port`: a site added on its runner, the loopback one stopped. Returns the port."""
    runner: web.AppRunner = fake._runner  # type: ignore[attr-defined]
    before = list(runner.sites)
    site = web.TCPSite(runner, host, port)
    await site.start()
    for old in before:
        await old.stop()
    bound = int(runner.addresses[0][1])
    fake.port = bound  # type: ignore[attr-defined]
    return bound


def _start(name: str, fake: LoopThread, host: str, port: int) -> Started:
    fake.start_in_thread()
    if host != "127.0.0.1" or port:
        try:
            fake.call(_rebind, fake, host, port)
        except OSError as exc:
            fake.stop_thread()
            print(
                f"python -m tests.fakes: cannot listen on {host}:{port} for the {name} fake "
                f"({exc.strerror or exc}): give another --{name}-port, or 0 for a free one",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
    return Started(name, fake, f"http://{_url_host(host)}:{fake.port}")  # type: ignore[attr-defined]


def _bound_requests(fake: Any) -> None:
    """Keep the last `KEPT_REQUESTS` of the requests the fake records for its tests."""
    fake.requests = deque(fake.requests, maxlen=KEPT_REQUESTS)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.fakes",
        description="Loopback fakes of Alpaca, Yahoo Finance and Alpha Vantage for trying "
        "`tradingd run` without an account or the internet. Prints the settings that point "
        "the daemon at them; stops on Ctrl-C or SIGTERM.",
    )
    p.add_argument("--alpaca", action="store_true", help="Alpaca trading (+stream) and data")
    p.add_argument("--yahoo", action="store_true", help="Yahoo Finance chart API")
    p.add_argument("--alphavantage", action="store_true", help="Alpha Vantage query API")
    for name in ("alpaca", "alpaca-data", "yahoo", "alphavantage"):
        p.add_argument(f"--{name}-port", type=int, default=0, metavar="PORT", help="0: free")
    p.add_argument("--host", default="127.0.0.1", help="IP address to bind (127.0.0.1)")
    p.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="bind a --host that is not loopback: anyone who reaches it can use the fakes",
    )
    p.add_argument(
        "--cash", type=float, default=None, help="the Alpaca account's cash (recorded: 954,321.95)"
    )
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The host to bind, or exit 2 naming the argument at fault."""
    if not (args.alpaca or args.yahoo or args.alphavantage):
        p.error("name the fakes to start: --alpaca, --yahoo and/or --alphavantage")
    host = "127.0.0.1" if args.host == "localhost" else args.host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        p.error(f"--host {args.host!r}: give an IP address (127.0.0.1, ::1, 0.0.0.0, ...)")
    if not ip.is_loopback and not args.allow_non_loopback:
        p.error(
            f"--host {host} is not a loopback address: the fakes fill any order and are "
            "reachable from other machines there; add --allow-non-loopback if that is meant"
        )
    for name in ("alpaca", "alpaca_data", "yahoo", "alphavantage"):
        port = getattr(args, f"{name}_port")
        if not 0 <= port <= 65535:
            p.error(f"--{name.replace('_', '-')}-port {port}: a port in 0..65535 (0: a free one)")
    if args.alpaca and not fixtures_available():
        p.error(
            f"--alpaca needs the recorded Alpaca answers, not found in {ALPACA}: set "
            "TRADINGD_SHARED_FIXTURES to the shared fixtures folder (the one holding alpaca/)"
        )
    return host


def _settings(started: dict[str, Started], keys: dict[str, str]) -> list[tuple[str, str, str]]:
    """(variable, value, what it sets) for `tradingd run`."""
    out: list[tuple[str, str, str]] = [(k, v, "fake key") for k, v in keys.items()]
    if "alpaca" in started:
        trading, data = started["alpaca"].url, started["alpaca-data"].url
        stream = "ws" + trading.removeprefix("http") + "/stream"
        out += [
            ("TRADINGD_BROKER__KIND", "alpaca", "[broker] kind"),
            ("TRADINGD_BROKER__ALPACA__BASE_URL", trading, "[broker.alpaca] base_url"),
            ("TRADINGD_BROKER__ALPACA__STREAM_URL", stream, "[broker.alpaca] stream_url"),
            ("TRADINGD_BROKER__ALPACA__DATA_URL", data, "[broker.alpaca] data_url"),
            ("TRADINGD_FEED__ALPACA__BASE_URL", data, "[feed.alpaca] base_url"),
        ]
    for name in ("yahoo", "alphavantage"):
        if name in started:
            variable = f"TRADINGD_FEED__{name.upper()}__BASE_URL"
            out.append((variable, started[name].url, f"[feed.{name}] base_url"))
    # The bars: Yahoo or Alpha Vantage when started (as config/paper.toml), else Alpaca's.
    source = next(n for n in ("yahoo", "alphavantage", "alpaca") if n in started)
    out += [
        ("TRADINGD_FEED__SOURCE", source, "[feed] source"),
        ("TRADINGD_RUN__NAME", RUN_NAME, "[run] name: apart from a real paper run"),
        ("TRADINGD_STORAGE__URL", STORE_URL, "[storage] url: apart from a real paper run"),
    ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    host = _check_args(p, args)

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    # Before anything starts: a signal during start-up stops what was started, and exits 0.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    book = WallClockBook()
    started: dict[str, Started] = {}
    keys: dict[str, str] = {}
    market: threading.Event | None = None
    try:
        if args.alpaca:
            trading = AlpacaTradingFake(cash=args.cash)
            # alpaca-py sends the one pair of APCA keys to both APIs.
            data = AlpacaDataFake(book, key_id=trading.key_id, secret=trading.secret_key)
            for fake in (trading, data):
                _bound_requests(fake)
            started["alpaca"] = _start("alpaca", trading, host, args.alpaca_port)
            started["alpaca-data"] = _start("alpaca-data", data, host, args.alpaca_data_port)
            market = trading.fill_open_orders_every(
                lambda symbol: last_price(book, symbol), MARKET_TICK_S
            )
            keys["APCA_API_KEY_ID"] = trading.key_id
            keys["APCA_API_SECRET_KEY"] = trading.secret_key
        if args.yahoo:
            yahoo = YahooFake(book)
            _bound_requests(yahoo)
            started["yahoo"] = _start("yahoo", yahoo, host, args.yahoo_port)
        if args.alphavantage:
            av = AlphaVantageFake(book)
            _bound_requests(av)
            started["alphavantage"] = _start("alphavantage", av, host, args.alphavantage_port)
            keys["ALPHA_VANTAGE_API_KEY"] = av.api_key

        if not stop.is_set():
            print(f"# tradingd fakes on {host}; stop with Ctrl-C or SIGTERM", flush=True)
            for s in started.values():
                print(f"# {s.name}: {s.url}")
            print("# Point `tradingd run` at them: run these in its shell")
            for name, value, what in _settings(started, keys):
                print(f"export {name}={shlex.quote(value)}  # {what}")
            print("# ready", flush=True)
            stop.wait()
    finally:
        if market is not None:
            market.set()
        for s in reversed(started.values()):
            s.fake.stop_thread()
    if received:
        print(f"# stopped by {signal.Signals(received[0]).name}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
