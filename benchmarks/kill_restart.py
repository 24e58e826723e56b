"""Restart safety at scale: SIGKILL a real `tradingd run` over many cycles and compare what
it stored with an uninterrupted run (issue 9). The CI test (tests/integration/
test_restart_kill.py) runs a few cycles; this runs the full count.

    python benchmarks/kill_restart.py [--cycles 50 --seed 1]

Half the cycles kill at a named point of a bar (`TRADINGD_KILL_AT`: intent stored but not
sent, sent but not recorded, fills booked but not recorded, inside a store transaction), half
after a random delay (start-up, warm-up, trading, flushing: wherever it lands). Prints the
kills by kind, whether the stored run equals the uninterrupted one (orders, order events,
fills, positions, equity, signals), duplicated client order ids, and rows written before a
kill that did not survive it (a restart that started over instead of continuing).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from restart_harness import (  # noqa: E402
    differences,
    kill_cycles,
    rows_kept,
    run_to_completion,
    stored,
    write_config,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", default="2015-01-01")
    ap.add_argument("--end", default="2017-12-31")
    ap.add_argument("--rate", type=float, default=100.0, help="accelerated bars per second")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tradingd-kill-"))
    window = {"start": args.start, "end": args.end, "rate": args.rate}
    run_to_completion(write_config(work, "reference", **window))
    reference = stored(work / "reference.db")
    cfg = write_config(work, "killed", **window)
    report = kill_cycles(cfg, args.cycles, seed=args.seed, max_delay_s=8.0)
    got = stored(work / "killed.db")
    con = sqlite3.connect(work / "killed.db")
    dup = con.execute(
        "SELECT count(*) FROM (SELECT client_order_id FROM orders GROUP BY run_id,"
        " client_order_id HAVING count(*) > 1)"
    ).fetchone()[0]
    con.close()
    out = {
        "cycles": report.cycles,
        "kills": report.kills,
        "finished_before_the_kill": report.resumed_exits,
        "seconds": round(report.seconds, 1),
        "bars": len(reference["equity"]),
        "orders": len(reference["orders"]),
        "fills": len(reference["fills"]),
        "differences_from_uninterrupted": differences(reference, got),
        "duplicate_client_order_ids": dup,
        "rows_checked_for_survival": len(report.kept),
        "rows_lost_or_rewritten": len(rows_kept(work / "killed.db", report.kept)),
    }
    print(json.dumps(out, indent=2))
    ok = not out["differences_from_uninterrupted"] and not dup and not out["rows_lost_or_rewritten"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
