"""Replay throughput of tradingd against backtrader (and a plain Python loop) on real data.

Replays the first `--symbols` symbols (sorted) of the shared S&P 500 daily file
(`../shared/data/sp500_daily_1999_2018.parquet`, 496 symbols, about 2.1 million bars) through
the tradingd engine with the simple plugin strategy:

    signal  momentum, lookback 126      (tanh of the 126-bar return; only its sign matters here)
    sizing  equal_weight, top 10, gross 0.5
    risk    max_position 0.05           (no drawdown guard, no position-count or gross limits)
    costs   0.1% commission, 0.05% slippage, fill at the next bar's open

and reports bar-events per second: existing bars (symbol x time with a close, `Panel.n_bars`)
divided by the wall time of `engine.run_until_done()` only. Data loading is timed separately.

The same strategy is written for backtrader (`pip install ".[bench]"`) and run on the first
`--bt-symbols` symbols; its rate is bars fed / wall time of `cerebro.run()` only. The ratio
of the two rates is printed, both measured in the same run of this script. tradingd is also
run on exactly the backtrader universe ("same universe" row) so that the per-bar cost can be
compared at equal width, and its orders/equity can be set next to backtrader's.

    python benchmarks/replay.py                       # default: 3 repeats, ~1-2 minutes
    python benchmarks/replay.py --repeats 5 --plain --json
    python benchmarks/replay.py --store memory --bt-symbols 363   # all full-history symbols
    python benchmarks/replay.py --profile             # + a cProfile of one tradingd run

Results are printed (a table, machine information and, with --json, one JSON object); they
are recorded by hand in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sp500_daily_1999_2018.parquet"

# The strategy, shared by every implementation below.
LOOKBACK = 126
TOP_N = 10
GROSS = 0.5
MAX_POSITION = 0.05
COMMISSION = 0.001
SLIPPAGE = 0.0005
INITIAL_CAPITAL = 100_000.0
# tradingd's order planner defaults (orders.rebalance_band, orders.min_trade_value); the
# backtrader and plain-loop versions apply the same rule so all three trade alike.
REBALANCE_BAND = 0.01
MIN_TRADE_VALUE = 100.0

CONFIG_TEMPLATE = """\
[run]
name = "bench-replay"
run_id = "{run_id}"
initial_capital = {capital}

[data]
source = "parquet"
path = "{data}"
layout = "long"

[costs]
commission_pct = {commission}
slippage_pct = {slippage}

[[signals]]
name = "momentum"
weight = 1.0
params = {{ lookback = {lookback} }}

[sizing]
name = "equal_weight"
params = {{ max_positions = {top}, gross_exposure = {gross} }}

[[risk]]
name = "max_position"
params = {{ max_position_pct = {max_position} }}

[orders]
brackets = false   # the backtrader strategy has no protective exits

[storage]
url = "{storage_url}"

[log]
level = "{log_level}"
audit_dir = "{audit_dir}"
"""


# ----------------------------------------------------------------------------- helpers


def rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float | None:
    """Resident set size right now (Linux only), after a garbage collection."""
    gc.collect()
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "git": git_revision(),
    }
    try:
        load1, load5, _ = os.getloadavg()
        info["loadavg_1m_5m"] = [round(load1, 2), round(load5, 2)]
    except OSError:
        pass
    return info


def fmt_rate(r: float | None) -> str:
    return "-" if r is None or not math.isfinite(r) else f"{r:,.0f}"


@dataclass
class Measurement:
    """One implementation's timed runs."""

    name: str
    bars: int  # bar-events per run
    seconds: list[float] = field(default_factory=list)
    orders: int = 0
    fills: int = 0
    final_equity: float = float("nan")
    setup_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rates(self) -> list[float]:
        return [self.bars / s for s in self.seconds]

    @property
    def median_rate(self) -> float:
        return self.bars / self.median_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bar_events": self.bars,
            "seconds": [round(s, 4) for s in self.seconds],
            "median_seconds": round(self.median_s, 4),
            "rates": [round(r) for r in self.rates],
            "median_rate": round(self.median_rate),
            "orders": self.orders,
            "fills": self.fills,
            "final_equity": None
            if not math.isfinite(self.final_equity)
            else round(self.final_equity, 2),
            "setup_seconds": round(self.setup_seconds, 3),
            "notes": self.notes,
        }


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data


