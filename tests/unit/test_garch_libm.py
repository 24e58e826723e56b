"""GARCH sizing gives the same bits whatever SIMD loops numpy picks on this CPU.

numpy's AVX-512 log differs from its AVX2 log in the last bit for some prices (40.4 is one),
and a GARCH fit one ULP apart sized an S&P 500 backtest differently from the second half on
(1,870 fills against 2,234). The log returns and the two CPU-dependent calls inside arch's
fit (the backcast's 0.94 ** k and the likelihood's log) use the C library instead."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tradingd.environment import numpy_simd
from tradingd_plugins.sizing import garch as garch_mod
from tradingd_plugins.sizing.garch import libm_log, log_returns, try_garch_fit

positive = st.floats(1e-300, 1e300, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(positive, min_size=1, max_size=40))
@example([40.4, 40.4, 40.4, 40.4, 40.4, 40.4, 40.4, 40.4, 40.4, 40.4, 40.4, 40.4, 40.4, 40.4])
def test_libm_log_is_the_c_librarys_log_bit_for_bit(xs):
    got = libm_log(np.array(xs))
    assert got.dtype == np.float64
    assert [v.hex() for v in got.tolist()] == [math.log(x).hex() for x in xs]


def test_log_returns_are_the_differences_of_the_c_librarys_logs():
    close = np.array(
        [
            [40.4, 10.0, np.nan],
            [41.0, np.nan, 5.0],
            [40.4, 0.0, 6.0],
            [39.9, -1.0, 0.0],
            [40.4, 12.5, np.nan],
        ]
    )
    got = log_returns(close)
    # The second series' missing and non-positive prices lie between two prices: each counts
    # as the last price before it (returns 0, 0, 0, then log(12.5 / 10) out of the gap); the
    # third's are before its first price and after its last: NaN returns.
    filled = close.copy()
    filled[1:4, 1] = 10.0
    ref = np.array(
        [[math.log(x) if x == x and x > 0 else math.nan for x in row] for row in filled.tolist()]
    )
    want = ref[1:] - ref[:-1]
    assert got.shape == (4, 3) and np.isnan(got[:, 2]).tolist() == [True, False, True, True]
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert [v.hex() for v in got[ok].tolist()] == [v.hex() for v in want[ok].tolist()]


def test_the_fits_backcast_and_likelihood_use_the_c_library():
    from arch.univariate import GARCH, Normal

    garch_cls, normal_cls, warm_cls = garch_mod._libm_classes()
    assert issubclass(warm_cls, garch_cls) and issubclass(garch_cls, GARCH)
    assert issubclass(normal_cls, Normal)
    # Overridden here, not inherited (on a CPU without AVX-512 the values would not tell).
    assert {"backcast", "variance_bounds"} <= set(garch_cls.__dict__)
    assert "loglikelihood" in normal_cls.__dict__
    # A cold fit's grid of starting values is scored with this likelihood too.
    assert isinstance(garch_cls(p=1, o=0, q=1)._normal, normal_cls)
    assert isinstance(warm_cls(np.array([0.1, 0.1, 0.8]))._normal, normal_cls)
    rng = np.random.default_rng(5)
    resids = rng.standard_normal(120) * 1.3
    for n in (3, 75, 120):
        tau = min(75, n)
        w = [math.pow(0.94, k) for k in range(tau)]
        total = sum(w)
        want = float(np.sum((resids[:tau] ** 2.0) * (np.array(w) / total)))
        assert garch_cls(p=1, o=0, q=1).backcast(resids[:n]).hex() == want.hex()
        bounds = garch_cls(p=1, o=0, q=1).variance_bounds(resids[:n])
        arch_bounds = GARCH(p=1, o=0, q=1).variance_bounds(resids[:n])
        assert bounds.shape == arch_bounds.shape == (n, 2) and bounds.flags.c_contiguous
        np.testing.assert_allclose(bounds, arch_bounds, rtol=1e-13)  # arch's, up to the weights
    sigma2 = rng.uniform(0.2, 5.0, 200)
    r = rng.standard_normal(200)
    lls = normal_cls().loglikelihood([], r, sigma2, individual=True)
    want = [
        -0.5 * (math.log(2 * math.pi) + math.log(s) + x**2.0 / s)
        for x, s in zip(r.tolist(), sigma2.tolist(), strict=True)
    ]
    assert [v.hex() for v in lls.tolist()] == [v.hex() for v in want]
    assert normal_cls().loglikelihood([], r, sigma2) == np.sum(lls)


_FIT_SCRIPT = """
import json, math, sys
import numpy as np
from tradingd_plugins.sizing.garch import GarchParams, try_garch_fit
rng = np.random.default_rng(11)
out = []
for j in range(int(sys.argv[1])):
    n = 600
    a, b = 0.04 + 0.1 * rng.random(), 0.75 + 0.2 * rng.random()
    b = min(b, 0.97 - a)
    s2, r = 1e-4, np.empty(n)
    for t in range(n):
        r[t] = np.sqrt(s2) * rng.standard_normal()
        s2 = 2e-6 + a * r[t] ** 2 + b * s2
    # 40-ish prices whose logs differ by the CPU's loops: returns through log_returns
    # (math.exp: numpy's exp depends on the CPU's loops too, and the inputs must not)
    close = np.array([40.4 * math.exp(v) for v in np.cumsum(np.concatenate([[0.0], r]))])
    from tradingd_plugins.sizing.garch import log_returns
    x = log_returns(close)
    cold, why = try_garch_fit(x[:500])
    warm, why2 = try_garch_fit(x[100:], starting=cold)
    out.append([None if p is None else [float(v).hex() for v in (p.mu, p.omega, p.alpha,
                p.beta, p.sigma2)] for p in (cold, warm)] + [why, why2])
