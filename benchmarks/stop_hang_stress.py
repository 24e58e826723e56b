"""Stop a live run on the Alpaca fake right at its last bar, many times over, and say how
long each stop took and whether one hung (the trial hang that had 4e30d8d reverted, f03c40f).

Each iteration: a fresh fake account (tests/fakes/alpaca_trading_server.py, the real
alpaca-py client and its stream), an accelerated live run (tests/live_on_fake.py: 90 bars
at 400 a second, trading from the 61st) with fills arriving between bars (the fake's
market matches open orders every few ms), a foreign position the reconciliation blocks,
one symbol missing from the feed for the last bars, and, at the last bar, the run's open
orders cancelled at the fake while the engine stops. The run ends by itself after its last
bar (`--stop end`, as an accelerated run ends) or by `Engine.request_stop` in the last
bar's hook (`--stop request`). A run not ended within `--timeout` seconds is a hang: every
asyncio task's stack is printed, then it is cancelled.

    python benchmarks/stop_hang_stress.py --iterations 100 [--stop end|request] [--no-stream]
        [--redis redis://127.0.0.1:6379/15] [--reconcile-s 0.02]

`--redis` publishes the state to Redis (each SET a redis-py `wait_for`, which can lose the
stop's cancel on 3.11: daemon/core/tasks.py); `--no-stream` makes each broker update a poll;
`--reconcile-s` runs reconciliation rounds between bars.

Prints one line per hang (with each task's awaits) and per run whose stop cancelled a task
again, and a summary: iterations, hangs, fills booked between bars, tasks cancelled again,
the stop's duration (last bar's hook to `run_until_done`'s return) median / p99 / max.
Needs the recorded Alpaca fixtures (TRADINGD_SHARED_FIXTURES).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakes.alpaca_trading_server import AlpacaTradingFake  # noqa: E402
from live_on_fake import live_on_fake  # noqa: E402
from structlog.testing import capture_logs  # noqa: E402

from tradingd.app import build_engine  # noqa: E402
from tradingd.config import load_config  # noqa: E402

FOREIGN = "S02"  # a position at the account the run never ordered: blocked
MISSING = "S05"  # no bars from the feed after bar MISSING_FROM
MISSING_FROM = 70


def _config(tmp: Path) -> Any:
    cfg = tmp / "engine.toml"
    cfg.write_text(f"""