def load_data(path: Path, n_symbols: int) -> tuple[Any, float]:
    from tradingd.feeds.loaders import load_panel

    t0 = time.perf_counter()
    panel = load_panel("parquet", str(path), layout="long")
    if n_symbols < len(panel.symbols):
        panel = panel.select(symbols=panel.symbols[:n_symbols])
    return panel, time.perf_counter() - t0


def split_factors(split: np.ndarray) -> np.ndarray:
    """Per (t, symbol): product of the split coefficients strictly after t, so that
    raw / factor is the split-adjusted price (as the history buffer sees it at the end)."""
    after = np.cumprod(split[::-1], axis=0)[::-1]  # product over u >= t
    return after / split


# ----------------------------------------------------------------------------- tradingd


def write_config(workdir: Path, data: Path, store: str, log_level: str) -> Path:
    url = "sqlite:///:memory:" if store == "memory" else f"sqlite:///{workdir / 'bench.db'}"
    text = CONFIG_TEMPLATE.format(
        run_id=f"bench-{workdir.name}",
        capital=INITIAL_CAPITAL,
        data=data.as_posix(),
        commission=COMMISSION,
        slippage=SLIPPAGE,
        lookback=LOOKBACK,
        top=TOP_N,
        gross=GROSS,
        max_position=MAX_POSITION,
        storage_url=url,
        log_level=log_level,
        audit_dir=(workdir / "audit").as_posix(),
    )
    path = workdir / "bench.toml"
    path.write_text(text)
    return path


def tradingd_once(
    panel: Any,
    data: Path,
    store: str,
    log_level: str,
    profiler: cProfile.Profile | None = None,
) -> tuple[float, Any]:
    """Build a fresh engine (fresh temp dir, store and audit log) and time run_until_done()."""
    from tradingd.app import build_engine
    from tradingd.config import load_config

    with tempfile.TemporaryDirectory(prefix="tradingd-bench-") as tmp:
        cfg_path = write_config(Path(tmp), data, store, log_level)
        # env={}: DATABASE_URL / REDIS_URL / TRADINGD_* of the shell must not change the run.
        config = load_config([cfg_path], env={})
        engine = build_engine(config, "backtest", panel=panel)
        gc.collect()
        if profiler is not None:
            profiler.enable()
        t0 = time.perf_counter()
        result = asyncio.run(engine.run_until_done())
        elapsed = time.perf_counter() - t0
        if profiler is not None:
            profiler.disable()
    return elapsed, result


def bench_tradingd(
    name: str, panel: Any, data: Path, store: str, repeats: int, log_level: str
) -> Measurement:
    m = Measurement(name, panel.n_bars)
    for k in range(repeats):
        elapsed, result = tradingd_once(panel, data, store, log_level)
        m.seconds.append(elapsed)
        m.orders, m.fills = result.orders, result.fills
        m.final_equity = result.equity[-1] if result.equity else float("nan")
        say(
            f"  {name} run {k + 1}/{repeats}: {elapsed:.2f} s, "
            f"{panel.n_bars / elapsed:,.0f} bar-events/s, {result.orders} orders, "
            f"{result.fills} fills"
        )
    return m


def profile_tradingd(panel: Any, data: Path, store: str, log_level: str, top: int) -> str:
    prof = cProfile.Profile()
    elapsed, _ = tradingd_once(panel, data, store, log_level, profiler=prof)
    out = io.StringIO()
    out.write(
        f"cProfile of one tradingd run ({elapsed:.2f} s under the profiler), "
        f"top {top} by cumulative time:\n"
    )
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    out.write(f"the same run, top {top} by own time (tottime):\n")
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ----------------------------------------------------------------------------- backtrader


