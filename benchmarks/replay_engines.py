"""One engine run of the replay benchmark, in its own process (the child side of replay.py).

    python benchmarks/replay_engines.py '{"engine": "plain", "data": "...", "symbols": [...]}'

prints progress on stderr and, as its last stdout line, `RESULT {json}`. Each run loads the
data itself (timed apart, in no rate), so nothing one engine imported, cached or compiled
helps another. Engines (`engine` in the spec):

    tradingd     `tradingd backtest` as users run it: tradingd.backtest.run_backtest with a
                 SQLite file store and the JSON audit log on, in a temp dir
    engine       the engine alone: build_engine + run_until_done, store sqlite:///:memory:,
                 audit log off (NullAudit)
    plain        a plain per-bar, per-symbol Python loop of the same strategy
    backtrader   the same strategy as a backtrader Strategy
    vectorbt     the same strategy as a vectorbt order function (numba), run twice in the
                 process: first (includes numba compilation) and warm
    symbols      lists the file's symbols (sorted), for the parent
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import json
import math
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# The strategy, shared by every implementation below.
LOOKBACK = 126
TOP_N = 10
GROSS = 0.5
MAX_POSITION = 0.05
COMMISSION = 0.001
SLIPPAGE = 0.0005
INITIAL_CAPITAL = 100_000.0
# tradingd's order planner defaults (orders.rebalance_band, orders.min_trade_value); the
# other implementations apply the same rule so that all of them trade alike.
REBALANCE_BAND = 0.01
MIN_TRADE_VALUE = 100.0

CONFIG_TEMPLATE = """\
[run]
name = "bench-replay"
run_id = "{run_id}"
initial_capital = {capital}
output_dir = "{output_dir}"

[data]
source = "parquet"
path = "{data}"
layout = "long"
symbols = {symbols}

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
brackets = false   # the other implementations have no protective exits

[storage]
url = "{storage_url}"   # everything else in [storage] as in config/default.toml

[cache]
features = false   # the feature step is timed on its own: computed in every run

[log]
level = "{log_level}"
audit_dir = "{audit_dir}"
"""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """Peak resident set size of this process (getrusage ru_maxrss: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Linux >= 4.0: reset the peak RSS to the current RSS (ru_maxrss follows), so that the
    peak measured afterwards is that of the replay, not of reading the Parquet file."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def panel_nbytes(panel: Any) -> int:
    from tradingd.feeds.panel import FIELDS

    return int(panel.times.nbytes + sum(getattr(panel, f).nbytes for f in FIELDS))


# ----------------------------------------------------------------------------- data


def load(spec: dict[str, Any]) -> tuple[Any, float]:
    """The panel of the spec's symbols, loaded as tradingd loads it (validated, sorted)."""
    from tradingd.feeds.loaders import load_panel

    t0 = time.perf_counter()
    panel = load_panel("parquet", spec["data"], layout="long", symbols=spec["symbols"])
    return panel, time.perf_counter() - t0


def split_factors(split: np.ndarray) -> np.ndarray:
    """Per (t, symbol): product of the split coefficients strictly after t, so that
    raw / factor is the split-adjusted price (as the history buffer sees it at the end)."""
    after = np.cumprod(split[::-1], axis=0)[::-1]  # product over u >= t
    return after / split


def momentum(adj: np.ndarray) -> np.ndarray:
    """adj[t] / adj[t'] - 1 where t' is the symbol's own LOOKBACK-th bar before t (as
    tradingd's return_126 feature: a day without a bar does not count); NaN before."""
    out = np.full_like(adj, np.nan)
    for j in range(adj.shape[1]):
        rows = np.flatnonzero(~np.isnan(adj[:, j]))
        if len(rows) > LOOKBACK:
            v = adj[rows, j]
            out[rows[LOOKBACK:], j] = v[LOOKBACK:] / v[:-LOOKBACK] - 1.0
    return out


def symbols_of(path: str) -> list[str]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["symbol"]).column("symbol")
    return sorted(pc.unique(col).to_pylist())


# ----------------------------------------------------------------------------- tradingd


def write_config(workdir: Path, spec: dict[str, Any], store: str) -> Path:
    url = "sqlite:///:memory:" if store == "memory" else f"sqlite:///{workdir / 'bench.db'}"
    text = CONFIG_TEMPLATE.format(
        run_id=f"bench-{workdir.name}",
        capital=INITIAL_CAPITAL,
        output_dir=(workdir / "runs").as_posix(),
        data=Path(spec["data"]).as_posix(),
        symbols=json.dumps(list(spec["symbols"])),
        commission=COMMISSION,
        slippage=SLIPPAGE,
        lookback=LOOKBACK,
        top=TOP_N,
        gross=GROSS,
        max_position=MAX_POSITION,
        storage_url=url,
        log_level=spec.get("log_level", "warning"),
        audit_dir=(workdir / "audit").as_posix(),
    )
    path = workdir / "bench.toml"
    path.write_text(text)
    return path