[run]
run_id = "stress"
output_dir = "{tmp / "runs"}"
[[signals]]
name = "momentum"
params = {{ lookback = 20 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 3, gross_exposure = 0.9 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.3 }}
[orders]
brackets = false
[storage]
url = "sqlite:///{tmp / "store.db"}"
[log]
audit_dir = "{tmp / "audit"}"
""")
    return load_config([cfg], env={})


def _dump_tasks(engine: Any) -> None:
    """Each task with the chain of awaits it is suspended in (outermost first)."""
    print("  --- asyncio tasks at the timeout ---", flush=True)
    for task in asyncio.all_tasks():
        chain, coro = [], task.get_coro()
        while coro is not None and getattr(coro, "cr_frame", None) is not None:
            chain.append(f"{coro.cr_code.co_name}:{coro.cr_frame.f_lineno}")
            coro = coro.cr_await
        print(f"  {task.get_name()} cancelling={task.cancelling()}: {' > '.join(chain)}")
    print(f"  bar lock: {engine._bar_lock!r}", flush=True)


async def _one(i: int, fake: AlpacaTradingFake, args: argparse.Namespace, tmp: Path) -> dict:
    panel, config = live_on_fake(_config(tmp), fake, f"stress{i}")
    if not args.stream:
        config = dataclasses.replace(
            config,
            broker=dataclasses.replace(
                config.broker,
                alpaca=dataclasses.replace(config.broker.alpaca, stream_enabled=False),
            ),
        )
    if args.redis:  # the state published to Redis: a SET through redis-py's wait_for
        config = dataclasses.replace(
            config, cache=dataclasses.replace(config.cache, url=args.redis)
        )
    if args.reconcile_s:
        config = dataclasses.replace(
            config, live=dataclasses.replace(config.live, reconcile_interval_s=args.reconcile_s)
        )
    # A symbol the feed stops delivering (as a vendor leaving one out).
    j = panel.symbols.index(MISSING)
    for arr in (panel.open, panel.high, panel.low, panel.close, panel.volume):
        arr[MISSING_FROM:, j] = float("nan")
    fake.call(fake.set_position, FOREIGN, 7.0, 50.0)
    engine = build_engine(config, "live", panel=panel)
    last = panel.datetimes()[-1]
    out: dict[str, Any] = {}

    def cancel_open() -> None:
        for o in list(fake.orders.values()):
            if o.is_open:
                fake.cancel_order(o.id)

    def after_bar(t: Any, v: Any) -> None:
        if t < last:
            return
        out["last_bar"] = time.perf_counter()
        # Cancelled at the fake while the engine stops (from another thread, as the
        # operator's dashboard would).
        threading.Thread(target=lambda: fake.call(cancel_open), daemon=True).start()
        if args.stop == "request":
            engine.request_stop()

    engine.after_bar.append(after_bar)
    with capture_logs() as logs:
        task = asyncio.ensure_future(engine.run_until_done())
        done, _ = await asyncio.wait({task}, timeout=args.timeout)
        if not done:
            out["hang"] = True
            _dump_tasks(engine)
            while not task.done():  # unstick it: the next iteration needs the loop
                task.cancel()
                await asyncio.wait({task}, timeout=2.0)
        else:
            task.result()
            out["stop_s"] = time.perf_counter() - out.get("last_bar", time.perf_counter())
    out["recancelled"] = [e["task"] for e in logs if e["event"] == "engine.task_cancel_lost"]
    out["late_fills"] = sum(e.get("fills", 0) for e in logs if e["event"] == "broker.late_fills")
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--stop", choices=("end", "request"), default="end")
    p.add_argument("--no-stream", dest="stream", action="store_false")
    p.add_argument("--fill-every-s", type=float, default=0.002)
    p.add_argument("--redis", default="", help="cache.url, e.g. redis://127.0.0.1:6379/15")
    p.add_argument("--reconcile-s", type=float, default=0.0, help="0: the config's (300 s)")
    args = p.parse_args()
    os.environ.setdefault("TRADINGD_SHARED_FIXTURES", "/work/shared/fixtures")
    hangs, stops, late, recancelled = 0, [], 0, []
    for i in range(args.iterations):
        fake = AlpacaTradingFake(cash=1_000_000.0)
        fake.start_in_thread()
        os.environ["APCA_API_KEY_ID"] = fake.key_id
        os.environ["APCA_API_SECRET_KEY"] = fake.secret_key
        market = fake.fill_open_orders_every(
            lambda s, prices=fake.prices: prices.get(s, 50.0), args.fill_every_s
        )
        try:
            with tempfile.TemporaryDirectory() as d:
                out = asyncio.run(_one(i, fake, args, Path(d)))
        finally:
            market.set()
            fake.stop_thread()
        late += out["late_fills"]
        recancelled += out["recancelled"]
        if out["recancelled"]:
            print(f"iteration {i}: cancelled again: {out['recancelled']}", flush=True)
        if out.get("hang"):
            hangs += 1
            print(f"iteration {i}: HANG (not ended {args.timeout:g} s after its start)", flush=True)
        else:
            stops.append(out["stop_s"])
        if (i + 1) % 10 == 0:
            print(f"... {i + 1} runs, {hangs} hung", flush=True)
    stops.sort()
    print(
        f"iterations={args.iterations} stop={args.stop} stream={args.stream} "
        f"reconcile_s={args.reconcile_s or 'default'} redis={bool(args.redis)} hangs={hangs} "
        f"late_fills_booked={late} tasks_cancelled_again={len(recancelled)}"
    )
    if stops:
        p99 = stops[min(len(stops) - 1, int(0.99 * len(stops)))]
        print(
            f"stop duration s: median={statistics.median(stops):.3f} p99={p99:.3f} "
            f"max={stops[-1]:.3f}"
        )
    return 1 if hangs else 0


if __name__ == "__main__":
    sys.exit(main())
