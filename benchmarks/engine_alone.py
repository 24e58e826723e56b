"""The engine's own cost per bar (issue 12, point 3): this code against an earlier commit.

Runs the replay benchmark's strategy (replay_engines.py: momentum top 10, equal weight,
max_position, market orders) through `build_engine` + `run_until_done` with no audit log and
a store whose rows are made (decision, position and equity diffs, order and fill rows) and
then discarded where it would write them: its per-bar check for a due write is the real one,
the write itself is not done. That is "the engine alone" as issue 12 measured it (200 us a
bar then). Features are computed before the timed span (`build_engine`), not in it.

    python benchmarks/engine_alone.py --symbols 100 --runs 3
    python benchmarks/engine_alone.py --against ca49224 --pairs 4   # alternating processes

With --against, a git worktree of that commit is made in a temporary folder and this script
runs in fresh processes alternately on it and on the working tree (--pairs times each,
--runs runs per process), so a change in the shared machine's speed hits both; it prints
every run, the medians and their ratio. Each run prints its fills and final equity: equal
fills and equity in every run are part of the result (the same trades, only faster).
--no-trades sets equal_weight's min_score above any score: the bars' cost without orders,
positions or fills (features, signals, sizing, risk, an empty plan, the diffs, the loop).

    python benchmarks/engine_alone.py --against ca49224 --instructions

--instructions counts instead of timing: each side runs one replay under valgrind's callgrind
(PYTHONHASHSEED=0) with the counting switched on only around `run_until_done` (through
callgrind_control), so loading, features and build_engine are left out: the instructions
of the replay alone, however busy the machine. Why: on a shared VM the same
code's wall time moves 10-30% from one minute to the next, more than the cuts it is meant to
judge. Repeats can differ by a few percent: work triggered by the clock (the engine's state
publish, the store's interval flush) runs more often at valgrind's pace, and that pace
varies. It is a proxy: numpy's memory traffic and cache misses count for nothing in it, so
the figure of record stays the timed one. The two sides run at once, a minute or two each.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sp500_daily_1999_2018.parquet"


def discard_writes(store: Any) -> None:
    """The store's writes replaced by dropping the buffered rows (what a commit would take),
    at the store's own moments: when its per-bar check finds a write due, and at flush."""
    if hasattr(store, "_take"):
        take = store._take
    else:  # commits before the store's buffers were columnar

        def take() -> None:
            for rows in store._buffers.values():
                rows.clear()

    if hasattr(store, "_due"):
        due = store._due
    else:

        def due() -> bool:
            bs = store.batch_size
            return (
                any(len(getattr(store, f"_{n}")) >= bs for n in ("positions", "signals", "equity"))
                or any(len(getattr(store, f"_{n}")) >= bs for n in ("orders", "order_events"))
                or len(store._fills) >= bs
                or time.monotonic() - store._last_flush >= store.flush_interval_s
            )

    async def maybe_flush() -> None:
        if due():
            store._last_flush = time.monotonic()
            take()

    async def flush() -> None:
        take()

    store.maybe_flush = maybe_flush
    store.flush = flush
    store.write_behind = flush  # (the engine's hand-over after its last bar)


def _count(on: bool) -> None:
    """Switch callgrind's counting for this process (it runs under valgrind)."""
    cmd = ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())]
    subprocess.run(cmd, check=True, capture_output=True)


def run(
    data: Path, n: int, runs: int, no_trades: bool, count: bool = False
) -> list[dict[str, Any]]:
    sys.path.insert(0, str(HERE))
    import replay_engines as bench

    from tradingd.app import build_engine, load_data
    from tradingd.config import load_config
    from tradingd.engine.engine import NullAudit
    from tradingd.logs import configure_logging

    configure_logging("warning", "json")
    symbols = sorted(bench.symbols_of(str(data)))[:n]
    spec = {"engine": "engine", "data": str(data), "symbols": symbols}
    out = []
    with tempfile.TemporaryDirectory(prefix="tradingd-engine-alone-") as tmp:
        path = bench.write_config(Path(tmp), spec, "memory")
        if importlib.util.find_spec("tradingd.features.batch_cache") is None:
            # A commit before the feature cache: its config has no such key.
            text = path.read_text().replace("[cache]\nfeatures = false", "")
            path.write_text(
                "\n".join(ln for ln in text.splitlines() if not ln.startswith("features ="))
            )
        if no_trades:
            # Scores lie in [-1, 1]: no symbol reaches min_score 2, nothing is ever ordered.
            text = path.read_text()
            marker = "gross_exposure = 0.5 }"
            assert marker in text, "replay_engines' sizing line changed"
            path.write_text(text.replace(marker, "gross_exposure = 0.5, min_score = 2.0 }"))
        config = load_config([path], env={})
        panel = load_data(config)
        bars = len(panel.times)
        for _ in range(runs):
            engine = build_engine(config, "backtest", panel=panel)
            engine.audit = NullAudit()
            discard_writes(engine.store)
            gc.collect()
            if count:
                _count(True)
            t0, c0 = time.perf_counter(), time.process_time()
            result = asyncio.run(engine.run_until_done())
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if count:
                _count(False)
            out.append(
                {
                    "symbols": n,
                    "us_per_bar": wall / bars * 1e6,
                    "cpu_us_per_bar": cpu / bars * 1e6,
                    "fills": result.fills,
                    "orders": result.orders,
                    "final_equity": result.equity[-1],
                    "bars": bars,
                }
            )
    return out