def backtrader_universe(panel: Any, k: int, align: str) -> tuple[tuple[str, ...], str]:
    complete = ~np.isnan(panel.close).any(axis=0)
    if align == "restrict":
        chosen = tuple(s for s, ok in zip(panel.symbols, complete, strict=True) if ok)[:k]
        skipped = (
            [s for s, ok in zip(panel.symbols, complete, strict=True) if not ok and s < chosen[-1]]
            if chosen
            else []
        )
        how = (
            f"restricted to the first {len(chosen)} symbols with a bar on every one of the "
            f"{len(panel.times)} days (skipped {len(skipped)} late-listing/gapped symbols "
            "before them)"
        )
    else:
        chosen = panel.symbols[:k]
        how = (
            f"first {len(chosen)} symbols; before listing each is padded with its first bar "
            "(flat prices, zero volume), gaps forward-filled; padded bars are counted as fed"
        )
    return chosen, how


def backtrader_frames(panel: Any, symbols: tuple[str, ...], align: str) -> list[Any]:
    """Split-adjusted OHLCV frames (backtrader does not apply splits itself; tradingd does,
    so the raw prices would make the two strategies differ at every split)."""
    import pandas as pd

    sub = panel.select(symbols=symbols)
    factor = split_factors(sub.split)
    index = pd.DatetimeIndex(sub.times)  # naive UTC midnight; backtrader wants naive
    frames = []
    for j, _ in enumerate(sub.symbols):
        cols = {f: getattr(sub, f)[:, j] / factor[:, j] for f in ("open", "high", "low", "close")}
        cols["volume"] = sub.volume[:, j] * factor[:, j]
        df = pd.DataFrame(cols, index=index)
        if align == "pad":
            df = df.ffill()
            first = df["close"].first_valid_index()
            pre = df.index < first
            for f in ("open", "high", "low", "close"):
                df.loc[pre, f] = df.loc[first, "open"]
            df.loc[pre, "volume"] = 0.0
            df["volume"] = df["volume"].fillna(0.0)
        else:
            df = df.dropna()
        df["openinterest"] = 0.0
        frames.append(df)
    return frames


def make_bt_strategy() -> type:
    import backtrader as bt

    class Momentum(bt.Strategy):
        """Same rule as tradingd's plugins + order planner: each day rank close/close[-126]-1,
        hold the (at most) top 10 with positive momentum at 5% of equity, whole shares,
        trade only when the weight is off by more than the band (or the position is closed)."""

        params = (
            ("lookback", LOOKBACK),
            ("top", TOP_N),
            ("weight", MAX_POSITION),
            ("band", REBALANCE_BAND),
            ("min_trade", MIN_TRADE_VALUE),
        )

        def __init__(self) -> None:
            self.mom = [bt.ind.RateOfChange(d.close, period=self.p.lookback) for d in self.datas]
            self.orders_placed = 0
            self.fills = 0

        def notify_order(self, order: Any) -> None:
            if order.status == order.Completed:
                self.fills += 1

        def next(self) -> None:
            scored = [(m[0], i) for i, m in enumerate(self.mom) if m[0] > 0.0]
            scored.sort(key=lambda x: -x[0])  # stable: ties go to universe order, as tradingd
            top = {i for _, i in scored[: self.p.top]}
            equity = self.broker.getvalue()
            band, weight, min_trade = self.p.band, self.p.weight, self.p.min_trade
            for i, d in enumerate(self.datas):
                held = self.getposition(d).size
                if i not in top and not held:
                    continue
                price = d.close[0]
                target = weight if i in top else 0.0
                delta = math.trunc(target * equity / price) - held
                if not delta:
                    continue
                closing = target == 0.0 and held != 0
                off = abs(target - held * price / equity) > band
                if closing or (off and abs(delta * price) >= min_trade):
                    if closing:
                        delta = -held
                    if delta > 0:
                        self.buy(data=d, size=delta)
                    else:
                        self.sell(data=d, size=-delta)
                    self.orders_placed += 1

    return Momentum


