"""Run independent analysis tasks in parallel: walk-forward folds, Monte Carlo batches,
parameter-sweep points.

One function, `run_tasks(fn, tasks, workers=..., ray_address=...)`, returns `[fn(t) for t in
tasks]` in task order wherever the calls ran:

* `workers=0`: in this process, one after the other (debugging, cheap tasks);
* `workers=N` (default: one per CPU): N local processes of a `ProcessPoolExecutor` started
  with the *spawn* method. Not fork: the engine, the GARCH fit worker's writer and
  TensorFlow run threads, and a forked child inherits their locks in whatever state they
  were. Spawn starts a clean interpreter, which re-imports the caller's main module as
  `__mp_main__`: a script that calls this needs the usual `if __name__ == "__main__":`
  guard (tradingd's own CLI and benchmark scripts have it). A worker ends when its parent
  does, even one killed with SIGKILL (`_end_with_parent`);
* `ray_address="auto" | "ray://host:10001" | "local"`: tasks on a Ray cluster (the optional
  `ray` extra). An already initialised Ray (e.g. `ray.init(num_cpus=2)` in a test) is used
  as it is; otherwise this connects to the address (`"local"` starts a local instance with
  `workers` CPUs) and disconnects at the end. Every node needs the same tradingd installed;
  tasks carry their data (nothing is read from the driver's disk).

`fn` and every task must be picklable (a module-level function, frozen dataclasses, arrays),
and `fn` must not depend on where it runs for "the same results wherever they ran" to hold.
`env` sets environment variables in each worker process before any task runs (e.g. thread
counts of numerical libraries, which must be equal everywhere for equal results: TensorFlow's
sums depend on its intra-op thread count). `in_worker()` tells a task it runs in such a
worker. A task that raises stops the run: the others are cancelled (local workers are ended,
Ray's tasks cancelled as Ray cancels them) and the first error (in task order among those
finished) is raised. Ctrl-C does the same.

`sweep(config, grid)` runs one backtest per point of a parameter grid through `run_tasks`;
a point in a worker process logs warnings and errors only, in `log.format`, as a walk-forward
fold's worker does (in this process, `workers=0`, the caller's logging stands).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from tqdm import tqdm

from ..core.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

#: Set in every worker process started here (local or Ray).
WORKER_ENV = "TRADINGD_TASK_WORKER"
RAY_INSTALL = "pip install 'ray[default]'"


def default_workers() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def in_worker() -> bool:
    """True inside a worker process started by `run_tasks` (not in the caller's process)."""
    return os.environ.get(WORKER_ENV) == "1"


def run_tasks(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = False,
    desc: str = "tasks",
    env: Mapping[str, str] | None = None,
) -> list[R]:
    """`[fn(t) for t in tasks]`, computed in parallel (see the module docstring)."""
    if not callable(fn):
        raise ValueError(f"run_tasks: fn must be callable, got {fn!r}")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
    ):
        raise ValueError(f"run_tasks: workers must be an integer >= 0 or None, got {workers!r}")
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise ValueError(f"run_tasks: ray_address must be a non-empty string, got {ray_address!r}")
    env = _check_env(env)
    items = list(tasks)
    if not items:
        return []
    bar = tqdm(
        total=len(items), desc=desc, unit="task", disable=not progress, file=sys.stderr, delay=0.5
    )
    try:
        if ray_address is not None:
            return _on_ray(fn, items, ray_address, workers, env, bar)
        n = default_workers() if workers is None else workers
        if n == 0:
            out = []
            for item in items:
                out.append(fn(item))
                bar.update(1)
            return out
        return _in_processes(fn, items, min(n, len(items)), env, bar)
    finally:
        bar.close()


def _check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    out = {WORKER_ENV: "1"}
    for k, v in (env or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"run_tasks: env must map strings to strings, got {k!r}: {v!r}")
        out[k] = v
    return out


def _set_env(env: dict[str, str]) -> None:
    os.environ.update(env)
    # A terminal's Ctrl-C reaches the whole process group: the parent decides, and ends
    # the workers itself (`_terminate`), without each printing its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_worker(env: dict[str, str], lifeline: Connection) -> None:
    """A worker's initializer: its environment (`_set_env`), and a thread that ends the
    worker when its parent has ended (`_end_with_parent`)."""
    _set_env(env)
    threading.Thread(
        target=_end_with_parent, args=(lifeline,), name="parent-lifeline", daemon=True
    ).start()