def against(commit: str, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="tradingd-against-") as tmp:
        tree, pkgs = Path(tmp) / "tree", Path(tmp) / "pkgs"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(tree), commit],
            check=True,
            capture_output=True,
        )
        try:
            pkgs.mkdir()
            for name, folder in (
                ("tradingd", "daemon"),
                ("tradingd_plugins", "plugins"),
                ("tradingd_models", "models"),
            ):
                (pkgs / name).symlink_to(tree / folder)
            # The commit's packages first on the path; this tree's as installed (-e .).
            sides = {commit: str(pkgs), "this tree": None}
            if args.instructions:
                return count_instructions(commit, sides, args)
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
            for _ in range(args.pairs):
                for label, path in sides.items():
                    env = dict(os.environ)
                    env.pop("PYTHONPATH", None)
                    if path is not None:
                        env["PYTHONPATH"] = path
                    cmd = [sys.executable, __file__, "--data", str(args.data)]
                    cmd += ["--symbols", str(args.symbols), "--runs", str(args.runs), "--json"]
                    cmd += ["--no-trades"] if args.no_trades else []
                    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if done.returncode:
                        print(done.stderr[-2000:], file=sys.stderr)
                        return done.returncode
                    got = json.loads(done.stdout.strip().splitlines()[-1])
                    runs[label].extend(got)
                    for r in got:
                        print(
                            f"{label:>12}: {r['us_per_bar']:6.1f} us/bar  fills={r['fills']}"
                            f"  equity={r['final_equity']!r}",
                            flush=True,
                        )
            med = {k: statistics.median(r["us_per_bar"] for r in v) for k, v in runs.items()}
            print(
                f"medians: {commit} {med[commit]:.1f}, this tree {med['this tree']:.1f} us "
                f"a bar; ratio {med['this tree'] / med[commit]:.2f}"
            )
            same = {(r["fills"], r["final_equity"]) for v in runs.values() for r in v}
            print(
                "same fills and final equity in every run"
                if len(same) == 1
                else f"RUNS DIFFER: {sorted(same)}"
            )
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                capture_output=True,
            )
    return 0


def callgrind(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Instructions a benchmark script counted in a fresh process under callgrind (it
    switches the counting on and off itself, `_count`; PYTHONHASHSEED=0), and the last
    record of the JSON list it printed last (`argv` must ask it for --json)."""
    env = dict(os.environ if env is None else env, PYTHONHASHSEED="0")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null"]
    done = subprocess.run([*cmd, sys.executable, *argv], env=env, capture_output=True, text=True)
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if done.returncode or found is None:
        raise RuntimeError(f"callgrind run failed ({done.returncode}): {done.stderr[-2000:]}")
    last = json.loads(done.stdout.strip().splitlines()[-1])[-1]
    return {"ir": int(found.group(1)), "last": last}


def _under_callgrind(path: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Instructions of one replay in a fresh process under callgrind (packages from `path`
    first when given), and its fills and final equity."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if path is not None:
        env["PYTHONPATH"] = path
    argv = [__file__, "--data", str(args.data), "--symbols", str(args.symbols)]
    argv += ["--runs", "1", "--json", "--count-replay"]
    argv += ["--no-trades"] if args.no_trades else []
    return callgrind(argv, env)


def count_instructions(commit: str, sides: dict[str, str | None], args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("--instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {label: pool.submit(_under_callgrind, p, args) for label, p in sides.items()}
        got = {label: f.result() for label, f in futures.items()}
    for label, g in got.items():
        r = g["last"]
        print(
            f"{label:>12}: {g['ir']:,} instructions a replay, {g['ir'] / r['bars']:,.0f} a bar"
            f"  fills={r['fills']}  equity={r['final_equity']!r}"
        )
    print(f"ratio (this tree / {commit}): {got['this tree']['ir'] / got[commit]['ir']:.3f}")
    same = {(g["last"]["fills"], g["last"]["final_equity"]) for g in got.values()}
    print("same fills and final equity in every run" if len(same) == 1 else f"RUNS DIFFER: {same}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="default: %(default)s")
    p.add_argument("--symbols", type=int, default=100)
    p.add_argument("--runs", type=int, default=3, help="runs per process (default: 3)")
    p.add_argument("--against", metavar="COMMIT", help="alternate with this commit")
    p.add_argument("--pairs", type=int, default=3, help="processes each, with --against")
    p.add_argument("--json", action="store_true", help="one JSON list on the last line")
    p.add_argument(
        "--instructions",
        action="store_true",
        help="with --against: count instructions under valgrind instead of timing",
    )
    p.add_argument("--count-replay", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--no-trades",
        action="store_true",
        help="equal_weight min_score 2 (no score reaches it): a bar's cost without orders",
    )
    args = p.parse_args()
    if not args.data.exists():
        print(f"no data file at {args.data} (needs ../shared beside the repo)", file=sys.stderr)
        return 2
    if args.against:
        return against(args.against, args)
    results = run(args.data, args.symbols, args.runs, args.no_trades, args.count_replay)
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(
                f"{r['us_per_bar']:6.1f} us/bar (cpu {r['cpu_us_per_bar']:.1f})  "
                f"fills={r['fills']}  equity={r['final_equity']!r}"
            )
        print(f"median {statistics.median(r['us_per_bar'] for r in results):.1f} us a bar")
    return 0


if __name__ == "__main__":
    sys.exit(main())
