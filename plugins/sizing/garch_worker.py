"""The GARCH fit worker: `python -m tradingd_plugins.sizing.garch_worker`, started by
`garch_fits.FitWorker`. Reads requests (length-prefixed pickles of fit jobs) from stdin,
answers each with its outcomes on stdout, and exits when stdin closes (its parent ended)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from tradingd_plugins.sizing.garch_fits import fit_many, read_frame, write_frame


def main() -> int:
    # The parent owns the signals: Ctrl-C or SIGTERM to the whole process group (systemd's
    # default) stops the parent, which may still wait for a fit on its way out and then closes
    # our stdin; we end there, so a signal here would only lose that fit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Fits are asked for in a bar's sizing and run while the engine checks risk and sends the
    # orders: at the lowest priority they take only CPU that the engine (and, on a small
    # machine, everything else the daemon talks to) leaves idle, never its bar's latency.
    with contextlib.suppress(OSError):
        os.nice(19)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the answer stream
    while True:
        try:
            jobs = read_frame(stdin)
        except EOFError:
            return 0
        write_frame(stdout, fit_many(jobs))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
