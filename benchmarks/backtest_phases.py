"""Where a `tradingd backtest` spends its time beyond the engine (issue 12, point 5).

Runs the replay benchmark's strategy (replay_engines.py) through `run_backtest`, as the
command does, and times its phases: build_engine (features and setup), the bar loop (from
run_until_done's start to the last bar), handing the last rows to the writer (hand_over),
making the report's orders and fills (report_rows: from the store's records while the
writer commits, or, in earlier versions, the wait for the last writes and the read-back),
the rest (end: waiting for the writes, end_run and the stop), the headline span of
replay.py (span: build to the end of run_until_done) and what follows (summary and output
files). It also reports the engine process's CPU time in the bar loop and the CPU time of the
writer process (the children reaped during the run). Switches take parts away, to see what
each costs:

    python benchmarks/backtest_phases.py --symbols 496 --runs 3              # as users run it
    python benchmarks/backtest_phases.py --symbols 496 --runs 3 --no-audit   # store alone
    python benchmarks/backtest_phases.py --symbols 496 --runs 3 --no-audit --discard
        # --discard: memory store whose writes are dropped (engine_alone.py's "engine alone")

    python benchmarks/backtest_phases.py --symbols 496 --instructions [--no-audit] [--discard]

--instructions runs once under valgrind's callgrind (PYTHONHASHSEED=0) counting only the bar
loop of the engine's process (the writer process runs natively and is not counted): on a
shared VM whose speed moves by half from one minute to the next, the counts are what can
compare the three settings.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "sp500_daily_1999_2018.parquet"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _one(args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, float]:
    import engine_alone
    import replay_engines as bench

    import tradingd.backtest as tbt
    from tradingd.app import build_engine, load_data
    from tradingd.config import load_config
    from tradingd.engine.engine import NullAudit

    with tempfile.TemporaryDirectory(prefix="tradingd-phases-") as tmp:
        work = Path(tmp)
        path = bench.write_config(work, spec, "memory" if args.discard else "sqlite")
        config = load_config([path], env={})
        panel = load_data(config)
        bars = len(panel.times)
        at: dict[str, float] = {}

        def timed_build(*a: Any, **k: Any) -> Any:
            at["build0"] = time.perf_counter()
            engine = build_engine(*a, **k)
            if args.no_audit:
                engine.audit = NullAudit()
            if args.discard:
                engine_alone.discard_writes(engine.store)
            at["build1"] = time.perf_counter()
            # The report's hook: after_last_bar (while the last writes run), or before_stop
            # in versions before it (after them).
            hook = "_after_last_bar" if getattr(engine, "_after_last_bar", None) else "_before_stop"
            on_bar, before_stop, run_until_done = (
                engine._on_bar,
                getattr(engine, hook),
                engine.run_until_done,
            )

            def last_bar(i: int, t: Any) -> None:
                if i == bars:
                    if args.count:
                        engine_alone._count(False)
                    at["loop1"], at["cpu1"] = time.perf_counter(), time.process_time()
                if on_bar is not None:
                    on_bar(i, t)

            async def timed_before_stop(e: Any) -> None:
                at["read0"] = time.perf_counter()
                await before_stop(e)
                at["read1"] = time.perf_counter()

            async def timed_run() -> Any:
                if args.count:
                    engine_alone._count(True)
                at["loop0"], at["cpu0"] = time.perf_counter(), time.process_time()
                try:
                    return await run_until_done()
                finally:
                    at["run1"] = time.perf_counter()

            engine._on_bar = last_bar
            setattr(engine, hook, timed_before_stop)
            engine.run_until_done = timed_run
            return engine

        tbt.build_engine = timed_build
        gc.collect()
        children = _children_cpu()
        t0 = time.perf_counter()
        outcome = asyncio.run(tbt.run_backtest(config, panel=panel, output_dir=work / "out"))
        t1 = time.perf_counter()
        return {
            "build_s": at["build1"] - at["build0"],
            "loop_s": at["loop1"] - at["loop0"],
            "loop_cpu_s": at["cpu1"] - at["cpu0"],
            "hand_over_s": at["read0"] - at["loop1"],
            "report_rows_s": at["read1"] - at["read0"],
            "end_s": at["run1"] - at["read1"],
            "span_s": at["run1"] - at["build0"],
            "after_s": t1 - at["run1"],
            "total_s": t1 - t0,
            "writer_cpu_s": _children_cpu() - children,
            "bars": bars,
            "fills": outcome.result.fills,
        }


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    sys.path.insert(0, str(HERE))
    import replay_engines as bench

    from tradingd.logs import configure_logging

    configure_logging("warning", "json")
    symbols = sorted(bench.symbols_of(str(args.data)))[: args.symbols]
    spec = {"engine": "tradingd", "data": str(args.data), "symbols": symbols}
    return [_one(args, spec) for _ in range(args.runs)]


def count(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE))
    from engine_alone import callgrind

    argv = [__file__, "--data", str(args.data), "--symbols", str(args.symbols)]
    argv += ["--runs", "1", "--json", "--count-loop"]
    argv += ["--no-audit"] if args.no_audit else []
    argv += ["--discard"] if args.discard else []
    try:
        got = callgrind(argv)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    ir, r = got["ir"], got["last"]
    print(f"bar loop: {ir:,} instructions, {ir / r['bars']:,.0f} a bar  fills={r['fills']}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="default: %(default)s")
    p.add_argument("--symbols", type=int, default=496)
    p.add_argument("--runs", type=int, default=3, help="runs in this process (default: 3)")
    p.add_argument("--no-audit", action="store_true", help="the audit log off (NullAudit)")
    p.add_argument("--discard", action="store_true", help="memory store, writes dropped")
    p.add_argument("--instructions", action="store_true", help="count under callgrind")
    p.add_argument("--json", action="store_true", help="one JSON list on the last line")
    p.add_argument("--count-loop", dest="count", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.data.exists():
        print(f"no data at {args.data} (../shared/data)", file=sys.stderr)
        return 2
    if args.instructions:
        return count(args)
    got = run(args)
    if args.json:
        print(json.dumps(got))
        return 0
    for r in got:
        print(
            "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
        )
    med = {k: statistics.median(r[k] for r in got) for k in got[0] if k.endswith("_s")}
    print("median  " + "  ".join(f"{k} {v:.3f}" for k, v in med.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
