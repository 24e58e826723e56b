"""tradingd: a paper-trading daemon and replay backtester, one engine for both.

The `tradingd` command and its subcommands (`tradingd --help` lists them).

Only this module calls `asyncio.run`.

Every command that takes a configuration validates it the same way before doing any work
(`preflight.check_config`), and the commands that use the database or Redis check that they
answer (`preflight.check_services`): a mistake is reported in seconds, as
`tradingd: error: ...` with exit code 2, never as a traceback after a replay. The commands
systemd runs, `tradingd run` and `tradingd retrain` (`SERVICE_COMMANDS`), exit with 78
(EX_CONFIG, sysexits.h) instead when only the operator can end the error (a setting, a
file, a package to install: `exit_code`), which their units do not restart; an error a
restart may end (a service that does not answer yet, a full storage spool) stays 2. A daemon
that ends by itself with its run's last records only in the storage spool (the database down
at the end) exits 75 (EX_TEMPFAIL, restarted: the start writes them). Ctrl-C or
SIGTERM in a command (outside a backtest's replay and the daemon, below) prints
`tradingd: interrupted` (exit 130 or 143), never a traceback; the worker processes of a
walk-forward or of a report's Monte Carlo are ended with it. A command whose output's reader
has gone (`tradingd config | head`) ends quietly with exit code 141, as SIGPIPE ends a CLI;
one whose stdout cannot be written (a full disk under `> FILE`) ends `tradingd: error:
cannot write to stdout ...`, exit 2 (`StdoutUnwritable`). A log line or the command's own
error line that stderr cannot take is dropped, never an error (`logs`, `say`).

Signals of `tradingd run` (the daemon), handled from the moment the command line is parsed,
before the configuration, the data or any model is loaded:

* SIGTERM, SIGINT: a clean stop, exit code 0. While trading, the current bar is finished,
  the store flushed and every connection closed. During start-up, the step under way
  (checking the configuration and plugins, loading data, loading plugins and models) is
  finished, then nothing more is started; a step that only waits (checking that the
  database and Redis answer) is abandoned; connecting and warming up stop at the next bar.
  The last log line, `tradingd.exit`, says where it stopped ("stopped during start-up:
  loading data"); it and `tradingd.stop_requested` are written whatever `log.level` says
  (`logs.unfiltered`). A second signal while stopping logs `tradingd.already_stopping`; a third
  exits at once, without finishing the bar or flushing, with exit code 128 + the signal
  number (130 for SIGINT, 143 for SIGTERM), the code a shell reports for a killed process.
* SIGHUP: the same configuration files (and the environment) are read again; what is safe to
  change in a running daemon (log level, risk limits, alert targets) is applied, everything
  else is logged as "not reloaded: restart needed" (see `tradingd.reload`), and an invalid
  configuration is rejected with the running one kept. A SIGHUP during start-up is applied
  once the engine is built.

Signals of `tradingd backtest`: SIGTERM and SIGINT during the replay finish the bar under way
(during loading or the engine's build, that step; a line on stderr says so at once, and that
a second one exits), end the run's record marked stopped_early
and exit with 128 + the signal number, with no report (`tradingd: backtest stopped by ...`);
a second one exits at once. Once the replay is over, while its report is written, either
signal interrupts it (`tradingd: interrupted`, 128 + the signal number). Plain handlers, not
the event loop's: the replay does not yield to the loop between bars, so a loop's handler
(asyncio.run's own for SIGINT) would only run after the last bar. The writer process runs in
a process group of its own and ignores both: it ends when the command closes its input.

Files a command makes are not world-readable: the program (not an embedded call of `main`,
which leaves its caller's umask alone) adds `UMASK` (0027, as systemd's `UMask=0027` in
`systemd/tradingd.service`) to the umask it was started with, never loosening a stricter
one. The SQLite store, the audit log, run records and caches hold positions, orders, P&L
and the configuration; under the usual umask of 0022 they were 0644 and their folders 0755,
readable by every local user. The group keeps read access (an operator's group reading a
service's records); set a stricter umask (077) to keep them from it too.

Heavy modules (pandas, the engine) are imported only after the signal handlers are in place,
so that a signal during the imports is already a clean stop (only the interpreter's own
start-up, before `main` runs, is not covered).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .core.errors import (
    ConfigError,
    DataError,
    DataFileUnusable,
    ServiceUnavailable,
    TradingdError,
)
from .secrets import mask_url

if TYPE_CHECKING:
    from .config import Config
    from .engine.engine import Engine
    from .health import CheckResult


class _Log:
    """structlog's logger, imported on first use (structlog takes ~0.2 s to import)."""

    def __getattr__(self, name: str) -> Any:
        import structlog

        return getattr(structlog.get_logger("tradingd.cli"), name)


log: Any = _Log()


class _Always:
    """`tradingd.logs.unfiltered`, imported on first use: the lines written whatever
    `log.level` says (the stop and exit lines)."""

    def __getattr__(self, name: str) -> Any:
        from .logs import unfiltered

        return getattr(unfiltered("tradingd.cli"), name)


always: Any = _Always()

DEFAULT_CONFIG = Path("config/default.toml")
# sysexits.h's EX_CONFIG: a service command's exit code for an error only the operator can
# end. systemd/tradingd.service and tradingd-retrain.service name it in
# RestartPreventExitStatus.
EX_CONFIG = 78
# sysexits.h's EX_TEMPFAIL: `tradingd run` ended (its run finished, or the engine stopped
# it) with the run's last records in the storage spool, the database being down: a restart
# (systemd restarts this code) writes them once the database answers (`_Daemon.exit_line`).
EX_TEMPFAIL = 75
# The commands the systemd units run. Only they exit with EX_CONFIG: the others keep 2 for
# every error, argparse's code for a usage mistake, which scripts and the documented codes
# of compare, replay-check and lookahead-check (0, 1, 2 an error) rely on, and no
# supervisor restarts them.
SERVICE_COMMANDS = frozenset({"run", "retrain"})
# Trained models go under var/ (like runs and audit logs), never into the installed package
# or the source tree; `ml_ensemble.model_dir` points at var/models/current to use retrained
# models.
DEFAULT_TRAIN_OUT = "var/models/trained"
DEFAULT_RETRAIN_ROOT = "var/models"
# Commands whose output folder comes from the command line rather than the configuration.
_OUTPUT_ARG = {"backtest": "output", "train": "out", "retrain": "root"}


def exit_code(exc: TradingdError, command: str) -> int:
    """How `command` exits on `exc`: EX_CONFIG for a ConfigError of a service command, 2
    otherwise. systemd restarted a configuration mistake every 10 s until its start limit,
    5 identical failures and "start-limit-hit" hiding the cause, while an error a restart
    goes through (a full spool, whose restart replays it) must stay restartable. Two
    ConfigErrors may end without the operator, and stay 2: a service that does not answer
    yet (ServiceUnavailable) and another daemon holding the lock (AnotherDaemonRunning: it
    may be ending, or a killed one's PostgreSQL session, freed within about a minute).
    A set-up mistake raised as another kind of error is a ConfigError subclass as well, so
    that it exits EX_CONFIG here: a lock file or a storage spool on a filesystem without
    file locks (`instance_lock.LocksUnsupported`, `storage.spool.SpoolLocksUnsupported`,
    StorageErrors too) or a lock folder another user can change (`instance_lock.LockDirUnsafe`),
    as the data source refusing for good (`SourceRefused`) and a
    recorded feed's data file that cannot be used (`DataFileUnusable`)."""
    if command not in SERVICE_COMMANDS or not isinstance(exc, ConfigError):
        return 2
    from .instance_lock import AnotherDaemonRunning

    return 2 if isinstance(exc, (ServiceUnavailable, AnotherDaemonRunning)) else EX_CONFIG


def _config_paths(paths: Sequence[str]) -> list[str]:
    if not paths and DEFAULT_CONFIG.exists():
        return [str(DEFAULT_CONFIG)]
    return list(paths)


def _config(paths: Sequence[str]) -> Config:
    from .config import load_config

    return load_config(_config_paths(paths))


