"""The live daemon under injected faults over thousands of accelerated days: memory, queues,
files, tasks and connections must stay bounded, and every error path must be taken.

    python benchmarks/soak_faults.py [--bars 2000 --symbols 50 --rate 20]
    python benchmarks/soak_faults.py --bars 2000 --symbols 50 --rate 4 --ml-cache-size 0 \
        --closed-history 1000 --patch-spool-reader     # the recorded run (see the options)

What runs (all on loopback, all private to the run, all removed at the end, Ctrl-C included):

- in this process, the live path as `tradingd run` builds it (`build_engine(config, "live")`
  with `config/default.toml` + `config/paper.toml` + the soak's file, and the health server on
  port 0): the Yahoo feed, the Alpaca paper broker (REST and the trade-updates stream through
  alpaca-py), streaming features, the signal (`ml_ensemble` with the shipped model, its disk
  cache off; `--ml-cache-size` sets its in-memory cache; or `momentum`), paper.toml's risk
  chain (stale-data gate included; the drawdown guard cools off instead of halting), the store on
  PostgreSQL with its spool in the temporary directory, the Redis cache, response cache and
  publisher, the alerter with one webhook target, the audit log rotated at 1 MB x 2 backups;
- in a child process (`fakes` mode): the loopback Yahoo chart API over the BarBook's synthetic
  market (split look-ups answered without bars, see tests/fakes/yahoo_server.py), the loopback
  Alpaca (each open order is filled every 0.2 s at the close of the bar that placed it) and a
  webhook receiver. Commands on its standard input inject the faults;
- its own redis-server and its own PostgreSQL cluster (initdb/pg_ctl, as `postgres` when run
  as root), on free ports, in temporary directories; a watchdog shell removes all of it if
  this process dies without cleaning up.

The bars: the last `--bars` sessions of the XNYS calendar up to 2024-03-05 (the BarBook's
market ends on 2024-03-06), released at `--rate` bars per second after 200 warm-up bars (the
clock's firings coalesce when the engine is slower: it then sets the pace; `bars.catch_up`
counts bars a backlog made the engine skip trading).

Faults, in four lanes that run side by side over the whole run (each fault, then the wait for
its recovery, then `--gap-bars` bars of quiet), repeated until the last 5% of the bars:
- Yahoo: 503 for `--yahoo-down-s`, 429 for 0.6 s, answers slower than the 1-s timeout,
  truncated JSON, empty bar lists, connections closed unanswered for 0.4 s, a symbol of the
  universe unknown for a while (and `NOPE`, unknown for the whole run);
- Alpaca: 429 and 503 on order submissions (past alpaca-py's own retries, so the broker's
  retries and its "unavailable" path run), a rejected order, 429 and 504 on any request, an
  answer later than the client's timeout, the trade-updates websocket dropped and refused for
  `--stream-down-s` (polling, then the stream);
- Redis killed for `--redis-down-s` then restarted; PostgreSQL stopped (`pg_ctl -m fast`) for
  `--pg-down-s` then started: the spool grows, then drains. The instance lock is checked every
  `--lock-check-s`; a check that cannot reach the database reports the lock unproven (it no
  longer stops the daemon). By default each outage starts right after a check and ends before
  the next, as when that stopped it (`--no-pg-align-lock`: any time);
- the webhook answers 500s, then 429 with Retry-After.

Samples: every bar the queues (broker events, publisher, alerter, clock backlog, store rows,
spool); every `--sample-every` live bars RSS (/proc/self/status), Python's allocated blocks, gc
objects, asyncio tasks (by name), open descriptors and sockets (by peer: yahoo, alpaca, redis,
postgres, webhook, health, unix), threads, the size of every container reachable from the
engine's parts (dicts, lists, sets, deques, queues of tradingd objects), the audit files and
every file under the run's directory. The health server is scraped every 2 s.

Output: one JSON object on standard output (progress goes to standard error, tradingd's own
log to a file in the run directory, summarised in the JSON): bars, wall time, memory after
warm-up (`--warmup-frac` of the live bars) and at the end, tasks/descriptors/sockets after
warm-up, their maxima and at the end, queue maxima, spool maximum and final, audit files,
every error counter of the Prometheus registry, the alerts, each fault with whether it was
exercised and recovered, what is left after the stop, and `verdict`: the list of everything
that grew without a bound, every error path not taken and every fault not recovered (empty =
all bounded); `notes` lists bounds that were reached. Exit status 2 when the verdict is not
empty.

`--patch-spool-reader` applies, in this process only, the fix proposed for a defect the soak
found in daemon/storage/spool.py (see `patch_spool_reader`); without it the first replay of
more than 64 KiB of spooled batches corrupts the spool and the engine stops.

Settings of the soak that differ from production, to fit years of faults into minutes:
alpaca-py's own 429/504 retry wait 0.2 s (3 s), stream reconnects 0.5-2 s (1-30 s), the
instance lock checked every 15 s (30 s), Yahoo calls timing out after 1 s with the breaker
probing after 1 s, the alerter's queue at 200 (1,000) with fast retries; `--closed-history`
and `--ml-cache-size` shrink two bounded histories so that their bound is reached before the
measurement starts (without them they keep filling for the whole run: see the report).

Not measured here: the child's memory (the fakes keep state a vendor keeps), Redis's memory
(the response cache's entries expire after `cache.expiry_s`; reported as `redis_keys`).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import gc
import itertools
import json
import os
import platform
import resource
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
PG_BIN = Path(os.environ.get("TRADINGD_PG_BIN", "/usr/lib/postgresql/15/bin"))
LAST_DAY = "2024-03-05"  # the BarBook's market ends on 2024-03-06 (22:00 UTC)
UNKNOWN = "NOPE"  # answered 404 by the fake Yahoo for the whole run
ALPACA = "alpaca_trading"  # the broker's source label in the metrics
ALPACA_TIMEOUT_S = 2.0  # broker.alpaca.request_timeout_s of the soak

PROGRESS = sys.stderr  # tradingd's log goes to a file; progress lines to the terminal


def say(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=PROGRESS, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> dict[str, str]:
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "date": date.today().isoformat(),
        "git": rev + ("+uncommitted" if dirty else ""),
        "load_at_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# ----------------------------------------------------------------------------- the fakes


def serve_fakes(args: argparse.Namespace) -> int:
    """The loopback Yahoo, Alpaca and webhook servers and the market (a process of their own,
    as real vendors are). Prints their addresses as one JSON line, then answers one JSON line
    per command read from standard input until `quit` or the end of input."""
    from fakes import BarBook, session_close
    from fakes.alpaca_trading_server import AlpacaTradingFake
    from fakes.webhook_server import WebhookReceiver
    from fakes.yahoo_server import YahooFake

    book = BarBook(first_day=date.fromisoformat(args.first_day))
    try:
        yahoo = YahooFake(book, split_query_events_only=True)
    except TypeError:  # a fake without the option: years of bars per split look-up
        yahoo = YahooFake(book)
    alpaca = AlpacaTradingFake(cash=args.cash, rate_limit=10**9)
    hook = WebhookReceiver()
    urls = {
        "yahoo": yahoo.start_in_thread(),
        "alpaca": alpaca.start_in_thread(),
        "stream": alpaca.stream_url,
        "key": alpaca.key_id,
        "secret": alpaca.secret_key,
        "webhook": hook.start_in_thread(),
        "pid": os.getpid(),
    }
    prices: dict[tuple[str, str], float] = {}

    def bar_price(o: Any) -> float:
        """The close of the bar that placed the order (its id is run|YYYYmmddTHHMMSS|sym|leg)."""
        parts = o.client_order_id.split("|")
        day = parts[1][:8] if len(parts) >= 3 else ""
        key = (o.symbol, day)
        if key not in prices:
            try:
                t = session_close(datetime.strptime(day, "%Y%m%d").date())
            except ValueError:
                t = book.now
            if len(prices) > 50_000:
                prices.clear()
            prices[key] = round(book.value(o.symbol, t), 2)
        return prices[key]

    def market() -> None:
        for o in list(alpaca.orders.values()):
            if o.is_open and o.type == "market" and o.status != "held":
                with contextlib.suppress(ValueError, KeyError):
                    alpaca.fill(o.id, bar_price(o))

    def housekeeping() -> None:
        # What the fakes record for tests: not needed here, and unbounded over a soak.
        yahoo.requests.clear()
        alpaca.requests.clear()
        del alpaca.events[:-200]

    stop = threading.Event()

    def pump() -> None:
        n = 0
        while not stop.wait(0.2):
            with contextlib.suppress(Exception):
                alpaca.call(market)
                n += 1
                if n % 25 == 0:
                    alpaca.call(housekeeping)

    threading.Thread(target=pump, name="market", daemon=True).start()
    timers: list[threading.Timer] = []

    def later(seconds: float, fn: Callable[[], Any]) -> None:
        t = threading.Timer(seconds, fn)
        t.daemon = True
        t.start()
        timers.append(t)

    def clear_after(seconds: float) -> None:
        if seconds > 0:
            later(seconds, lambda: yahoo.call(yahoo.faults.clear))

    def alpaca_stats() -> dict[str, Any]:  # on the fake's loop: its state changes there
        return {
            "alpaca_order_failures": len(alpaca._order_failures),
            "alpaca_http_faults": len(alpaca._http_faults) + len(alpaca._delays),
            "alpaca_listening": alpaca.listening,
            "alpaca_orders": len(alpaca.orders),
            "alpaca_open_orders": sum(1 for o in alpaca.orders.values() if o.is_open),
            "alpaca_throttled": alpaca.throttled,
        }

    def alpaca_book() -> dict[str, Any]:
        return {
            "cash": alpaca.cash,
            "positions": {s: q for s, (q, _) in alpaca.positions_book.items()},
            "open_orders": sum(1 for o in alpaca.orders.values() if o.is_open),
        }

    def stats() -> dict[str, Any]:
        with hook._lock:
            received = list(hook.requests)
        states: Counter[str] = Counter()
        for r in received:
            if r.delivered and isinstance(r.body, dict):
                states[f"{r.body.get('kind')}/{r.body.get('state')}"] += 1
        return {
            "yahoo_pending": yahoo.faults.pending(),
            "yahoo_requests": yahoo.count,
            "yahoo_max_in_flight": yahoo.max_in_flight,
            "unknown": sorted(book.unknown),
            **alpaca.call(alpaca_stats),
            "webhook_pending": hook.pending_faults(),
            "webhook_requests": len(received),
            "webhook_delivered": sum(1 for r in received if r.delivered),
            "webhook_by_state": dict(states),
        }

    def handle(cmd: str, p: list[str]) -> dict[str, Any]:
        if cmd == "yahoo_down":  # 503 for p[0] seconds (0: until yahoo_clear)
            yahoo.call(yahoo.faults.down, 20_000)
            clear_after(float(p[0]))
        elif cmd == "yahoo_throttle":  # 429 for p[0] seconds (0: until yahoo_clear)
            yahoo.call(yahoo.faults.throttle, 20_000)
            clear_after(float(p[0]))
        elif cmd == "yahoo_slow":  # p[0] answers after p[1] seconds
            yahoo.call(yahoo.faults.delay_next, int(p[0]), float(p[1]))
        elif cmd == "yahoo_malformed":
            yahoo.call(yahoo.faults.malformed_next, int(p[0]))
        elif cmd == "yahoo_empty":
            yahoo.call(yahoo.faults.empty_next, int(p[0]))
        elif cmd == "yahoo_reset":
            yahoo.call(yahoo.faults.reset_next, int(p[0]))
        elif cmd == "yahoo_reset_for":  # connections closed unanswered (as yahoo_down)
            yahoo.call(yahoo.faults.reset_next, 20_000)
            clear_after(float(p[0]))
        elif cmd == "yahoo_clear":
            yahoo.call(yahoo.faults.clear)
        elif cmd == "yahoo_unknown":  # symbol p[0] unknown for p[1] seconds
            book.unknown.add(p[0])
            later(float(p[1]), lambda: book.unknown.discard(p[0]))
        elif cmd == "alpaca_order":  # the next p[1] order submissions answer status p[0]
            status = int(p[0])
            body = {"code": status * 100000, "message": f"soak: injected {status}"}
            for _ in range(int(p[1])):
                alpaca.call(alpaca.fail_next_order, status, body)
        elif cmd == "alpaca_reject":
            alpaca.call(alpaca.fail_next_order, p[0])
        elif cmd == "alpaca_throttle":
            alpaca.call(alpaca.throttle, int(p[0]))
        elif cmd == "alpaca_504":
            alpaca.call(alpaca.gateway_timeout, int(p[0]))
        elif cmd == "alpaca_slow":  # the next p[1] requests answered after p[0] seconds
            alpaca.call(alpaca.delay_next, float(p[0]), int(p[1]))
        elif cmd == "alpaca_clear":
            alpaca.call(alpaca._order_failures.clear)
            alpaca.call(alpaca._http_faults.clear)
            alpaca.call(alpaca._delays.clear)
        elif cmd == "alpaca_drop":
            alpaca.call(alpaca.drop_stream, True)
        elif cmd == "alpaca_allow":
            alpaca.call(alpaca.allow_stream)
        elif cmd == "webhook_fail":
            hook.fail_next(int(p[0]), 500)
        elif cmd == "webhook_throttle":
            hook.throttle(int(p[0]), retry_after="1")
        elif cmd == "market_off":  # open orders stay open from now on
            stop.set()
        elif cmd == "book":
            return alpaca.call(alpaca_book)  # type: ignore[no-any-return]
        elif cmd == "webhook_clear":
            with hook._lock:
                hook._faults.clear()
        elif cmd not in ("stats", "quit"):
            return {"error": f"unknown command {cmd!r}"}
        return {"ok": cmd, **stats()}

    print(json.dumps(urls), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            out = handle(words[0], words[1:])
        except Exception as exc:  # a bad command must not end the fakes
            out = {"error": f"{words[0]}: {type(exc).__name__}: {exc}"}
        print(json.dumps(out, default=str), flush=True)
        if words[0] == "quit":
            break
    stop.set()
    for t in timers:
        t.cancel()
    for server in (hook, alpaca, yahoo):
        with contextlib.suppress(Exception):
            server.stop_thread()
    return 0


# ----------------------------------------------------------------------------- services


def as_server_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as `postgres` then."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise SystemExit("running as root without runuser: cannot start a private PostgreSQL")
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise SystemExit("running as root and there is no 'postgres' user") from None
    return [runuser, "-u", "postgres", "--"]


class Postgres:
    """A private PostgreSQL cluster, stopped and started at will on one port."""

    def __init__(self, root: Path, prefix: list[str]) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.prefix = prefix
        self.port = free_port()
        self.stops = self.starts = 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 90.0) -> None:
        done = subprocess.run(
            [*self.prefix, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,  # Ctrl-C reaches this process only; it stops the server
        )
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{Path(args[0]).name} failed: {done.stdout}{done.stderr}\n{tail}")

    def init(self) -> None:
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8", "--no-instructions",
        )  # fmt: skip

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-o", opts, "-w", "-t", "60", "start")  # fmt: skip
        self.starts += 1

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60",
                  "stop")  # fmt: skip
        self.stops += 1

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop_command(self) -> str:
        return " ".join(
            shlex.quote(a)
            for a in (*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data),
                      "-m", "immediate", "stop")
        )  # fmt: skip


def redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    """A throw-away redis-server on one port, killed and started again at will."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pidfile = directory / "redis.pid"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.pidfile.write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout_s
        while not redis_pings(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.02)
        self.starts += 1

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
            self.pidfile.unlink(missing_ok=True)
            self.kills += 1

    def keys(self) -> int | None:
        """DBSIZE (None when it does not answer)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"DBSIZE\r\n")
                answer = s.recv(64)
            return int(answer[1:].split(b"\r\n")[0]) if answer.startswith(b":") else None
        except (OSError, ValueError):
            return None


class Infra:
    """The run's directories, services and child process; `close()` removes all of it (and a
    watchdog does, should this process die without closing)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="tradingd-soakf-"))
        self.pgroot = Path(tempfile.mkdtemp(prefix="tradingd-soakf-pg-"))
        self.prefix: list[str] = []
        self.pg: Postgres | None = None
        self.redis: Redis | None = None
        self.fakes: subprocess.Popen[bytes] | None = None
        self.urls: dict[str, Any] = {}
        self.watchdog: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._cmd_lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="soak-infra")

    def start(self) -> None:
        self.prefix = as_server_user()
        if self.prefix:
            shutil.chown(self.pgroot, "postgres")
        self.pg = Postgres(self.pgroot, self.prefix)
        self._start_watchdog()
        say(f"run directory {self.work}")
        self.redis = Redis(self.work / "redis")
        self.redis.start()
        self.pg.init()
        self.pg.start()
        say(f"redis on {self.redis.port}, postgres on {self.pg.port}")
        err = (self.work / "fakes.stderr").open("wb")
        self.fakes = subprocess.Popen(
            [sys.executable, __file__, "fakes", "--first-day", "2005-01-01",
             "--cash", str(self.args.capital * 100)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, bufsize=0,
            start_new_session=True, cwd=self.work,
        )  # fmt: skip
        err.close()
        (self.work / "fakes.pid").write_text(str(self.fakes.pid))
        self.urls = json.loads(self._readline(60.0))

    def _start_watchdog(self) -> None:
        assert self.pg is not None
        work, pgroot = shlex.quote(str(self.work)), shlex.quote(str(self.pgroot))
        script = (
            f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 0.5; done; "
            f"for f in {work}/fakes.pid {work}/redis/redis.pid; do "
            '[ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done; '
            f"for i in 1 2 3 4 5 6 7 8 9 10; do {self.pg.stop_command()} >/dev/null 2>&1; "
            f"rm -rf {work} {pgroot}; [ -e {pgroot} ] || break; sleep 1; done"
        )
        self.watchdog = subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _readline(self, timeout_s: float) -> str:
        assert self.fakes is not None and self.fakes.stdout is not None
        fd = self.fakes.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the fakes did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError("the fakes process exited")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def command(self, *words: object, timeout_s: float = 20.0) -> dict[str, Any]:
        """One command to the fakes and its answer (bounded)."""
        assert self.fakes is not None and self.fakes.stdin is not None
        with self._cmd_lock:
            self.fakes.stdin.write((" ".join(str(w) for w in words) + "\n").encode())
            out: dict[str, Any] = json.loads(self._readline(timeout_s))
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def close(self) -> dict[str, Any]:
        """Stop everything (each step bounded; every step is tried)."""
        final: dict[str, Any] = {}
        if self.fakes is not None:
            try:
                if self.fakes.poll() is None:
                    final = self.command("quit", timeout_s=10)
                    self.fakes.wait(timeout=15)
            except Exception as exc:
                say(f"fakes did not stop cleanly: {exc}")
            if self.fakes.poll() is None:
                self.fakes.kill()
                self.fakes.wait(timeout=10)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.kill()
        if self.pg is not None and self.pg.running():
            try:
                self.pg.stop()
            except Exception as exc:
                say(f"postgres did not stop: {exc}; stopping it immediately")
                with contextlib.suppress(Exception):
                    self.pg.stop("immediate")
        self.pool.shutdown(wait=False, cancel_futures=True)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
            shutil.rmtree(self.pgroot, ignore_errors=True)
        else:
            say(f"kept {self.work} and {self.pgroot}")
        if self.watchdog is not None and self.watchdog.poll() is None:
            self.watchdog.kill()
            self.watchdog.wait(timeout=10)
        return final


# ----------------------------------------------------------------------------- measuring


def fd_inodes() -> tuple[int, int, set[str]]:
    """(open descriptors, of which sockets, the sockets' inodes) of this process."""
    fds = socks = 0
    inodes: set[str] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir used is gone already
        fds += 1
        if link.startswith("socket:["):
            socks += 1
            inodes.add(link[8:-1])
    return fds, socks, inodes


def fd_targets() -> Counter[str]:
    """What this process's descriptors point at (sockets and pipes by kind only)."""
    out: Counter[str] = Counter()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{name}")
            out[link.split("[", 1)[0] if link.endswith("]") else link] += 1
    return out


def sockets_by_peer(inodes: set[str], ports: dict[int, str]) -> dict[str, int]:
    """This process's sockets by what they connect to (or listen as), from /proc/net."""
    out: Counter[str] = Counter()
    seen: set[str] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[9] not in inodes:
                continue
            seen.add(f[9])
            lport, rport = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)
            if f[3] == "0A":
                out[f"listen:{ports.get(lport, lport)}"] += 1
            elif rport in ports:
                out[ports[rport]] += 1
            elif lport in ports:  # accepted by a server of this process (the health server)
                out[f"in:{ports[lport]}"] += 1
            else:
                out[f"tcp:{rport}"] += 1
    try:
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) >= 7 and f[6] in inodes and f[6] not in seen:
                seen.add(f[6])
                out["unix"] += 1
    except OSError:
        pass
    if len(inodes) > len(seen):
        out["other"] += len(inodes) - len(seen)
    return dict(sorted(out.items()))


