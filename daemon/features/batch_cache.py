"""An on-disk cache of a replay's prepared batch features, so reruns on the same data skip
computing them.

A researcher's reruns change a risk limit or a sizing parameter far more often than the data
or the features: computing the default strategy's 24 features over 496 symbols x 19 years
takes 3-4 s of every such run and gives the same arrays every time. An entry is only reused
when nothing that decides the values can have changed: the key covers the Panel's content (a
BLAKE2b digest of its times, symbols and every field), the feature names, the catalog's
indicator periods and cross-sectional method, the source text of every module of this
package (how features are computed) and the versions of numpy, the TA-Lib wrapper and its C
library. Features defined at run time (`Catalog.register`, `Catalog.window`) have their
meaning outside that code: such a catalog is never cached.

What is kept is what `BatchFeatureSource.prepare` makes of the features, the form a replay
reads: the values with 0 where they were not finite, and where they were finite (one bit per
value). One file per entry: a `.npy` header and the (features, T, N) float64 values, then the
(features, T, ceil(N / 8)) packed bits. A hit maps the file into memory (copy-on-write)
instead of reading it: pages are read where the replay reads them, nothing is copied.
Reading 383 MB into fresh memory took 1.2 s on the VMs measured, and mapping the raw values
and cleaning them there copied nearly every page (every row has a symbol not yet listed).

Keep the folder on a local disk: a process that has an entry mapped keeps its copy when
another process on the machine replaces or evicts it, which a network file system does not
promise; and the key covers the CPU's features, which numpy's results can depend on. Written
to a temporary name and renamed into place, bounded by `max_bytes` (least recently used
first), with the data cache's rules (`feeds/panel_cache.py`): a damaged entry is deleted and
the features computed again, an entry that cannot be read now (permissions, descriptors) is
left alone, an unwritable directory is a warning, and the cache never makes a run fail.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import structlog

from ..feeds.panel import FIELDS, Panel
from ..feeds.panel_cache import _evict, _tmp_path, _too_large, cache_root
from .catalog import Catalog, IndicatorNode, topological

log = structlog.get_logger(__name__)

# Bump when the entry layout or the meaning of a key changes: old entries then never match.
CACHE_FORMAT = 1
ENTRY_SUFFIX = ".npy"


def default_cache_dir() -> Path:
    """Beside the data cache: `$XDG_CACHE_HOME` (or ~/.cache)/tradingd/features."""
    return cache_root() / "features"


class FeatureCache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    def key(self, panel: Panel, names: Sequence[str], catalog: Catalog) -> str | None:
        """The hex SHA-256 naming the entry of these features (None: not cacheable)."""
        if self.max_bytes <= 0 or not names or catalog.user_defined or type(catalog) is not Catalog:
            return None  # (a subclass may compute features this package's code does not)
        code = _code_fingerprint()
        if not code:  # shipped without its sources: a change to them could not be seen
            return None
        decisive = {
            "format": CACHE_FORMAT,
            "panel": panel_digest(panel),
            "names": list(names),
            "indicators": repr(catalog.ind),
            "cross_method": catalog.cross_method,
            "code": code,
            "libraries": _library_versions(_uses_talib(catalog, names)),
            "cpu": _cpu(),
        }
        text = json.dumps(decisive, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def load(
        self, key: str, names: Sequence[str], shape: tuple[int, int]
    ) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        """({name: (T, N) cleaned values}, (features, T, ceil(N / 8)) packed finite bits), both
        mapped from the entry, or None on a miss. A damaged entry is reported and deleted."""
        entry = self._entry(key)
        started = time.perf_counter()
        f, (t, n) = len(names), shape
        try:
            st = entry.stat()
        except OSError:  # no entry, or a folder this user cannot enter: a miss
            return None
        try:
            values = np.load(entry, mmap_mode="c", allow_pickle=False)
            if (
                values.dtype != np.float64
                or values.shape != (f, t, n)
                or not values.flags.c_contiguous
            ):
                raise ValueError(f"entry holds {values.dtype} {values.shape}, not {(f, t, n)}")
            bits_at = values.offset + values.nbytes
            nb = (n + 7) // 8
            if st.st_size != bits_at + f * t * nb:
                raise ValueError(f"entry is {st.st_size} bytes, not {bits_at + f * t * nb}")
            bits = np.memmap(entry, dtype=np.uint8, mode="r", offset=bits_at, shape=(f, t, nb))
        except OSError as exc:  # cannot be read now (permissions, descriptors, memory): kept
            log.warning("features.cache_unavailable", path=str(entry), error=f"{exc}")
            return None
        except Exception as exc:  # the file itself is wrong (truncated, foreign): replaced
            log.warning(
                "features.cache_unreadable", path=str(entry), error=f"{type(exc).__name__}: {exc}"
            )
            with contextlib.suppress(OSError):
                if entry.stat().st_ino == st.st_ino:  # not one another process just wrote
                    entry.unlink()
            return None
        with contextlib.suppress(OSError):  # a read-only cache still serves hits
            os.utime(entry)
        log.info(
            "features.cache_hit",
            path=str(entry),
            key=key[:12],
            seconds=round(time.perf_counter() - started, 3),
        )
        # Plain ndarray views (not np.memmap): what plugins get is an array like any other.
        out = {name: np.asarray(values[i]) for i, name in enumerate(names)}
        return out, np.asarray(bits)

    def store(
        self,
        key: str,
        names: Sequence[str],
        values: Mapping[str, np.ndarray],
        bits: Mapping[str, np.ndarray],
    ) -> None:
        """Write the entry (cleaned values, packed finite bits per feature) atomically and
        evict down to `max_bytes`; never raises: a cache that cannot keep it only costs the
        next run time."""
        entry = self._entry(key)
        t, n = values[names[0]].shape
        f, nb = len(names), (n + 7) // 8
        head = io.BytesIO()
        header = {"descr": np.dtype(np.float64).str, "fortran_order": False, "shape": (f, t, n)}
        np.lib.format.write_array_header_1_0(head, header)
        size = len(head.getvalue()) + f * t * (n * 8 + nb)  # the file's size
        if size > self.max_bytes:
            _too_large(entry, size, self.max_bytes, event="features")
            return
        tmp = _tmp_path(self.directory, key)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(head.getvalue())
                # The file is the stacked arrays, written without stacking them in memory.
                for name in names:
                    fh.write(_bytes(values[name], np.float64, (t, n), name))
                for name in names:
                    fh.write(_bytes(bits[name], np.uint8, (t, nb), name))
                # On disk before it gets its name: after a crash some file systems show a
                # renamed file at its full size with zeros where the data was not written yet,
                # which would read as features of 0 that are never ready (a backtest without
                # a trade, silently). The size check catches a short file, not that.
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, entry)
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("features.cache_unwritable", path=str(self.directory), error=f"{exc}")
            return
        log.debug("features.cache_stored", path=str(entry), key=key[:12], bytes=size)
        _evict(
            self.directory, keep=entry, max_bytes=self.max_bytes, event="features",
            suffix=ENTRY_SUFFIX,
        )  # fmt: skip

    def _entry(self, key: str) -> Path:
        return self.directory / f"{key}{ENTRY_SUFFIX}"


def _bytes(a: np.ndarray, dtype: type, shape: tuple[int, int], name: str) -> memoryview:
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.shape != shape:
        raise ValueError(f"feature {name!r} has shape {a.shape}, not {shape}")
    return a.data.cast("B")


def panel_digest(panel: Panel) -> str:
    """BLAKE2b of the Panel's content (times, symbols, every field's shape and bytes): ~0.1 s
    for the S&P 500 file's 134 MB, against seconds of features."""
    h = hashlib.blake2b(digest_size=32)
    times = np.ascontiguousarray(panel.times)
    h.update(f"{times.dtype.str}{times.shape}".encode())
    h.update(times.view(np.int64).data.cast("B"))
    h.update(json.dumps(list(panel.symbols)).encode())
    for name in FIELDS:
        a = np.ascontiguousarray(getattr(panel, name), dtype=np.float64)
        h.update(f"{name}{a.shape}".encode())
        h.update(a.data.cast("B"))
    return h.hexdigest()