def bench_backtrader(panel: Any, k: int, align: str) -> tuple[Measurement, tuple[str, ...]]:
    import backtrader as bt

    t0 = time.perf_counter()
    symbols, how = backtrader_universe(panel, k, align)
    frames = backtrader_frames(panel, symbols, align)
    cerebro = bt.Cerebro(stdstats=False)
    for sym, df in zip(symbols, frames, strict=True):
        cerebro.adddata(bt.feeds.PandasData(dataname=df), name=sym)
    cerebro.broker.setcash(INITIAL_CAPITAL)
    cerebro.broker.setcommission(commission=COMMISSION)
    cerebro.broker.set_slippage_perc(SLIPPAGE)
    cerebro.addstrategy(make_bt_strategy())
    setup = time.perf_counter() - t0
    fed = sum(len(df) for df in frames)
    m = Measurement("backtrader", fed, setup_seconds=setup)
    m.notes.append(how)
    m.notes.append(
        "prices split-adjusted (not dividend-adjusted); cheat-on-open off; "
        "slippage via set_slippage_perc (slip_match caps at high/low)"
    )
    gc.collect()
    t1 = time.perf_counter()
    strategies = cerebro.run()
    m.seconds.append(time.perf_counter() - t1)
    strat = strategies[0]
    m.orders, m.fills = strat.orders_placed, strat.fills
    m.final_equity = cerebro.broker.getvalue()
    say(
        f"  backtrader: {m.seconds[0]:.2f} s, {m.median_rate:,.0f} bar-events/s, "
        f"{m.orders} orders, {m.fills} fills"
    )
    return m, symbols


# ----------------------------------------------------------------------------- plain loop


def plain_loop(panel: Any) -> tuple[float, int, int, float]:
    """The bare strategy as a per-bar, per-symbol Python loop over lists: splits, dividends,
    fills at the open with costs, marking, momentum, ranking, band-limited rebalancing.
    No order objects, no store, no audit, no checks: a floor for what pure Python costs."""
    factor = split_factors(panel.split)
    with np.errstate(invalid="ignore"):
        adj = (panel.close / factor).tolist()
    opens, closes = panel.open.tolist(), panel.close.tolist()
    splits, divs = panel.split.tolist(), panel.dividend.tolist()
    n = len(panel.symbols)
    gc.collect()

    t0 = time.perf_counter()
    cash = INITIAL_CAPITAL
    qty = [0.0] * n
    mark = [0.0] * n
    pending = [0.0] * n
    orders = fills = 0
    equity = cash
    for t in range(len(closes)):
        o_row, c_row, s_row, d_row = opens[t], closes[t], splits[t], divs[t]
        a_row = adj[t]
        a_lag = adj[t - LOOKBACK] if t >= LOOKBACK else None
        positive = []
        for j in range(n):
            c = c_row[j]
            if c != c:  # no bar
                continue
            q = qty[j]
            if q:
                s = s_row[j]
                if s != 1.0:
                    q *= s
                    qty[j] = q
                cash += q * d_row[j]
            p = pending[j]
            if p:
                px = o_row[j] * (1.0 + SLIPPAGE if p > 0 else 1.0 - SLIPPAGE)
                cash -= p * px + abs(p * px) * COMMISSION
                qty[j] = q = q + p
                pending[j] = 0.0
                fills += 1
            mark[j] = c
            if a_lag is not None:
                m = a_row[j] / a_lag[j] - 1.0
                if m > 0.0:  # False for NaN
                    positive.append((m, j))
        equity = cash + sum(qty[j] * mark[j] for j in range(n) if qty[j])
        positive.sort(key=lambda x: -x[0])
        top = {j for _, j in positive[:TOP_N]}
        for j in top | {j for j in range(n) if qty[j]}:
            c = c_row[j]
            if c != c:
                continue
            held = qty[j]
            target = MAX_POSITION if j in top else 0.0
            delta = math.trunc(target * equity / c) - held
            if not delta:
                continue
            closing = target == 0.0 and held != 0.0
            if closing or (
                abs(target - held * c / equity) > REBALANCE_BAND
                and abs(delta * c) >= MIN_TRADE_VALUE
            ):
                pending[j] = -held if closing else delta
                orders += 1
    return time.perf_counter() - t0, orders, fills, equity


def bench_plain(panel: Any, repeats: int) -> Measurement:
    m = Measurement("plain Python loop", panel.n_bars)
    m.notes.append("no order objects, store, audit log or checks; a floor for pure Python")
    for k in range(repeats):
        elapsed, orders, fills, equity = plain_loop(panel)
        m.seconds.append(elapsed)
        m.orders, m.fills, m.final_equity = orders, fills, equity
        say(
            f"  plain loop run {k + 1}/{repeats}: {elapsed:.2f} s, "
            f"{panel.n_bars / elapsed:,.0f} bar-events/s"
        )
    return m