class _VersionAction(argparse.Action):
    """`tradingd --version`: the version and the source commit (`build_info`), read only
    when asked (a git call), so an upgrade can be checked before and after."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and commit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from .build_info import this_build

        build = this_build()
        text = build.label()
        if not build.commit:
            # What to do about it: the build is where an installed copy learns its commit.
            text += (
                " (commit unknown: not run from a git checkout, and built without one; "
                "reinstall from a git checkout, or build with TRADINGD_BUILD_COMMIT set to "
                "`git rev-parse HEAD`)"
            )
        elif build.recorded_at_build:
            text += " (recorded when the package was built)"
        print(text)
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tradingd", description=__doc__.splitlines()[0])
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-c",
            "--config",
            action="append",
            default=[],
            help="TOML file(s), later ones override earlier "
            "(default: config/default.toml if present, else built-in defaults)",
        )

    bt = sub.add_parser("backtest", help="replay stored history through the engine")
    common(bt)
    bt.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    bt.add_argument("--output", help="output folder (default: <run.output_dir>/<run_id>)")
    bt.add_argument("--no-progress", action="store_true", help="no progress bar")
    bt.add_argument(
        "--report",
        action="store_true",
        help="also write report.html and report.json into the run's folder (see tradingd report)",
    )
    bt.add_argument("--analysis-config", help="with --report: as for tradingd report")
    bt.add_argument(
        "--no-validation", action="store_true", help="with --report: no statistical tests"
    )

    wf = sub.add_parser(
        "walkforward",
        help="walk-forward analysis: retrain and refit per fold, trade out of sample, stitch "
        "the test windows (docs/WALKFORWARD.md)",
    )
    common(wf)
    from .analysis.walkforward_cli import add_arguments as walkforward_arguments

    walkforward_arguments(wf)

    rp = sub.add_parser(
        "report",
        help="write a run's report: one self-contained HTML file (charts and every metric) "
        "and a JSON file with every number",
    )
    common(rp)
    rp.add_argument(
        "run",
        help="a run id under the configured run.output_dir (var/runs), or a run folder's path",
    )
    rp.add_argument("--output", help="folder for report.html and report.json (default: the run's)")
    rp.add_argument(
        "--analysis-config",
        help="TOML with up to four tables: [analysis] (risk-free rate, benchmark, VaR "
        "level; the other tables' defaults), [report] (rolling window, histogram bins, "
        "title), [validation] (significance level, Monte Carlo paths and seed, trials) and "
        "[attribution] (with --attribution); docs/REPORTS.md",
    )
    rp.add_argument(
        "--attribution",
        action="store_true",
        help="add the return attribution by component: replays the run with its own "
        "configuration (config.json in its folder; -c instead gives one, which must be the "
        "run's: the replay is checked against the record)",
    )
    rp.add_argument(
        "--no-validation",
        action="store_true",
        help="leave out the statistical tests and the Monte Carlo",
    )
    rp.add_argument(
        "--workers",
        type=int,
        default=0,
        help="local processes for the Monte Carlo chunks (default 0: in this process; "
        "1,000 paths take about a second)",
    )
    rp.add_argument("--ray-address", help="run the Monte Carlo chunks on this Ray cluster")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")

    cp = sub.add_parser(
        "compare",
        help="compare two run records: where their paths part (the first bar whose equity "
        "differs, the first fill) and what differs in their configuration, environment and "
        "metrics (exit 0 the same path, 1 they differ)",
    )
    common(cp)
    for name in ("a", "b"):
        cp.add_argument(
            f"run_{name}",
            metavar=f"RUN_{name.upper()}",
            help="a run id under the configured run.output_dir (var/runs), or a run folder",
        )
    cp.add_argument("--json", action="store_true", help="print the comparison as JSON")

    run = sub.add_parser("run", help="run the live paper-trading loop")
    common(run)

    tr = sub.add_parser("train", help="train the model pair and export it to ONNX (train extra)")
    common(tr)
    tr.add_argument(
        "--out",
        default=DEFAULT_TRAIN_OUT,
        help=f"output folder for card.json and the ONNX pair (default: {DEFAULT_TRAIN_OUT}; "
        "the shipped pair is reproduced with --out models/default)",
    )
    tr.add_argument("--epochs", type=int, help="override the maximum number of epochs")
    tr.add_argument(
        "--model-config",
        help="TOML with [model] hyperparameters (ModelConfig "
        "fields; defaults are the specification's)",
    )

    rt = sub.add_parser(
        "retrain",
        help="retrain on a rolling window; publish only if it beats the floor (train extra)",
    )
    common(rt)
    rt.add_argument(
        "--root",
        default=DEFAULT_RETRAIN_ROOT,
        help=f"model root with versions/ and current (default: {DEFAULT_RETRAIN_ROOT})",
    )
    rt.add_argument(
        "--window-bars",
        type=int,
        default=1260,
        help="the latest bars of the data it trains on, the features' and model's warm-up "
        "included (default: 1260, about five years of daily bars)",
    )
    rt.add_argument(
        "--min-directional-accuracy",
        type=float,
        default=0.5,
        help="publish only if the candidate's test-split directional accuracy is at least "
        "this (default: 0.5; the card's always_up baseline is the share of up moves)",
    )
    rt.add_argument(
        "--max-mse-ratio",
        type=float,
        default=1.05,
        help="publish only if its test MSE is at most this times the zero forecast's "
        "(default: 1.05). Exit 0 published, 3 rejected (the current model kept), 78 a "
        "set-up mistake, 2 another error",
    )

    fe = sub.add_parser("fetch", help="load the configured data source into the store's bars")
    common(fe)

    ft = sub.add_parser("features", help="print the configured feature set and its version")
    common(ft)

    pl = sub.add_parser(
        "plugins",
        help="list the installed plugins, or one plugin's params with their defaults",
        description="Without NAME: every installed plugin, its kind and class. With NAME: "
        "the plugin's params (set in its `params = { ... }` table), each with its default "
        "and the comment its Config class gives it.",
    )
    pl.add_argument("names", nargs="*", metavar="NAME", help="a plugin's name")
    cf = sub.add_parser("config", help="print the effective configuration as JSON")
    common(cf)

    rc = sub.add_parser(
        "replay-check",
        help="replay a live run's stored bars through the backtest path and report every bar "
        "whose features, model outputs or decisions differ (exit 0 none, 1 some)",
    )
    common(rc)
    rc.add_argument("run_id", help="the live run's id (see /status or the runs table)")
    rc.add_argument("--json", action="store_true", help="print the whole report as JSON")
    lc = sub.add_parser(
        "lookahead-check",
        help="run the backtest over the whole history and with the data cut after a few "
        "dates, and report the first bar and plugin whose decision differs: a plugin that "
        "reads the future (exit 0 none, 1 some, 2 a config or data error)",
    )
    common(lc)
    lc.add_argument(
        "--cuts",
        type=int,
        default=4,
        help="cut runs, their cuts spread evenly over the traded bars (default 4); each "
        "is a backtest",
    )
    lc.add_argument(
        "--at",
        action="append",
        default=[],
        metavar="DATE",
        help="cut after the last bar on or before DATE (YYYY-MM-DD; repeatable, instead of --cuts)",
    )
    lc.add_argument(
        "--symbols", nargs="+", default=[], help="check on these symbols of the data only"
    )
    lc.add_argument(
        "--workers",
        type=int,
        default=0,
        help="local processes for the backtests (default 0: one after the other here)",
    )
    lc.add_argument("--json", action="store_true", help="print the whole result as JSON")
    lc.add_argument("--no-progress", action="store_true", help="no progress bar")
    rh = sub.add_parser(
        "reset-halt",
        help="lift a halted kill switch in a stopped live run's checkpoint "
        "(a running daemon: POST /reset-halt)",
    )
    common(rh)
    rh.add_argument("run_id", help="the live run's id")

    dr = sub.add_parser(
        "delete-runs",
        help="delete finished runs' rows from the store (every table but bars): lists them, "
        "and deletes only with --yes",
        description="Select runs by id and/or --backtests [--keep N] and/or --before DATE "
        "(the filters together: runs matching both); a dry run lists each with its kind, "
        "first and last bar and rows per table. A run in use (a running backtest or daemon) "
        "is refused, and a live run unless --live. Exit 0 done, 2 an error.",
    )
    common(dr)
    dr.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="a stored run's id")
    dr.add_argument("--backtests", action="store_true", help="select the stored backtests")
    dr.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="with --backtests: keep the newest N of them (by when they started)",
    )
    dr.add_argument(
        "--before", metavar="DATE", help="select the runs started before DATE (YYYY-MM-DD, UTC)"
    )
    dr.add_argument("--live", action="store_true", help="live runs may be deleted too")
    dr.add_argument(
        "--files",
        action="store_true",
        help="also remove each run's record folder under run.output_dir and its audit log",
    )
    dr.add_argument(
        "--vacuum",
        action="store_true",
        help="SQLite: rewrite the file afterwards to give the space back to the disk "
        "(refused while anything uses the store); alone, vacuum only",
    )
    dr.add_argument("--yes", action="store_true", help="delete (without it: a dry run)")

    he = sub.add_parser(
        "health",
        help="ask a running daemon whether it is alive and ready "
        "(exit 0 ready, 1 not ready, 2 unreachable); its /status is read with "
        "$TRADINGD_HEALTH_TOKEN, which it needs once the daemon has a token",
    )
    common(he)
    he.add_argument(
        "--url",
        help="the daemon's health server (default: from [health] host and port of the "
        "configuration, e.g. http://127.0.0.1:8080)",
    )
    he.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The program (`argv` None: the process exits when this returns, so signals that
    arrive after the command finished are ignored rather than turning its exit code into a
    kill), or an embedded call with explicit `argv` (tests), which gets its signal handlers
    back as they were."""
    args = _parser().parse_args(argv)
    exiting = argv is None
    if exiting:
        restrict_umask()
    stdout = sys.stdout
    sys.stdout = _CheckedStdout(stdout)
    try:
        if args.command == "run":
            return _run_command(args, restore=not exiting)
        # SIGTERM as Ctrl-C in every other command (a backtest's replay has its own, below):
        # `tradingd: interrupted`, and the worker processes of a walk-forward or a report's
        # Monte Carlo are ended (analysis/parallel.py) rather than left running.
        with _interrupt_on(signal.SIGTERM):
            code = _command(args)
            sys.stdout.flush()  # what is left in the buffer: a closed stdout raises here
            return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # another pipe (a worker's): not the reader of this command's output
        # `tradingd config | head`: the reader has what it wanted. Quiet, as a CLI that
        # SIGPIPE ends (exit 128 + SIGPIPE); SIGPIPE itself stays ignored, as Python sets
        # it, so a vendor's or the database's closed socket stays an error, not a kill.
        if exiting:
            _stdout_to_devnull()
        return 128 + signal.SIGPIPE
    except TradingdError as exc:
        from .secrets import mask_env, mask_text

        # Masked as `run`'s: an error may quote a URL or a key=value it was given, or a
        # credential of the environment put in the wrong setting.
        say(f"tradingd: error: {mask_env(mask_text(str(exc)))}")
        if exiting and isinstance(exc, StdoutUnwritable):
            _stdout_to_devnull()
        return exit_code(exc, args.command)
    except KeyboardInterrupt as exc:
        say("tradingd: interrupted")
        return 128 + getattr(exc, "signum", signal.SIGINT)
    finally:
        if isinstance(sys.stdout, _CheckedStdout):
            sys.stdout = stdout
        if exiting:
            # At finalization Python resets its own handlers to the default actions (a kill
            # for SIGTERM and SIGHUP, KeyboardInterrupt for SIGINT), but keeps SIG_IGN.
            for sig in _HANDLED if args.command == "run" else (signal.SIGINT,):
                signal.signal(sig, signal.SIG_IGN)


