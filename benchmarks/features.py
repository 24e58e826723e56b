#!/usr/bin/env python3
"""Feature computation speed and memory on the shared S&P 500 data.

    python benchmarks/features.py [--data PATH] [--symbols 500] [--repeats 3] [--json]

Measures, for the full indicator and feature set (the default model set plus every raw
TA-Lib output and the ML extras):
- batch: `compute_batch` over all symbols x 19 years (median wall time of --repeats runs), and
  its extra memory (tracemalloc peak of separate runs, so tracing does not slow the timed
  runs), with float64 results (what the replay uses) and float32 results (what training
  uses: 43 features x 2.1 million bars are 823 MB in float64 alone);
- streaming: one `StreamingFeatures.update` for the whole universe (median and 99th percentile
  over the last 1,000 bars of a full pass, warm state).
Targets: batch <= 10 s and <= 500 MB extra; streaming <= 20 ms per bar for 500 symbols.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tradingd.features.catalog import FEATURE_SETS
from tradingd.features.engineer import StreamingFeatures, compute_batch
from tradingd.feeds.loaders import load_panel

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sp500_daily_1999_2018.parquet"
FULL_SET = (
    *FEATURE_SETS["default_v1"],
    # every raw indicator output
    "macd",
    "macd_signal",
    "macd_hist",
    "stoch_d",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "atr_14",
    "trange",
    "obv",
    "log_ret_1",
    "macd_norm",
    # ML extras: lags, rolling statistics, regime and trend, time-series z-scores, cross-section
    "lag_1_ret_1",
    "lag_2_ret_1",
    "lag_5_ret_1",
    "ret_mean_5",
    "ret_mean_20",
    "ret_std_5",
    "trend_50_200",
    "zscore_60_ret_1",
    "zscore_20_rsi_14",
    "cs_z_rsi_14",
    "cs_rank_roc_10",
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(
            f"data not found: {args.data} (the shared data set is not in this repository)",
            file=sys.stderr,
        )
        return 2

    t0 = time.perf_counter()
    panel = load_panel("parquet", args.data)
    panel = panel.select(symbols=panel.symbols[: args.symbols])
    load_s = time.perf_counter() - t0
    names = tuple(dict.fromkeys(FULL_SET))
    print(
        f"{len(panel.symbols)} symbols x {len(panel.times)} days, {panel.n_bars:,} bars, "
        f"{len(names)} features; loaded in {load_s:.1f} s",
        file=sys.stderr,
    )

    batch_s = []
    for k in range(args.repeats):
        t0 = time.perf_counter()
        out = compute_batch(panel, names)
        batch_s.append(time.perf_counter() - t0)
        print(f"  batch run {k + 1}: {batch_s[-1]:.2f} s", file=sys.stderr)
        del out
    peaks = {}
    for dtype in (np.float64, np.float32):
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        out = compute_batch(panel, names, dtype=dtype)
        peaks[np.dtype(dtype).name] = (
            (tracemalloc.get_traced_memory()[1] - base) / 1e6,
            sum(v.nbytes for v in out.values()) / 1e6,
        )
        tracemalloc.stop()
        del out

    sf = StreamingFeatures(names, len(panel.symbols))
    times = panel.datetimes()
    per_bar = []
    for i, t in enumerate(times):
        bar = panel.row(i, t)
        t0 = time.perf_counter()
        sf.update(bar)
        per_bar.append(time.perf_counter() - t0)
    warm = np.array(per_bar[-1000:]) * 1e3

    res = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}",
        "python": platform.python_version(),
        "symbols": len(panel.symbols),
        "days": len(panel.times),
        "bars": panel.n_bars,
        "features": len(names),
        "batch_s_median": statistics.median(batch_s),
        "batch_s_all": batch_s,
        "batch_extra_mb_peak": {k: v[0] for k, v in peaks.items()},
        "batch_result_mb": {k: v[1] for k, v in peaks.items()},
        "stream_ms_median": float(np.median(warm)),
        "stream_ms_p99": float(np.percentile(warm, 99)),
        "stream_full_pass_s": float(sum(per_bar)),
    }
    print(
        f"batch: median {res['batch_s_median']:.2f} s (runs "
        + " ".join(f"{x:.2f}" for x in batch_s)
        + "), target <= 10 s"
    )
    for k, (peak, result_mb) in peaks.items():
        print(
            f"batch extra memory, {k} results: peak {peak:.0f} MB (of which the result "
            f"arrays {result_mb:.0f} MB), target <= 500 MB"
        )
    print(
        f"streaming update, {len(panel.symbols)} symbols: median {res['stream_ms_median']:.2f} "
        f"ms, p99 {res['stream_ms_p99']:.2f} ms per bar, target <= 20 ms "
        f"(full pass {res['stream_full_pass_s']:.1f} s)"
    )
    print(f"machine: {res['machine']}, python {res['python']}, {res['date']}")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