# ----------------------------------------------------------------------------- report


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = [False] + [True] * (len(header) - 1)

    def line(r: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right, strict=True)
        )

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def report(results: dict[str, Any], measurements: list[Measurement]) -> str:
    out = io.StringIO()
    w = out.write
    w("\n== tradingd replay benchmark ==\n")
    w(f"data: {results['data']}\n")
    w(
        f"universe: {results['symbols']} symbols, {results['days']} days, "
        f"{results['bar_events']:,} bar-events (symbol x day with a close); "
        f"loaded in {results['load_seconds']:.2f} s (not in any rate)\n"
    )
    w(
        f"strategy: momentum {LOOKBACK} > 0, top {TOP_N}, {MAX_POSITION:.0%} each "
        f"(equal_weight gross {GROSS} clipped by max_position {MAX_POSITION}), rebalance daily "
        f"with band {REBALANCE_BAND} / min trade {MIN_TRADE_VALUE:.0f}, commission "
        f"{COMMISSION:.2%}, slippage {SLIPPAGE:.2%}, fill at next open, capital "
        f"{INITIAL_CAPITAL:,.0f}\n"
    )
    w(
        f"tradingd store: {results['store']}; timed: engine.run_until_done() only; "
        f"repeats: {results['repeats']}\n\n"
    )
    header = [
        "implementation",
        "bar-events",
        "median s",
        "median bar-events/s",
        "all runs (/s)",
        "orders",
        "fills",
        "final equity",
    ]
    rows = []
    for m in measurements:
        rows.append(
            [
                m.name,
                f"{m.bars:,}",
                f"{m.median_s:.2f}",
                fmt_rate(m.median_rate),
                " ".join(fmt_rate(r) for r in m.rates),
                f"{m.orders:,}",
                f"{m.fills:,}",
                "-" if not math.isfinite(m.final_equity) else f"{m.final_equity:,.0f}",
            ]
        )
    w(table(rows, header) + "\n\n")
    for m in measurements:
        for note in m.notes:
            w(f"  {m.name}: {note}\n")
    ratios = results["ratios"]
    w("\n")
    for key, label in (
        ("tradingd_vs_backtrader", "tradingd (full universe) / backtrader rate"),
        (
            "tradingd_same_universe_vs_backtrader",
            "tradingd (backtrader's universe) / backtrader rate",
        ),
        ("tradingd_vs_plain", "tradingd (full universe) / plain loop rate"),
    ):
        if ratios.get(key) is not None:
            w(f"{label}: {ratios[key]:.2f}x\n")
    rss = results["rss_mb"]
    w(
        f"peak RSS (ru_maxrss, whole process, includes the loaded data): after data load "
        f"{rss['after_load']:.0f} MB; after the tradingd runs {rss['after_tradingd']:.0f} MB; "
        f"at the end {rss['end']:.0f} MB\n"
    )
    cur = results["current_rss_mb"]
    if cur["after_load"] is not None and cur["after_tradingd"] is not None:
        w(
            f"current RSS (VmRSS): after data load {cur['after_load']:.0f} MB; after the tradingd "
            f"runs {cur['after_tradingd']:.0f} MB\n"
        )
    w("\nmachine:\n")
    for k, v in results["machine"].items():
        w(f"  {k}: {v}\n")
    return out.getvalue()


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="the long-layout parquet file (default: %(default)s)",
    )
    p.add_argument(
        "--symbols",
        type=int,
        default=500,
        help="replay the first N symbols, sorted (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed tradingd runs; the median is reported (default: %(default)s)",
    )
    p.add_argument(
        "--store",
        choices=("sqlite", "memory"),
        default="sqlite",
        help="sqlite: a file in a temp dir; memory: sqlite:///:memory:",
    )
    p.add_argument(
        "--bt-symbols",
        type=int,
        default=100,
        help="symbols for the backtrader run; 0 skips it (default: %(default)s)",
    )
    p.add_argument(
        "--bt-align",
        choices=("restrict", "pad"),
        default="restrict",
        help="late-listing symbols: restrict to symbols with a bar on every day, "
        "or pad them before listing (default: %(default)s)",
    )
    p.add_argument(
        "--no-same-universe",
        action="store_true",
        help="skip the tradingd run on backtrader's universe",
    )
    p.add_argument(
        "--plain", action="store_true", help="also time a plain Python loop of the bare strategy"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run tradingd once under cProfile and print the top entries",
    )
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="tradingd log level during the runs",
    )
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.symbols < 1 or args.bt_symbols < 0:
        p.error("--repeats and --symbols must be >= 1, --bt-symbols >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = args.data.expanduser().resolve()
    if not data.is_file():
        print(
            f"replay benchmark: data file not found: {data}\n"
            "It is the shared S&P 500 daily file (../shared/data/sp500_daily_1999_2018.parquet "
            "next to the repository); pass another with --data PATH.",
            file=sys.stderr,
        )
        return 2
    if args.bt_symbols:
        try:
            import backtrader  # noqa: F401
        except ImportError:
            print(
                "replay benchmark: backtrader is not installed; install the bench extra "
                '(pip install ".[bench]") or pass --bt-symbols 0.',
                file=sys.stderr,
            )
            return 2

    from tradingd.logs import configure_logging

    configure_logging(args.log_level, "json")

    say(f"loading {data} ...")
    panel, load_s = load_data(data, args.symbols)
    rss_load, cur_load = rss_mb(), current_rss_mb()
    say(
        f"  {len(panel.symbols)} symbols x {len(panel.times)} days, {panel.n_bars:,} bars "
        f"in {load_s:.2f} s"
    )

    measurements: list[Measurement] = []
    store_desc = "sqlite:///:memory:" if args.store == "memory" else "sqlite file in a temp dir"
    say(f"tradingd, {args.repeats} run(s), store {store_desc} ...")
    td = bench_tradingd("tradingd", panel, data, args.store, args.repeats, args.log_level)
    measurements.append(td)
    rss_td, cur_td = rss_mb(), current_rss_mb()

    bt_m: Measurement | None = None
    same: Measurement | None = None
    if args.bt_symbols:
        say(f"backtrader, {args.bt_symbols} symbols ({args.bt_align}) ...")
        bt_m, bt_symbols = bench_backtrader(panel, args.bt_symbols, args.bt_align)
        if not args.no_same_universe:
            sub = panel.select(symbols=bt_symbols)
            say(f"tradingd on backtrader's {len(bt_symbols)} symbols ...")
            same = bench_tradingd(
                f"tradingd, {len(bt_symbols)} symbols",
                sub,
                data,
                args.store,
                args.repeats,
                args.log_level,
            )
            same.notes.append(
                "tradingd on exactly backtrader's universe (raw prices, splits "
                "applied by the engine, dividends credited)"
            )
            measurements.append(same)
        measurements.append(bt_m)

    plain: Measurement | None = None
    if args.plain:
        say("plain Python loop ...")
        plain = bench_plain(panel, args.repeats)
        measurements.append(plain)

    profile_text = ""
    if args.profile:
        say("tradingd under cProfile ...")
        profile_text = profile_tradingd(panel, data, args.store, args.log_level, args.profile_top)

    def ratio(a: Measurement | None, b: Measurement | None) -> float | None:
        return a.median_rate / b.median_rate if a and b else None

    results: dict[str, Any] = {
        "data": str(data),
        "symbols": len(panel.symbols),
        "days": len(panel.times),
        "bar_events": panel.n_bars,
        "load_seconds": round(load_s, 3),
        "store": store_desc,
        "repeats": args.repeats,
        "measurements": [m.to_dict() for m in measurements],
        "ratios": {
            "tradingd_vs_backtrader": ratio(td, bt_m),
            "tradingd_same_universe_vs_backtrader": ratio(same, bt_m),
            "tradingd_vs_plain": ratio(td, plain),
        },
        "rss_mb": {"after_load": rss_load, "after_tradingd": rss_td, "end": rss_mb()},
        "current_rss_mb": {"after_load": cur_load, "after_tradingd": cur_td},
        "machine": machine_info(),
    }
    print(report(results, measurements))
    if profile_text:
        print(profile_text)
    if args.json:
        results["ratios"] = {
            k: None if v is None else round(v, 3) for k, v in results["ratios"].items()
        }
        for key in ("rss_mb", "current_rss_mb"):
            results[key] = {k: None if v is None else round(v, 1) for k, v in results[key].items()}
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
