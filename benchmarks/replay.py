"""Replay throughput of tradingd against a plain Python loop, backtrader and vectorbt.

Every engine runs the same strategy on the same symbols (the first N of the shared S&P 500
daily file, `../shared/data/sp500_daily_1999_2018.parquet`, sorted by name), each run in its
own fresh Python process (`benchmarks/replay_engines.py`), so that no engine's imports,
caches or JIT compilation help another's, and runs of different engines are interleaved:

    signal  momentum, lookback 126      (tanh of the 126-bar return; only its sign matters here)
    sizing  equal_weight, top 10, gross 0.5
    risk    max_position 0.05           (no drawdown guard, no position-count or gross limits)
    orders  rebalance band 1%, minimum trade 100 (the order planner's defaults)
    costs   0.1% commission, 0.05% slippage, fill at the next bar's open; capital 100,000

Rows, per width (number of symbols):

    tradingd backtest   as users run it: tradingd.backtest.run_backtest, SQLite file store and
                        JSON audit log on (config/default.toml's [storage], in a temp dir)
    tradingd engine     the engine alone: sqlite:///:memory: store, audit log off
    plain loop          a per-bar, per-symbol Python loop of the same strategy over lists
    backtrader          the same rule as a backtrader Strategy (`pip install ".[bench]"`)
    vectorbt            the same rule as a vectorbt order function (numba): first run in a
                        fresh process (numba compilation included) and warm (second run)

The rate is bar-events per second: bars that exist (symbol x day with a close, the same
count for every engine) divided by the engine's timed span (printed with the table: for
tradingd it includes the batch feature step, also printed on its own). Loading the data is
timed apart and is in no rate. Ratios are of median rates in the same invocation.

    python benchmarks/replay.py                           # 100 and 496 symbols, 3 repeats
    python benchmarks/replay.py --symbols 20 --repeats 1  # a quick check (~1 minute)
    python benchmarks/replay.py --engines tradingd,plain --json
    python benchmarks/replay.py --profile                 # + cProfile of a tradingd backtest

Results are recorded by hand in benchmarks/RESULTS.md, with the machine printed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# This process only starts the runs and prints: it imports no pandas, pyarrow or tradingd
# and loads no data, so it stays small (a child's ru_maxrss can start from its parent's).
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHILD = HERE / "replay_engines.py"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sp500_daily_1999_2018.parquet"

ENGINES = ("tradingd", "engine", "plain", "backtrader", "vectorbt")

# (row key, label, engine, field of the child's result that is the timed span)
ROWS = (
    ("tradingd", "tradingd backtest (sqlite file, audit on)", "tradingd", "timed_s"),
    ("engine", "tradingd engine (memory store, audit off)", "engine", "timed_s"),
    ("plain", "plain Python loop", "plain", "timed_s"),
    ("backtrader", "backtrader", "backtrader", "timed_s"),
    ("vbt_first", "vectorbt, first run", "vectorbt", "first_s"),
    ("vbt_warm", "vectorbt, warm", "vectorbt", "warm_s"),
)
LABEL = {key: label for key, label, _, _ in ROWS}

SPANS = """\
timed spans (bar-events / span = the rate; data loading is in none of them):
  tradingd backtest  build_engine (batch features + setup) + engine.run_until_done (bar loop,
                     broker, portfolio, SQLite writes and their final flush, audit log, the
                     report's orders/fills, made while the last writes run); "post" = summary
                     metrics and the run's CSV/JSON files, after the replay: printed, in no
                     rate
  tradingd engine    the same spans, sqlite:///:memory:, audit log off (NullAudit)
  features s         tradingd's batch feature step alone (compute_batch inside build_engine);
                     "replay-only /s" = bar-events / engine.run_until_done alone
  plain loop         split factors + the momentum matrix (numpy) + numpy -> lists + the loop
  backtrader         cerebro.run() (its indicators are computed inside); building the feeds
                     and the Cerebro is setup, in no rate
  vectorbt           split-adjusted prices + momentum (numpy) + Portfolio.from_order_func;
                     first run: in a fresh process with an empty numba cache (compilation
                     included; importing vectorbt is printed apart); warm: the same again in
                     that process"""

DIFFERENCES = """\
how the implementations differ (same rule, same symbols, same days):
  all                   momentum over the symbol's own last 126 bars (a day without a bar does
                        not count), except backtrader: 126 rows of its padded, filled feed
  tradingd, plain loop  raw prices; splits applied to positions (and to orders not yet filled)
                        and dividends credited to cash on their day; whole shares; fills in
                        symbol order, cash may dip; tradingd alone caps a fill at 10% of the
                        bar's volume (the rest fills on later bars), as users run it
  backtrader            split-adjusted prices (it applies no splits), no dividends; before its
                        listing a symbol is padded with its first open (counted in its
                        "bars fed", never ranked or traded), a missing bar forward-filled
                        (not ranked or traded that day, but a pending order fills on it)
  vectorbt              split-adjusted prices, no dividends; whole shares of adjusted prices;
                        sells before buys within a bar; a buy larger than the cash is cut to
                        what the cash buys (allow_partial)
  so backtrader's and vectorbt's final equity is lower than tradingd's by the dividends, and
  their share counts differ by rounding at splits"""


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


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


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": mem_total_gib(),
        "python": platform.python_version(),
        "git": git_revision(),
        "environment": run_environment(),
    }


def run_environment() -> dict[str, Any] | None:
    """tradingd's `environment.json` as a run in a child would write it (package versions,
    numpy's SIMD loops: they change the strategy run's fills between machines). Read in a
    child: this process imports neither numpy nor tradingd."""
    code = "import json; from tradingd.environment import environment as e; print(json.dumps(e()))"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode:
        return None
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------- children


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def child(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """One engine run in a fresh interpreter; its progress goes to our stderr."""
    load = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stdout.splitlines()[-5:])
        return {"error": f"exit {proc.returncode}; stdout tail: {tail}", "wall_s": wall}
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    out["wall_s"] = wall
    out["loadavg_before"] = load
    return out


def run_engine(engine: str, symbols: list[str], args: argparse.Namespace) -> dict[str, Any]:
    spec = {
        "engine": engine,
        "data": str(args.data),
        "symbols": symbols,
        "log_level": args.log_level,
    }
    if engine != "vectorbt" or args.vbt_numba_cache == "disk":
        return child(spec)
    # An empty numba cache: the first run compiles vectorbt's functions as well as ours.
    cache = tempfile.mkdtemp(prefix="bench-numba-")
    try:
        return child(spec, env={**os.environ, "NUMBA_CACHE_DIR": cache})
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def progress(width: int, rep: int, args: argparse.Namespace, engine: str, r: dict[str, Any]) -> str:
    head = f"  [{width} symbols, run {rep + 1}/{args.repeats}] {engine}:"
    if "error" in r:
        return f"{head} FAILED {r['error']}"
    if "skipped" in r:
        return f"{head} skipped: {r['skipped']}"
    if engine == "vectorbt":
        return (
            f"{head} first {r['first_s']:.2f} s, warm {r['warm_s']:.3f} s "
            f"(import {r['import_s']:.1f} s; process {r['wall_s']:.1f} s)"
        )
    extra = ""
    if engine in ("tradingd", "engine"):
        extra = f" (features {r['features_s']:.2f} s, replay {r['replay_s']:.2f} s)"
    return (
        f"{head} {r['timed_s']:.2f} s{extra}, {r['bars'] / r['timed_s']:,.0f} bar-events/s, "
        f"{r['orders']} orders; process {r['wall_s']:.1f} s"
    )


# ----------------------------------------------------------------------------- summary


def median(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def summarize(width: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median spans and rates per row, their ratios to the plain loop and to backtrader."""
    rows: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for key, _label, engine, field in ROWS:
        ok = [r for r in runs.get(engine, []) if "error" not in r and "skipped" not in r]
        bad = [r for r in runs.get(engine, []) if "error" in r or "skipped" in r]
        for r in bad[:1]:
            notes.append(f"{LABEL[key]}: {r.get('skipped') or r.get('error')}")
        if not ok:
            continue
        bars = ok[0]["bars"]
        spans = [r[field] for r in ok]
        med = median(spans)
        row: dict[str, Any] = {
            "label": LABEL[key],
            "bars": bars,
            "runs": len(ok),
            "timed_s": spans,
            "median_s": med,
            "rate": bars / med if med else None,
            "rates": [bars / s for s in spans],
            "process_s": median([r["wall_s"] for r in ok]),
            "load_s": median([r.get("load_s") for r in ok]),
            "peak_rss_mb": median([r.get("peak_rss_mb") for r in ok]),
            "orders": ok[0].get("orders"),
            "fills": ok[0].get("fills"),
            "final_equity": ok[0].get("final_equity"),
            "loadavg_before": [r.get("loadavg_before") for r in ok],
        }
        if engine in ("tradingd", "engine"):
            for f in ("features_s", "setup_s", "replay_s", "post_s"):
                row[f] = median([r[f] for r in ok])
            row["replay_rate"] = bars / row["replay_s"]
            row["rate_without_features"] = bars / (row["median_s"] - row["features_s"])
        if engine in ("tradingd", "engine", "plain"):
            row["data_bytes"] = ok[0]["data_bytes"]
            for f in ("rss_start_mb", "rss_after_load_mb", "peak_rss_load_mb", "peak_rss_run_mb"):
                row[f] = median([r[f] for r in ok])
            row["peak_reset"] = all(r["peak_reset"] for r in ok)
            after = row["rss_after_load_mb"]
            row["replay_growth_mb"] = None if after is None else row["peak_rss_run_mb"] - after
            row["peak_over_data"] = row["peak_rss_run_mb"] * 2**20 / row["data_bytes"]
        if engine in ("tradingd", "engine"):
            row["store_bytes"] = ok[0]["store_bytes"]
            row["audit_bytes"] = ok[0]["audit_bytes"]
        if engine == "plain":
            row["prep_s"] = median([r["prep_s"] for r in ok])
            row["loop_s"] = median([r["loop_s"] for r in ok])
        if engine == "backtrader":
            row["bars_fed"] = ok[0]["bars_fed"]
            row["setup_s"] = median([r["setup_s"] for r in ok])
            row["version"] = ok[0]["version"]
        if engine == "vectorbt":
            row["import_s"] = median([r["import_s"] for r in ok])
            row["version"] = ok[0]["version"]
            row["warm_same_trades"] = all(r["warm_same_trades"] for r in ok)
        rows[key] = row
    for key, row in rows.items():
        for ref, name in (("plain", "x_plain"), ("backtrader", "x_backtrader")):
            base = rows.get(ref)
            row[name] = row["rate"] / base["rate"] if base and row["rate"] else None
        if key in ("tradingd", "engine") and rows.get("backtrader"):
            row["x_backtrader_replay_only"] = row["replay_rate"] / rows["backtrader"]["rate"]
        if key in ("tradingd", "engine") and rows.get("plain"):
            row["x_plain_replay_only"] = row["replay_rate"] / rows["plain"]["rate"]
    days = next((r["days"] for rs in runs.values() for r in rs if "days" in r), None)
    return {
        "symbols": width,
        "days": days,
        "bar_events": next(iter(rows.values()))["bars"] if rows else None,
        "rows": rows,
        "trade_check": trade_check(rows),
        "notes": notes,
    }


