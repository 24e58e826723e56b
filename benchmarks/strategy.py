"""The full default strategy replayed over the S&P 500 stocks of ../shared/data (issue 10, 7).

    python benchmarks/strategy.py                          # 496 symbols x 1999-2018, 2 runs
    python benchmarks/strategy.py --symbols 100 --start 2015-01-01
    python benchmarks/strategy.py --refit-bars 21          # the plugin's default fit cadence

What runs: `config/default.toml` + `config/backtest.toml` (the ML ensemble with the shipped
ONNX model, the multi-factor score, Kelly x GARCH sizing, every risk rule of the default
chain with the S&P 500 sector map, brackets), through `tradingd.backtest.run_backtest`, the
same call as `tradingd backtest`, with the store in memory. Each run is its own child process
(so its peak RSS is its own) and uses one prediction-cache directory: the first run starts
with it empty, the rerun finds the predictions of the first ("warm"). The GARCH fit outcomes
go to the plugin's fit cache in the same temporary directory: the first run fits everything,
the rerun nothing.

Printed per run: wall time of the replay (data loading separately), bar-events per second
(symbol-bars with a close / replay seconds), peak RSS, and the time per bar of each engine
stage (signals, sizing, risk, orders, store, total: the engine's own stage timer, the
`tradingd_stage_seconds` histogram, read as sum / count), plus the summary's fills and
verdicts so that the two runs can be seen to agree. Numbers are recorded by hand in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sp500_daily_1999_2018.parquet"


def _children_cpu_s() -> float:
    """CPU seconds of this process's live children (Linux /proc; 0 elsewhere)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _reaped_children_cpu_s() -> float:
    """CPU seconds of children that have ended (the fit worker, closed with the engine)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def child(args: argparse.Namespace) -> dict:
    import asyncio
    import resource

    from tradingd import metrics
    from tradingd.app import load_data
    from tradingd.backtest import run_backtest
    from tradingd.config import load_config

    overlay = Path(args.workdir) / "bench.toml"
    symbols = ""
    if args.symbols:
        import pandas as pd

        names = sorted(pd.read_parquet(DATA, columns=["symbol"])["symbol"].unique())
        symbols = "symbols = [" + ", ".join(f'"{s}"' for s in names[: args.symbols]) + "]"
    overlay.write_text(f"""
[run]
run_id = "bench-strategy"
start = "{args.start}"
end = "{args.end}"
[data]
{symbols}
[storage]
url = "sqlite:///:memory:"
signals = "none"
[cache]
features_dir = "{(Path(args.cache_dir).parent / "features").as_posix()}"
""")
    config = load_config([ROOT / "config/default.toml", ROOT / "config/backtest.toml", overlay])
    # The benchmark's knobs, applied to the plugin specs (the TOML lists replace, not merge).
    sizing = dataclasses.replace(
        config.sizing,
        params={
            **config.sizing.params,
            "refit_bars": args.refit_bars,
            **({"fit_lag_bars": args.fit_lag_bars} if args.fit_lag_bars >= 0 else {}),
            "fit_cache_dir": str(Path(args.cache_dir).parent / "garch"),
        },
    )
    signals = tuple(
        dataclasses.replace(
            s,
            params={
                **s.params,
                "cache_dir": args.cache_dir,
                **({"threads": args.ml_threads} if args.ml_threads >= 0 else {}),
            },
        )
        if s.name == "ml_ensemble"
        else s
        for s in config.signals
    )
    config = dataclasses.replace(config, sizing=sizing, signals=signals)
    t0 = time.perf_counter()
    panel = load_data(config)
    load_s = time.perf_counter() - t0

    # The engine times its stages when asked (live does); the replay asks here.
    from tradingd.engine import engine as engine_mod
    from tradingd.environment import environment

    original = engine_mod.Engine.__init__

    def timed_init(self, *a, **kw):  # type: ignore[no-untyped-def]
        original(self, *a, **kw)
        self._live_metrics = True

    engine_mod.Engine.__init__ = timed_init  # type: ignore[method-assign]
    t0 = time.perf_counter()
    outcome = asyncio.run(run_backtest(config, panel=panel))
    replay_s = time.perf_counter() - t0
    stages = metrics.stage_means_ms()
    s = outcome.summary
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "symbols": len(panel.symbols),
        "bars": len(panel.times),
        "bar_events": int(panel.n_bars),
        "load_s": round(load_s, 1),
        "replay_s": round(replay_s, 1),
        "bar_events_per_s": round(panel.n_bars / replay_s),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "stage_ms_per_bar": {k: round(v, 2) for k, v in sorted(stages.items())},
        # Where the CPU went: this process (engine, model inference) and its children (the
        # GARCH fit worker), user + system seconds.
        "cpu_s": round(own.ru_utime + own.ru_stime, 1),
        "children_cpu_s": round(_children_cpu_s() + _reaped_children_cpu_s(), 1),
        "fills": s.get("fills"),
        "final_equity": round(float(s.get("final_equity", 0.0)), 2),
        "verdicts_by_rule": s.get("risk_verdicts_by_rule"),
        # Fills and equity depend on the CPU's kernels and the packages (RESULTS.md, "Why the
        # S&P 500 run depended on the CPU, and the fix"): what this run had.
        "environment": environment(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--symbols", type=int, default=0, help="first N symbols (0 = all)")
    p.add_argument("--start", default="1999-01-01")
    p.add_argument("--end", default="2018-12-31")
    p.add_argument("--refit-bars", type=int, default=63, help="kelly_garch refit cadence")
    p.add_argument(
        "--ml-threads", type=int, default=-1, help="ml_ensemble threads (-1 = the config's)"
    )
    p.add_argument(
        "--fit-lag-bars", type=int, default=-1, help="kelly_garch fit_lag_bars (-1 = the config's)"
    )
    p.add_argument("--runs", type=int, default=2, help="first run, then warm reruns")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if not DATA.exists():
        sys.exit(f"needs {DATA} (the shared S&P 500 data, not part of the repository)")
    with tempfile.TemporaryDirectory(prefix="tradingd-bench-strategy-") as tmp:
        cache = Path(tmp) / "predictions"
        results = []
        for i in range(args.runs):
            cmd = [
                sys.executable, __file__, "--child", "--workdir", tmp, "--cache-dir", str(cache),
                "--symbols", str(args.symbols), "--start", args.start, "--end", args.end,
                "--refit-bars", str(args.refit_bars), "--ml-threads", str(args.ml_threads),
                "--fit-lag-bars", str(args.fit_lag_bars),
            ]  # fmt: skip
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"run {i + 1} failed:\n{out.stderr[-4000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["run"] = "first (cold prediction cache)" if i == 0 else "rerun (warm cache)"
            results.append(r)
            print(json.dumps(r, indent=1), flush=True)
    print(
        json.dumps(
            {
                "machine": f"{platform.node()} {os.cpu_count()} cpu {platform.processor()}",
                "python": platform.python_version(),
                "load": os.getloadavg(),
                "git": subprocess.run(
                    ["git", "rev-parse", "--short", "HEAD"],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.strip(),
            }
        )
    )


if __name__ == "__main__":
    main()
