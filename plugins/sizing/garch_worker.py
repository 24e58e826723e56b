"""The GARCH fit worker: `python -m tradingd_plugins.sizing.garch_worker`, started by
`garch_fits.FitWorker`. Reads requests (length-prefixed pickles of fit jobs) from stdin,
answers each with its outcomes on stdout, and exits when stdin closes (its parent ended)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from tradingd_plugins.sizing.garch_fits import LIVE_NICE, fit_many, read_frame, write_frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradingd_plugins.sizing.garch_worker")
    # From `FitWorker`: 0 unless set otherwise (`FitRunner.set_nice`; see LIVE_NICE).
    parser.add_argument("--nice", type=int, choices=range(20), default=LIVE_NICE, metavar="0-19")
    nice = parser.parse_args(argv).nice
    # The parent owns the signals: Ctrl-C or SIGTERM to the whole process group (systemd's
    # default) stops the parent, which may still wait for a fit on its way out and then closes
    # our stdin; we end there, so a signal here would only lose that fit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    # arch.univariate imports matplotlib (for plots no fit draws) wherever it is installed,
    # and matplotlib makes its config folder under HOME as it loads: under systemd (HOME
    # read-only) that printed two plain-text warnings into the daemon's JSON log at every
    # worker start. Not loaded here, arch does without it (its import is optional).
    sys.modules.setdefault("matplotlib", None)  # type: ignore[arg-type]
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the answer stream
    while True:
        try:
            jobs = read_frame(stdin)
        except EOFError:
            return 0
        try:
            write_frame(stdout, fit_many(jobs))
        except BrokenPipeError:
            # The parent is gone (a walk-forward fold's process ended by Ctrl-C): nobody
            # to answer, nothing to report.
            return 0


if __name__ == "__main__":
    code = main()
    # Every answer is written and flushed (write_frame): end without the interpreter's
    # teardown of numpy, SciPy and arch, which took 0.5 s of a core. A worker at nice 19 on a
    # busy machine did not get that in the parent's 5 s wait (FitWorker.close) and was killed.
    sys.stderr.flush()
    os._exit(code)