def trade_check(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Orders and final equity of each engine against the plain loop's (same symbols)."""
    base = rows.get("plain")
    out: dict[str, Any] = {}
    for key, row in rows.items():
        if key == "vbt_warm":
            continue
        entry = {
            "orders": row["orders"],
            "fills": row["fills"],
            "final_equity": row["final_equity"],
        }
        if base and base["orders"] and row["final_equity"] is not None:
            entry["orders_vs_plain_pct"] = 100.0 * (row["orders"] / base["orders"] - 1.0)
            entry["equity_vs_plain_pct"] = 100.0 * (
                row["final_equity"] / base["final_equity"] - 1.0
            )
        out[key] = entry
    td, eng = rows.get("tradingd"), rows.get("engine")
    if td and base:
        # The plain loop is the same rule on the same raw data: it must trade exactly alike.
        out["tradingd_matches_plain"] = (
            td["orders"] == base["orders"]
            and td["fills"] == base["fills"]
            and abs(td["final_equity"] / base["final_equity"] - 1.0) < 1e-9
        )
    if td and eng:
        out["tradingd_configs_identical"] = (
            td["orders"] == eng["orders"]
            and td["fills"] == eng["fills"]
            and td["final_equity"] == eng["final_equity"]
        )
    return out


# ----------------------------------------------------------------------------- report


def fmt(x: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:{spec}}{suffix}"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells)

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def report_width(w: dict[str, Any]) -> str:
    rows = w["rows"]
    out = [
        f"\n== {w['symbols']} symbols: {w['days']} days, {fmt(w['bar_events'])} bar-events "
        "(symbol x day with a close; the numerator of every rate) =="
    ]
    speed = []
    for row in rows.values():
        speed.append(
            [
                row["label"],
                fmt(row["rate"]),
                fmt(row["median_s"], ".3f"),
                fmt(row.get("features_s"), ".3f"),
                fmt(row.get("replay_s"), ".3f"),
                fmt(row.get("replay_rate")),
                fmt(row["x_plain"], ".2f", "x"),
                fmt(row["x_backtrader"], ".1f", "x"),
                fmt(row["process_s"], ".1f"),
                " ".join(fmt(r) for r in row["rates"]),
            ]
        )
    header = [
        "engine",
        "bar-events/s",
        "wall s",
        "features s",
        "replay s",
        "replay-only /s",
        "vs plain",
        "vs backtrader",
        "process s",
        "each run (/s)",
    ]
    out.append(table(speed, header))
    out.append(
        "  (median of the runs; wall s = the timed span; process s = the child process from "
        "start to exit, including Python start-up, imports and loading the data)"
    )
    extra = []
    if "tradingd" in rows:
        r = rows["tradingd"]
        extra.append(
            f"  tradingd backtest: setup {r['setup_s']:.3f} s besides the features; after the "
            f"replay, summary + output files {r['post_s']:.3f} s; store file "
            f"{r['store_bytes'] / 2**20:.1f} MB, audit log {r['audit_bytes'] / 2**20:.1f} MB"
        )
    if "plain" in rows:
        r = rows["plain"]
        extra.append(f"  plain loop: preparation {r['prep_s']:.3f} s + loop {r['loop_s']:.3f} s")
    if "backtrader" in rows:
        r = rows["backtrader"]
        extra.append(
            f"  backtrader {r['version']}: {fmt(r['bars_fed'])} bars fed (padded), "
            f"{fmt(r['bars_fed'] / r['median_s'])} bars fed/s; setup {r['setup_s']:.2f} s"
        )
    if "vbt_first" in rows:
        r = rows["vbt_first"]
        extra.append(
            f"  vectorbt {r['version']}: import {r['import_s']:.1f} s (in no rate); warm run "
            f"trades as the first: {rows['vbt_warm']['warm_same_trades']}"
        )
    out.extend(extra)
    for note in w["notes"]:
        out.append(f"  not run: {note}")

    mem = []
    for key in ("tradingd", "engine", "plain"):
        if key not in rows:
            continue
        r = rows[key]
        mem.append(
            [
                r["label"],
                fmt(r["data_bytes"] / 2**20, ".1f"),
                fmt(r["rss_start_mb"], ".0f"),
                fmt(r["rss_after_load_mb"], ".0f"),
                fmt(r["peak_rss_run_mb"], ".0f"),
                fmt(r["replay_growth_mb"], "+.0f"),
                fmt(r["peak_over_data"], ".2f", "x"),
            ]
        )
    if mem:
        out.append("")
        out.append(
            table(
                mem,
                [
                    "memory (MB)",
                    "loaded data",
                    "RSS before load",
                    "RSS after load",
                    "peak RSS, replay",
                    "peak - after load",
                    "peak / data",
                ],
            )
        )
        reset = all(rows[k]["peak_reset"] for k in ("tradingd", "engine", "plain") if k in rows)
        out.append(
            "  (loaded data: the panel's arrays, nbytes; peak RSS: getrusage ru_maxrss in the "
            "child, "
            + (
                "reset after loading, so it covers build_engine + the replay (+ post); the "
                "plain loop's, its preparation (lists of the data) + the loop"
                if reset
                else "NOT reset after loading (no /proc/self/clear_refs): the whole process"
            )
            + "; target of issue 12: peak / data <= 1.5)"
        )
        if "plain" in rows:
            out.append(
                "  (the plain loop reads the parquet file itself, uncached: what its loading "
                "freed stays in the process's RSS, so compare the growth after loading; its "
                "lists of Python floats hold about four times the arrays' bytes)"
            )

    tc = w["trade_check"]
    trades = []
    for key, e in tc.items():
        if not isinstance(e, dict):
            continue
        trades.append(
            [
                LABEL[key].replace(", first run", ""),
                fmt(e["orders"]),
                fmt(e["fills"]),
                fmt(e["final_equity"], ",.2f"),
                fmt(e.get("orders_vs_plain_pct"), "+.2f", "%"),
                fmt(e.get("equity_vs_plain_pct"), "+.2f", "%"),
            ]
        )
    if trades:
        out.append("")
        out.append(
            table(
                trades,
                ["do they trade alike?", "orders", "fills", "final equity", "orders", "equity"],
            )
        )
        out.append("  (last two columns: against the plain loop)")
        if "tradingd_matches_plain" in tc:
            out.append(
                "  tradingd backtest and the plain loop: "
                + (
                    "the same orders, fills and final equity (to 1e-9)"
                    if tc["tradingd_matches_plain"]
                    else (
                        "differ: tradingd fills at most 10% of a bar's volume per order "
                        "(broker.max_volume_participation, on by default), the plain loop "
                        "fills whole orders"
                        + (
                            "; tradingd has more fills than orders, so the cap split some"
                            if (tc["tradingd"]["fills"] or 0) > (tc["tradingd"]["orders"] or 0)
                            else " (no order was split, so look elsewhere: check!)"
                        )
                    )
                )
            )
        if "tradingd_configs_identical" in tc:
            same = tc["tradingd_configs_identical"]
            out.append(
                "  tradingd backtest and tradingd engine: "
                + ("identical orders, fills and final equity" if same else "DIFFER (check!)")
            )
    return "\n".join(out)


def headline(widths: list[dict[str, Any]]) -> str:
    out = ["\n== headline (same symbols, same run, medians) =="]
    for w in widths:
        r = w["rows"]
        td = r.get("tradingd")
        if not td:
            continue
        parts = [f"{w['symbols']} symbols: tradingd backtest {fmt(td['rate'])} bar-events/s"]
        if td.get("x_backtrader") is not None:
            parts.append(
                f"{td['x_backtrader']:.1f}x backtrader ({td['x_backtrader_replay_only']:.1f}x "
                "replay only)"
            )
        if td.get("x_plain") is not None:
            parts.append(
                f"{td['x_plain']:.2f}x the plain loop "
                f"({td['x_plain_replay_only']:.2f}x replay only)"
            )
        if r.get("vbt_first"):
            parts.append(
                f"{td['rate'] / r['vbt_first']['rate']:.2f}x vectorbt first run, "
                f"{td['rate'] / r['vbt_warm']['rate']:.3f}x warm"
            )
        parts.append(f"peak RSS {td['peak_over_data']:.1f}x the loaded data")
        out.append("  " + "; ".join(parts))
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="default: %(default)s")
    p.add_argument(
        "--symbols",
        default="100,496",
        help="widths, comma-separated: each runs the first N symbols, sorted (default: "
        "%(default)s; the file has 496)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="runs per engine and width (default: %(default)s)"
    )
    p.add_argument(
        "--bt-repeats",
        type=int,
        default=None,
        help="backtrader runs per width (default: --repeats; ~2.5 min each at 496 symbols)",
    )
    p.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma-separated subset of {','.join(ENGINES)} (default: all)",
    )
    p.add_argument(
        "--vbt-numba-cache",
        choices=("fresh", "disk"),
        default="fresh",
        help="fresh: an empty NUMBA_CACHE_DIR per vectorbt process, so the first run compiles "
        "everything (as on a new machine); disk: numba's own on-disk cache (as a user's "
        "later sessions) (default: %(default)s)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run one tradingd backtest (widest width) under cProfile and print the top",
    )
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="tradingd log level in the runs",
    )
    p.add_argument("--json", action="store_true", help="also print one JSON object at the end")
    args = p.parse_args(argv)
    try:
        args.widths = [int(x) for x in args.symbols.split(",") if x.strip()]
    except ValueError:
        p.error("--symbols takes comma-separated integers, e.g. 100,496")
    args.engine_list = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(args.engine_list) - set(ENGINES))
    if unknown:
        p.error(f"unknown engine(s) {unknown}; choose from {','.join(ENGINES)}")
    if args.bt_repeats is None:
        args.bt_repeats = args.repeats
    if args.repeats < 1 or args.bt_repeats < 0 or not args.widths or min(args.widths) < 1:
        p.error("--repeats and widths must be >= 1, --bt-repeats >= 0")
    args.data = args.data.expanduser().resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        say(
            f"replay benchmark: data file not found: {args.data}\n"
            "It is the shared S&P 500 daily file (../shared/data/sp500_daily_1999_2018.parquet "
            "next to the repository); pass another with --data PATH."
        )
        return 2
    started = time.perf_counter()
    load_start = loadavg()
    listing = child({"engine": "symbols", "data": str(args.data)})
    if "error" in listing:
        say(f"replay benchmark: cannot list the symbols: {listing['error']}")
        return 2
    all_symbols: list[str] = listing["symbols"]
    say(f"{args.data.name}: {len(all_symbols)} symbols")

    widths = []
    profile_text = ""
    for width in args.widths:
        symbols = all_symbols[:width]
        if len(symbols) < width:
            say(f"  only {len(symbols)} symbols in the file: width {width} runs {len(symbols)}")
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in args.engine_list}
        say(f"{len(symbols)} symbols ...")
        for rep in range(args.repeats):
            for engine in args.engine_list:
                if engine == "backtrader" and rep >= args.bt_repeats:
                    continue
                if rep > 0 and runs[engine] and "skipped" in runs[engine][0]:
                    continue
                r = run_engine(engine, symbols, args)
                runs[engine].append(r)
                say(progress(len(symbols), rep, args, engine, r))
        widths.append(summarize(len(symbols), runs))
    if args.profile:
        say("tradingd backtest under cProfile ...")
        spec = {
            "engine": "tradingd",
            "data": str(args.data),
            "symbols": all_symbols[: max(args.widths)],
            "log_level": args.log_level,
            "profile": True,
            "profile_top": args.profile_top,
        }
        profile_text = child(spec).get("profile", "profile run failed")

    results = {
        "benchmark": "replay",
        "data": str(args.data),
        "repeats": args.repeats,
        "bt_repeats": args.bt_repeats,
        "engines": args.engine_list,
        "vbt_numba_cache": args.vbt_numba_cache,
        "widths": widths,
        "elapsed_s": time.perf_counter() - started,
        "machine": {**machine_info(), "loadavg_start": load_start, "loadavg_end": loadavg()},
    }
    print(
        "== tradingd replay benchmark ==\n"
        f"data: {args.data}; each engine run in its own process; {args.repeats} run(s) per "
        f"engine and width (backtrader {args.bt_repeats})\n"
        "strategy: momentum 126 > 0, top 10 at 5% each (equal_weight gross 0.5 clipped by "
        "max_position 0.05), rebalance band 1%, minimum trade 100, commission 0.1%, slippage "
        "0.05%, fill at the next open, capital 100,000"
    )
    print(SPANS)
    for w in widths:
        print(report_width(w))
    print(headline(widths))
    print()
    print(DIFFERENCES)
    print("\nmachine:")
    for k, v in results["machine"].items():
        print(f"  {k}: {v}")
    print(f"  benchmark wall time: {results['elapsed_s']:.0f} s")
    if profile_text:
        print("\n" + profile_text)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