@functools.cache
def _code_fingerprint() -> dict[str, str]:
    """Every module of this package: a change to how any feature is computed must miss."""
    here = Path(__file__).parent
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(here.glob("*.py"))}


@functools.cache
def _cpu() -> dict[str, object]:
    """numpy picks code paths by CPU (its vectorised log1p, say, differs in the last bits with
    and without AVX-512): an entry made on another machine, or with other
    NPY_*_CPU_FEATURES settings, is another key."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # not where numpy 2 keeps it
        features = {"unknown": True}
    return {
        "machine": platform.machine(),
        "features": sorted(k for k, v in features.items() if v),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NPY_")},
    }


def _uses_talib(catalog: Catalog, names: Sequence[str]) -> bool:
    """Whether computing these features calls TA-Lib (an indicator among them or their
    inputs): only then does its version decide their values."""
    nodes = topological([catalog.node(n) for n in names])
    return any(isinstance(n, IndicatorNode) for n in nodes)


@functools.cache
def _library_versions(talib_too: bool = True) -> dict[str, str]:
    if not talib_too:
        # Importing TA-Lib (and the pandas it imports) would cost a load from the cache
        # 0.2 s, for features it does not compute (core/lazy.py).
        return {"numpy": np.__version__}
    import talib

    # The wrapper's version and the C library's it was built with (they can differ).
    return {
        "numpy": np.__version__,
        "talib": str(getattr(talib, "__version__", "?")),
        "ta-lib": str(getattr(talib, "__ta_version__", "?")),
    }
