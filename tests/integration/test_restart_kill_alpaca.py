"""Restart safety against Alpaca (issue 9): a real `tradingd run` process trading on the
loopback Alpaca (tests/fakes/alpaca_trading_server.py, in this process, on its own thread) is
killed with SIGKILL at random moments and at each named point of a bar (`TRADINGD_KILL_AT`,
see tradingd.faults), restarted, and at the end what it stored agrees with the broker's truth
and with an uninterrupted run against a fresh Alpaca:

(a) no client_order_id became two orders at Alpaca (a resend answered 422 is fine);
(b) every order of the run at Alpaca is stored with Alpaca's filled quantity, and every
    stored order Alpaca acknowledged is at Alpaca;
(c) the stored fills add up, per symbol, to Alpaca's position;
(d) the stored cash is what the fills imply (capital - signed qty x price - commissions),
    and Alpaca's cash;
(e) the fills (order id, fill id, quantity, price) and the orders (ids, quantities,
    prices, final state, filled quantity) equal the uninterrupted run's.

The market is deterministic: a market order (a bracket's entry included) fills in full when
it is placed, at the close of the bar that decided it (`fill_on_submit`), so the fill is in
Alpaca's answer and the engine books it at the next bar in every run. Take-profits and stops
never trade (nothing moves the fake's price), so no fill depends on the process's timing;
(e) can then compare fills exactly, except for the bar that booked them: after a kill at
`sent`, the restarted process finds the order filled at Alpaca while it decides the
interrupted bar again and books the fill at that bar, one bar earlier than the
uninterrupted run (same price, same equity; the decision is then already made). Times of
fills are therefore not compared, and positions and cash are compared at the end of the run.

A few cycles here (TRADINGD_KILL_CYCLES, default 8: each named point once, four random
kills); more with a larger value."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes.alpaca_trading_server import AlpacaTradingFake, FakeOrder, need_fixtures

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restart_harness import KILL_POINTS, checkpointed_rows, rows_kept

ROOT = Path(__file__).resolve().parents[2]
CYCLES = int(os.environ.get("TRADINGD_KILL_CYCLES", "8"))
RUN_ID = "killalp"
CAPITAL = 1_000_000.0
WINDOW = {"start": "2016-06-01", "end": "2017-12-29", "rate": 100.0}
EPS = 1e-6


def write_config(workdir: Path, name: str, fake: AlpacaTradingFake) -> Path:
    """tests/restart_harness.py's recorded-live run, on Alpaca; a larger book and a narrower
    rebalance band than there, so that the run trades more often."""
    cfg = workdir / f"{name}.toml"
    cfg.write_text(f"""