def _ours(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith(("tradingd", "tradingd_plugins"))


def container_sizes(root: Any, name: str) -> dict[str, tuple[int, int | None]]:
    """len() (and the cap a deque or queue has) of every dict, list, set, deque and asyncio
    queue held by tradingd objects reachable from `root` (depth 5)."""
    out: dict[str, tuple[int, int | None]] = {}
    seen: set[int] = set()

    def walk(obj: Any, path: str, depth: int) -> None:
        if id(obj) in seen or depth > 5:
            return
        seen.add(id(obj))
        try:
            attrs = dict(vars(obj))
        except TypeError:
            slots = getattr(type(obj), "__slots__", ())
            attrs = {s: getattr(obj, s, None) for s in slots}
        for attr, v in attrs.items():
            p = f"{path}.{attr}"
            if isinstance(v, asyncio.Queue):
                out[p] = (v.qsize(), v.maxsize or None)
            elif isinstance(v, deque):
                out[p] = (len(v), v.maxlen)
            elif isinstance(v, dict | list | set | tuple):
                if not isinstance(v, tuple):  # a MemoryCache's entries: max_entries
                    out[p] = (
                        len(v),
                        getattr(obj, "max_entries", None) if attr == "_data" else None,
                    )
                if isinstance(v, list | tuple) and len(v) <= 16:
                    for i, item in enumerate(v):
                        items = item if isinstance(item, tuple) else (item,)
                        for j, x in enumerate(items):
                            if _ours(x):
                                walk(
                                    x, f"{p}[{i}]" + (f"[{j}]" if len(items) > 1 else ""), depth + 1
                                )
            elif _ours(v):
                walk(v, p, depth + 1)

    walk(root, name, 0)
    return out


def registry_counters() -> dict[str, float]:
    """Every counter of tradingd's Prometheus registry: 'name{label=value,...}' -> value."""
    from tradingd import metrics

    out: dict[str, float] = {}
    for family in metrics.REGISTRY.collect():
        if family.type != "counter":
            continue
        for s in family.samples:
            if not s.name.endswith("_total"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name[:-6]}{{{labels}}}" if labels else s.name[:-6]] = s.value
    return out


def source_errors() -> dict[tuple[str, str], float]:
    from tradingd import metrics

    out: dict[tuple[str, str], float] = {}
    for family in metrics.REGISTRY.collect():
        if family.name != "tradingd_source_errors":
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                out[(s.labels["source"], s.labels["kind"])] = s.value
    return out


def metric_series() -> int:
    from tradingd import metrics

    return sum(len(f.samples) for f in metrics.REGISTRY.collect())


def dir_files(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, int]:
    """Every file under `root` (relative path -> bytes)."""
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for n in filenames:
            with contextlib.suppress(OSError):
                out[str((d / n).relative_to(root))] = (d / n).stat().st_size
    return out


def slope_per_1000(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (bar, value), per 1,000 bars."""
    if len(points) < 3:
        return float("nan")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return float("nan")
    return 1000 * sum((x - mx) * (y - my) for x, y in points) / sxx


@dataclasses.dataclass
class Stats:
    """What the step wrapper and the sampler record."""

    live: bool = False
    warmup_bars: int = 0
    live_steps: int = 0
    catch_up: int = 0
    missing: int = 0  # symbol-bars without a close, besides the always-unknown symbol
    last_step_at: float = 0.0
    polls: int = 0
    queue_max: dict[str, int] = dataclasses.field(default_factory=dict)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Snapshots kept small (this process's RSS is measured): the one the comparison starts
    # from (the first sample after the warm-up outside an outage, as in `summarise`), the
    # latest, and each container's largest size.
    containers_warm: dict[str, tuple[int, int | None]] | None = None
    containers_last: dict[str, tuple[int, int | None]] = dataclasses.field(default_factory=dict)
    containers_max: dict[str, int] = dataclasses.field(default_factory=dict)
    tasks_warm: Counter[str] | None = None
    tasks_last: Counter[str] = dataclasses.field(default_factory=Counter)
    alert_counts: Counter[str] = dataclasses.field(default_factory=Counter)
    lock_checks: list[tuple[float, bool, bool]] = dataclasses.field(default_factory=list)
    scrapes: Counter[str] = dataclasses.field(default_factory=Counter)
    metrics_bytes: list[int] = dataclasses.field(default_factory=list)
    last_files: dict[str, int] = dataclasses.field(default_factory=dict)
    market_off: bool = False

    def high(self, name: str, value: int) -> None:
        if value > self.queue_max.get(name, -1):
            self.queue_max[name] = value


def task_name(t: asyncio.Task[Any]) -> str:
    name = t.get_name()
    if name.startswith("Task-"):
        coro = t.get_coro()
        name = getattr(coro, "__qualname__", None) or type(coro).__name__
    return name


# ----------------------------------------------------------------------------- the soak


def patch_spool_reader() -> str:
    """`--patch-spool-reader`: the fix proposed for daemon/storage/spool.py, applied in this
    process only. `iter_records` read the spool through `os.dup(fd)`, which shares the file
    offset with the descriptor `Spool.append` writes at: a replay that read a batch (64 KiB of
    read-ahead) moved the offset back into the pending batches, and the next batch spooled
    overwrote them (SpoolCorrupt at the next read, the rows under it lost). The fix reads
    through a descriptor of its own."""
    import inspect

    from tradingd.storage import spool

    old = 'with os.fdopen(os.dup(fd), "rb", buffering=1 << 16) as f:'
    new = 'with open(f"/proc/self/fd/{fd}", "rb", buffering=1 << 16) as f:'
    code = inspect.getsource(spool.iter_records)
    if old not in code:
        return "spool.iter_records: not patched (it no longer reads through a dup)"
    exec(compile(code.replace(old, new), spool.__file__, "exec"), spool.__dict__)
    return "spool.iter_records reads through its own file description (proposed fix)"


def config_text(args: argparse.Namespace, infra: Infra, start: str, symbols: list[str]) -> str:
    assert infra.pg is not None and infra.redis is not None
    u = infra.urls
    ml_params = 'cache_dir = ""' + (
        f", cache_size = {args.ml_cache_size}" if args.ml_cache_size >= 0 else ""
    )
    signal_cfg = (
        f'[[signals]]\nname = "ml_ensemble"\nparams = {{ {ml_params} }}'
        if args.signal == "ml_ensemble"
        else '[[signals]]\nname = "momentum"\nparams = { lookback = 20 }'
    )
    return f"""
[run]
name = "soakf"
start = "{start}"
end = "{LAST_DAY}"
initial_capital = {args.capital}
output_dir = "{infra.work / "runs"}"
[data]
symbols = {json.dumps(symbols)}
[feed]
source = "yahoo"
[feed.yahoo]
base_url = "{u["yahoo"]}"
[feed.yahoo.call]
timeout_s = 1.0
max_attempts = 3
backoff_base_s = 0.02
backoff_max_s = 0.2
breaker_failure_threshold = 5
breaker_reset_timeout_s = 1.0
max_concurrency = {args.concurrency}
[broker]
kind = "alpaca"
[broker.alpaca]
base_url = "{u["alpaca"]}"
stream_url = "{u["stream"]}"
poll_interval_s = 1.0
request_timeout_s = {ALPACA_TIMEOUT_S}
call_timeout_s = 15.0
max_attempts = 3
rate_limit_per_minute = 0
{signal_cfg}
[sizing]
name = "equal_weight"
params = {{ max_positions = 10, gross_exposure = 0.9 }}
# paper.toml's chain, the drawdown guard cooling off instead of halting: the shipped model
# loses on the BarBook's sine-wave prices (-22% in 400 bars without faults), and a halted
# book would send no more orders for the broker's faults to meet.
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.05 }}
[[risk]]
name = "max_open_positions"
params = {{ max_open_positions = 10 }}
[[risk]]
name = "max_gross_exposure"
params = {{ max_gross_exposure = 1.0 }}
[[risk]]
name = "drawdown_guard"
params = {{ max_drawdown_pct = 0.20, daily_loss_limit_pct = 0.05, recovery = "cooloff" }}
[[risk]]
name = "stale_data"
params = {{ max_missing_bars = 2, max_unchanged_bars = 5, min_fresh_share = 0.5 }}
[live]
bars_per_second = {args.rate}
warmup_bars = 200
[storage]
url = "{infra.pg.url}"
spool_dir = "{infra.work / "spool"}"
spool_max_bytes = 268435456
start_retry_s = 30.0
[cache]
url = "{infra.redis.url}"
[health]
port = 0
[log]
level = "{args.log_level}"
format = "json"
audit_dir = "{infra.work / "audit"}"
audit_max_bytes = {args.audit_max_bytes}
audit_backups = {args.audit_backups}
[alerts]
queue_size = {args.alert_queue}
rate_per_minute = 120.0
timeout_s = 2.0
backoff_s = 0.2
backoff_max_s = 2.0
[[alerts.targets]]
url = "{u["webhook"]}/services/soak"
format = "json"
"""


def window(bars: int) -> str:
    """The first session of the last `bars` XNYS sessions up to LAST_DAY."""
    from tradingd.clock.calendar import ExchangeCalendar

    cal = ExchangeCalendar("XNYS", "1d")
    lo, _ = cal.coverage
    labels = cal.bars_between(lo, datetime.fromisoformat(LAST_DAY).replace(tzinfo=UTC))
    if len(labels) < bars + 250:
        raise SystemExit(f"--bars {bars}: the calendar has {len(labels) - 250} sessions to spare")
    return labels[-bars].date().isoformat()


async def wait_until(pred: Callable[[], object], timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if pred():
                return True
        except Exception:  # a status read that fails is "not yet"
            pass
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step_s)


class FaultLanes:
    """The fault schedule: lanes of faults, each injected, then waited out (bounded)."""

    def __init__(self, engine: Any, infra: Infra, stats: Stats, args: argparse.Namespace) -> None:
        self.e = engine
        self.infra = infra
        self.stats = stats
        self.args = args
        self.log: list[dict[str, Any]] = []
        self.lock_checked = asyncio.Event()
        self.stopping = False
        self.end_margin = max(40, int(0.05 * args.bars))
        self.outage: dict[str, bool] = {"redis": False, "postgres": False, "stream": False}

    # plumbing -----------------------------------------------------------------------------
    async def blocking(self, fn: Callable[..., Any], *a: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.infra.pool, functools.partial(fn, *a))

    async def cmd(self, *words: object) -> dict[str, Any]:
        return await self.blocking(self.infra.command, *words)  # type: ignore[no-any-return]

    async def child_until(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if pred(await self.cmd("stats")):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.25)

    def done(self) -> bool:
        clock = self.e.clock
        remaining = len(getattr(clock, "_calendar", ())) - getattr(clock, "_next", 0)
        return self.stopping or remaining < self.end_margin

    async def gap(self) -> None:
        target = self.stats.live_steps + self.args.gap_bars
        await wait_until(
            lambda: self.stats.live_steps >= target or self.done(),
            timeout_s=30 + 5 * self.args.gap_bars / self.args.rate,
            step_s=0.1,
        )

    async def run_lane(self, name: str, faults: list[tuple[str, Callable[[], Awaitable[Any]]]]):
        i = 0
        while not self.done():
            fname, fn = faults[i % len(faults)]
            i += 1
            t0, bar0, err0 = time.monotonic(), self.stats.live_steps, source_errors()
            rec: dict[str, Any] = {"lane": name, "fault": fname, "bar": bar0}
            try:
                rec.update(await asyncio.wait_for(fn(), timeout=self.args.fault_timeout_s))
            except TimeoutError:
                rec["error"] = f"not done within {self.args.fault_timeout_s} s"
            except Exception as exc:
                rec["error"] = f"{type(exc).__name__}: {exc}"
            err1 = source_errors()
            rec["errors"] = {
                f"{s}/{k}": int(v - err0.get((s, k), 0))
                for (s, k), v in err1.items()
                if v > err0.get((s, k), 0)
            }
            rec["seconds"] = round(time.monotonic() - t0, 2)
            self.log.append(rec)
            flag = "ok" if rec.get("exercised") and rec.get("recovered") else "CHECK"
            say(f"fault {fname} at bar {bar0}: {flag} {json.dumps(rec, default=str)[:300]}")
            await self.gap()

    # yahoo ----------------------------------------------------------------------------------
    def _feed_ok(self, since: float) -> bool:
        st = self.e.feed.status()
        return self.stats.last_step_at > since and st.get("circuit") == "closed"

    async def _yahoo(
        self, words: tuple[object, ...], kinds: tuple[str, ...], hold_s: float = 0.0
    ) -> dict[str, Any]:
        err0, miss0, unav0 = source_errors(), self.stats.missing, self.e.bars_unavailable
        if hold_s:
            # On for hold_s and until 10 requests met it (the engine may be busy elsewhere,
            # e.g. waiting on the broker, and send none for a while), then off.
            n0 = (await self.cmd("stats"))["yahoo_requests"]
            await self.cmd(*words, 0)
            await asyncio.sleep(hold_s)
            await self.child_until(lambda s: s["yahoo_requests"] >= n0 + 10, 20)
            await self.cmd("yahoo_clear")
        else:
            await self.cmd(*words)
        consumed = await self.child_until(lambda s: s["yahoo_pending"] == 0, 30)
        if not consumed:
            await self.cmd("yahoo_clear")
        t_end = time.monotonic()
        recovered = await wait_until(lambda: self._feed_ok(t_end), 60)
        errs = source_errors()
        hit = {k: int(errs.get(("yahoo", k), 0) - err0.get(("yahoo", k), 0)) for k in kinds}
        out: dict[str, Any] = {
            "exercised": consumed and all(v > 0 for v in hit.values()),
            "recovered": recovered,
            "recovery_s": round(time.monotonic() - t_end, 2),
            "bars_unavailable": self.e.bars_unavailable - unav0,
            "symbol_bars_missing": self.stats.missing - miss0,
        }
        if not kinds:  # empty answers are not errors: bars go missing instead
            out["exercised"] = consumed and (out["bars_unavailable"] or out["symbol_bars_missing"])
        return out

    async def yahoo_5xx(self) -> dict[str, Any]:
        a = self.args
        return await self._yahoo(("yahoo_down",), ("http_5xx",), a.yahoo_down_s)

    async def yahoo_429(self) -> dict[str, Any]:
        return await self._yahoo(("yahoo_throttle",), ("http_429",), 0.6)

    async def yahoo_timeout(self) -> dict[str, Any]:
        return await self._yahoo(("yahoo_slow", 6, 1.6), ("timeout",))

    async def yahoo_malformed(self) -> dict[str, Any]:
        return await self._yahoo(("yahoo_malformed", 12), ("malformed",))

    async def yahoo_empty(self) -> dict[str, Any]:
        return await self._yahoo(("yahoo_empty", 2 * len(self.e.feed.symbols) + 10), ())

    async def yahoo_reset(self) -> dict[str, Any]:
        # Every connection closed unanswered for 0.4 s: aiohttp resends a request once when a
        # kept-alive connection is closed under it, so a few resets alone go unnoticed.
        return await self._yahoo(("yahoo_reset_for",), ("connection",), 0.4)

    async def yahoo_unknown(self) -> dict[str, Any]:
        sym = self.e.feed.symbols[3]
        hold = self.args.unknown_s
        await self.cmd("yahoo_unknown", sym, hold)
        t0 = time.monotonic()
        failing = await wait_until(
            lambda: self.e.feed._failed.get(sym, {}).get("kind") == "not_found", hold + 5
        )
        await asyncio.sleep(max(0.0, t0 + hold - time.monotonic()) + 0.1)
        t_end = time.monotonic()
        recovered = await wait_until(lambda: sym not in self.e.feed._failed, 60)
        return {
            "exercised": failing,
            "recovered": recovered,
            "recovery_s": round(time.monotonic() - t_end, 2),
            "symbol": sym,
        }

    # alpaca ---------------------------------------------------------------------------------
    def _broker_ok(self, orders_before: int) -> bool:
        return self.e._orders > orders_before and bool(self.e.broker.status()["connected"])

    async def _alpaca(
        self, words: tuple[object, ...], check: Callable[[], bool], what: str
    ) -> dict[str, Any]:
        fail0 = self.e.broker_failures
        await self.cmd(*words)
        consumed = await self.child_until(
            lambda s: s["alpaca_order_failures"] == 0 and s["alpaca_http_faults"] == 0, 60
        )
        if not consumed:
            await self.cmd("alpaca_clear")
        t_end, orders = time.monotonic(), self.e._orders
        recovered = await wait_until(lambda: self._broker_ok(orders), 60)
        return {
            "exercised": consumed and check(),
            "recovered": recovered,
            "recovery_s": round(time.monotonic() - t_end, 2),
            "broker_failures": self.e.broker_failures - fail0,
            "shows_as": what,
        }

    def _grew(self, key: tuple[str, str]) -> Callable[[], bool]:
        before = source_errors().get(key, 0)
        return lambda: source_errors().get(key, 0) > before

    async def alpaca_order_429(self) -> dict[str, Any]:
        # alpaca-py retries a 429 itself (4 attempts of each request, 4 orders at once): 20
        # in a row reach the broker's own retries.
        return await self._alpaca(
            ("alpaca_order", 429, 20), self._grew((ALPACA, "http_429")), f"{ALPACA}/http_429"
        )

    async def alpaca_order_5xx(self) -> dict[str, Any]:
        # 503 is not retried by alpaca-py; 3 in a row are every attempt of one submission (the
        # bar's orders are then "unavailable"); orders go 4 at a time, hence 12.
        return await self._alpaca(
            ("alpaca_order", 503, 12), self._grew((ALPACA, "http_5xx")), f"{ALPACA}/http_5xx"
        )

    async def alpaca_reject(self) -> dict[str, Any]:
        before = self.e.rejections.total
        return await self._alpaca(
            ("alpaca_reject", "insufficient_buying_power"),
            lambda: self.e.rejections.total > before,
            "a rejected order",
        )

    async def alpaca_throttle(self) -> dict[str, Any]:
        # Any request (orders, polls): alpaca-py makes 4 attempts of each, 4 run at once.
        return await self._alpaca(
            ("alpaca_throttle", 20), self._grew((ALPACA, "http_429")), f"{ALPACA}/http_429"
        )

    async def alpaca_504(self) -> dict[str, Any]:
        return await self._alpaca(
            ("alpaca_504", 20), self._grew((ALPACA, "http_5xx")), f"{ALPACA}/http_5xx"
        )

    async def alpaca_timeout(self) -> dict[str, Any]:
        # The next request is carried out, then answered after the client's timeout: for an
        # order, the retry meets "client_order_id must be unique" and adopts the order.
        return await self._alpaca(
            ("alpaca_slow", ALPACA_TIMEOUT_S + 1.0, 1),
            self._grew((ALPACA, "timeout")),
            f"{ALPACA}/timeout",
        )

    async def alpaca_stream(self) -> dict[str, Any]:
        b = self.e.broker
        polls0 = self.stats.polls
        self.outage["stream"] = True
        try:
            await self.cmd("alpaca_drop")
            down = await wait_until(lambda: b.status()["stream"] == "down", 15)
            await asyncio.sleep(self.args.stream_down_s)
            polls = self.stats.polls - polls0
        finally:
            await self.cmd("alpaca_allow")
            self.outage["stream"] = False
        t_end = time.monotonic()
        up = await wait_until(lambda: b.status()["stream"] == "up", 90)
        return {
            "exercised": down,
            "recovered": up,
            "recovery_s": round(time.monotonic() - t_end, 2),
            "polls_while_down": polls,
        }

    # services ---------------------------------------------------------------------------------
    def _redis_up(self) -> bool:
        e = self.e
        responses = e.feed.source.cache.primary
        return bool(e.cache.available and e.publisher.available and responses.available)

    async def redis_outage(self) -> dict[str, Any]:
        r = self.infra.redis
        assert r is not None
        self.outage["redis"] = True
        t0 = time.monotonic()
        try:
            await self.blocking(r.kill)
            down = await wait_until(lambda: not self._redis_up(), 15)
            await asyncio.sleep(max(0.0, t0 + self.args.redis_down_s - time.monotonic()))
        finally:
            if r.proc is None:
                await self.blocking(r.start)
            self.outage["redis"] = False
        t_end = time.monotonic()
        up = await wait_until(self._redis_up, 120)
        return {
            "exercised": down,
            "recovered": up,
            "recovery_s": round(time.monotonic() - t_end, 2),
            "down_s": round(t_end - t0, 2),
        }

    async def pg_outage(self) -> dict[str, Any]:
        pg, store = self.infra.pg, self.e.store
        assert pg is not None
        interval = float(self.e.lock.check_interval_s)
        aligned = True
        if self.args.pg_align_lock:
            # The instance lock is checked every check_interval_s; a check that cannot reach
            # the database reports it unproven (instance_lock.unproven). The outage starts
            # right after a check and ends before the next one (as when such a check stopped
            # the daemon); --no-pg-align-lock puts it anywhere.
            self.lock_checked.clear()
            aligned = await wait_until(self.lock_checked.is_set, 2 * interval + 10)
        replayed0, outages0 = store.replayed_batches, store.outages
        self.outage["postgres"] = True
        t0 = time.monotonic()
        since_check = t0 - self.stats.lock_checks[-1][0] if self.stats.lock_checks else None
        start_s = None
        try:
            await self.blocking(pg.stop)
            stop_s = time.monotonic() - t0
            degraded = await wait_until(lambda: store.status()["state"] != "ok", 15)
            await asyncio.sleep(max(0.0, t0 + self.args.pg_down_s - time.monotonic()))
        finally:
            if not pg.running():
                t1 = time.monotonic()
                await self.blocking(pg.start)
                start_s = time.monotonic() - t1
            self.outage["postgres"] = False
        t_end = time.monotonic()
        during = [ok for t, ok, _ in self.stats.lock_checks if t0 <= t <= t_end]
        drained = await wait_until(
            lambda: (st := store.status())["spooled_batches"] == 0 and st["state"] == "ok", 180
        )
        spool_peak = self.stats.queue_max.get("spool_batches_this_outage", 0)
        self.stats.queue_max["spool_batches_this_outage"] = 0
        return {
            "exercised": degraded and store.outages > outages0,
            "recovered": drained,
            "recovery_s": round(time.monotonic() - t_end, 2),
            "down_s": round(t_end - t0, 2),
            "aligned_after_lock_check": aligned,
            "since_last_lock_check_s": round(since_check, 2) if since_check is not None else None,
            "pg_ctl_stop_s": round(stop_s, 2),
            "pg_ctl_start_s": round(start_s, 2) if start_s is not None else None,
            "lock_checks_during_outage": during,
            "spooled_batches_peak": spool_peak,
            "replayed_batches": store.replayed_batches - replayed0,
        }

    # webhook ----------------------------------------------------------------------------------
    async def _webhook(self, words: tuple[object, ...]) -> dict[str, Any]:
        a = self.e.alerter
        retries0 = sum(t.retries for t in a._targets)
        await self.cmd(*words)
        consumed = await self.child_until(lambda s: s["webhook_pending"] == 0, 60)
        if not consumed:
            await self.cmd("webhook_clear")
        t_end = time.monotonic()
        recovered = await wait_until(lambda: a.status()["ok"], 60)
        return {
            "exercised": consumed and sum(t.retries for t in a._targets) > retries0,
            "recovered": recovered,
            "recovery_s": round(time.monotonic() - t_end, 2),
        }

    async def webhook_5xx(self) -> dict[str, Any]:
        return await self._webhook(("webhook_fail", 3))

    async def webhook_429(self) -> dict[str, Any]:
        return await self._webhook(("webhook_throttle", 2))

    def lanes(self) -> dict[str, list[tuple[str, Callable[[], Awaitable[Any]]]]]:
        return {
            "yahoo": [
                ("yahoo_5xx", self.yahoo_5xx),
                ("yahoo_429", self.yahoo_429),
                ("yahoo_timeout", self.yahoo_timeout),
                ("yahoo_malformed", self.yahoo_malformed),
                ("yahoo_empty_bars", self.yahoo_empty),
                ("yahoo_reset", self.yahoo_reset),
                ("yahoo_unknown_symbol", self.yahoo_unknown),
            ],
            "alpaca": [
                ("alpaca_order_429", self.alpaca_order_429),
                ("alpaca_stream_drop", self.alpaca_stream),
                ("alpaca_order_5xx", self.alpaca_order_5xx),
                ("alpaca_order_rejected", self.alpaca_reject),
                ("alpaca_429_any", self.alpaca_throttle),
                ("alpaca_504_any", self.alpaca_504),
                ("alpaca_timeout", self.alpaca_timeout),
            ],
            "services": [
                ("redis_outage", self.redis_outage),
                ("postgres_outage", self.pg_outage),
            ],
            "webhook": [
                ("webhook_5xx", self.webhook_5xx),
                ("webhook_429", self.webhook_429),
            ],
        }


async def soak(args: argparse.Namespace, infra: Infra, out: dict[str, Any]) -> None:
    import aiohttp
    import numpy as np

    from tradingd.app import build_engine, health_inputs
    from tradingd.config import load_config
    from tradingd.health.server import HealthServer
    from tradingd.logs import configure_logging

    start = window(args.bars)
    symbols = [f"S{i:03d}" for i in range(args.symbols)] + [UNKNOWN]
    cfg = infra.work / "soak.toml"
    cfg.write_text(config_text(args, infra, start, symbols))
    log_path = infra.work / "tradingd.log"
    log_file = log_path.open("w")
    real_stderr = sys.stderr
    sys.stderr = log_file  # tradingd's log (JSON lines) into the run directory
    configure_logging(args.log_level, "json")
    os.environ["APCA_API_KEY_ID"] = infra.urls["key"]
    os.environ["APCA_API_SECRET_KEY"] = infra.urls["secret"]
    os.environ.pop("TRADINGD_HEALTH_TOKEN", None)
    assert infra.pg is not None and infra.redis is not None
    ports = {
        int(infra.urls["yahoo"].rsplit(":", 1)[1]): "yahoo",
        int(infra.urls["alpaca"].rsplit(":", 1)[1]): "alpaca",
        int(infra.urls["webhook"].rsplit(":", 1)[1]): "webhook",
        infra.redis.port: "redis",
        infra.pg.port: "postgres",
    }
    stats = Stats()
    mine: set[asyncio.Task[Any]] = set()
    engine: Any = None
    server: Any = None
    run_task: asyncio.Task[Any] | None = None
    session: aiohttp.ClientSession | None = None
    lanes: FaultLanes | None = None
    every = warm_at = n_calendar = 0
    server_tasks: Counter[str] = Counter()
    fd0, sock0, inodes0 = fd_inodes()
    targets0 = fd_targets()
    out["start"] = {
        "tasks": len(asyncio.all_tasks()) - 1,
        "fds": fd0,
        "sockets": sock0,
        "sockets_by_peer": sockets_by_peer(inodes0, ports),
        "threads": threading.active_count(),
        "rss_mb": round(rss_mb(), 1),
    }
    t_wall = time.perf_counter()
    if args.patch_spool_reader:
        out["patched"] = [patch_spool_reader()]
    try:
        config = load_config(
            [ROOT / "config/default.toml", ROOT / "config/paper.toml", cfg], env={}
        )
        engine = build_engine(config, "live")
        broker = engine.broker
        # Faster stream reconnects than production's (1..30 s): the soak drops the stream often.
        broker._config = dataclasses.replace(
            broker._config,
            stream_reconnect_min_s=0.5,
            stream_reconnect_max_s=2.0,
            closed_history=args.closed_history or broker._config.closed_history,
        )
        make_client = broker._make_client

        def client() -> Any:  # alpaca-py sleeps 3 s before its own 429/504 retries
            c = make_client()
            c._retry_wait = args.sdk_retry_wait_s
            return c

        broker._make_client = client
        poll = broker.poll

        async def counted_poll(*args: Any, **kwargs: Any) -> None:
            # The broker's arguments passed on (only_open=...): a poll that took none raised
            # TypeError at every call, and the soak's polling fallback never ran.
            stats.polls += 1
            await poll(*args, **kwargs)

        broker.poll = counted_poll
        engine.lock.check_interval_s = args.lock_check_s
        lock_start = engine.lock.start
        lanes = FaultLanes(engine, infra, stats, args)

        async def observed_lock_start() -> None:
            await lock_start()
            lock = engine.lock.lock
            check = lock.check

            async def observed() -> bool:
                ok = await check()
                stats.lock_checks.append((time.monotonic(), ok, lock.held))
                assert lanes is not None
                lanes.lock_checked.set()
                return bool(ok)

            lock.check = observed

        engine.lock.start = observed_lock_start
        alerter = engine.alerter
        emit = alerter._emit

        def counted_emit(kind: str, key: str, state: str, *a: Any, **kw: Any) -> Any:
            stats.alert_counts[f"{kind}/{state}"] += 1
            return emit(kind, key, state, *a, **kw)

        alerter._emit = counted_emit
        checks, status, controls = health_inputs(engine)
        server = HealthServer(config.health, checks, status, controls, None)
        live_event = asyncio.Event()
        n_calendar = len(engine.clock._calendar)
        warm_at = max(1, int(args.warmup_frac * n_calendar))
        every = args.sample_every or max(5, n_calendar // 100)

        def heartbeat(*, busy: bool = False) -> None:
            server.heartbeat(busy=busy)

        def ready() -> None:
            stats.live = True
            live_event.set()
            say(f"warmed up ({stats.warmup_bars} bars); {n_calendar} live bars to go")

        engine.on_heartbeat = heartbeat
        engine.on_ready = ready
        store, publisher, feed = engine.store, engine.publisher, engine.feed
        roots = {
            "engine": engine,
            "yahoo_client": feed.source,
            "response_cache": feed.source.cache,
        }

        def sample() -> None:
            fds, socks, inodes = fd_inodes()
            tasks = [t for t in asyncio.all_tasks() if t not in mine and t is not run_task]
            names = Counter(task_name(t) for t in tasks)
            sizes: dict[str, tuple[int, int | None]] = {}
            for name, obj in roots.items():
                sizes.update(container_sizes(obj, name))
            audit = (
                {
                    k: v
                    for k, v in dir_files(infra.work / "audit").items()
                    if ".jsonl" in k and not k.endswith(".live")
                }
                if (infra.work / "audit").exists()
                else {}
            )
            files = dir_files(infra.work, skip=(infra.work / "redis",))
            spool = store.status()
            s = {
                "bar": stats.live_steps,
                "t": round(time.perf_counter() - t_wall, 1),
                "rss_mb": round(rss_mb(), 1),
                "py_blocks": sys.getallocatedblocks(),
                "gc_objects": len(gc.get_objects()),
                "tasks": len(tasks),
                "fds": fds,
                "sockets": socks,
                "by_peer": sockets_by_peer(inodes, ports),
                "threads": threading.active_count(),
                "audit_files": len(audit),
                "audit_bytes": sum(audit.values()),
                "files": len(files),
                "files_bytes": sum(files.values()),
                "spool_batches": spool["spooled_batches"],
                "spool_bytes": spool["spooled_bytes"],
                "backlog": len(engine.clock._pending),
                "outage": sorted(k for k, v in lanes.outage.items() if v) if lanes else [],
                "lock_held": bool(engine.lock.lock is not None and engine.lock.lock.held),
            }
            stats.samples.append(s)
            if stats.containers_warm is None and s["bar"] >= warm_at and not s["outage"]:
                stats.containers_warm, stats.tasks_warm = sizes, names
            if not stats.market_off:  # afterwards the last orders stay open on purpose
                stats.containers_last, stats.tasks_last = sizes, names
            for k, (n, _) in sizes.items():
                stats.containers_max[k] = max(stats.containers_max.get(k, 0), n)
            stats.last_files = files
            say(
                f"bar {s['bar']}/{n_calendar} t={s['t']}s rss={s['rss_mb']} MB "
                f"tasks={s['tasks']} fds={fds} sockets={socks} backlog={s['backlog']} "
                f"spool={s['spool_batches']} outage={','.join(s['outage']) or '-'}"
            )

        step = engine.step

        async def measured_step(bar: Any, trade: bool | None = None) -> None:
            await step(bar, trade)
            if not stats.live:
                stats.warmup_bars += 1
                return
            stats.live_steps += 1
            stats.last_step_at = time.monotonic()
            if trade is False:
                stats.catch_up += 1
            stats.missing += max(0, int(np.isnan(bar.close).sum()) - 1)
            stats.high("broker_events", broker._queue.qsize())
            stats.high("publisher", len(publisher._queue))
            stats.high("alerter", max((len(t.queue) for t in alerter._targets), default=0))
            stats.high("clock_backlog", len(engine.clock._pending))
            stats.high("store_rows", sum(len(b) for b in store._buffers.values()))
            sp = store._spool
            if sp is not None:
                stats.high("spool_batches", sp.pending_batches)
                stats.high("spool_bytes", sp.pending_bytes)
                stats.high("spool_batches_this_outage", sp.pending_batches)
            if stats.live_steps % every == 0 or stats.live_steps == warm_at:
                sample()

        engine.step = measured_step

        async def scrape() -> None:
            nonlocal session
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
            await live_event.wait()
            while True:
                for path in ("/health", "/ready", "/metrics", "/status"):
                    try:
                        async with session.get(f"{server.url}{path}") as r:
                            body = await r.read()
                            stats.scrapes[f"{path} {r.status}"] += 1
                            if path == "/metrics":
                                stats.metrics_bytes.append(len(body))
                    except Exception as exc:
                        stats.scrapes[f"{path} {type(exc).__name__}"] += 1
                await asyncio.sleep(2.0)

        async def market_off_at_end() -> None:
            # The market stops filling a few bars before the last one is released: what the
            # engine booked by its stop can then be compared with the broker's book (no fill
            # after the stop; orders of the last bars stay open on both sides).
            clock = engine.clock
            await live_event.wait()
            await wait_until(
                lambda: len(clock._calendar) - clock._next + len(clock._pending) <= 5, 1e6, 0.05
            )
            stats.market_off = True
            if lanes is not None:
                await lanes.cmd("market_off")

        async def lanes_when_live() -> None:
            await live_event.wait()
            target = max(5, int(0.02 * n_calendar))
            await wait_until(lambda: stats.live_steps >= target, 120, 0.1)
            assert lanes is not None
            if args.no_faults:
                say("no faults (--no-faults)")
                return
            say("faults start")
            await asyncio.gather(
                *(lanes.run_lane(name, faults) for name, faults in lanes.lanes().items())
            )
            say("faults done")

        await server.start()
        server_tasks = Counter(task_name(t) for t in asyncio.all_tasks() if not t.done())
        server_tasks -= Counter([task_name(asyncio.current_task())])  # type: ignore[arg-type]
        server_tasks["RequestHandler.start"] = 1  # the scraper's keep-alive connection
        ports[server.port] = "health"
        say(f"engine built: {len(symbols)} symbols, {n_calendar} bars from {start}, "
            f"{args.rate} bars/s, signal {args.signal}; health on {server.port}")  # fmt: skip
        run_task = asyncio.create_task(engine.run_until_done(), name="soak-engine")
        for coro, name in (
            (scrape(), "soak-scrape"),
            (lanes_when_live(), "soak-lanes"),
            (market_off_at_end(), "soak-market-off"),
        ):
            mine.add(asyncio.create_task(coro, name=name))
        budget = args.max_wall_s or (n_calendar / args.rate * 4 + 900)
        done, _ = await asyncio.wait({run_task}, timeout=budget)
        if not done:
            say(f"the run took longer than {budget:.0f} s: stopping it")
            out["stopped_by_budget"] = True
            engine.request_stop()
            await asyncio.wait({run_task}, timeout=120)
        out["wall_s"] = round(time.perf_counter() - t_wall, 1)
        with contextlib.suppress(Exception):
            out["broker_book"] = await lanes.cmd("book")
        if run_task.done() and not run_task.cancelled() and run_task.exception() is not None:
            exc = run_task.exception()
            out["engine_error"] = f"{type(exc).__name__}: {exc}"[:1500]
            say(f"the engine ended with {out['engine_error'][:300]}")
        else:
            result = run_task.result()
            out["result"] = {
                "orders": result.orders,
                "fills": result.fills,
                "bars_traded": result.bars,
                "stopped_early": result.stopped_early,
                "rejections": dict(result.rejections),
                "verdicts_by_rule": dict(result.verdicts_by_rule),
            }
    finally:
        if lanes is not None:
            lanes.stopping = True
        for t in mine:
            t.cancel()
        if mine:
            await asyncio.wait(mine, timeout=30)
        if run_task is not None and not run_task.done():
            engine.request_stop()
            await asyncio.wait({run_task}, timeout=120)
            if not run_task.done():
                run_task.cancel()
                await asyncio.wait({run_task}, timeout=30)
        if lanes is not None:
            # Whatever a cancelled fault left down comes back (the report still counts it).
            r, pg = infra.redis, infra.pg
            with contextlib.suppress(Exception):
                if r is not None and r.proc is None:
                    await lanes.blocking(r.start)
                if pg is not None and not pg.running():
                    await lanes.blocking(pg.start)
        if engine is not None:
            await asyncio.sleep(0.2)  # callbacks scheduled by the stop run
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            left = [t for t in left if t not in mine and t is not run_task]
            # The health server (stopped next) and its keep-alive connection to the scraper.
            names_after = Counter(task_name(t) for t in left) - Counter(server_tasks)
            out["after_stop"] = {"engine_tasks_left": dict(names_after)}
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.stop(), 30)
        if session is not None:
            await session.close()
        await asyncio.sleep(0.25)  # aiohttp closes its transports on the next loop turns
        if engine is not None:
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            fds, socks, inodes = fd_inodes()
            still = sorted(task_name(t) for t in left if not t.done())
            new_fds = fd_targets() - targets0
            out["after_stop"].update(
                tasks=len(still),
                tasks_left=still,
                fds_new_since_start=dict(new_fds),
                fds=fds,
                sockets=socks,
                sockets_by_peer=sockets_by_peer(inodes, ports),
                threads=threading.active_count(),
                thread_names=sorted(t.name for t in threading.enumerate()),
                spool_files=dir_files(infra.work / "spool"),
                audit_files=dir_files(infra.work / "audit"),
            )
        sys.stderr = real_stderr
        log_file.close()
        out["_state"] = {
            "stats": stats,
            "lanes": lanes,
            "engine": engine,
            "log": log_path,
            "every": every,
            "warm_at": warm_at,
            "n_calendar": n_calendar,
            "start_day": start,
            "symbols": len(symbols),
        }


# ----------------------------------------------------------------------------- the report


def summarise(out: dict[str, Any], args: argparse.Namespace, infra: Infra) -> dict[str, Any]:
    st = out.pop("_state")
    stats: Stats = st["stats"]
    lanes: FaultLanes | None = st["lanes"]
    engine = st["engine"]
    samples = stats.samples
    warm_at = st["warm_at"] or 0
    # Compared: the first sample after the warm-up and the last one, both outside an outage
    # (a Redis outage closes ~50 sockets that come back with it).
    quiet = [s for s in samples if not s["outage"]] or samples
    warm = next((s for s in quiet if s["bar"] >= warm_at), quiet[0] if quiet else None)
    end = quiet[-1] if quiet else None
    after = [s for s in samples if warm is not None and s["bar"] >= warm["bar"]]
    verdict: list[str] = []  # unbounded growth, error paths not taken, faults not recovered
    notes: list[str] = []  # bounds reached (bounded by design)
    rep: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "setup": {
            "symbols": st["symbols"],
            "unknown_symbol": UNKNOWN,
            "window": f"{st['start_day']} .. {LAST_DAY}",
            "bars_in_calendar": st["n_calendar"],
            "rate_bars_per_s": args.rate,
            "signal": args.signal,
            "warmup_history_bars": 200,
            "measured_from_bar": warm["bar"] if warm else None,
            "sample_every_bars": st["every"],
            "lock_check_s": args.lock_check_s,
            "broker_closed_history": engine.broker._config.closed_history if engine else None,
            "ml_cache_size": args.ml_cache_size if args.ml_cache_size >= 0 else "default",
        },
        "bars": {
            "warmup_history": stats.warmup_bars,
            "live_stepped": stats.live_steps,
            "traded": stats.live_steps - stats.catch_up,
            "catch_up_untraded": stats.catch_up,
            "unavailable": engine.bars_unavailable if engine is not None else None,
            "released_by_clock": getattr(engine.clock, "_next", None) if engine else None,
        },
        "wall_s": out.get("wall_s"),
        "result": out.get("result"),
        "equity": equity_summary(engine),
        "reconciliation": reconcile(engine, out.get("broker_book"), args.capital),
        "engine_error": out.get("engine_error"),
        "patched": out.get("patched", []),
    }
    if warm and end:
        rss_pts = [(s["bar"], s["rss_mb"]) for s in after]
        growth = 100 * (end["rss_mb"] / warm["rss_mb"] - 1)
        blocks = 100 * (end["py_blocks"] / warm["py_blocks"] - 1)
        rep["memory"] = {
            "rss_start_mb": out["start"]["rss_mb"],
            "rss_after_warmup_mb": warm["rss_mb"],
            "rss_end_mb": end["rss_mb"],
            "rss_growth_pct": round(growth, 2),
            "rss_min_max_after_warmup_mb": [
                min(s["rss_mb"] for s in after),
                max(s["rss_mb"] for s in after),
            ],
            "rss_slope_mb_per_1000_bars": round(slope_per_1000(rss_pts), 2),
            "py_blocks_after_warmup": warm["py_blocks"],
            "py_blocks_end": end["py_blocks"],
            "py_blocks_growth_pct": round(blocks, 2),
            "gc_objects_after_warmup": warm["gc_objects"],
            "gc_objects_end": end["gc_objects"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if growth > args.max_growth_pct:
            verdict.append(f"RSS grew {growth:.1f}% after warm-up (limit {args.max_growth_pct}%)")
        if blocks > args.max_growth_pct:
            verdict.append(f"Python heap blocks grew {blocks:.1f}% after warm-up")

        def trio(key: str) -> dict[str, Any]:
            return {
                "start": out["start"].get(key),
                "after_warmup": warm[key],
                "max_after_warmup": max(s[key] for s in after),
                "end": end[key],
                "after_stop": out.get("after_stop", {}).get(key),
            }

        rep["tasks"] = trio("tasks")
        rep["fds"] = trio("fds")
        rep["sockets"] = trio("sockets")
        rep["threads"] = trio("threads")
        peers: dict[str, int] = {}
        for s in after:
            for k, v in s["by_peer"].items():
                peers[k] = max(peers.get(k, 0), v)
        rep["sockets"]["by_peer_after_warmup"] = warm["by_peer"]
        rep["sockets"]["by_peer_max"] = peers
        rep["sockets"]["by_peer_end"] = end["by_peer"]
        for key, slack in (("tasks", 2), ("fds", 4), ("sockets", 4), ("threads", 2)):
            if end[key] > warm[key] + slack:
                verdict.append(f"{key} grew: {warm[key]} after warm-up, {end[key]} at the end")
        # Task names whose count grew.
        t_warm = stats.tasks_warm or Counter()
        t_end = stats.tasks_last
        grew = {k: [t_warm.get(k, 0), v] for k, v in t_end.items() if v > t_warm.get(k, 0)}
        rep["tasks"]["by_name_end"] = dict(sorted(t_end.items()))
        rep["tasks"]["names_grew"] = grew
        # Containers.
        c_warm = stats.containers_warm
        c_end = stats.containers_last if c_warm is not None else {}
        c_max = stats.containers_max
        if c_warm is None:
            verdict.append("the run ended before the warm-up: containers not compared")
        grown = []
        known = known_caps(engine, args)
        for k, (n, cap) in c_end.items():
            n0 = (c_warm or {}).get(k, (0, None))[0]
            if cap is None:
                cap = next((c for suffix, c in known.items() if k.endswith(suffix)), None)
            if n > n0 + max(8, 0.05 * n0):
                grown.append(
                    {
                        "container": k,
                        "after_warmup": n0,
                        "end": n,
                        "max": c_max.get(k),
                        "cap": cap,
                        "per_1000_bars": round(1000 * (n - n0) / max(1, end["bar"] - warm["bar"])),
                    }
                )
        rep["containers_grew"] = sorted(grown, key=lambda g: -g["end"])
        rep["containers_largest_end"] = dict(
            sorted(((k, n) for k, (n, _) in c_end.items()), key=lambda kv: -kv[1])[:12]
        )
        for g in grown:
            if g["cap"] is None:
                verdict.append(
                    f"container {g['container']} grew {g['after_warmup']} -> {g['end']} "
                    f"after warm-up ({g['per_1000_bars']} per 1,000 bars"
                    + (f", cap {g['cap']})" if g["cap"] else ", no cap of its own)")
                )
        rep["files"] = {
            "after_warmup": {"count": warm["files"], "bytes": warm["files_bytes"]},
            "end": {"count": end["files"], "bytes": end["files_bytes"]},
            "largest_end": dict(sorted(stats.last_files.items(), key=lambda kv: -kv[1])[:8]),
        }
        rep["audit"] = {
            "max_bytes": args.audit_max_bytes,
            "backups": args.audit_backups,
            "files_after_warmup": warm["audit_files"],
            "files_max": max(s["audit_files"] for s in after),
            "bytes_max": max(s["audit_bytes"] for s in after),
            "files_after_stop": out.get("after_stop", {}).get("audit_files"),
        }
        if rep["audit"]["files_max"] > args.audit_backups + 1:
            verdict.append(f"audit files: {rep['audit']['files_max']} > {args.audit_backups + 1}")
        if rep["audit"]["bytes_max"] > (args.audit_backups + 1) * args.audit_max_bytes * 1.5:
            verdict.append(f"audit bytes {rep['audit']['bytes_max']} above the rotation bound")
        rep["samples"] = [
            {k: s[k] for k in ("bar", "t", "rss_mb", "tasks", "fds", "sockets", "backlog")}
            for s in samples[:: max(1, len(samples) // 12)]
        ]
    caps = {
        "broker_events": engine.broker._config.event_queue_size if engine else None,
        "publisher": engine.publisher.max_queue if engine else None,
        "alerter": engine.alerter.config.queue_size if engine else None,
        "clock_backlog": engine.clock._pending.maxlen if engine else None,
        "store_rows": engine.store.batch_size if engine else None,
        "spool_bytes": engine.store._spool.max_bytes if engine and engine.store._spool else None,
    }
    qmax = {k: v for k, v in stats.queue_max.items() if k != "spool_batches_this_outage"}
    rep["queues_max"] = {k: {"max": v, "cap": caps.get(k)} for k, v in sorted(qmax.items())}
    for k, v in qmax.items():
        if caps.get(k) and v >= caps[k]:  # type: ignore[operator]
            notes.append(f"queue {k} reached its cap {caps[k]} (bounded: the oldest dropped)")
    if engine is not None:
        spool = engine.store.status()
        rep["spool"] = {
            "max_batches": stats.queue_max.get("spool_batches", 0),
            "max_bytes": stats.queue_max.get("spool_bytes", 0),
            "final_batches": spool["spooled_batches"],
            "final_bytes": spool["spooled_bytes"],
            "outages": spool["outages"],
            "replayed_batches": spool["replayed_batches"],
            "replay_attempts": spool["replay_attempts"],
            "files_after_stop": out.get("after_stop", {}).get("spool_files"),
        }
        if spool["spooled_batches"]:
            verdict.append(f"spool not drained: {spool['spooled_batches']} batches left")
        b = engine.broker.status()
        a = engine.alerter.status()
        lock = engine.lock.lock
        counters = registry_counters()
        rep["errors"] = {
            "source_errors": {
                f"{src}/{kind}": int(v) for (src, kind), v in sorted(source_errors().items())
            },
            "source_calls": {
                k.split("=", 1)[1].rstrip("}"): v
                for k, v in counters.items()
                if k.startswith("tradingd_source_calls")
            },
            "orders_by_status": {
                k.split("=", 1)[1].rstrip("}"): v
                for k, v in counters.items()
                if k.startswith("tradingd_orders{")
            },
            "cache_requests": {
                k.split("=", 1)[1].rstrip("}"): v
                for k, v in counters.items()
                if k.startswith("tradingd_cache_requests")
            },
            "risk_verdicts": {
                k.split("{", 1)[1].rstrip("}"): v
                for k, v in counters.items()
                if k.startswith("tradingd_risk_verdicts")
            },
            "rejections": dict(engine.rejections.counts),
            "broker_failures": engine.broker_failures,
            "bars_unavailable": engine.bars_unavailable,
            "broker": {
                "stream_changes": b["stream_changes"],
                "polls": stats.polls,
                "unknown_updates": b["unknown_updates"],
            },
            "redis_outages_seen": {
                "cache": engine.cache._link.outages,
                "response_cache": engine.feed.source.cache.primary._link.outages,
                "publisher": engine.publisher._link.outages,
            },
            "publisher": {
                "published": engine.publisher.published,
                "dropped_by_reason": dict(engine.publisher.dropped_by_reason),
            },
            "store": {
                "outages": spool["outages"],
                "replayed_batches": spool["replayed_batches"],
                "skipped_batches": engine.store.skipped_batches,
            },
            "alerts": {
                "by_kind_state": dict(sorted(stats.alert_counts.items())),
                "sent": a["sent"],
                "failed": a["failed"],
                "dropped": a["dropped"],
                "suppressed": a["suppressed"],
                "retries": sum(t["retries"] for t in a["targets"]),
                "firing_at_end": [f"{f['kind']}/{f['key']}" for f in a["firing"]],
            },
            "instance_lock": {
                "checks": len(stats.lock_checks),
                "checks_failed": sum(1 for _, ok, _ in stats.lock_checks if not ok),
                "lost_count": lock.lost_count if lock is not None else None,
                "samples_not_held": sum(1 for s in stats.samples if not s["lock_held"]),
            },
        }
        rep["metric_series"] = metric_series()
        if stats.metrics_bytes:
            rep["metrics_page_bytes"] = {
                "first": stats.metrics_bytes[0],
                "max": max(stats.metrics_bytes),
                "last": stats.metrics_bytes[-1],
            }
        rep["health_scrapes"] = dict(sorted(stats.scrapes.items()))
        expected = {
            "yahoo/http_5xx",
            "yahoo/http_429",
            "yahoo/timeout",
            "yahoo/malformed",
            "yahoo/connection",
            "yahoo/not_found",
            "yahoo/circuit_open",
            f"{ALPACA}/http_429",
            f"{ALPACA}/http_5xx",
            f"{ALPACA}/timeout",
        }
        seen = {k for k, v in rep["errors"]["source_errors"].items() if v > 0}
        missing = sorted(expected - seen)
        if missing:
            verdict.append(f"error kinds never counted: {missing}")
        rec = reconcile(engine, out.get("broker_book"), args.capital)
        if rec is not None and not rec["match"]:
            verdict.append(f"the engine's book differs from the broker's: {rec}")
        if out.get("engine_error"):
            verdict.append(f"the engine ended with an error: {out['engine_error'][:600]}")
        if (out.get("result") or {}).get("stopped_early"):
            verdict.append("the engine stopped early (see the log: instance lock, budget?)")
    if lanes is not None:
        faults: dict[str, dict[str, Any]] = {}
        for rec in lanes.log:
            f = faults.setdefault(
                rec["fault"],
                {"injected": 0, "exercised": 0, "recovered": 0, "max_recovery_s": 0.0},
            )
            f["injected"] += 1
            f["exercised"] += bool(rec.get("exercised"))
            f["recovered"] += bool(rec.get("recovered"))
            f["max_recovery_s"] = max(f["max_recovery_s"], rec.get("recovery_s") or 0.0)
            if rec.get("error"):
                f.setdefault("errors", []).append(rec["error"])
        for rec in lanes.log:
            f = faults[rec["fault"]]
            for key in ("polls_while_down", "spooled_batches_peak", "replayed_batches"):
                if key in rec:
                    f.setdefault(key, []).append(rec[key])
        rep["faults"] = faults
        for name, fn_list in lanes.lanes().items():
            for fname, _ in fn_list:
                f = faults.get(fname)
                if f is None:
                    verdict.append(f"fault {fname} ({name}) was never injected")
                elif not f["exercised"]:
                    verdict.append(f"fault {fname} never showed its error path")
                elif f["recovered"] < f["injected"]:
                    verdict.append(f"fault {fname}: {f['injected'] - f['recovered']} no recovery")
        rep["fault_log"] = [{k: v for k, v in r.items() if k not in ("lane",)} for r in lanes.log]
    after = out.get("after_stop", {})
    rep["after_stop"] = after
    if after.get("tasks_left"):
        verdict.append(f"tasks left after the stop: {after['tasks_left']}")
    if after.get("engine_tasks_left"):
        verdict.append(
            f"engine tasks left when run_until_done returned: {after['engine_tasks_left']}"
        )
    if "fds" in after and after["fds"] > out["start"]["fds"] + 3:
        verdict.append(f"descriptors after the stop: {after['fds']} (start {out['start']['fds']})")
    rep["log"] = summarise_log(st["log"], stats.live_steps)
    if infra.redis is not None:
        rep["redis_keys_at_end"] = infra.redis.keys()
    rep["notes"] = notes
    rep["verdict"] = verdict
    return rep


def reconcile(engine: Any, book: dict[str, Any] | None, capital: float) -> dict[str, Any] | None:
    """The engine's book against the loopback Alpaca's after the run (its market stopped
    filling once every bar was released): positions and the cash either side paid."""
    if engine is None or not book:
        return None
    pf = engine.portfolio
    ours = {s: float(q) for s, q in zip(engine.symbols, pf.quantity, strict=True) if q}
    theirs = {s: float(q) for s, q in book["positions"].items() if q}
    diff = {
        s: [ours.get(s, 0.0), theirs.get(s, 0.0)]
        for s in sorted(set(ours) | set(theirs))
        if abs(ours.get(s, 0.0) - theirs.get(s, 0.0)) > 1e-6
    }
    paid_engine = capital - pf.cash
    paid_broker = 100 * capital - book["cash"]  # the fake's account starts at 100 x capital
    return {
        "positions_engine": len(ours),
        "positions_broker": len(theirs),
        "position_differences": diff,
        "cash_paid_engine": round(paid_engine, 2),
        "cash_paid_broker": round(paid_broker, 2),
        "open_orders_at_broker": book.get("open_orders"),
        "match": not diff and abs(paid_engine - paid_broker) < max(1.0, 1e-6 * abs(paid_broker)),
    }


def equity_summary(engine: Any) -> dict[str, Any] | None:
    """The live bars' equity curve: range, largest drawdown, largest one-bar move."""
    if engine is None or len(engine._equity) < 2:
        return None
    eq = list(engine._equity)
    peak, dd, jump = eq[0], 0.0, 0.0
    for a, b in itertools.pairwise(eq):
        peak = max(peak, b)
        dd = max(dd, 1 - b / peak)
        jump = max(jump, abs(b / a - 1))
    return {
        "first": round(eq[0], 2),
        "min": round(min(eq), 2),
        "max": round(max(eq), 2),
        "last": round(eq[-1], 2),
        "max_drawdown_pct": round(100 * dd, 2),
        "largest_one_bar_move_pct": round(100 * jump, 2),
    }


