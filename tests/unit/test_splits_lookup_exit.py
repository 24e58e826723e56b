"""A stop with a split lookup hung on its host exits at once: the lookup's worker thread
is a daemon, not joined at the interpreter's exit (a ThreadPoolExecutor's was, until the
request's timeout, longer for a host trickling bytes: requests' timeout is per read)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from fakes.hung_host import hung_host

# What the process does: a lookup against the hung host, given up after 0.3 s (as a bar's
# `quick_s`), then the engine's stop (`AlpacaSplits.close`) and the end of the process.
_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import date
    from tradingd.feeds.corporate_actions import AlpacaSplits
    from tradingd.feeds.resilience import SourceConfig

    async def main(url):
        src = AlpacaSplits(
            "KEY", "SECRET", base_url=url,
            config=SourceConfig.for_source("alpaca", timeout_s=120.0, max_attempts=1),
            request_timeout_s=60.0,
        )
        task = asyncio.create_task(src.splits(["AAA"], date(2026, 12, 7), date(2026, 12, 14)))
        done, _ = await asyncio.wait({task}, timeout=0.3)
        assert not done, "the hung host answered"
        src.close()
        task.cancel()
        print("closed", flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def test_a_stop_during_a_hung_lookup_exits_well_before_the_request_timeout() -> None:
    with hung_host() as host:
        t0 = time.monotonic()
        # The request's timeout is 60 s; the bound is generous for a slow start-up.
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, host.url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        took = time.monotonic() - t0
        assert host.connections, "the lookup never reached the host"
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "closed"
    assert took < 30