[run]
name = "kill"
run_id = "{RUN_ID}"
start = "{WINDOW["start"]}"
end = "{WINDOW["end"]}"
initial_capital = {CAPITAL}
[live]
bars_per_second = {WINDOW["rate"]}
[orders]
brackets = true
rebalance_band = 0.002
min_trade_value = 500.0
# The restart machinery, not the strategy, is under test: a cheap strategy keeps each run
# short (the default's model, GARCH fits and VaR would multiply the cycles' time).
[[signals]]
name = "momentum"
params = {{ lookback = 126 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 10, gross_exposure = 0.5 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.05 }}
[[risk]]
name = "drawdown_guard"
params = {{ max_drawdown_pct = 0.20, daily_loss_limit_pct = 0.05 }}
[broker]
kind = "alpaca"
[broker.alpaca]
base_url = "{fake.url}"
stream_url = "{fake.stream_url}"
poll_interval_s = 0.2
request_timeout_s = 3.0
call_timeout_s = 10.0
[storage]
url = "sqlite:///{workdir / name}.db"
[health]
enabled = false
[log]
audit_dir = "{workdir / name}-audit"
""")
    return cfg


class Market:
    """Fill prices: the close of the bar that decided the order (its id names the bar)."""

    def __init__(self, workdir: Path) -> None:
        from tradingd.app import load_data
        from tradingd.config import load_config

        cfg = workdir / "market.toml"
        cfg.write_text(f'[run]\nstart = "{WINDOW["start"]}"\nend = "{WINDOW["end"]}"\n')
        panel = load_data(load_config([ROOT / "config/default.toml", cfg], env={}))
        self._row = {t.strftime("%Y%m%dT%H%M%S"): i for i, t in enumerate(panel.datetimes())}
        self._col = {s: j for j, s in enumerate(panel.symbols)}
        self._close = panel.close

    def price(self, order: FakeOrder) -> float | None:
        parts = order.client_order_id.split("|")
        if len(parts) != 5 or parts[1] not in self._row:
            return None
        return round(float(self._close[self._row[parts[1]], self._col[order.symbol]]), 2)


@contextmanager
def loopback_alpaca(market: Market) -> Iterator[AlpacaTradingFake]:
    fake = AlpacaTradingFake(cash=CAPITAL, fill_on_submit=market.price)
    fake.start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


def start_daemon(
    cfg: Path, fake: AlpacaTradingFake, kill_at: str | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APCA_", "TRADINGD_"))}
    env["APCA_API_KEY_ID"] = fake.key_id
    env["APCA_API_SECRET_KEY"] = fake.secret_key
    if kill_at:
        env["TRADINGD_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, "-m", "tradingd", "run", "-c", str(ROOT / "config/default.toml"),
         "-c", str(cfg)],
        cwd=cfg.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def run_to_completion(cfg: Path, fake: AlpacaTradingFake, timeout_s: float = 120.0) -> None:
    proc = start_daemon(cfg, fake)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode != 0:
        raise AssertionError(f"daemon exited {proc.returncode}: {err.decode()[-3000:]}")


@dataclass
class Report:
    kills: dict[str, int] = field(default_factory=dict)
    finished_before_kill: int = 0
    kept: set[tuple[str, int, str]] = field(default_factory=set)


def kill_cycles(cfg: Path, fake: AlpacaTradingFake, cycles: int, seed: int) -> Report:
    """As restart_harness.kill_cycles (a named kill point, then a random delay, in turn),
    with the keys of the loopback Alpaca in the daemon's environment; then one more run
    that must finish the run by itself."""
    rng = random.Random(seed)
    report = Report()
    for k in range(cycles):
        if k % 2 == 0:
            # Each named point in turn (all of them from 8 cycles on), at its n-th passage.
            point = f"{KILL_POINTS[(k // 2) % len(KILL_POINTS)]}:{rng.randint(1, 4)}"
            label = point.split(":")[0]
            proc = start_daemon(cfg, fake, point)
            try:
                _, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        else:
            label = "random"
            proc = start_daemon(cfg, fake)
            try:
                _, err = proc.communicate(timeout=rng.uniform(0.5, 4.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                _, err = proc.communicate(timeout=30)
        if proc.returncode == -signal.SIGKILL:
            report.kills[label] = report.kills.get(label, 0) + 1
            report.kept |= checkpointed_rows(cfg.with_suffix(".db"))
        elif proc.returncode == 0:
            report.finished_before_kill += 1
        else:
            raise AssertionError(
                f"cycle {k} ({label}): daemon exited {proc.returncode}: {err.decode()[-3000:]}"
            )
    run_to_completion(cfg, fake)
    return report


# ----------------------------------------------------------------------------- reading


def _r(x: Any) -> Any:
    return round(x, 6) if isinstance(x, float) else x


@dataclass
class AtAlpaca:
    """The loopback Alpaca's book after a run, orders named by the engine's ids."""

    orders: dict[str, dict[str, Any]]
    client_ids: list[str]
    posts: int
    positions: dict[str, float]
    cash: float


def at_alpaca(fake: AlpacaTradingFake) -> AtAlpaca:
    def read() -> AtAlpaca:
        orders: dict[str, dict[str, Any]] = {}
        roots = [o for o in fake.orders.values() if o.parent_id is None]
        for o in roots:
            if not o.client_order_id.startswith(f"{RUN_ID}|"):
                continue
            orders[o.client_order_id] = _describe(o)
            head, tag, attempt = o.client_order_id.rsplit("|", 2)
            for leg_id in o.leg_ids:
                leg = fake.orders[leg_id]
                role = "tp" if leg.type == "limit" else "sl"
                # The engine's names for Alpaca's legs (alpaca_mapping.leg_client_order_id).
                name = (
                    f"{head}|{role}|{attempt}"
                    if tag == "entry"
                    else f"{head}|{role}{tag[2:]}|{attempt}"
                )
                orders[name] = _describe(leg)
        return AtAlpaca(
            orders=orders,
            client_ids=[o.client_order_id for o in roots],
            posts=len(fake.posted_orders()),
            positions={s: q for s, (q, _) in fake.positions_book.items()},
            cash=fake.cash,
        )

    return fake.call(read)


def _describe(o: FakeOrder) -> dict[str, Any]:
    return {"symbol": o.symbol, "side": o.side, "qty": o.qty, "filled": o.filled_qty}


@dataclass
class Stored:
    orders: dict[str, dict[str, Any]]
    fills: list[tuple[Any, ...]]
    last_cash: float
    ended: bool


def stored(db: Path) -> Stored:
    con = sqlite3.connect(db)
    try:
        orders = {
            cid: {
                "symbol": sym,
                "side": side,
                "type": kind,
                "qty": _r(qty),
                "limit": _r(limit),
                "stop": _r(stop),
                "status": status,
                "filled": _r(filled),
            }
            for cid, sym, side, kind, qty, limit, stop, status, filled in con.execute(
                "SELECT client_order_id, symbol, side, type, quantity, limit_price, stop_price,"
                " status, filled_quantity FROM orders WHERE run_id = ?",
                (RUN_ID,),
            )
        }
        fills = con.execute(
            "SELECT fill_id, client_order_id, symbol, side, quantity, price, commission, time"
            " FROM fills WHERE run_id = ? ORDER BY fill_id",
            (RUN_ID,),
        ).fetchall()
        [(cash,)] = con.execute(
            "SELECT cash FROM equity WHERE run_id = ? ORDER BY time DESC LIMIT 1", (RUN_ID,)
        ).fetchall()
        [(ended,)] = con.execute(
            "SELECT ended_at IS NOT NULL FROM runs WHERE run_id = ?", (RUN_ID,)
        ).fetchall()
        return Stored(orders, fills, float(cash), bool(ended))
    finally:
        con.close()


def fills_per_symbol(fills: list[tuple[Any, ...]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, _, symbol, side, qty, *_ in fills:
        out[symbol] = out.get(symbol, 0.0) + (qty if side == "buy" else -qty)
    return {s: q for s, q in out.items() if abs(q) > EPS}


def implied_cash(fills: list[tuple[Any, ...]]) -> float:
    cash = CAPITAL
    for _, _, _, side, qty, price, commission, _ in fills:
        cash -= (qty if side == "buy" else -qty) * price + commission
    return cash


def check_against_alpaca(run: Stored, alpaca: AtAlpaca) -> None:
    # (a) one order per client order id at Alpaca.
    twice = [cid for cid, n in Counter(alpaca.client_ids).items() if n > 1]
    assert twice == [], f"client order ids placed as two orders at Alpaca: {twice}"
    # (b) Alpaca's orders are stored with its filled quantity, and the other way round.
    missing = sorted(set(alpaca.orders) - set(run.orders))
    assert missing == [], f"orders at Alpaca that the store lacks: {missing}"
    differ = {
        cid: (o["filled"], run.orders[cid]["filled"])
        for cid, o in alpaca.orders.items()
        if abs(o["filled"] - run.orders[cid]["filled"]) > EPS
    }
    assert differ == {}, f"filled quantity at Alpaca vs stored: {differ}"
    acknowledged = {cid for cid, o in run.orders.items() if o["status"] != "rejected"}
    unknown = sorted(acknowledged - set(alpaca.orders))
    assert unknown == [], f"stored orders that Alpaca never had: {unknown}"
    # (c) the fills make Alpaca's positions.
    assert fills_per_symbol(run.fills) == pytest.approx(alpaca.positions), (
        "stored fills per symbol vs Alpaca's positions (a restart lost or doubled fills)"
    )
    # (d) cash: what the fills imply is the stored cash (of the last bar: the window's last
    # bar sends no order, so no fill is booked after it) and Alpaca's.
    assert run.last_cash == pytest.approx(implied_cash(run.fills), abs=1e-6)
    assert implied_cash(run.fills) == pytest.approx(alpaca.cash, abs=1e-6)
    assert run.ended


# ----------------------------------------------------------------------------- the test


def test_killed_and_restarted_daemon_on_alpaca_loses_and_doubles_nothing(tmp_path: Path):
    need_fixtures()
    ref_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    ref_dir.mkdir()
    killed_dir.mkdir()
    market = Market(tmp_path)
    with loopback_alpaca(market) as fake:
        cfg = write_config(ref_dir, "reference", fake)
        run_to_completion(cfg, fake)
        reference, reference_alpaca = stored(cfg.with_suffix(".db")), at_alpaca(fake)
    assert len(reference.fills) >= 10, "the window must trade, or the test proves nothing"
    assert any("|sl.r" in cid for cid in reference.orders), "the window must cut a protected lot"
    check_against_alpaca(reference, reference_alpaca)

    with loopback_alpaca(market) as fake:
        cfg = write_config(killed_dir, "killed", fake)
        started = time.monotonic()
        report = kill_cycles(cfg, fake, CYCLES, seed=20261202)
        got, alpaca = stored(cfg.with_suffix(".db")), at_alpaca(fake)
    assert sum(report.kills.values()) >= CYCLES // 2, report  # most cycles really were kills
    check_against_alpaca(got, alpaca)

    # (e) the same trading as the uninterrupted run.
    def fills_of(run: Stored) -> list[tuple[Any, ...]]:
        return sorted((f[0], f[1], f[3], _r(f[4]), _r(f[5]), _r(f[6])) for f in run.fills)

    assert fills_of(got) == fills_of(reference)
    assert got.orders == reference.orders
    assert alpaca.positions == pytest.approx(reference_alpaca.positions)
    assert alpaca.cash == pytest.approx(reference_alpaca.cash)
    assert got.last_cash == pytest.approx(reference.last_cash)
    # Each restart continued the run: rows stored up to a killed process's checkpoint are
    # the same rows at the end, not deleted and written again.
    assert report.kept, "no kill happened after a checkpoint: the test proves nothing"
    assert rows_kept(cfg.with_suffix(".db"), report.kept) == []
    print(
        f"kills {report.kills}, finished before the kill {report.finished_before_kill}, "
        f"{alpaca.posts - len(alpaca.client_ids)} resend(s) answered 422, "
        f"{time.monotonic() - started:.1f} s"
    )