def known_caps(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Bounds of containers that have one in tradingd's code or configuration (not visible
    on the container itself), by the end of their path."""
    if engine is None:
        return {}
    from tradingd.engine.accounting import MAX_PERIODS

    closed = engine.broker._config.closed_history
    ml = {
        f"signals[{i}][0]._cache": plugin.config.cache_size
        for i, (plugin, _) in enumerate(engine.pipeline.signals)
        if hasattr(getattr(plugin, "config", None), "cache_size")
    }
    return {
        **ml,
        "broker._closed": closed,
        "broker._by_alpaca_id": f"{closed} closed + the open orders (pruned with _closed)",
        "broker._orphans": 1000,
        ".queue": engine.alerter.config.queue_size,  # the alerter's per-target queues
        "._events": "1024, plus the events of the last alerts.dedup_window_s "
        f"({engine.alerter.config.dedup_window_s:.0f} s; one daily summary per bar here)",
        "rejections._seen": 100_000,
        "risk_record.periods": MAX_PERIODS,
        "publisher._queue": engine.publisher.max_queue if engine.publisher else None,
        # The store's row buffers: written (and emptied) at storage.batch_size rows, at
        # every flush interval and every bar's checkpoint.
        "store._signals": f"storage.batch_size ({engine.store.batch_size}) rows",
    }


def summarise_log(path: Path, bars: int) -> dict[str, Any]:
    """tradingd's own log of the run: size, and its warnings and errors by event."""
    by: Counter[str] = Counter()
    errors: list[dict[str, str]] = []
    lines = 0
    size = path.stat().st_size if path.exists() else 0
    with contextlib.suppress(OSError), path.open() as fh:
        for line in fh:
            lines += 1
            try:
                rec = json.loads(line)
            except ValueError:
                by["(not JSON)"] += 1
                continue
            level = rec.get("level", "?")
            if level in ("warning", "error", "critical", "exception"):
                by[f"{level} {rec.get('event')}"] += 1
            if level in ("error", "critical", "exception") and len(errors) < 12:
                errors.append({k: str(v)[:300] for k, v in rec.items() if k != "exception"})
    return {
        "lines": lines,
        "bytes": size,
        "bytes_per_live_bar": round(size / bars) if bars else None,
        "note": "the daemon logs to stderr (journald/docker rotate it); here a file",
        "warnings_and_errors": dict(by.most_common(40)),
        "first_errors": errors,
    }


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="soak", choices=("soak", "fakes"))
    ap.add_argument("--bars", type=int, default=2000, help="live bars (sessions up to 2024-03-05)")
    ap.add_argument("--symbols", type=int, default=50, help="symbols (plus one unknown)")
    ap.add_argument("--rate", type=float, default=20.0, help="accelerated bars per second")
    ap.add_argument("--signal", default="ml_ensemble", choices=("ml_ensemble", "momentum"))
    ap.add_argument(
        "--ml-cache-size",
        type=int,
        default=-1,
        help="ml_ensemble's in-memory prediction cache (-1: the plugin's default, 3,000,000)",
    )
    ap.add_argument(
        "--closed-history",
        type=int,
        default=0,
        help="closed orders the Alpaca broker remembers (0: its default, 10,000); smaller, the "
        "bound is reached before the measurement starts",
    )
    ap.add_argument("--concurrency", type=int, default=16, help="Yahoo requests in flight")
    ap.add_argument("--capital", type=float, default=100_000.0)
    ap.add_argument("--warmup-frac", type=float, default=0.2, help="live bars before measuring")
    ap.add_argument("--sample-every", type=int, default=0, help="0: 1%% of the bars (min 5)")
    ap.add_argument("--gap-bars", type=int, default=30, help="quiet bars between two faults")
    ap.add_argument("--no-faults", action="store_true", help="a baseline without faults")
    ap.add_argument("--yahoo-down-s", type=float, default=1.5)
    ap.add_argument("--unknown-s", type=float, default=3.0)
    ap.add_argument("--stream-down-s", type=float, default=3.0)
    ap.add_argument("--redis-down-s", type=float, default=3.0)
    ap.add_argument("--pg-down-s", type=float, default=4.0)
    ap.add_argument(
        "--lock-check-s",
        type=float,
        default=15.0,
        help="instance lock check period (production: 30); a PostgreSQL outage is started "
        "right after a check and must end before the next",
    )
    ap.add_argument(
        "--no-pg-align-lock",
        dest="pg_align_lock",
        action="store_false",
        help="start PostgreSQL outages at any time (a lock check during one reports the lock "
        "unproven)",
    )
    ap.add_argument("--sdk-retry-wait-s", type=float, default=0.2, help="alpaca-py's (3 s)")
    ap.add_argument("--audit-max-bytes", type=int, default=1_000_000)
    ap.add_argument("--audit-backups", type=int, default=2)
    ap.add_argument("--alert-queue", type=int, default=200, help="alerts.queue_size")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    ap.add_argument("--max-growth-pct", type=float, default=5.0)
    ap.add_argument("--fault-timeout-s", type=float, default=300.0)
    ap.add_argument("--max-wall-s", type=float, default=0.0, help="0: 4 x bars/rate + 900 s")
    ap.add_argument(
        "--patch-spool-reader",
        action="store_true",
        help="apply the proposed fix of the spool's reader in this process (see the report)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--json-out", default="", help="also write the JSON here")
    # fakes mode
    ap.add_argument("--first-day", default="2005-01-01", help=argparse.SUPPRESS)
    ap.add_argument("--cash", type=float, default=10_000_000.0, help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    if args.what == "fakes":
        return serve_fakes(args)
    if args.pg_down_s + 3 >= args.lock_check_s and args.pg_align_lock:
        raise SystemExit("--pg-down-s must be at least 3 s below --lock-check-s")

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    cwd = os.getcwd()
    infra = Infra(args)
    out: dict[str, Any] = {}
    report: dict[str, Any] | None = None
    fakes_final: dict[str, Any] = {}
    try:
        infra.start()
        os.chdir(infra.work)  # anything relative (var/...) lands in the run directory
        asyncio.run(soak(args, infra, out))
        report = summarise(out, args, infra)
    finally:
        os.chdir(cwd)
        try:
            fakes_final = infra.close()
        finally:
            gc.collect()
    fds_end = fd_inodes()[0]
    if report is None:
        return 1
    report["after_teardown"] = {"fds": fds_end, "fds_at_start": out["start"]["fds"]}
    report["fakes"] = {
        k: fakes_final.get(k)
        for k in ("yahoo_requests", "yahoo_max_in_flight", "alpaca_orders", "webhook_delivered")
    }
    report["fakes"]["webhook_by_state"] = fakes_final.get("webhook_by_state")
    report["machine"] = machine()
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return 0 if not report["verdict"] else 2


if __name__ == "__main__":
    sys.exit(main())
