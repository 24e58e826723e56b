"""A backtest does not import the live service's clients.

redis (with the OpenTelemetry it pulls in), aiohttp and APScheduler cost about 0.8 s of
import on the project's machine, on every `tradingd backtest` of a researcher's day, and a
replay uses none of them. They are imported where the live parts use them; this test runs a
whole backtest through the CLI in a fresh interpreter and fails if one of them comes back as
a module-level import on the backtest's path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LIVE_ONLY = ("redis", "aiohttp", "apscheduler")

SCRIPT = """
import json, sys
from tradingd.__main__ import main
code = main(["backtest", "-c", sys.argv[1], "--no-progress", "--json"])
print(json.dumps({"code": code, "loaded": sorted(m for m in %r if m in sys.modules)}))
"""


def test_backtest_leaves_live_clients_unimported(tmp_path: Path) -> None:
    cfg = tmp_path / "bt.toml"
    cfg.write_text(f"""
[run]
start = "2017-06-01"
end = "2017-09-30"
output_dir = "{(tmp_path / "runs").as_posix()}"
[data]
source = "bundled"
[[signals]]
name = "momentum"
weight = 1.0
params = {{ lookback = 20 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 3, gross_exposure = 0.5 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.2 }}
[storage]
url = "sqlite:///{(tmp_path / "bt.db").as_posix()}"
[log]
level = "warning"
audit_dir = "{(tmp_path / "audit").as_posix()}"
""")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT % (LIVE_ONLY,), str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["code"] == 0, proc.stderr[-2000:]
    # The run traded: the test is about a real backtest, not an import of the CLI alone.
    summary = json.loads(proc.stdout.strip().splitlines()[-2])
    assert summary["orders"] > 0
    assert answer["loaded"] == []
