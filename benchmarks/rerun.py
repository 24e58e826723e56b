"""Wall time of a whole `tradingd backtest` command, first run and reruns.

`benchmarks/replay.py` times the replay (features, engine, store, audit) and leaves out what
a researcher also waits for at every run: starting Python and importing tradingd, reading and
validating the data, and writing the run's outputs. This script runs the real command line
(`python -m tradingd backtest -c CONFIG --no-progress --json`) in fresh processes on the
strategy of replay.py (momentum top 10, equal weight, max_position; SQLite file store and
audit log on) and prints, per width:

    first run   the validated-data and feature caches empty (cache.data_dir and
                cache.features_dir are new temporary folders)
    rerun       the same command again, the caches warm (median of --reruns runs)
    uncached    the same command with cache.data = false and cache.features = false
                (median of --reruns runs)

each as wall seconds and the process's peak RSS (MB, from wait4's ru_maxrss), plus the bare
import of the command's module (`python -c "import tradingd.__main__, tradingd.backtest"`).
The runs of one width are interleaved (rerun, uncached, rerun, ...) so that a change in the
machine's load hits both.

    python benchmarks/rerun.py                          # 100 and 496 symbols, 3 reruns
    python benchmarks/rerun.py --symbols 100 --reruns 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sp500_daily_1999_2018.parquet"
sys.path.insert(0, str(HERE))


def run_one(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of `cmd`, run by a tiny wrapper process that
    reports its child's own rusage (RUSAGE_CHILDREN would give the largest child so far)."""
    wrapper = (
        "import json, os, subprocess, sys, time\n"
        "t0 = time.perf_counter()\n"
        "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
        "_, status, ru = os.wait4(p.pid, 0)\n"
        "wall = time.perf_counter() - t0\n"
        "out = p.stdout.read().decode(); err = p.stderr.read().decode()\n"
        "code = os.waitstatus_to_exitcode(status)\n"
        "print(json.dumps({'wall': wall, 'rss_mb': ru.ru_maxrss / 1024, 'code': code,"
        " 'out': out, 'err': err[-3000:]}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], cwd=cwd, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"wrapper failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout)
    if r["code"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r['code']}):\n{r['err']}")
    return r["wall"], r["rss_mb"], r["out"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--symbols", default="100,496", help="widths, comma-separated")
    ap.add_argument("--reruns", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not args.data.is_file():
        print(f"rerun benchmark: data file not found: {args.data}", file=sys.stderr)
        return 2
    import replay_engines  # the strategy and its config template

    all_symbols = replay_engines.symbols_of(str(args.data))
    results: dict[str, Any] = {"machine": f"{platform.machine()} {platform.processor()}"}
    py = [sys.executable]
    with tempfile.TemporaryDirectory(prefix="tradingd-rerun-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "XDG_CACHE_HOME": str(work / "xdg")}
        imports = [
            run_one([*py, "-c", "import tradingd.__main__, tradingd.backtest"], env, work)[0]
            for _ in range(args.reruns)
        ]
        results["import_s"] = statistics.median(imports)
        print(f"import tradingd.__main__, tradingd.backtest: {results['import_s']:.2f} s")
        for width in [int(w) for w in args.symbols.split(",")]:
            spec = {"data": str(args.data), "symbols": all_symbols[:width]}
            folder = work / f"w{width}"
            folder.mkdir()
            cfg = replay_engines.write_config(folder, spec, "sqlite")
            cache = cfg.parent / "cache.toml"
            cache.write_text(
                f'[cache]\ndata_dir = "{(folder / "panels").as_posix()}"\n'
                f'features = true\nfeatures_dir = "{(folder / "features").as_posix()}"\n'
            )
            off = cfg.parent / "nocache.toml"
            off.write_text("[cache]\ndata = false\nfeatures = false\n")

            def command(extra: Path, n: int, cfg: Path = cfg, folder: Path = folder) -> list[str]:
                out = folder / f"out{n}"
                return [*py, "-m", "tradingd", "backtest", "-c", str(cfg), "-c", str(extra),
                        "--no-progress", "--json", "--output", str(out)]  # fmt: skip

            first = run_one(command(cache, 0), env, folder)
            summary = json.loads(first[2].strip().splitlines()[-1])
            reruns, uncached = [], []
            for i in range(args.reruns):
                reruns.append(run_one(command(cache, 2 * i + 1), env, folder))
                uncached.append(run_one(command(off, 2 * i + 2), env, folder))
            row = {
                "symbols": width,
                "orders": summary.get("orders"),
                "first_s": first[0],
                "first_rss_mb": first[1],
                "rerun_s": statistics.median(r[0] for r in reruns),
                "rerun_rss_mb": statistics.median(r[1] for r in reruns),
                "uncached_s": statistics.median(r[0] for r in uncached),
                "uncached_rss_mb": statistics.median(r[1] for r in uncached),
                "reruns_s": [round(r[0], 2) for r in reruns],
                "uncached_runs_s": [round(r[0], 2) for r in uncached],
            }
            results[str(width)] = row
            ratio = row["rerun_s"] / row["uncached_s"]
            print(
                f"{width} symbols ({row['orders']} orders): first run {row['first_s']:.2f} s "
                f"/ {row['first_rss_mb']:.0f} MB; rerun {row['rerun_s']:.2f} s / "
                f"{row['rerun_rss_mb']:.0f} MB {row['reruns_s']}; uncached "
                f"{row['uncached_s']:.2f} s / {row['uncached_rss_mb']:.0f} MB "
                f"{row['uncached_runs_s']}; rerun / uncached {ratio:.2f}"
            )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
