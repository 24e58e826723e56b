"""A stop with a split lookup hung on its host exits at once: the lookup's worker thread
is a daemon, not joined at the interpreter's exit (a ThreadPoolExecutor's was, until the
request's timeout, longer for a host trickling bytes: requests' timeout is per read)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from fakes.hung_host import hung_host

# What the process does: a lookup against the hung host, given up once the host holds its
# connection (as after a bar's `quick_s`), then the engine's stop (`AlpacaSplits.close`) and
# the end of the process. The test waits for the connection itself: a fixed 0.3 s was too
# short for the worker thread to connect on a loaded machine ("never reached the host").
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
        # The test says "go" once the host has the lookup's connection.
        go = await asyncio.to_thread(sys.stdin.readline)
        assert go.strip() == "go" and not task.done(), "the hung host answered"
        src.close()
        task.cancel()
        print("closed", flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def test_a_stop_during_a_hung_lookup_exits_well_before_the_request_timeout() -> None:
    with hung_host() as host:
        child = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, host.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            reached = host.connected.wait(60)
            if not reached:
                child.kill()
                _, err = child.communicate()
                raise AssertionError(f"the lookup never reached the host: {err}")
            t0 = time.monotonic()
            # The request's timeout is 60 s; the bound is generous for a loaded machine.
            out, err = child.communicate("go\n", timeout=30)
            took = time.monotonic() - t0
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert child.returncode == 0, err
    assert out.strip() == "closed"
    assert took < 30