# Bits the program always takes from what it makes: write for the group, everything for
# others (see the module docstring).
UMASK = 0o027


class StdoutUnwritable(TradingdError):
    """Stdout did not take the command's output (a full disk under `> FILE`, EIO): exit 2,
    `tradingd: error: cannot write to stdout ...`, not a traceback and exit 1. A closed pipe
    stays BrokenPipeError (`tradingd config | head`: quiet, 141)."""

    def __init__(self, exc: OSError, where: str = "", note: str = "") -> None:
        self.error, self.where = exc, where
        super().__init__(
            f"cannot write to stdout{where}: {exc.strerror or exc}"
            f"{f'; {note}' if note else ''}: free space where it goes, or send it to a file "
            "elsewhere, and run the command again"
        )


class _CheckedStdout:
    """sys.stdout while a command runs: an OSError writing it is `StdoutUnwritable`, so it is
    told from every other OSError (a worker's, a file's) by what it is."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, s: str) -> int:
        try:
            return int(self._stream.write(s))
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutUnwritable(exc, self._where()) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutUnwritable(exc, self._where()) from exc

    def _where(self) -> str:
        """What stdout is (" (/dev/full)", " (/var/log/x.out)"), when it can be told."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return f" ({os.readlink(f'/proc/self/fd/{self._stream.fileno()}')})"
        return ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _stdout_to_devnull() -> None:
    """Python flushes stdout as it exits: what is left in its buffer would fail again, and
    say so ("Exception ignored", exit 120)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def say(text: str) -> None:
    """`text` on stderr, as a line of the command's own (its error, an interruption): never
    raising, as log lines never do (`logs._StderrBesideProgressBars`). On a full disk under
    stderr the print raised OSError over the error it was to say, and the command exited 1
    with a traceback nobody saw instead of its own exit code."""
    from .logs import journal_prefix

    prefix = journal_prefix("error" if text.startswith("tradingd: error") else "warning")
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(prefix + text, file=sys.stderr, flush=True)


def restrict_umask() -> int:
    """Add `UMASK` to the process umask (an operator's stricter one is kept as it is) and
    return the new one. Process-wide, so only for the program itself, never an embedded
    call: a caller's files are the caller's business."""
    current = os.umask(0o077)  # read it: os.umask only sets; 077 for the instant between
    new = current | UMASK
    os.umask(new)
    return new


def _stdout_closed() -> bool:
    """Whether this process's stdout is a pipe or socket whose reader has gone (poll reports
    an error on its write end); False when it cannot tell (not a file: an embedded call)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _command(args: argparse.Namespace) -> int:
    if args.command == "walkforward":
        # Before any config is loaded: it splits its own [walkforward] table out of the -c
        # files, which the strategy's configuration would reject.
        from .analysis.walkforward_cli import run as walkforward

        return walkforward(args)
    if args.command == "plugins":
        return _plugin_params(args.names) if args.names else _plugins()
    if args.command == "health":
        return _health(args)
    if args.command == "report":
        return _report(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "backtest":
        _check_report_options(args)
    from .preflight import check_config, check_services, check_train_extra

    config = _config(args.config)
    from .config import log_overlay_notes
    from .logs import configure_logging

    configure_logging(config.log.level, config.log.format)
    log_overlay_notes(config)
    if args.command == "delete-runs":
        # Before check_config: deleting rows needs no plugin loaded (nor its model).
        from .runs_delete import Selection, delete_runs, parse_day

        sel = Selection(
            run_ids=tuple(args.run_ids),
            backtests=args.backtests,
            keep=args.keep,
            before=parse_day(args.before) if args.before else None,
            live=args.live,
            files=args.files,
            vacuum=args.vacuum,
            yes=args.yes,
        )
        asyncio.run(delete_runs(config, sel, print))
        return 0
    arg = _OUTPUT_ARG.get(args.command)
    output = getattr(args, arg) if arg else None
    check_config(config, args.command, output_dir=output)
    if args.command in ("train", "retrain"):
        # After the configuration (its errors do not depend on what is installed, as in
        # `tradingd walkforward`), before any data is loaded: say what to install.
        check_train_extra()
    if args.command in ("backtest", "fetch"):
        asyncio.run(check_services(config))
    if args.command == "features":
        from .features.catalog import Catalog, feature_set_id, feature_unit, resolve_set

        f = config.features
        names = resolve_set(f.set, f.extra)
        cat = Catalog(f.indicators, f.cross_sectional)
        for n in names:
            cat.node(n)  # every name must parse
        fsid = feature_set_id(f.set, names, f.indicators, f.cross_sectional)
        # With each feature's units: `rsi_14` is RSI / 100, and a `rsi_14 < 30` never fired.
        units = {n: feature_unit(n) for n in fsid.features}
        listing = {"set": fsid.name, "version": fsid.version, "features": list(fsid.features)}
        print(json.dumps({**listing, "units": units}, indent=2))
        return 0
    if args.command == "config":
        print(json.dumps(config.to_public_dict(), indent=2, default=str))
        return 0
    if args.command == "backtest":
        return _backtest(config, args)
    if args.command == "train":
        return _train(config, args)
    if args.command == "retrain":
        return _retrain(config, args)
    if args.command == "replay-check":
        from .replay_check import replay_check

        report = asyncio.run(replay_check(config, args.run_id))
        out = report.to_dict()
        if args.json:
            print(json.dumps(out, indent=2, default=str))
        else:
            print(
                f"run {report.run_id}: {report.bars_compared} bar(s) compared, "
                f"{len(report.differing)} differ, {len(report.bars_missing_in_replay)} "
                "missing in the replay"
            )
            if report.other_builds and not report.ok:
                print(
                    f"likely cause: bars were decided by another tradingd build than this "
                    f"one ({report.replayed_by.label()}), and differ where the code changed:"
                )
                for b in report.builds:
                    print(
                        f"  {b.first.isoformat()} to {b.last.isoformat()}: {b.bars} bar(s), "
                        f"{b.differing} differ, decided by {b.label()}"
                    )
            if report.settings_not_used:
                shown = ", ".join(report.settings_not_used[:10])
                more = len(report.settings_not_used) - 10
                print(
                    "note: the run is replayed as it was configured; these settings of the "
                    f"configuration given differ from the run's and are not used: {shown}"
                    + (f" and {more} more" if more > 0 else "")
                )
            for live, replay in report.sources_differ.items():
                print(
                    f"the live run decided with {live}, the replay with {replay}: replay it "
                    "with the live run's model (its ml_ensemble model_dir set to "
                    "var/models/versions/<version>) before reading the differences"
                )
            for d in report.differing[:50]:
                print(f"  {d.time.isoformat()}: " + "; ".join(d.differences))
            if report.decisions_compared < report.bars_compared:
                why = []
                if not report.decisions_comparable:
                    why.append("an external broker's book after its first fill")
                if report.segments > 1:
                    why.append("the bars after a restart")
                print(
                    f"decisions (targets, orders) compared on {report.decisions_compared} of "
                    f"them; features and model outputs on all ({', '.join(why)}); "
                    f"{len(report.not_counted)} bar(s) whose decisions differ are not counted:"
                )
                for d in report.not_counted[:20]:
                    print(f"  {d.time.isoformat()}: " + "; ".join(d.differences))
        return 0 if report.ok else 1
    if args.command == "lookahead-check":
        return _lookahead_check(config, args)
    if args.command == "reset-halt":
        from .stored_run import reset_halt

        print(json.dumps(asyncio.run(reset_halt(config, args.run_id)), indent=2))
        return 0
    if args.command == "fetch":
        from .app import import_bars

        stored = asyncio.run(import_bars(config))
        print(f"stored {stored} bars in {mask_url(config.storage.url)}")
        return 0
    return 1


def _lookahead_check(config: Config, args: argparse.Namespace) -> int:
    from .lookahead_check import lookahead_check, report_lines

    if args.workers < 0:
        raise TradingdError(f"--workers must be >= 0, got {args.workers}")
    report = lookahead_check(
        config,
        cuts=args.cuts,
        at=args.at,
        symbols=args.symbols,
        workers=args.workers,
        # A bar only on a terminal, as every command's: redirected, it was 57 fragments
        # of the bar among the log's JSON lines.
        progress=sys.stderr.isatty() and not args.no_progress and not args.json,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print("\n".join(report_lines(report)))
    return 0 if report.ok else 1


def _train(config: Config, args: argparse.Namespace) -> int:
    import dataclasses

    try:
        from tradingd_models.config import ModelConfig
        from tradingd_models.training import check_out_dir, train
    except ImportError as exc:
        raise ConfigError(
            f"training needs the train extra (pip install 'tradingd[train]'): {exc}"
        ) from None
    from .app import load_data

    mc = _model_config(args.model_config) if args.model_config else ModelConfig()
    if args.epochs is not None:
        if args.epochs < 1:  # 0 was taken for "not given" and trained the configured epochs
            raise TradingdError(f"--epochs must be >= 1, got {args.epochs}")
        mc = dataclasses.replace(mc, epochs=args.epochs)
    check_out_dir(args.out)  # before the data is loaded
    train(config, load_data(config), args.out, mc, log=say)
    print(f"model pair and card written to {Path(args.out).resolve()}")
    return 0


def _model_config(path: str) -> Any:
    """`--model-config FILE`: its `[model]` table, whole. A file without one (`[modle]`, or
    the keys at the top level) was read as an empty table, and the full-size defaults
    trained for hours without a word; any other table or top-level key is refused too, as
    an unknown key of the table is."""
    import tomllib

    from tradingd_models.config import ModelConfig

    from .config import build

    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TradingdError(f"model config {path}: {exc}") from None
    others = sorted(k for k in doc if k != "model")
    if others:
        said = ", ".join(
            f"[{k}]" if isinstance(doc[k], dict) else f"{k} (a top-level key)" for k in others
        )
        raise ConfigError(
            f"model config {path}: unknown {said}; the file holds one [model] table "
            f"(hyperparameters under it, as in config/model.toml)"
        )
    if "model" not in doc:
        raise ConfigError(
            f"model config {path}: no [model] table (the file is empty); put the "
            "hyperparameters under [model], as in config/model.toml"
        )
    try:
        return build(ModelConfig, doc["model"], "model")
    except ConfigError as exc:
        raise ConfigError(f"model config {path}: {exc}") from None


def _retrain(config: Config, args: argparse.Namespace) -> int:
    try:
        from tradingd_models.retrain import RetrainPolicy, retrain
        from tradingd_models.training import TooFewWindows
    except ImportError as exc:
        raise ConfigError(f"retraining needs the train extra: {exc}") from None
    from .app import load_data

    policy = RetrainPolicy(args.window_bars, args.min_directional_accuracy, args.max_mse_ratio)
    try:
        out = retrain(config, load_data(config), args.root, policy)
    except TooFewWindows as exc:  # a ConfigError: more bars, or another --window-bars
        raise ConfigError(
            f"retraining failed: {exc} (--window-bars {args.window_bars}: the latest bars "
            "retrain trains on; a larger --window-bars gives more windows)"
        ) from None
    except TradingdError:
        raise  # named already (a config or data error)
    except ValueError as exc:
        # Training's own refusals (too few bars for one complete window after the features'
        # warm-up, say): a traceback before.
        raise TradingdError(
            f"retraining failed: {exc} (--window-bars {args.window_bars}: too short for the "
            "model's window and the features' warm-up?)"
        ) from None
    print(json.dumps({"published": out.published, "version": out.version, "reason": out.reason}))
    return 0 if out.published else 3


def _health(args: argparse.Namespace) -> int:
    """Reads the configuration only for the default URL: loads no plugins, models or
    services (a daemon's health must be askable when those are broken)."""
    from .health import token_from_env
    from .health.client import fetch_health, url_for

    if not (math.isfinite(args.timeout) and args.timeout > 0):
        # 0, a negative or NaN waited forever on a stalled daemon; inf was a traceback
        raise TradingdError(
            f"--timeout must be a finite number of seconds > 0 (e.g. 5), got {args.timeout}"
        )
    url = args.url or url_for(_config(args.config).health)
    # /status needs the daemon's token once it has one: the same variable the daemon reads.
    code, report = asyncio.run(fetch_health(url, args.timeout, token_from_env()))
    print(json.dumps(report, indent=2, sort_keys=True))
    if code == 2:
        say(f"tradingd: error: {report['error']}")
    return code


def _plugins() -> int:
    from .engine.plugins import KINDS, clash_text, registered

    clashes = unknown = 0
    for name, targets in sorted(registered().items()):
        if len(targets) > 1:  # refused when configured: say so here too
            clashes += 1
            print(f"{name:24} {'CLASH':8} {clash_text(name, targets)}")
            continue
        ep = targets[0]
        try:
            kind = getattr(ep.load(), "kind", None)
        except Exception as exc:  # list it anyway, with the reason it is broken
            print(f"{name:24} BROKEN ({type(exc).__name__}: {exc}) {ep.value}")
            continue
        if kind in KINDS:
            print(f"{name:24} {kind:8} {ep.value}")
            continue
        # A misspelled kind ("signl") was listed like any plugin, and refused only once
        # configured, as no plugin of the kind its section asks for.
        unknown += 1
        said = "no kind" if kind is None else f"kind {kind!r}"
        print(f"{name:24} {'UNKNOWN':8} {ep.value}: {said}, not one of {', '.join(KINDS)}")
    if clashes:
        print(
            f"tradingd: {clashes} plugin name(s) registered by more than one package cannot be "
            "configured: uninstall one or rename its entry point",
            file=sys.stderr,
        )
    if unknown:
        print(
            f"tradingd: {unknown} plugin(s) of no known kind cannot be configured: set the "
            f"class's `kind` to one of {', '.join(KINDS)}",
            file=sys.stderr,
        )
    return 0


def _plugin_params(names: list[str]) -> int:
    """`tradingd plugins NAME ...`: each plugin's params, defaults and comments."""
    import dataclasses
    import inspect
    import textwrap

    from .engine.plugin_params import param_docs, toml_value
    from .engine.plugins import clash_text, load_class, registered

    found = registered()
    unknown = [n for n in names if n not in found]
    if unknown:
        raise TradingdError(
            f"plugins: no plugin named {', '.join(map(repr, unknown))}; installed: "
            f"{', '.join(sorted(found))}"
        )
    for i, name in enumerate(names):
        targets = found[name]
        if len(targets) > 1:
            raise TradingdError(f"plugins: {clash_text(name, targets)}")
        ep = targets[0]
        cls = load_class(name, ep)
        config_cls = getattr(cls, "Config", None)
        if i:
            print()
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        print(f"{name} ({getattr(cls, 'kind', '?')}, {ep.value})")
        if doc:
            print(f"  {doc}")
        if not isinstance(config_cls, type) or not dataclasses.is_dataclass(config_cls):
            print("  no Config dataclass: no params")
            continue
        print("  params (in the plugin's `params = { ... }`), with their defaults:")
        for p in param_docs(config_cls):
            if p.above:
                for line in textwrap.wrap(p.above, 86):
                    print(f"    # {line}")
            line = f"    {p.name} = {toml_value(p.default)}  ({p.type})"
            print(f"{line}  # {p.inline}" if p.inline else line)
    return 0


def _check_report_options(args: argparse.Namespace) -> None:
    """`backtest --analysis-config X` or `--no-validation` without `--report` is refused
    before anything runs: they configure the report only, and were dropped without a word
    (a missing X included), leaving the user to believe the run was analysed as asked."""
    given = [
        opt
        for opt, value in (
            ("--analysis-config", args.analysis_config),
            ("--no-validation", args.no_validation),
        )
        if value
    ]
    if given and not args.report:
        raise TradingdError(
            f"backtest: {' and '.join(given)} only configure{'s' if len(given) == 1 else ''} "
            "the report: add --report, or leave "
            f"{'it' if len(given) == 1 else 'them'} out (`tradingd report RUN` reports a run "
            "later)"
        )


def _backtest(config: Config, args: argparse.Namespace) -> int:
    from .analysis.metrics import format_summary
    from .backtest import BacktestStopped, StopRequest, _jsonable, run_backtest
    from .feeds.fingerprint import data_text

    progress = sys.stderr.isatty() and not args.no_progress
    # Not on a terminal (a file, a CI log): a log line every tenth of the bars instead.
    replay_progress: bool | str = progress or ("log" if not args.no_progress else False)
    tables = _analysis_tables(args.analysis_config) if args.report else {}
    stop = StopRequest()
    try:
        with _backtest_signals(stop):
            outcome = asyncio.run(
                run_backtest(config, output_dir=args.output, progress=replay_progress, stop=stop)
            )
    except BacktestStopped as stopped:
        say(f"tradingd: {stopped}")
        return 128 + signal.Signals[stopped.signal].value if stopped.signal else 1
    closed = False
    unwritable: StdoutUnwritable | None = None
    try:
        if args.json:
            print(json.dumps(_jsonable(outcome.summary)))
        else:
            # The data's digest on a line of its own: a 64-digit value in the table widened
            # its every row.
            print(format_summary({k: v for k, v in outcome.summary.items() if k != "data"}))
            if "data" in outcome.summary:
                print(f"\ndata: {data_text(outcome.summary['data'])}")
            print(
                f"\nrun {outcome.run_id}: equity, orders, fills and config in {outcome.output_dir}"
            )
        sys.stdout.flush()
    except BrokenPipeError:
        if not args.report or not _stdout_closed():
            raise
        # `... --report --json | head`: the reader has gone, the report is still due (the
        # rerun removed the earlier one); the exit says the pipe closed, after it.
        closed = True
    except StdoutUnwritable as exc:
        # `> FILE` on a full disk: the record is whole (written before the summary), and the
        # report still due; the error says so, after it.
        unwritable = exc
    if args.report:
        files = _write_report(
            Path(outcome.output_dir),
            None,
            tables,
            progress=progress,
            validate=not args.no_validation,
            elsewhere="report the run elsewhere with `tradingd report "
            f"{outcome.output_dir} --output FOLDER` (its record is complete)",
        )
        # With --json, stdout stays one JSON object: the report's paths go to stderr.
        if args.json or closed or unwritable:
            say(_report_line(files))
        else:
            print(_report_line(files))
    if unwritable is not None:
        raise StdoutUnwritable(
            unwritable.error,
            unwritable.where,
            f"the summary was not printed; run {outcome.run_id}'s record is complete in "
            f"{outcome.output_dir}",
        ) from None
    if closed:
        raise BrokenPipeError("stdout closed before the summary was printed")
    return 0


class _Interrupted(KeyboardInterrupt):
    """A stop signal where a command cannot stop cleanly: `tradingd: interrupted`, with exit
    code 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _interrupt_on(*signals: int) -> Iterator[None]:
    """`signals` raise `_Interrupted` (as SIGINT raises KeyboardInterrupt) while this runs."""

    def handler(signum: int, frame: Any) -> None:
        raise _Interrupted(signum)

    with _handled(signals, handler):
        yield


@contextlib.contextmanager
def _handled(signals: Sequence[int], handler: Any) -> Iterator[None]:
    """`handler` for `signals` while this runs; the handlers from before come back after."""
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _backtest_signals(stop: Any) -> Iterator[None]:
    """SIGINT and SIGTERM during a backtest's replay (module docstring): the first stops it
    after the current bar, the second exits at once. Plain handlers, not the event loop's:
    the replay does not yield to the loop between bars."""

    def handler(signum: int, frame: Any) -> None:
        if stop.over:
            # The replay is over (its report is being written): an interruption, as in
            # any other command, not a stop that would go unnoticed.
            raise _Interrupted(signum)
        if stop.reason is not None:
            _exit_at_once(signum, "backtest: stop signal received twice: exiting at once")
        name = signal.Signals(signum).name
        # Said at once: a plugin hung in its bar's call kept the stop waiting, and nothing
        # said the signal was taken, nor that a second one exits (written directly, as
        # `_exit_at_once` writes: the interrupted code may hold the log's lock).
        with contextlib.suppress(OSError):  # a full disk under stderr: the stop goes on
            os.write(
                2,
                f"\ntradingd: {name} received: {stop.what_it_stops()}; {name} again exits at "
                "once\n".encode(),
            )
        stop.request(name)

    with _handled(_STOP_SIGNALS, handler):
        yield


def _exit_at_once(signum: int, detail: str, **fields: Any) -> NoReturn:
    """Exit code 128 + the signal number, without finishing anything, after one JSON line
    written directly (no logging from a plain signal handler: the interrupted code may hold
    the log's lock)."""
    code = 128 + signum
    line = {
        "event": "tradingd.forced_exit",
        "level": "error",
        "signal": signal.Signals(signum).name,
        **fields,
        "exit_code": code,
        "detail": detail,
    }
    with contextlib.suppress(OSError):  # a full disk under stderr: the exit still happens
        os.write(2, (json.dumps(line) + "\n").encode())
    os._exit(code)


_ANALYSIS_TABLES = ("analysis", "report", "validation", "attribution")
# What [analysis] sets is the default of the tables that have the same setting (theirs wins):
# with risk_free_rate = 0 in [analysis] the validation's Sharpe ratio, PSR, DSR and verdict
# were still at 2%, and benchmark = "NASDAQ" left the attribution's beta on the S&P 500.
# The benchmark keys go together: one table's symbol with another's file would be neither.
_SHARED_SETTINGS: dict[str, tuple[tuple[str, ...], ...]] = {
    "validation": (("risk_free_rate",), ("periods_per_year",), ("var_confidence",)),
    "attribution": (("periods_per_year",), ("benchmark", "benchmark_source", "benchmark_path")),
}


def _with_shared_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """Each table of an analysis config with the [analysis] settings it shares and does not
    set itself (`_SHARED_SETTINGS`)."""
    analysis = data.get("analysis", {})
    out = dict(data)
    if not isinstance(analysis, Mapping):
        return out  # PerformanceConfig.from_mapping names the error
    for name, groups in _SHARED_SETTINGS.items():
        table = data.get(name, {})
        if not isinstance(table, Mapping):
            continue
        merged = dict(table)
        for group in groups:
            if not any(k in table for k in group):
                merged.update({k: analysis[k] for k in group if k in analysis})
        out[name] = merged
    return out


def _analysis_tables(path: str | None) -> dict[str, Any]:
    """The configurations in `--analysis-config` (docs/REPORTS.md), each table checked by its
    component's `from_mapping`, before any replay: a typo is reported in seconds. The
    [analysis] settings are the other tables' defaults (`_SHARED_SETTINGS`), so every table
    of one report measures against the same risk-free rate and benchmark. A table that sets
    no periods_per_year annualises with the run's own, as from Python
    (`run_records.periods_per_year_for`)."""
    from .analysis.attribution import AttributionConfig
    from .analysis.performance import PerformanceConfig
    from .analysis.report import ReportConfig
    from .analysis.validation import ValidationConfig

    data: dict[str, Any] = {}
    if path:
        import tomllib

        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            # (A file in another encoding than UTF-8, as TOML must be: named, not a traceback.)
            raise TradingdError(f"analysis config {path}: {exc}") from None
        unknown = sorted(set(data) - set(_ANALYSIS_TABLES))
        if unknown:
            raise TradingdError(
                f"analysis config {path}: unknown table(s) {', '.join(unknown)}; valid "
                f"tables: {', '.join(_ANALYSIS_TABLES)}"
            )
        data = _with_shared_settings(data)
    analysis = PerformanceConfig.from_mapping(data.get("analysis", {}), "analysis")
    report = ReportConfig.from_mapping(data.get("report", {}), "report")
    validation = ValidationConfig.from_mapping(data.get("validation", {}), "validation")
    attribution = AttributionConfig.from_mapping(data.get("attribution", {}), "attribution")
    root = validation.runs_root
    counted = validation.trials == 0 or validation.trials_sharpe_variance == 0
    if root and counted and not Path(root).is_dir():
        # The validation refuses it too, but only once the replay has run (minutes on a
        # large universe): a typo is reported before it, as every other table's is.
        raise TradingdError(
            f"analysis config {path}: [validation] runs_root {root!r} is not a folder "
            f"(resolved: {Path(root).resolve()}): set it to the folder holding the run "
            "records (such as var/runs), or remove it to count the run folder's siblings"
        )
    return {
        "analysis": analysis,
        "report": report,
        "validation": validation,
        "attribution": attribution,
    }


_ATTRIBUTION_RISK = "Attribution: systematic and idiosyncratic risk"


def _named_benchmark(sections: dict[str, Any], attribution: Mapping[str, Any]) -> dict[str, Any]:
    """The attribution's beta with the benchmark it is against: the section gave a beta and
    no name, beside the metrics' beta against another benchmark."""
    bench = attribution.get("benchmark") or {}
    risk = sections.get(_ATTRIBUTION_RISK)
    if isinstance(risk, Mapping):
        sections[_ATTRIBUTION_RISK] = {
            "benchmark": str(bench.get("name") or "") or "none",
            "benchmark_bars": bench.get("bars"),
            **risk,
        }
    return sections


def _write_report(
    folder: Path,
    output: str | None,
    tables: dict[str, Any],
    *,
    progress: bool,
    validate: bool = True,
    attribution_config: Config | None = None,
    map_fn: Any = None,
    elsewhere: str = "write the report elsewhere with --output FOLDER",
) -> Any:
    """The report of a run folder, with the validator's tests and Monte Carlo (unless
    `validate` is off) and, given the run's configuration, the return attribution (a replay
    of the run, checked against its record). `elsewhere`: how to write it to another folder,
    said when it cannot be written (a full disk)."""
    from .analysis.performance import PerformanceAnalyzer
    from .analysis.report import write_report
    from .analysis.report_sections import attribution_sections, validation_sections
    from .core.atomic_file import FileNotWritten, unwritable

    sections: dict[str, Any] = {}
    try:
        if validate:
            from .analysis.validation import StatisticalValidator

            validator = StatisticalValidator(tables["validation"])
            sections.update(
                validation_sections(validator.validate_performance(folder, map_fn=map_fn))
            )
        if attribution_config is not None:
            from .analysis.attribution import attribute_run

            attribution = asyncio.run(
                attribute_run(
                    attribution_config,
                    record=folder,
                    config=tables["attribution"],
                    progress=progress,
                )
            )
            sections.update(_named_benchmark(attribution_sections(attribution), attribution))
        return write_report(
            folder,
            output,
            analyzer=PerformanceAnalyzer(tables["analysis"]),
            config=tables["report"],
            sections=sections,
            progress=progress,
        )
    except FileNotWritten as exc:  # a full disk: report.html and report.json as they were
        raise TradingdError(unwritable(exc, elsewhere)) from None
    except ValueError as exc:  # a record the analysis cannot read, a replay that differs
        raise TradingdError(f"run {folder}: {exc}") from None


def _report(args: argparse.Namespace) -> int:
    """Reads the configuration for run.output_dir and logging; loads no plugins and checks
    no services unless `--attribution` asks for a replay of the run."""
    from .analysis.report import resolve_run
    from .logs import configure_logging

    pool = [o for o, v in (("--workers", args.workers), ("--ray-address", args.ray_address)) if v]
    if pool and args.no_validation:
        # As `backtest --no-validation` without --report: an option for a step the command
        # does not take was dropped without a word.
        raise TradingdError(
            f"report: {' and '.join(pool)} run the Monte Carlo, which --no-validation leaves "
            f"out: leave {' and '.join(pool)} out, or validate"
        )
    config = _config(args.config)
    configure_logging(config.log.level, config.log.format)
    tables = _analysis_tables(args.analysis_config)
    try:
        folder = resolve_run(args.run, config.run.output_dir)
    except ValueError as exc:
        raise TradingdError(str(exc)) from None
    _refuse_walkforward_folder(folder)
    from .preflight import check_writable_dir

    if args.output:
        check_writable_dir(args.output, "--output")
    else:
        # The report goes into the run's folder: a read-only one (an archive, a mount) failed
        # with a traceback after the whole report was computed.
        try:
            check_writable_dir(folder, "the run folder")
        except ConfigError as exc:
            raise TradingdError(f"{exc}; write the report elsewhere with --output FOLDER") from None
    if args.attribution and not args.config and (folder / "config.json").is_file():
        # The replay must be the run's: without -c it took the built-in defaults, and
        # failed with "not the same run (config, data or dates differ)". The run's own
        # configuration is in its folder (secrets masked: the replay stores in memory).
        from .analysis.run_records import _json_file
        from .config import load_config

        unreadable = f"{folder / 'config.json'} cannot be read as the run's configuration"
        try:
            stored = _json_file(folder / "config.json")
        except ValueError as exc:  # (it names the file; a list was load_config's TypeError)
            raise TradingdError(f"{exc}; pass the run's configuration with -c") from None
        data = stored.get("data")
        if isinstance(data, dict) and data.get("source") == "frames":
            # strategy_api's BacktestEngine: its config said "bundled" before, and the replay
            # of the index series failed as "not the same run".
            raise TradingdError(
                f"run {folder.name}: its data was passed from Python (strategy_api's "
                "BacktestEngine), and its record holds no bars to replay, so --attribution "
                "cannot re-run it; run the attribution in Python on the same frames, or "
                "report without --attribution"
            )
        try:
            config = load_config([stored])
        except (ValueError, TradingdError) as exc:
            raise TradingdError(f"{unreadable} ({exc}); pass it with -c") from None
        log.info("report.config_from_run", file=str(folder / "config.json"))
    if args.attribution:
        from .preflight import check_config

        check_config(config, "backtest", output_dir=args.output)
    progress = sys.stderr.isatty() and not args.no_progress
    map_fn = None
    if args.workers or args.ray_address:
        from .analysis.parallel import task_map

        if args.workers < 0:
            raise TradingdError(f"--workers must be >= 0, got {args.workers}")
        map_fn = task_map(
            workers=args.workers or None, ray_address=args.ray_address, desc="Monte Carlo"
        )
    files = _write_report(
        folder,
        args.output,
        tables,
        progress=progress,
        validate=not args.no_validation,
        attribution_config=config if args.attribution else None,
        map_fn=map_fn,
    )
    print(_report_line(files))
    note = _build_note(folder)
    if note:
        print(note)
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Reads the configuration for run.output_dir and logging only: two records' files."""
    from .analysis.compare import compare_runs, render
    from .analysis.report import resolve_run
    from .logs import configure_logging

    config = _config(args.config)
    configure_logging(config.log.level, config.log.format)
    folders = []
    for run in (args.run_a, args.run_b):
        try:
            folder = resolve_run(run, config.run.output_dir)
        except ValueError as exc:
            raise TradingdError(str(exc)) from None
        _refuse_walkforward_folder(folder)
        folders.append(folder)
    try:
        found = compare_runs(*folders)
    except ValueError as exc:
        raise TradingdError(str(exc)) from None
    if args.json:
        print(json.dumps(found.as_dict(), indent=2, default=str))
    else:
        print(render(found))
    return 0 if found.same_path else 1


def _refuse_walkforward_folder(folder: Path) -> None:
    """A walk-forward's results folder has an equity.csv too (its stitched curve), so it
    passed for a run record and failed on what a record has ("the run's initial_capital is
    missing"), which sent the user looking for a broken run. Its folds ran in memory and
    left no records: say so, and where its numbers are."""
    from .analysis.run_records import is_walkforward_folder

    if is_walkforward_folder(folder):
        raise TradingdError(
            f"{folder} is a walk-forward results folder (it has walkforward.json), not a run "
            "record: its folds ran in memory and left no run records to report. Its numbers "
            "are in its files: walkforward.json (the stitched out-of-sample curve's metrics "
            "under stitched.analysis, the stability and decay tables), folds.csv (each "
            "fold's in-sample and test metrics), equity.csv and fold_equity.csv (the "
            "curves); docs/WALKFORWARD.md, Reports"
        )


def _build_note(folder: Path) -> str:
    """A line when the record was made by other code than this build: after an upgrade its
    numbers are not what this build would give (README, Upgrading)."""
    from .build_info import recorded_build, this_build

    recorded, here = recorded_build(folder), this_build()
    if recorded is None or not recorded.differs_from(here):
        return ""
    return (
        f"note: run {folder.name} was made by {recorded.label()}; this is {here.label()} "
        "(a rerun with this build may differ where the code changed)"
    )


def _report_line(files: Any) -> str:
    return (
        f"report: {files.html} ({files.html_bytes / 1e6:.1f} MB), "
        f"numbers: {files.json} ({files.json_bytes / 1e3:.0f} kB)"
    )


# ----------------------------------------------------------------------------- tradingd run

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Signals with no meaning to tradingd, said and ignored: their default action killed the
# daemon without a word (no stop line, no flush, exit 138), and operators send SIGUSR1 to
# ask other daemons to reopen their logs.
_IGNORED = (signal.SIGUSR1, signal.SIGUSR2)
_HANDLED = (*_STOP_SIGNALS, signal.SIGHUP, *_IGNORED)
_FORCE_AFTER = 3  # the third stop signal exits at once (exit code 128 + signal number)


def _say_ignored(name: str, phase: str) -> None:
    log.warning(
        "tradingd.signal_ignored",
        signal=name,
        phase=phase,
        detail="tradingd gives this signal no meaning and goes on: SIGTERM or SIGINT stops "
        "it, SIGHUP reloads the configuration",
    )


class _StartupStopped(Exception):
    """A stop was requested during start-up: nothing more is started."""


class _Daemon:
    """The signals of `tradingd run`, and how far start-up has come (module docstring).

    Before the event loop runs (and after it stopped), plain Python signal handlers only
    record a signal: one that logged could deadlock on the log's lock, which the interrupted
    code may hold. What they recorded is logged at the next step. While the loop runs,
    `loop.add_signal_handler` calls `on_signal` from the loop, where logging is safe.
    """

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths  # re-read on SIGHUP
        self.config: Config | None = None  # the running configuration
        self.engine: Engine | None = None
        self.phase = "loading configuration"
        self.ready = False  # warmed up and trading (the clock started)
        self.stop_signal: str | None = None
        self.stops = 0
        self.reload_pending = False
        self._recorded: list[tuple[int, str]] = []  # (signal, phase) seen without a loop
        self._logged_stops = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._previous: dict[int, Any] = {}
        self.notifier: Any = None  # the SystemdNotifier, told when the stop begins

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None

    # -- handlers --------------------------------------------------------------------------

    def install_plain(self) -> None:
        for sig in _HANDLED:
            self._previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._plain)

    def restore(self) -> None:
        """The handlers from before `install_plain`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _plain(self, signum: int, frame: Any) -> None:
        self._recorded.append((signum, self.phase))
        if signum in _IGNORED:
            return
        if signum == signal.SIGHUP:
            self.reload_pending = True
            return
        self.stops += 1
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum).name
        if self.stops >= _FORCE_AFTER:
            self._force(signum, in_handler=True)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.set_exception_handler(loop_exception)
        self._stopping = asyncio.Event()
        if self.stopping:
            self._stopping.set()
        for sig in _HANDLED:
            loop.add_signal_handler(sig, self.on_signal, sig)
        self.flush_recorded()

    def detach(self) -> None:
        """Back to the plain handlers before the loop closes: closing it would restore the
        default actions (SIGTERM and SIGHUP kill, SIGINT raises KeyboardInterrupt)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        for sig in _HANDLED:
            loop.remove_signal_handler(sig)
            signal.signal(sig, self._plain)

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in _IGNORED:
            _say_ignored(name, self.phase)
            return
        if signum == signal.SIGHUP:
            self.reload(name)
            return
        self.stops += 1
        if self.stops >= _FORCE_AFTER:
            self._force(signum, in_handler=False)
        if self.stop_signal is None:
            self.stop_signal = name
            if self._stopping is not None:
                self._stopping.set()
            if self.engine is not None:
                self.engine.request_stop()
            if self.notifier is not None:
                self.notifier.stopping()
        self._log_stop(name, self.phase)

    def _log_stop(self, name: str, phase: str) -> None:
        self._logged_stops += 1
        if self._logged_stops == 1:
            always.info(  # said whatever log.level says, as the exit line
                "tradingd.stop_requested",
                signal=name,
                phase=phase,
                detail="finishing the current bar, then flush and close"
                if self.ready
                else "start-up stops after its current step",
            )
        else:
            log.warning(
                "tradingd.already_stopping",
                signal=name,
                phase=phase,
                detail="the stop is under way; one more stop signal exits at once, without "
                "finishing the bar or flushing"
                if self._logged_stops == _FORCE_AFTER - 1
                else "the stop is under way",
            )

    def flush_recorded(self) -> None:
        """Log what the plain handlers recorded (logging must be configured)."""
        recorded, self._recorded = self._recorded, []
        for signum, phase in recorded:
            name = signal.Signals(signum).name
            if signum in _IGNORED:
                _say_ignored(name, phase)
            elif signum == signal.SIGHUP and (self.stopping or phase == "exiting"):
                self.reload_pending = False
                log.info("config.reload_ignored", signal=name, detail="the daemon is stopping")
            elif signum == signal.SIGHUP:
                log.info(
                    "config.reload_deferred",
                    signal=name,
                    phase=phase,
                    detail="the configuration is reloaded once the engine is built",
                )
            else:
                self._log_stop(name, phase)
        if self.stopping and self._stopping is not None:
            self._stopping.set()

    def _force(self, signum: int, *, in_handler: bool) -> None:
        name = signal.Signals(signum).name
        code = 128 + signum
        if in_handler:  # no logging from a plain handler (see the class docstring)
            # The same event as the logger's, as one JSON line written directly: outside the
            # event loop (start-up steps) the third signal arrives here, and a plain-text line
            # would be the only non-JSON line of the log.
            _exit_at_once(
                signum,
                "stop signal received three times: exiting at once",
                signals=self.stops,
                phase=self.phase,
            )
        log.error(
            "tradingd.forced_exit",
            signal=name,
            signals=self.stops,
            phase=self.phase,
            exit_code=code,
            detail="stop signal received three times: exiting at once, without finishing "
            "the bar or flushing",
        )
        sys.stderr.flush()
        os._exit(code)

    def reload(self, name: str = "SIGHUP") -> None:
        if self.stopping:
            log.info("config.reload_ignored", signal=name, detail="the daemon is stopping")
            return
        if self.engine is None or self.config is None:
            self.reload_pending = True
            log.info(
                "config.reload_deferred",
                signal=name,
                phase=self.phase,
                detail="the configuration is reloaded once the engine is built",
            )
            return
        self.reload_pending = False
        from .reload import log_report, reload_from_files

        try:
            report = reload_from_files(self.engine, self.config, self.paths)
        except Exception:  # a reload must never take the daemon down
            log.exception("config.reload_failed", signal=name, files=self.paths)
            return
        log_report(report, signal=name, files=self.paths)
        if report.ok and report.config is not None:
            self.config = report.config

    # -- start-up steps --------------------------------------------------------------------

    def enter(self, phase: str) -> None:
        """A start-up step begins; raises _StartupStopped when a stop was requested."""
        self.flush_recorded()
        if self.stopping:
            raise _StartupStopped
        self.phase = phase
        log.info("startup.phase", phase=phase)

    async def in_thread(self, phase: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A synchronous step (loading data, models): run in a thread so that the loop sees
        signals meanwhile. A stop lets the step finish (it cannot be interrupted safely)
        and then stops start-up."""
        self.enter(phase)
        result = await asyncio.to_thread(fn, *args, **kwargs)
        if self.stopping:
            raise _StartupStopped
        return result

    async def abandonable(self, phase: str, fn: Any, *args: Any) -> Any:
        """An asynchronous step that only waits (service checks): a stop abandons it."""
        self.enter(phase)
        assert self._stopping is not None
        task = asyncio.ensure_future(fn(*args))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (stop, task):
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pending
        if task.cancelled() or self.stopping:
            raise _StartupStopped
        return task.result()

    def exit_line(self, result: Any = None) -> int:
        """The last log line: where and why the daemon stopped, and the exit code: 0, or
        EX_TEMPFAIL when the daemon ended by itself (not by a stop signal) with records its
        store could not write (`_records_left`)."""
        fields: dict[str, Any] = {}
        if result is not None:
            fields.update(
                bars=result.bars,
                stopped_early=result.stopped_early,
                # bars the clock released that were never traded (a source down to the end)
                bars_never_traded=getattr(result, "bars_never_traded", 0),
            )
        if self.stopping and not self.ready:
            reason = f"stopped during start-up: {self.phase}"
        elif self.stopping:
            reason = f"stopped by {self.stop_signal}"
        elif result is not None and result.stopped_early:
            reason = "stopped by the engine (see the lines before)"  # e.g. instance lock lost
        else:
            reason = "run finished"  # an accelerated clock released its last bar
        left = None if self.stopping else self._records_left()
        if left is not None:
            batches, path = left
            always.error(
                "tradingd.exit",
                reason=f"{reason}, but its last records are not in the database",
                signal=None,
                exit_code=EX_TEMPFAIL,
                spool=str(path),
                batches=batches,
                hint="the database was down at the end: the run's last rows (its end "
                "included) are only in this spool file. Start the run again (the same "
                "configuration, from the same folder) once the database answers: the start "
                "writes the spool, and the run ends again at once",
                **fields,
            )
            return EX_TEMPFAIL
        # Whatever log.level says (warning, or raised by a SIGHUP): an info line, it was
        # filtered out, and nothing said where and why the daemon stopped.
        always.info("tradingd.exit", reason=reason, signal=self.stop_signal, **fields)
        return 0

    def _records_left(self) -> tuple[int, Any] | None:
        """(batches, spool file) the engine's store closed its spool with, or None. A stop
        signal's stop leaves them as it always did (the next start writes them): only a
        daemon that ended by itself says so with its exit code, as its unit would not
        start it again."""
        store = getattr(self.engine, "store", None)
        left = getattr(store, "spool_left", None)
        return left if isinstance(left, tuple) else None


def _run_command(args: argparse.Namespace, *, restore: bool = True) -> int:
    daemon = _Daemon(_config_paths(args.config))
    daemon.install_plain()  # first: from here on a signal is a clean stop
    logging_ready = False
    try:
        from .config import load_config  # imports pandas: seconds on a cold start
        from .logs import configure_logging

        config = load_config(daemon.paths)
        configure_logging(config.log.level, config.log.format)
        logging_ready = True
        from .config import log_overlay_notes

        log_overlay_notes(config)
        daemon.config = config
        daemon.flush_recorded()
        if daemon.stopping:
            return daemon.exit_line()
        return asyncio.run(_run(config, daemon))
    except TradingdError as exc:
        from .secrets import mask_env, mask_text

        code = exit_code(exc, "run")
        say(f"tradingd: error: {mask_env(mask_text(str(exc)))}")
        if logging_ready:  # the last line says where and why, as on every other exit
            reason = mask_text(f"error: {exc}")
            always.error("tradingd.exit", reason=reason, phase=daemon.phase, exit_code=code)
        return code
    except Exception:
        if not logging_ready:
            raise
        log.exception("tradingd.failed", phase=daemon.phase)
        return 1
    finally:
        if logging_ready:
            daemon.phase = "exiting"
            daemon.flush_recorded()
        if restore:  # an embedded call; a process that exits now ignores them (main)
            daemon.restore()


def _lost_connection(exc: BaseException | None) -> bool:
    """A connection's loss as asyncpg or the socket reports it (not an error of ours)."""
    if isinstance(exc, ConnectionError):
        return True
    kind = type(exc)
    return kind.__module__.startswith("asyncpg") and "Connection" in kind.__name__


def loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's handler of errors nobody awaited. asyncpg sets a connection's loss on
    an internal future no caller awaits any more when a database goes away mid-operation
    (its issue #309): asyncio logged it as an error with a traceback while the store was
    already down, reported and spooling (`storage.database.down`). That one is a warning;
    everything else goes to asyncio's own handler, as before."""
    exc = context.get("exception")
    if str(context.get("message", "")).startswith("Future exception was never retrieved") and (
        _lost_connection(exc)
    ):
        log.warning(
            "asyncio.connection_loss_unretrieved",
            error=f"{type(exc).__name__}: {exc}",
            detail="a connection lost mid-operation, reported by its store or client",
        )
        return
    loop.default_exception_handler(context)


async def _run(config: Config, daemon: _Daemon) -> int:
    daemon.attach(asyncio.get_running_loop())
    try:
        # The exit line once everything is closed (the health server's stop logs too): it is
        # the last line, as the operator reads it.
        return daemon.exit_line(await _serve(config, daemon))
    except _StartupStopped:
        return daemon.exit_line()
    finally:
        daemon.detach()


async def _serve(config: Config, daemon: _Daemon) -> Any:
    from .preflight import check_config

    await daemon.in_thread("checking configuration and plugins", check_config, config, "run")

    from .health import Check, token_from_env
    from .health.server import HealthServer
    from .watchdog import SystemdNotifier

    # Listening from here on: a start that waits for PostgreSQL (storage.start_retry_s) or
    # loads large models answers /health and names its phase in /ready and /status, rather
    # than refusing connections like a dead process. The engine's checks, status and
    # controls replace the start-up ones once it is built.
    trading = Check("trading", lambda: trading_check(daemon))
    server = (
        HealthServer(
            config.health,
            [trading],
            lambda: starting_status(daemon),
            _StartingControls(daemon),
            token_from_env(),
        )
        if config.health.enabled
        else None
    )
    notifier = SystemdNotifier()
    daemon.notifier = notifier
    if daemon.stopping:  # a stop signal before the loop ran (recorded by the plain handler)
        notifier.stopping()
    try:
        if server is not None:
            await server.start()
        await notifier.start()
        return await _start_and_run(config, daemon, server, notifier, trading)
    finally:
        notifier.stopping()
        await notifier.stop()
        if server is not None:
            await server.stop()


async def _start_and_run(
    config: Config, daemon: _Daemon, server: Any, notifier: Any, trading: Any
) -> Any:
    """The run's EngineResult (the caller logs the exit line once all is closed)."""
    from .app import build_engine, continued_live_run, health_inputs, load_data
    from .preflight import check_services

    await daemon.abandonable("checking services", partial(check_services, live=True), config)
    # A stored run this start continues under its own id (run_continuation).
    continued = await daemon.abandonable("finding the run to continue", continued_live_run, config)
    panel = None
    if config.feed.source == "recorded":  # a vendor feed fetches its history at warm-up
        try:
            panel = await daemon.in_thread("loading data", load_data, config)
        except DataError as exc:
            if isinstance(exc, ConfigError):
                raise
            # The file is the configuration's (`data.path`): a restart reads it as it is.
            raise DataFileUnusable(str(exc)) from exc
    daemon.enter("loading plugins and models")
    engine = await asyncio.to_thread(
        partial(build_engine, config, "live", panel=panel, run_id=continued)
    )
    daemon.engine = engine  # from here on a stop signal reaches the engine
    if daemon.stopping:
        _close_unstarted(engine)
        raise _StartupStopped
    if daemon.reload_pending:
        daemon.reload()
    checks, status, controls = health_inputs(engine)
    checks.append(trading)
    if server is not None:
        server.replace_inputs(checks, status, controls)

    def heartbeat(*, busy: bool = False) -> None:
        if busy and not daemon.ready:
            daemon.phase = "warm-up"
        if server is not None:
            server.heartbeat(busy=busy)
        notifier.pet()

    def ready() -> None:
        daemon.ready = True
        daemon.phase = "trading"
        notifier.ready()

    def phase(name: str) -> None:
        # Named while a source that is down is retried too: a stop then said "connecting".
        if not daemon.ready and daemon.phase != name:
            daemon.phase = name
            log.info("startup.phase", phase=name)

    engine.on_heartbeat = heartbeat
    engine.on_phase = phase
    engine.on_ready = ready
    ran = False
    try:
        if daemon.stopping:
            raise _StartupStopped
        daemon.phase = "connecting"
        log.info("startup.phase", phase=daemon.phase)
        ran = True  # the engine closes what it holds itself
        return await engine.run_until_done()
    finally:
        if not ran:
            _close_unstarted(engine)


def starting_status(daemon: Any) -> dict[str, Any]:
    """`GET /status` before the engine is built: the start-up phase, and the engine's keys
    (a dashboard reads the same fields throughout), unknown until a run is chosen."""
    unknown = (
        "run_id",
        "mode",
        "equity",
        "cash",
        "drawdown",
        "positions",
        "open_orders",
        "foreign_open_orders",
    )
    # bars_never_traded: the run's, restored from its checkpoint, so unknown until then.
    later = ("last_bar_time", "model_version", "trading_state", "resumed_from", "bars_never_traded")
    return {
        **dict.fromkeys(
            unknown
            + later
            + ("catching_up_to", "alerts", "next_bar_release", "market_open", "splits")
            + ("broker_outage", "feed_outage")
        ),
        "bars": 0,
        "phase": daemon.phase,
    }


class _StartingControls:
    """The controls before the engine is built: refused (409), changing nothing. A control
    taken now could not be stored (the run is not chosen yet) and would be lost."""

    def __init__(self, daemon: Any) -> None:
        self._daemon = daemon

    def _refuse(self) -> NoReturn:
        from .core.errors import ControlRefusedError

        raise ControlRefusedError(
            f"the daemon is starting ({self._daemon.phase}): controls are taken once its "
            "plugins and models are loaded; send it again then (GET /ready names the phase)"
        )

    async def pause(self) -> dict[str, Any]:
        self._refuse()

    async def resume(self) -> dict[str, Any]:
        self._refuse()

    async def flatten(self) -> dict[str, Any]:
        self._refuse()

    async def reset_halt(self) -> dict[str, Any]:
        self._refuse()

    async def adopt(self, body: Any) -> dict[str, Any]:
        self._refuse()


def trading_check(daemon: Any) -> CheckResult:
    """The daemon's `trading` readiness check. Ready means trading, as systemd's READY=1
    does: not while the daemon starts (it connects, then replays its warm-up history: the
    demo's takes a while), nor once it is stopping. Both are part of a normal run: logged at
    info, not as warnings (`expected`)."""
    from .health import CheckResult, waits

    if daemon.stopping:
        return CheckResult(False, "stopping", {"phase": "stopping"}, expected=True)
    if daemon.ready:
        engine = getattr(daemon, "engine", None)
        behind = engine.catching_up_to if engine is not None else None
        if behind is None:
            return CheckResult(True, "trading")
        # A resumed demo replays the bars its checkpoint already holds before it trades.
        data = {"phase": "catching up", "through": behind.isoformat()}
        return CheckResult(False, "not trading yet: catching up", data, expected=True)
    phase = daemon.phase
    waiting = waits()
    why = "".join(f"; waiting for the {part}: {error}" for part, error in waiting.items())
    detail: dict[str, Any] = {"phase": phase, **({"waiting_for": waiting} if waiting else {})}
    return CheckResult(False, f"not trading yet: {phase}{why}", detail, expected=True)


def _close_unstarted(engine: Engine) -> None:
    """What a built engine holds before it runs (nothing is connected yet)."""
    engine.close_held()


if __name__ == "__main__":
    sys.exit(main())