def _end_with_parent(lifeline: Connection) -> None:
    """Wait for the end of `lifeline` (the read end of a pipe whose write end only the parent
    holds: nothing is ever sent on it), then end this worker. It ends when the parent
    closes it after the pool's shutdown, or when the parent dies, even of SIGKILL: the
    kernel closes a dead process's files. The backtest's writer process (storage/child.py)
    and GARCH fit worker (sizing/garch_fits.py) end so, at the end of their input. A pool
    worker cannot: each holds the write end of its own task queue (spawn passes a queue's
    both ends), so its read never ends; after a `kill -9` of `tradingd walkforward` its
    workers lived on for good, re-parented to PID 1, each waiting for its next task
    (multiprocessing's resource tracker with them: it ends when the last of them has)."""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv_bytes()  # returns (raises) at the end of the pipe only
    # A task running now (a fold in training) is abandoned: its result has no reader.
    os._exit(1)


def _in_processes(
    fn: Callable[[T], R], items: list[T], n: int, env: dict[str, str], bar: tqdm
) -> list[R]:
    ctx = multiprocessing.get_context("spawn")
    # Passed to each worker (spawn passes a Connection's descriptor to the child it starts);
    # the write end stays here, and is closed once the workers have ended.
    lifeline, keep = ctx.Pipe(duplex=False)
    try:
        return _run_pool(fn, items, n, env, bar, ctx, lifeline)
    finally:
        keep.close()
        lifeline.close()


def _run_pool(
    fn: Callable[[T], R],
    items: list[T],
    n: int,
    env: dict[str, str],
    bar: tqdm,
    ctx: Any,
    lifeline: Connection,
) -> list[R]:
    pool = ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=_start_worker, initargs=(env, lifeline)
    )
    futures: list[Future[R]] = []
    try:
        futures = [pool.submit(fn, item) for item in items]
        pending: set[Future[R]] = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            bar.update(len(done))
            if any(f.exception() is not None for f in done):
                break
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
        results = [f.result() for f in futures]
    except BaseException:
        # A task's error, Ctrl-C or the command's SIGTERM: what the other tasks would give
        # is discarded, so their workers are ended, not waited for. A walk-forward fold
        # trains for minutes inside TensorFlow, which sees no signal until its call
        # returns: waiting made Ctrl-C look ignored, and a signal during that wait (in a
        # `finally`) left the pool's threads and workers waiting on each other for good.
        _terminate(pool)
        raise
    pool.shutdown(wait=True)
    return results


def _terminate(pool: ProcessPoolExecutor) -> None:
    """End the pool's worker processes now (`ProcessPoolExecutor.terminate_workers` of
    Python 3.14, which 3.11 lacks: its processes by the same private attribute)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()
    # The pool's manager thread sees them end, reaps them and stops: a short wait.
    pool.shutdown(wait=True, cancel_futures=True)


def _call(fn: Callable[[T], R], item: T) -> R:
    """A plain function for Ray (its remote() takes no builtin, partial or callable object)."""
    return fn(item)


def _on_ray(
    fn: Callable[[T], R],
    items: list[T],
    address: str,
    workers: int | None,
    env: dict[str, str],
    bar: tqdm,
) -> list[R]:
    try:
        import ray
    except ImportError:
        raise ImportError(
            f"ray_address = {address!r} needs Ray, which is not installed: {RAY_INSTALL}"
        ) from None
    started = False
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(num_cpus=workers or None, include_dashboard=False)
            else:
                ray.init(address=address)
        except Exception as exc:  # a malformed address (ValueError), no cluster there, ...
            if address == "local":
                raise ConfigError(
                    f"ray_address 'local' (--ray-address): Ray could not start here: {exc}"
                ) from None
            raise ConfigError(
                f"ray_address {address!r} (--ray-address): Ray cannot connect: {exc}; give "
                "ray://<host>:10001 for a cluster's client port, auto for a cluster this "
                "machine belongs to, or local"
            ) from None
        started = True
    try:
        # Ray sets OMP_NUM_THREADS=1 in its workers unless told otherwise: the env given here
        # wins, so a task sees the same settings as in a local worker.
        remote: Any = ray.remote(_call).options(runtime_env={"env_vars": env})
        refs = [remote.remote(fn, item) for item in items]
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)  # raises the task's error at once
                bar.update(len(done))
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
        return list(ray.get(refs))
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------- sweeps


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of a parameter grid, in order (the last key varies fastest)."""
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"grid must be a non-empty mapping of config paths to lists, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"grid keys must be config paths such as 'costs.slippage_pct', got {key!r}"
            )
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"grid[{key!r}] must be a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def with_values(config: Any, values: Mapping[str, Any]) -> Any:
    """`config` with each dotted path set ('sizing.params.kelly_multiplier',
    'signals[1].weight', 'risk[0].params.max_position_pct'), checked like a config file
    (a bad path or value is a ValueError naming it). The run id is left to the config hash,
    so every variant gets its own."""
    from ..config import Config, build
    from ..core.errors import ConfigError

    data = config.to_dict()
    for path, value in values.items():
        _set_path(data, path, value)
    data["run"]["run_id"] = ""
    try:
        return build(Config, data, "")
    except ConfigError as exc:
        raise ValueError(f"grid value {dict(values)!r}: {exc}") from None


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    node: Any = data
    parts = path.split(".")
    for i, part in enumerate(parts):
        m = _PART.fullmatch(part)
        if m is None:
            raise ValueError(f"grid path {path!r}: {part!r} is not a key or key[index]")
        key, index = m.group(1), m.group(2)
        last = i == len(parts) - 1 and index is None
        if not isinstance(node, dict):
            raise ValueError(f"grid path {path!r}: {'.'.join(parts[:i])} is not a table")
        if last:
            node[key] = value
            return
        if key not in node:
            if index is not None:
                raise ValueError(f"grid path {path!r}: no list {key!r}")
            node[key] = {}  # e.g. a plugin parameter not given in the file
        node = node[key]
        if index is not None:
            if not isinstance(node, list) or not 0 <= int(index) < len(node):
                raise ValueError(f"grid path {path!r}: {key}[{index}] does not exist")
            node = node[int(index)]
            if i == len(parts) - 1:
                raise ValueError(f"grid path {path!r} names a whole plugin, not a value")


