"""run_tasks: order, errors and worker environment in this process, in local processes and
on a local Ray instance; and the same walk-forward (tiny model, retrained in each fold) gives
equal results serially, in two local processes and on Ray. Ray tests skip without Ray."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_walkforward import SHIPPED_MODEL_LOOKBACK, tiny_config, tiny_panel, tiny_wf

from tradingd.analysis.parallel import WORKER_ENV, in_worker, run_tasks
from tradingd.analysis.walkforward import WalkForwardAnalyzer
from tradingd.analysis.walkforward_run import json_values

# Tasks of very different sizes, so that they finish out of order in a pool.
SIZES = [3000, 10, 2500, 1, 2000, 5, 1500, 0]
EXPECTED = [math.factorial(n) for n in SIZES]


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[default]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("workers", [0, 2])
def test_results_come_back_in_task_order(workers):
    assert run_tasks(math.factorial, SIZES, workers=workers) == EXPECTED


def test_an_address_ray_cannot_use_is_a_config_error_naming_it():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[default]')")
    from tradingd.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ray_address 'bogus' \(--ray-address\): Ray cannot"):
        run_tasks(math.factorial, SIZES, ray_address="bogus")


def test_results_on_ray_come_back_in_task_order(ray_session):
    assert run_tasks(math.factorial, SIZES, ray_address="auto") == EXPECTED


@pytest.mark.parametrize("where", [{"workers": 0}, {"workers": 2}, {"ray_address": "auto"}])
def test_a_failing_task_raises_its_error(where, request):
    if "ray_address" in where:
        request.getfixturevalue("ray_session")
    with pytest.raises(ValueError, match="math domain error"):
        run_tasks(math.sqrt, [4.0, -1.0, 9.0], **where)


def _plugin_fails(n: int) -> int:
    from tradingd.core.errors import PluginFault

    if n == 2:
        raise PluginFault("mine", "score", "2020-01-02", RuntimeError("boom"))
    return n


def test_a_plugin_fault_in_a_worker_reaches_the_caller_as_itself():
    """A PluginFault did not unpickle (its class called with the message alone), so a
    plugin's bug in a walk-forward fold's worker broke the pool instead of naming itself."""
    from tradingd.core.errors import PluginFault

    with pytest.raises(PluginFault) as caught:
        run_tasks(_plugin_fails, [1, 2, 3], workers=2)
    fault = caught.value
    assert str(fault) == "plugin 'mine' failed in score at bar 2020-01-02: RuntimeError: boom"
    assert (fault.plugin, fault.stage, fault.bar_time) == ("mine", "score", "2020-01-02")


@pytest.mark.parametrize("where", [{"workers": 2}, {"ray_address": "auto"}])
def test_workers_get_the_environment(where, request):
    if "ray_address" in where:
        request.getfixturevalue("ray_session")
    keys = ["TRADINGD_TEST_THREADS", WORKER_ENV, "OMP_NUM_THREADS"]
    env = {"TRADINGD_TEST_THREADS": "3", "OMP_NUM_THREADS": "3"}
    assert run_tasks(os.getenv, keys, env=env, **where) == ["3", "1", "3"]
    assert not in_worker()  # the caller's process is not a worker
    assert os.getenv("TRADINGD_TEST_THREADS") is None


def test_no_task_no_worker():
    assert run_tasks(math.factorial, [], workers=4) == []


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"workers": -1}, "workers must be an integer >= 0"),
        ({"workers": 1.5}, "workers must be an integer"),
        ({"ray_address": ""}, "ray_address must be a non-empty string"),
        ({"env": {"A": 1}}, "env must map strings to strings"),
    ],
)
def test_bad_arguments_are_value_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        run_tasks(math.factorial, [1], **kw)
    with pytest.raises(ValueError, match="fn must be callable"):
        run_tasks(None, [1])  # type: ignore[arg-type]


def _comparable(results: dict) -> str:
    """Everything a walk-forward computed, without the timing (where and how long)."""
    out = {k: v for k, v in results.items() if k != "timing"}
    out["folds"] = [{k: v for k, v in f.items() if k != "timing"} for f in results["folds"]]
    return json.dumps(json_values(out), sort_keys=True)


def test_walkforward_results_do_not_depend_on_where_folds_ran(ray_session):
    """The same two-fold walk-forward serially (one worker process), in two local processes
    and on Ray, all at once: equal models' signals, fitted states (Kelly, GARCH), curves,
    stability and decay tables. One thread per fold everywhere (walkforward.threads = 1);
    the shipped model, so no TensorFlow starts here: that a retrained model does not depend
    on where it was trained is shown by test_walkforward's lookahead pair (one fold trained
    in a local process, the other on Ray)."""
    panel = tiny_panel(320)
    wf = tiny_wf(threads=1, retrain="never", lookback_bars=SHIPPED_MODEL_LOOKBACK)
    config = tiny_config()
    where = {"serial": {"workers": 1}, "processes": {"workers": 2}, "ray": {"ray_address": "auto"}}
    # The three at once (they share the two cores: the results must not care).
    with ThreadPoolExecutor(3) as pool:
        futures = {
            name: pool.submit(WalkForwardAnalyzer(config, wf, **kw).run, panel)
            for name, kw in where.items()
        }
        runs = {name: f.result() for name, f in futures.items()}
    serial = runs["serial"]
    assert len(serial["folds"]) == 2 and not serial["retrained"]
    garch = [v for f in serial["folds"] for v in f["params"]["garch"].values()]
    assert any(v["method"] == "garch" for v in garch)  # BLAS-sensitive fits are in the comparison
    pids = {r["folds"][0]["timing"]["pid"] for r in runs.values()}
    assert os.getpid() not in pids and len(pids) == 3  # three different worker processes
    for name in ("processes", "ray"):
        assert _comparable(runs[name]) == _comparable(serial), name


def test_sweep_runs_every_grid_point_with_its_values(tmp_path):
    from tradingd.analysis.parallel import grid_points, sweep
    from tradingd.config import PluginSpec

    config = tiny_config(signals=(PluginSpec("multi_factor"),))
    config = dataclasses.replace(  # a quick strategy: EWMA volatility, one risk rule
        config,
        sizing=dataclasses.replace(
            config.sizing, params={**config.sizing.params, "volatility": "ewma"}
        ),
        risk=(PluginSpec("max_position", params={"max_position_pct": 0.05}),),
    )
    grid = {"sizing.params.kelly_multiplier": [0.25, 0.5], "costs.commission_pct": [0.0, 0.002]}
    assert grid_points(grid) == [
        {"sizing.params.kelly_multiplier": 0.25, "costs.commission_pct": 0.0},
        {"sizing.params.kelly_multiplier": 0.25, "costs.commission_pct": 0.002},
        {"sizing.params.kelly_multiplier": 0.5, "costs.commission_pct": 0.0},
        {"sizing.params.kelly_multiplier": 0.5, "costs.commission_pct": 0.002},
    ]
    panel = tiny_panel()
    inline = sweep(config, grid, panel=panel, workers=0, out_dir=str(tmp_path))
    # two of the points again, in two worker processes: the same summaries
    pooled = sweep(config, {**grid, "costs.commission_pct": [0.002]}, panel=panel, workers=2)
    assert [r["values"] for r in inline] == grid_points(grid)
    assert len({r["run_id"] for r in inline}) == 4  # one run id per variant
    for a, b in zip(inline[1::2], pooled, strict=True):
        assert a["values"] == b["values"] and a["run_id"] == b["run_id"]
        assert json.dumps(a["summary"], sort_keys=True) == json.dumps(b["summary"], sort_keys=True)
    for a in inline:
        saved = json.loads((tmp_path / a["run_id"] / "config.json").read_text())
        assert (
            saved["sizing"]["params"]["kelly_multiplier"]
            == a["values"]["sizing.params.kelly_multiplier"]
        )
        assert saved["costs"]["commission_pct"] == a["values"]["costs.commission_pct"]
    s = {tuple(r["values"].values()): r["summary"] for r in inline}
    assert s[(0.25, 0.0)]["commission_paid"] == 0.0 < s[(0.25, 0.002)]["commission_paid"]
    assert s[(0.25, 0.0)]["exposure"] < s[(0.5, 0.0)]["exposure"]  # half the Kelly bet


def test_sweep_workers_log_warnings_only_as_fold_workers_do(capfd):
    """A sweep's worker process ignored log.level: its structlog was never configured, and
    it printed every debug line (16,367 risk.verdict lines for 4 small points at "info")."""
    import re

    from tradingd.analysis.parallel import sweep
    from tradingd.config import PluginSpec

    config = tiny_config(signals=(PluginSpec("multi_factor"),))
    config = dataclasses.replace(
        config,
        sizing=dataclasses.replace(
            config.sizing, params={**config.sizing.params, "volatility": "ewma"}
        ),
        log=dataclasses.replace(config.log, level="info", format="json"),
    )
    capfd.readouterr()
    [point] = sweep(config, {"costs.commission_pct": [0.0]}, panel=tiny_panel(), workers=1)
    assert point["summary"]["fills"] > 0  # the point traded: its engine had things to say
    out, err = capfd.readouterr()
    chatty = []
    for line in (out + err).splitlines():
        if line.startswith("{"):
            if json.loads(line).get("level") not in ("warning", "error", "critical"):
                chatty.append(line)
        elif re.search(r"\[\s*(debug|info)\s*\]|risk\.verdict", line):
            chatty.append(line)  # structlog's unconfigured console lines
    assert chatty == [], f"{len(chatty)} lines below warning, e.g. {chatty[:2]}"


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({}, "non-empty mapping"),
        ({"costs.commission_pct": []}, "non-empty list"),
        ({"costs.commision_pct": [0.1]}, "unknown key.*costs.commision_pct"),
        ({"signals[7].weight": [1.0]}, r"signals\[7\] does not exist"),
        ({"costs.commission_pct": ["x"]}, "must be a number"),
    ],
)
def test_bad_grids_are_value_errors(grid, match):
    from tradingd.analysis.parallel import sweep

    with pytest.raises(ValueError, match=match):
        sweep(tiny_config(), grid, panel=tiny_panel(), workers=0)


@pytest.mark.parametrize("where", [{"workers": 2}, {"ray_address": "auto"}])
def test_monte_carlo_paths_do_not_depend_on_where_they_ran(where, request):
    """Monte Carlo chunks through `task_map` (local processes, Ray) give the serial result
    bit for bit: each chunk is seeded by its index, not by the worker that runs it."""
    import numpy as np

    from tradingd.analysis.montecarlo import MonteCarloConfig, simulate
    from tradingd.analysis.parallel import task_map

    if "ray_address" in where:
        request.getfixturevalue("ray_session")
    r = np.random.default_rng(11).standard_t(4, size=900) * 0.01 + 0.0003
    config = MonteCarloConfig(paths=600, seed=3, chunk_size=100, methods=("iid", "stationary"))
    serial = simulate(r, config)
    spread = simulate(r, config, map_fn=task_map(**where))
    assert json.dumps(spread, sort_keys=True, default=str) == json.dumps(
        serial, sort_keys=True, default=str
    )
    other_seed = simulate(r, MonteCarloConfig(paths=600, seed=4, chunk_size=100))
    assert other_seed["methods"]["iid"] != serial["methods"]["iid"]  # the comparison can fail


def _start_then_work(path: str) -> None:
    """A long task (a walk-forward fold's training): says it started, then works on."""
    Path(path).write_text("started")
    time.sleep(120)


def test_ctrl_c_abandons_the_running_tasks(tmp_path, monkeypatch):
    """Ctrl-C while tasks run: their workers are ended, not waited for (a fold's training
    runs for minutes inside TensorFlow, which sees no signal until its call returns), and the
    interruption goes on up. Before, the command sat until every running task had ended."""
    from tradingd.analysis import parallel

    started = tmp_path / "started"
    pools: list = []
    processes: list = []

    class Pool(parallel.ProcessPoolExecutor):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            pools.append(self)

    real_wait = parallel.wait

    def wait_then_interrupt(pending, return_when):
        while not started.exists():  # the task is running (polled, with a bounded wait)
            real_wait(pending, timeout=0.05, return_when=return_when)
        processes.extend(pools[0]._processes.values())
        raise KeyboardInterrupt

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(parallel, "wait", wait_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_tasks(_start_then_work, [str(started)], workers=1)
    assert processes
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == -signal.SIGTERM  # ended, not finished


def _fail_once_the_other_runs(paths: tuple[str, str]) -> None:
    """Task 0 fails once task 1 has started; task 1 works on (a fold in training)."""
    mine, other = paths
    if mine == "fail":
        while not Path(other).exists():  # the other task is running (polled)
            time.sleep(0.01)
        raise ValueError("task 0 failed")
    _start_then_work(mine)


def test_a_failing_task_ends_the_running_ones(tmp_path, monkeypatch):
    """A task's error stops the run: the other running task's worker is ended, not waited
    for (its result would be discarded). Before, the error waited for it, and a Ctrl-C
    during that wait left the pool's threads and workers waiting on each other for good."""
    from tradingd.analysis import parallel

    started = str(tmp_path / "started")
    processes: list = []
    real_terminate = parallel._terminate

    def terminate(pool):
        processes.extend(pool._processes.values())
        real_terminate(pool)

    monkeypatch.setattr(parallel, "_terminate", terminate)
    with pytest.raises(ValueError, match="task 0 failed"):
        run_tasks(_fail_once_the_other_runs, [("fail", started), (started, "")], workers=2)
    assert processes
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode is not None
    assert any(p.exitcode == -signal.SIGTERM for p in processes)  # the one still working


_ORPHAN_SCRIPT = """
import os, sys, time
from pathlib import Path

from tradingd.analysis.parallel import run_tasks


def task(arg):
    folder, seconds = arg
    Path(folder, str(os.getpid())).touch()
    time.sleep(seconds)


if __name__ == "__main__":
    run_tasks(task, [(sys.argv[1], 600.0), (sys.argv[1], 0.0)], workers=2)
"""


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux: /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    """Running, not ended nor a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_do_not_outlive_a_parent_killed_with_sigkill(tmp_path):
    """`tradingd walkforward` / `report --workers` killed with SIGKILL: its workers (one
    working on a task, one waiting for the next) were re-parented to PID 1 and lived on for
    good, each blocked reading its task pipe (one held 148 MB after 3 minutes). They end
    when their parent does, as the backtest's writer process and GARCH worker do (the end
    of a pipe only the parent writes), and so does multiprocessing's resource tracker."""
    import subprocess
    import sys

    script = tmp_path / "orphans.py"
    script.write_text(_ORPHAN_SCRIPT)
    marks = tmp_path / "started"
    marks.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(marks)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120  # two interpreters importing tradingd, loaded box
        while len(list(marks.iterdir())) < 2:  # both workers have run a task
            assert parent.poll() is None, "the script ended before its workers started"
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        workers = {int(p.name) for p in marks.iterdir()}
        children = _children(parent.pid)
        assert workers <= children  # (the rest: multiprocessing's resource tracker)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while (left := {pid for pid in children if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # not left behind by a failing test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes {sorted(left)} outlived their parent (workers: {workers})"