print(json.dumps(out))
"""


def _fits(env: dict[str, str], n: int) -> list:
    done = subprocess.run(
        [sys.executable, "-c", _FIT_SCRIPT, str(n)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fits_are_the_same_bits_with_numpys_simd_loops_on_and_off():
    found = numpy_simd()["found"]
    if not found:
        pytest.skip("numpy dispatches to nothing beyond its baseline on this CPU")
    n = 40
    on = _fits({}, n)
    off = _fits({"NPY_DISABLE_CPU_FEATURES": " ".join(found)}, n)
    assert sum(1 for row in on if row[0] is not None) >= n // 2  # most series fit
    assert on == off


def test_a_fit_cache_of_the_numpy_era_is_not_reused(tmp_path):
    from tradingd_plugins.sizing.garch_fits import FitCache, blas_kind, cache_file_name

    (tmp_path / cache_file_name(blas_kind())).write_text(
        json.dumps({"format": "tradingd-garch-fits/1", "entries": [["00", None, "old"]]})
    )
    cache = FitCache(str(tmp_path), 10)
    with capture_logs() as logs:
        assert cache.get(bytes.fromhex("00")) is None
    assert [e["event"] for e in logs] == ["garch_cache.ignored"]


def test_a_fit_still_converges_to_arch_quality():
    """The C library's log moves a fit by rounding only: the likelihood at our optimum is
    arch's own (with numpy's log) to 1e-9 relative."""
    from arch import arch_model

    # A GARCH(1,1) path (alpha 0.08, beta 0.9): i.i.d. noise fits alpha = 0, refused since
    # the alpha floor (the test then skipped).
    rng = np.random.default_rng(3)
    r = np.empty(600)
    s2 = 1e-4
    for t in range(600):
        r[t] = np.sqrt(s2) * rng.standard_normal()
        s2 = 2e-6 + 0.08 * r[t] ** 2 + 0.9 * s2
    params, why = try_garch_fit(r)
    assert params is not None, why
    model = arch_model(r * 100, mean="Constant", vol="GARCH", p=1, q=1, dist="normal")
    res = model.fit(disp="off")
    ours = [params.mu * 100, params.omega * 1e4, params.alpha, params.beta]
    assert model.fix(ours).loglikelihood == pytest.approx(res.loglikelihood, rel=1e-9)
    np.testing.assert_allclose(ours, res.params.values, rtol=1e-4)


def test_a_fit_cache_made_with_other_blas_kernels_is_not_reused(tmp_path):
    from tradingd_plugins.sizing.garch_fits import CACHE_FORMAT, FitCache, blas_kind

    made = FitCache(str(tmp_path), 10)
    made.put(b"k", (None, "why"))
    made.save()
    assert made.path is not None
    data = json.loads(made.path.read_text())
    assert data["format"] == CACHE_FORMAT and data["blas"] == blas_kind()
    assert FitCache(str(tmp_path), 10).get(b"k") == (None, "why")
    data["blas"] = "openblas/SomeOtherCore"
    made.path.write_text(json.dumps(data))  # (a file copied from another machine)
    with capture_logs() as logs:
        assert FitCache(str(tmp_path), 10).get(b"k") is None
    [event] = logs
    assert event["event"] == "garch_cache.ignored" and "SomeOtherCore" in event["reason"]


def _blas_threads(monkeypatch):  # type: ignore[no-untyped-def]
    """A function setting the BLAS thread count `blas_kind` reports (as OPENBLAS_NUM_THREADS
    or a sweep's worker would), or a skip without a BLAS seen by threadpoolctl."""
    import tradingd.environment

    real = tradingd.environment.blas()
    if not any(b.get("user_api") == "blas" for b in real):
        pytest.skip("no BLAS library seen by threadpoolctl in this process")

    def threads(n: int) -> None:
        seen = [{**b, "num_threads": n} if b.get("user_api") == "blas" else b for b in real]
        monkeypatch.setattr(tradingd.environment, "blas", lambda: seen)

    return threads


def test_a_fit_cache_made_with_another_blas_thread_count_is_not_reused(tmp_path, monkeypatch):
    """OpenBLAS's thread count moves a fit in its last digits (a replay's final equity:
    98,172.07 with one thread, 98,176.47 with two), and a two-thread run given a one-thread
    run's cache gave the one-thread figure. The count is in the file's label."""
    from tradingd_plugins.sizing.garch_fits import FitCache

    threads = _blas_threads(monkeypatch)
    threads(1)
    made = FitCache(str(tmp_path), 10)
    made.put(b"k", (None, "why"))
    made.save()
    assert FitCache(str(tmp_path), 10).get(b"k") == (None, "why")  # same threads: reused
    threads(4)
    assert FitCache(str(tmp_path), 10).get(b"k") is None


def test_fit_caches_of_two_blas_thread_counts_in_one_folder_keep_both_sets(tmp_path, monkeypatch):
    """One file for every label: a 1-thread sweep (or a walk-forward fold) and a
    default-thread daemon sharing the folder each ignored the other's file at its save and
    replaced it, erasing the other's fits at every save. Each label has its own file now,
    merged under its own lock."""
    from tradingd_plugins.sizing.garch_fits import FitCache

    threads = _blas_threads(monkeypatch)
    threads(1)
    sweep = FitCache(str(tmp_path), 10)
    sweep.put(b"one", (None, "one thread"))
    threads(4)
    daemon = FitCache(str(tmp_path), 10)
    daemon.put(b"four", (None, "four threads"))
    threads(1)
    sweep.save()  # each saves under the label it loaded with
    threads(4)
    daemon.save()
    threads(1)
    sweep.put(b"one more", (None, "one thread"))
    sweep.save()  # the daemon's fits are still there after the sweep's next save
    threads(4)
    again = FitCache(str(tmp_path), 10)
    assert again.get(b"four") == (None, "four threads") and again.get(b"one") is None
    threads(1)
    again = FitCache(str(tmp_path), 10)
    assert again.get(b"one") == (None, "one thread") and again.get(b"four") is None
    assert again.get(b"one more") == (None, "one thread")
    assert sweep.path != daemon.path
    names = {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert names == {p.name for p in (sweep.path, daemon.path) if p is not None}
    assert "garch-fits.json" not in names  # (the one file of every label, before)


def test_the_fit_cache_files_of_labels_are_bounded_and_the_old_single_file_is_dropped(
    tmp_path, monkeypatch
):
    """A `var/` shared by machines or thread counts holds one file per label: at most
    CACHE_LABELS of them, the least recently saved going first; the one file of earlier
    versions (`garch-fits.json`, every label in turn) is not read, and removed at a save."""
    import os

    from tradingd_plugins.sizing import garch_fits
    from tradingd_plugins.sizing.garch_fits import LEGACY_CACHE_FILE, FitCache

    threads = _blas_threads(monkeypatch)
    (tmp_path / LEGACY_CACHE_FILE).write_text(
        json.dumps(
            {
                "format": garch_fits.CACHE_FORMAT,
                "blas": garch_fits.blas_kind(),  # (the test's count: never asked for below)
                "entries": [["00", None, "legacy"]],
            }
        )
    )
    paths = []
    for n in range(1, garch_fits.CACHE_LABELS + 3):
        threads(n)
        c = FitCache(str(tmp_path), 10)
        assert c.get(bytes.fromhex("00")) is None  # the legacy file is never read
        c.put(b"k", (None, str(n)))
        c.save()
        assert c.path is not None
        os.utime(c.path, (n, n))  # saved in this order, whatever the clock's resolution
        paths.append(c.path)
    assert not (tmp_path / LEGACY_CACHE_FILE).exists()
    kept = sorted(p.name for p in tmp_path.glob("garch-fits-*.json"))
    assert kept == sorted(p.name for p in paths[-garch_fits.CACHE_LABELS :])
    threads(len(paths))
    assert FitCache(str(tmp_path), 10).get(b"k") == (None, str(len(paths)))


def test_the_fit_cache_follows_threadpoolctls_limits_in_process(tmp_path):
    """What a walk-forward fold does (`pinned`: threadpool_limits): fits cached under one
    thread are not served once the limit is lifted."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from tradingd_plugins.sizing.garch_fits import FitCache

    counts = {
        lib["num_threads"]
        for lib in threadpoolctl.threadpool_info()
        if lib.get("user_api") == "blas"
    }
    if not counts or max(counts) < 2:
        pytest.skip("the BLAS runs one thread already: no other count to compare with")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        made = FitCache(str(tmp_path), 10)
        made.put(b"k", (None, "why"))
        made.save()
        assert FitCache(str(tmp_path), 10).get(b"k") == (None, "why")
    assert FitCache(str(tmp_path), 10).get(b"k") is None


def test_a_fit_cache_that_cannot_be_written_leaves_no_partial_file(tmp_path, monkeypatch):
    """On a full disk each failed save left its partial temporary file (about 4 MB on the S&P
    500 run), never removed, and the error went to the log with a traceback although the
    cache is optional."""
    from pathlib import Path

    from tradingd_plugins.sizing.garch_fits import FitCache

    cache = FitCache(str(tmp_path), 10)
    cache.put(b"k", (None, "why"))
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):  # type: ignore[no-untyped-def]
        real(self, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with capture_logs() as logs:
        cache.save()
    assert [e["event"] for e in logs] == ["garch_cache.unwritable"]
    assert logs[0]["log_level"] == "warning"
    assert cache.path is not None
    assert [p.name for p in tmp_path.iterdir()] == [f".{cache.path.name}.lock"]  # empty, kept


def _save_fits(folder: str, keys: list[bytes], barrier) -> None:  # type: ignore[no-untyped-def]
    from tradingd_plugins.sizing.garch_fits import FitCache

    cache = FitCache(folder, 1000)
    len(cache)  # loaded at the start, as a run does
    for k in keys:
        cache.put(k, (None, k.hex()))
    barrier.wait()
    cache.save()


def test_fit_caches_saved_by_parallel_runs_keep_every_runs_fits(tmp_path, monkeypatch):
    """Each run loaded the file at its start and replaced it at its end: of parallel runs
    only the last one's fits were kept (15,090 of 29,174 entries). Now a save merges into
    what the file holds under a lock: two runs that loaded the same file, then saved while
    the other was saving, leave both runs' fits. Deterministic: A stops after reading the
    file until B has reached the lock (or, without one, written its own file)."""
    import fcntl
    import threading

    from tradingd_plugins.sizing import garch_fits
    from tradingd_plugins.sizing.garch_fits import FitCache

    base = FitCache(str(tmp_path), 100)
    base.put(b"old", (None, "base"))
    base.save()
    a, b = FitCache(str(tmp_path), 100), FitCache(str(tmp_path), 100)
    assert len(a) == len(b) == 1  # both loaded the base file
    a.put(b"a", (None, "a"))
    b.put(b"b", (None, "b"))
    a_inside, b_got_there = threading.Event(), threading.Event()
    real_dumps, real_flock = json.dumps, fcntl.flock

    def dumps(obj, *args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "A":
            a_inside.set()
            assert b_got_there.wait(30), "B never reached the lock or its own write"
        else:
            b_got_there.set()
        return real_dumps(obj, *args, **kwargs)

    def flock(fd, op):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "B":
            b_got_there.set()  # about to wait: A holds the lock
        return real_flock(fd, op)

    monkeypatch.setattr(garch_fits.json, "dumps", dumps)
    monkeypatch.setattr(fcntl, "flock", flock)

    def b_saves() -> None:
        assert a_inside.wait(30)
        b.save()

    threads = [
        threading.Thread(target=a.save, name="A"),
        threading.Thread(target=b_saves, name="B"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    monkeypatch.undo()
    kept = FitCache(str(tmp_path), 100)
    assert {k: kept.get(k) for k in (b"old", b"a", b"b")} == {
        b"old": (None, "base"),
        b"a": (None, "a"),
        b"b": (None, "b"),
    }
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    # The bound holds: a smaller cache keeps the last saver's fits first.
    small = FitCache(str(tmp_path), 2)
    small.put(b"c", (None, "c"))
    small.save()
    assert small.path is not None
    rows = json.loads(small.path.read_text())["entries"]
    assert len(rows) == 2 and rows[0][0] == b"c".hex()


def test_fit_caches_of_four_processes_saved_at_once_keep_all_their_fits(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tradingd_plugins.sizing.garch_fits import FitCache

    ctx = multiprocessing.get_context("spawn")
    keys = [[f"{i}-{j}".encode() for j in range(50)] for i in range(4)]
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4)
        with ProcessPoolExecutor(4, mp_context=ctx) as pool:
            list(pool.map(_save_fits, [str(tmp_path)] * 4, keys, [barrier] * 4))
    kept = FitCache(str(tmp_path), 1000)
    assert len(kept) == 200
    assert all(kept.get(k) == (None, k.hex()) for ks in keys for k in ks)