_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?")


def _sweep_point(task: tuple[Any, dict[str, Any], Any, str | None]) -> dict[str, Any]:
    import asyncio
    import dataclasses
    import tempfile
    from pathlib import Path

    from ..backtest import run_backtest
    from .walkforward_run import json_values, quiet_logging

    config, values, panel, out = task
    if in_worker():
        # As a walk-forward fold's worker: warnings and errors, in log.format. A spawned
        # worker's structlog is unconfigured, and printed every debug line (16,367
        # risk.verdict lines for 4 small points at log.level "info").
        quiet_logging(config)
    with tempfile.TemporaryDirectory(prefix="tradingd-sweep-") as tmp:
        # Each point has a store and an audit log of its own; nothing shared but read-only
        # caches keyed by their exact inputs.
        config = dataclasses.replace(
            config,
            storage=dataclasses.replace(config.storage, url="sqlite:///:memory:", signals="none"),
            cache=dataclasses.replace(config.cache, url=""),
            log=dataclasses.replace(config.log, audit_dir=str(Path(tmp) / "audit")),
        )
        run_id = _run_id(config)
        folder = Path(out) / run_id if out else Path(tmp) / "run"
        outcome = asyncio.run(run_backtest(config, panel=panel, output_dir=folder))
    return {
        "values": dict(values),
        "run_id": outcome.run_id,
        "summary": json_values(outcome.summary),
        "output_dir": str(folder) if out else None,
    }


def _run_id(config: Any) -> str:
    from ..app import run_id_for

    return run_id_for(config, "backtest")


def sweep(
    config: Any,
    grid: Mapping[str, Sequence[Any]],
    *,
    panel: Any = None,
    out_dir: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = False,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A backtest of `config` for every combination of `grid` (see `with_values`), run by
    `run_tasks`: one dict per point, in grid order, with the values, the run id and the run's
    summary (and its record folder under `out_dir` when given). The data is loaded once and
    sent with each point, unless the grid changes the data (`data.*`, `run.end`). The number
    of points is the number of variants tried (a deflated Sharpe ratio needs it)."""
    points = grid_points(grid)
    configs = [with_values(config, p) for p in points]
    own_data = any(k.startswith("data.") or k == "run.end" for k in grid)
    if panel is None and not own_data:
        from ..app import load_data

        panel = load_data(config)
    tasks = [
        (c, p, None if own_data else panel, out_dir) for c, p in zip(configs, points, strict=True)
    ]
    return run_tasks(
        _sweep_point,
        tasks,
        workers=workers,
        ray_address=ray_address,
        progress=progress,
        desc="sweep",
        env=env,
    )


def task_map(
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = False,
    desc: str = "tasks",
) -> Callable[[Callable[[T], R], Iterable[T]], list[R]]:
    """A `map`-shaped callable over `run_tasks`, for the analyses that take a `map_fn`
    (Monte Carlo chunks, the validator's bootstrap): `simulate(x, cfg, map_fn=task_map(
    workers=2))` runs the chunks in two local processes, `task_map(ray_address="auto")` on
    Ray. The chunks are seeded by their index, so the results are the same wherever they run."""

    def mapper(fn: Callable[[T], R], tasks: Iterable[T]) -> list[R]:
        return run_tasks(
            fn, tasks, workers=workers, ray_address=ray_address, progress=progress, desc=desc
        )

    return mapper