def run_tradingd(spec: dict[str, Any]) -> dict[str, Any]:
    """`tradingd backtest` (engine "tradingd") or the engine alone (engine "engine").

    Timed apart: loading (app.load_data, as the CLI), features (the batch feature step,
    tradingd.features.source.compute_batch, run inside build_engine), the rest of
    build_engine (setup), the replay (engine.run_until_done: the bar loop, broker, portfolio,
    store writes and their final flush, audit log) and, for `tradingd backtest`, what follows
    the replay (summary metrics and the run's CSV/JSON outputs)."""
    import tradingd.backtest as tbt
    import tradingd.features.source as fsrc
    from tradingd.app import build_engine, load_data
    from tradingd.config import load_config

    user = spec["engine"] == "tradingd"
    spans: dict[str, float] = {"features": 0.0}
    holder: dict[str, Any] = {}

    original_batch = fsrc.compute_batch

    def timed_batch(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original_batch(*a, **k)
        finally:
            spans["features"] += time.perf_counter() - t0

    fsrc.compute_batch = timed_batch

    def timed_build(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        engine = build_engine(*a, **k)
        spans["build"] = time.perf_counter() - t0
        if not user:
            from tradingd.engine.engine import NullAudit

            engine.audit = NullAudit()
        run = engine.run_until_done

        async def timed_run() -> Any:
            t1 = time.perf_counter()
            try:
                return await run()
            finally:
                spans["replay"] = time.perf_counter() - t1

        engine.run_until_done = timed_run
        holder["engine"] = engine
        return engine

    rss_start = current_rss_mb()
    with tempfile.TemporaryDirectory(prefix="tradingd-bench-") as tmp:
        work = Path(tmp)
        cfg_path = write_config(work, spec, "sqlite" if user else "memory")
        # env={}: DATABASE_URL / REDIS_URL / TRADINGD_* of the shell must not change the run.
        config = load_config([cfg_path], env={})
        t0 = time.perf_counter()
        panel = load_data(config)
        load_s = time.perf_counter() - t0
        nbytes = panel_nbytes(panel)
        gc.collect()
        peak_load, rss_loaded = peak_rss_mb(), current_rss_mb()
        reset = reset_peak_rss()
        prof = cProfile.Profile() if spec.get("profile") else None
        if prof is not None:
            prof.enable()
        t0 = time.perf_counter()
        if user:
            tbt.build_engine = timed_build
            outcome = asyncio.run(tbt.run_backtest(config, panel=panel, output_dir=work / "out"))
            result = outcome.result
        else:
            engine = timed_build(config, "backtest", panel=panel)
            result = asyncio.run(engine.run_until_done())
        total = time.perf_counter() - t0
        if prof is not None:
            prof.disable()
        peak_run = peak_rss_mb()
        audit_bytes = sum(f.stat().st_size for f in (work / "audit").glob("*") if f.is_file())
        db = work / "bench.db"
        db_bytes = db.stat().st_size if db.exists() else 0
    fsrc.compute_batch = original_batch
    features = spans["features"]
    build, replay = spans["build"], spans["replay"]
    out = {
        "bars": panel.n_bars,
        "days": len(panel.times),
        "symbols": len(panel.symbols),
        "load_s": load_s,
        "features_s": features,
        "setup_s": build - features,
        "replay_s": replay,
        "post_s": total - build - replay,
        # the headline span: build_engine (features + setup) + run_until_done
        "timed_s": build + replay,
        "orders": result.orders,
        "fills": result.fills,
        "final_equity": float(result.equity[-1]) if result.equity else None,
        "data_bytes": nbytes,
        "rss_start_mb": rss_start,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_load_mb": peak_load,
        "peak_rss_run_mb": peak_run,
        "peak_reset": reset,
        "store_bytes": db_bytes,
        "audit_bytes": audit_bytes,
    }
    if prof is not None:
        text = io.StringIO()
        text.write(f"cProfile of one {spec['engine']} run ({total:.2f} s under the profiler)\n")
        stats = pstats.Stats(prof, stream=text)
        top = spec.get("profile_top", 15)
        stats.sort_stats("cumulative").print_stats(top)
        text.write(f"the same run, top {top} by own time (tottime):\n")
        stats.sort_stats("tottime").print_stats(top)
        out["profile"] = text.getvalue()
    return out


# ----------------------------------------------------------------------------- plain loop


def run_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """The bare strategy as a per-bar, per-symbol Python loop over lists: splits, dividends,
    fills at the open with costs, marking, ranking, band-limited rebalancing. No order
    objects, no store, no audit, no checks. Timed: preparation from the loaded panel
    (split factors, the momentum matrix in numpy as tradingd's batch feature step, lists) +
    the loop. Its memory is measured as tradingd's (the peak after loading), for the same
    table: what a bare loop over lists holds beside the data."""
    rss_start = current_rss_mb()
    panel, load_s = load(spec)
    gc.collect()
    peak_load, rss_loaded = peak_rss_mb(), current_rss_mb()
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    factor = split_factors(panel.split)
    mom = momentum(panel.close / factor).tolist()
    opens, closes = panel.open.tolist(), panel.close.tolist()
    splits, divs = panel.split.tolist(), panel.dividend.tolist()
    n = len(panel.symbols)
    t1 = time.perf_counter()

    cash = INITIAL_CAPITAL
    qty = [0.0] * n
    mark = [0.0] * n
    pending = [0.0] * n
    orders = fills = 0
    equity = cash
    for t in range(len(closes)):
        o_row, c_row, s_row, d_row = opens[t], closes[t], splits[t], divs[t]
        m_row = mom[t]
        positive = []
        for j in range(n):
            c = c_row[j]
            if c != c:  # no bar
                continue
            q = qty[j]
            s = s_row[j]
            if s != 1.0:  # a split scales the position and an order not yet filled
                q *= s
                qty[j] = q
                pending[j] *= s
            if q:
                cash += q * d_row[j]
            p = pending[j]
            if p:
                px = o_row[j] * (1.0 + SLIPPAGE if p > 0 else 1.0 - SLIPPAGE)
                cash -= p * px + abs(p * px) * COMMISSION
                qty[j] = q = q + p
                pending[j] = 0.0
                fills += 1
            mark[j] = c
            m = m_row[j]
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
    t2 = time.perf_counter()
    return {
        "bars": panel.n_bars,
        "days": len(panel.times),
        "load_s": load_s,
        "prep_s": t1 - t0,
        "loop_s": t2 - t1,
        "timed_s": t2 - t0,
        "orders": orders,
        "fills": fills,
        "final_equity": equity,
        "data_bytes": panel_nbytes(panel),
        "rss_start_mb": rss_start,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_load_mb": peak_load,
        "peak_rss_run_mb": peak_rss_mb(),
        "peak_reset": reset,
    }


# ----------------------------------------------------------------------------- backtrader


def backtrader_frames(panel: Any) -> tuple[list[Any], list[np.ndarray], int]:
    """Split-adjusted OHLCV frames on the panel's whole calendar (backtrader needs aligned
    feeds and does not apply splits; tradingd does). Before its listing a symbol is padded with
    its first open (zero volume); a gap is forward-filled. `real[j][t]`: symbol j has a bar at
    t (the strategy ignores padded and filled bars, as tradingd, which has no bar there)."""
    import pandas as pd

    factor = split_factors(panel.split)
    index = pd.DatetimeIndex(panel.times)  # naive UTC midnight; backtrader wants naive
    frames, real, fed = [], [], 0
    for j, _ in enumerate(panel.symbols):
        cols = {f: getattr(panel, f)[:, j] / factor[:, j] for f in ("open", "high", "low", "close")}
        cols["volume"] = panel.volume[:, j] * factor[:, j]
        df = pd.DataFrame(cols, index=index)
        has = df["close"].notna().to_numpy()
        df = df.ffill()
        first = df["close"].first_valid_index()
        pre = df.index < first
        for f in ("open", "high", "low", "close"):
            df.loc[pre, f] = df.loc[first, "open"]
        df["volume"] = df["volume"].where(~pre, 0.0).fillna(0.0)
        df["openinterest"] = 0.0
        frames.append(df)
        real.append(has)
        fed += len(df)
    return frames, real, fed


def make_bt_strategy(real: list[np.ndarray]) -> type:
    import backtrader as bt

    class Momentum(bt.Strategy):
        """Same rule as tradingd's plugins + order planner: each day rank close/close[-126]-1
        over symbols with a bar today and 126 bars ago, hold the (at most) top 10 with positive
        momentum at 5% of equity, whole shares, trade only when the weight is off by more than
        the band (or the position is closed)."""

        params = (
            ("lookback", LOOKBACK),
            ("top", TOP_N),
            ("weight", MAX_POSITION),
            ("band", REBALANCE_BAND),
            ("min_trade", MIN_TRADE_VALUE),
        )

        def __init__(self) -> None:
            self.mom = [bt.ind.RateOfChange(d.close, period=self.p.lookback) for d in self.datas]
            self.real = [r.tolist() for r in real]
            self.orders_placed = 0
            self.fills = 0

        def notify_order(self, order: Any) -> None:
            if order.status == order.Completed:
                self.fills += 1

        def next(self) -> None:
            t = len(self) - 1
            lag = t - self.p.lookback
            real = self.real
            scored = [
                (m[0], i)
                for i, m in enumerate(self.mom)
                if real[i][t] and lag >= 0 and real[i][lag] and m[0] > 0.0
            ]
            scored.sort(key=lambda x: -x[0])  # stable: ties go to universe order, as tradingd
            top = {i for _, i in scored[: self.p.top]}
            equity = self.broker.getvalue()
            band, weight, min_trade = self.p.band, self.p.weight, self.p.min_trade
            for i, d in enumerate(self.datas):
                held = self.getposition(d).size
                if (i not in top and not held) or not real[i][t]:
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


def run_backtrader(spec: dict[str, Any]) -> dict[str, Any]:
    """Timed: cerebro.run() (its indicators are computed inside). Building the frames and
    the Cerebro is printed as setup, in no rate."""
    try:
        import backtrader as bt
    except ImportError as exc:
        return {"skipped": f"backtrader not installed ({exc}); pip install '.[bench]'"}
    panel, load_s = load(spec)
    t0 = time.perf_counter()
    frames, real, fed = backtrader_frames(panel)
    cerebro = bt.Cerebro(stdstats=False)
    for sym, df in zip(panel.symbols, frames, strict=True):
        cerebro.adddata(bt.feeds.PandasData(dataname=df), name=sym)
    cerebro.broker.setcash(INITIAL_CAPITAL)
    cerebro.broker.setcommission(commission=COMMISSION)
    cerebro.broker.set_slippage_perc(SLIPPAGE)
    cerebro.addstrategy(make_bt_strategy(real))
    setup = time.perf_counter() - t0
    gc.collect()
    t1 = time.perf_counter()
    strategies = cerebro.run()
    run_s = time.perf_counter() - t1
    strat = strategies[0]
    return {
        "bars": panel.n_bars,
        "days": len(panel.times),
        "bars_fed": fed,
        "load_s": load_s,
        "setup_s": setup,
        "timed_s": run_s,
        "orders": strat.orders_placed,
        "fills": strat.fills,
        "final_equity": cerebro.broker.getvalue(),
        "version": ".".join(map(str, bt.version.__version__))
        if isinstance(bt.version.__version__, tuple)
        else str(bt.version.__version__),
    }


# ----------------------------------------------------------------------------- vectorbt


def _vbt_functions() -> tuple[Any, Any, Any]:
    """The strategy as vectorbt callbacks (numba, compiled at their first call).

    pre_segment (each bar, before its orders): the orders decided at the previous close, to
    fill at this bar's open, sells first, then buys (cash shared by all columns).
    flex_order: hands them to vectorbt one by one (price = open; vectorbt applies slippage
    and fees). post_segment (each bar, after its orders): equity at the close, the top 10
    by 126-bar momentum, the band rule -> the next bar's orders."""
    from numba import njit
    from vectorbt.portfolio import nb
    from vectorbt.portfolio.enums import NoOrder

    @njit
    def pre_segment(c, pending, order_cols, n_calls, open_, close_):
        i = c.i
        k = 0
        for sign in (-1.0, 1.0):
            for j in range(c.from_col, c.to_col):
                p = pending[j]
                if p * sign > 0.0 and close_[i, j] == close_[i, j] and open_[i, j] > 0.0:
                    order_cols[k] = j
                    k += 1
        n_calls[0] = k
        return ()

    @njit
    def flex_order(c, pending, order_cols, n_calls, open_, fees, slippage):
        if c.call_idx >= n_calls[0]:
            return -1, NoOrder
        j = order_cols[c.call_idx]
        size = pending[j]
        pending[j] = 0.0
        return j, nb.order_nb(
            size=size, price=open_[c.i, j], fees=fees, slippage=slippage, size_granularity=1.0
        )

    @njit
    def post_segment(c, pending, last_close, mom, close_, counters, top_n, weight, band, min_trade):
        i = c.i
        n = c.to_col - c.from_col
        equity = c.last_cash[c.group]
        for j in range(n):
            cl = close_[i, j]
            if cl == cl:
                last_close[j] = cl
            q = c.last_position[j]
            if q != 0.0:
                equity += q * last_close[j]
        counters[1] = equity
        keys = np.full(n, np.inf)
        for j in range(n):
            m = mom[i, j]
            if m > 0.0 and close_[i, j] == close_[i, j]:
                keys[j] = -m
        order = np.argsort(keys, kind="mergesort")  # stable: ties in universe order
        in_top = np.zeros(n, dtype=np.bool_)
        for k in range(min(top_n, n)):
            j = order[k]
            if keys[j] == np.inf:
                break
            in_top[j] = True
        for j in range(n):
            held = c.last_position[j]
            if not in_top[j] and held == 0.0:
                continue
            cl = close_[i, j]
            if cl != cl:
                continue
            target = weight if in_top[j] else 0.0
            delta = math.trunc(target * equity / cl) - held
            if delta == 0.0:
                continue
            closing = target == 0.0 and held != 0.0
            if closing or (
                abs(target - held * cl / equity) > band and abs(delta * cl) >= min_trade
            ):
                pending[j] = -held if closing else delta
                counters[0] += 1.0

    return pre_segment, flex_order, post_segment


def vbt_once(vbt: Any, funcs: tuple[Any, Any, Any], panel: Any) -> tuple[float, dict[str, Any]]:
    """Split-adjusted prices and momentum (numpy), then the simulation. Timed: all of it."""
    pre_segment, flex_order, post_segment = funcs
    gc.collect()
    t0 = time.perf_counter()
    factor = split_factors(panel.split)
    close_ = panel.close / factor
    open_ = panel.open / factor
    mom = momentum(close_)
    t_rows, n = close_.shape
    pending = np.zeros(n)
    order_cols = np.zeros(n, dtype=np.int64)
    n_calls = np.zeros(1, dtype=np.int64)
    last_close = np.zeros(n)
    counters = np.zeros(2)  # orders, equity at the last close
    pf = vbt.Portfolio.from_order_func(
        close_,
        flex_order,
        pending,
        order_cols,
        n_calls,
        open_,
        COMMISSION,
        SLIPPAGE,
        flexible=True,
        init_cash=INITIAL_CAPITAL,
        cash_sharing=True,
        group_by=True,
        pre_segment_func_nb=pre_segment,
        pre_segment_args=(pending, order_cols, n_calls, open_, close_),
        post_segment_func_nb=post_segment,
        post_segment_args=(
            pending,
            last_close,
            mom,
            close_,
            counters,
            TOP_N,
            MAX_POSITION,
            REBALANCE_BAND,
            MIN_TRADE_VALUE,
        ),
        call_post_segment=True,
        max_orders=min(t_rows * n, t_rows * 4 * TOP_N),
    )
    elapsed = time.perf_counter() - t0
    return elapsed, {
        "orders": int(counters[0]),
        "fills": len(pf.order_records),
        "final_equity": float(counters[1]),
        "final_value_vbt": float(pf.final_value()),
    }


def run_vectorbt(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        import vectorbt as vbt
    except Exception as exc:  # ImportError, or numba/llvmlite failing to load
        return {"skipped": f"vectorbt cannot be imported ({type(exc).__name__}: {exc})"}
    import_s = time.perf_counter() - t0
    panel, load_s = load(spec)
    t0 = time.perf_counter()
    funcs = _vbt_functions()
    define_s = time.perf_counter() - t0
    first_s, first = vbt_once(vbt, funcs, panel)
    warm_s, warm = vbt_once(vbt, funcs, panel)
    return {
        "bars": panel.n_bars,
        "days": len(panel.times),
        "load_s": load_s,
        "import_s": import_s,
        "define_s": define_s,
        "first_s": first_s,
        "warm_s": warm_s,
        "timed_s": first_s,
        **first,
        "warm_same_trades": warm["orders"] == first["orders"]
        and warm["final_equity"] == first["final_equity"],
        "version": vbt.__version__,
        "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR", ""),
    }


# ----------------------------------------------------------------------------- main

RUNNERS = {
    "tradingd": run_tradingd,
    "engine": run_tradingd,
    "plain": run_plain,
    "backtrader": run_backtrader,
    "vectorbt": run_vectorbt,
}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    from tradingd.logs import configure_logging

    # tradingd's loader logs its data repairs; the benchmark prints only warnings and errors.
    configure_logging(spec.get("log_level", "warning"), "json")
    if spec["engine"] == "symbols":
        out: dict[str, Any] = {"symbols": symbols_of(spec["data"])}
    else:
        t0 = time.perf_counter()
        out = RUNNERS[spec["engine"]](spec)
        out["process_s"] = time.perf_counter() - t0
        out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
