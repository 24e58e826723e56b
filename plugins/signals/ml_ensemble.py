"""The ML signal: the CNN+BiLSTM and random-forest pair through onnxruntime.

Each bar the plugin appends the engine's feature values to a per-symbol window (it never
computes an indicator itself), then predicts for every symbol with a full window in one
batched call per model.

Which model: `model_dir` when set (it must exist); otherwise `var/models/current` under the
working directory when it exists (where `tradingd retrain` publishes); otherwise the pair
shipped inside the package. The choice and its reason are logged (`model.location`), and the
plugin exposes `model_path` (the resolved directory) and `version` for the run's summary.
A live daemon's plugin follows a switched `var/models/current`: the engine awaits
`prepare_bar` before each trading bar's score, which loads and tries the new model in a worker
thread (not on the event loop), and the try's predictions of the bar's windows are that
bar's; the outgoing version's prediction cache file is saved and the new version's read in a
worker thread too (`score` without `prepare_bar` does all of it on the caller's thread).

Prediction cache: the models' inputs depend on more than (symbol, bar time): cross-sectional
features on the universe, recursive indicators on where the data starts. So a prediction is
keyed by exactly what the models see, the float32 (window, features) array of that symbol,
salted with the model version, the ONNX files' sha256 (the card's model_version alone is not
checked against the files), the card's input scaling and feature set, the ensemble weights,
onnxruntime's thread count and the runtime (onnxruntime's version and the CPU's vector
instruction sets: `runtime_identity`). A
different universe, data start, model or runtime can never be served another run's
prediction, and a rerun of the same bars still skips onnxruntime.

The key is cheap to keep up to date (`WindowKeys`): each new feature row of a symbol is hashed
once (BLAKE2b, 192 bits, one call per symbol per bar), and a window's key is a fixed linear
combination of its rows' digests, modulo the prime p = 2^61 - 1, in three independent lanes:
key = salt + sum_j 2^(j mod 60) * digest_(j div 60)(row j), j = 0 for the oldest row, where
digest_b is the b-th 192 bits of the row's digest (a window longer than 60 rows uses one set
per block of 60 rows). Sliding the window by one bar is then a subtraction, a rotation and an
addition per lane: no pass over the window's 1,200 values per bar. Two different windows
(or salts) get the same key only by chance: they differ at some position j, whose row R enters
the two sums with coefficients that are different sums of distinct powers 2^i (i < 60), so
different integers below 2^60, so different modulo p; the difference of the keys is then that
nonzero coefficient times R's digest plus a term independent of it, zero with probability at
most 9/2^64 per lane (BLAKE2b taken as a random function; a 64-bit digest word reduced
modulo p), and the three lanes use independent digest words. The key is the three lanes (183
bits): two distinct inputs share it with probability below 2^-182, and a cache of 3,000,000
entries (4.5e12 pairs) holds a collision with probability below 10^-42, so a wrong prediction
is never served in practice.

Predictions are held in memory (at most `cache_size` entries, 36 bytes each, plus an index of
1-2 bytes: 3,000,000 = 110 MB, a full replay of 500 symbols x 20 years) as arrays sorted by
key, looked up for the whole bar at once; the predictions new since the last merge wait in a
small dict. Each entry carries when it was last used, so when the bound is reached the entries
used least recently go first (this run's before any other). They are kept in `cache_dir`
between runs, one `.npz` file per model version (written atomically when the run added
predictions, merged under a lock with what the file holds by then: parallel runs keep each
other's predictions, another run's ranked below this run's for the bound; a live daemon
never waits for the lock: while another process holds it, the save is skipped and the
predictions kept in memory for the next one; the newest `cache_versions` files are kept).
A file that is unreadable, of
another format (or of the previous JSON format, `<version>.json`: never read, and removed when
that version's `.npz` is written) or holding a prediction that is not finite is ignored with
a warning. A model output that is not finite stops the prediction (`OnnxModel.run`): it is
never cached.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import hashlib
import json
import os
import platform
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import structlog

from tradingd.core import flock
from tradingd.core.errors import ConfigError
from tradingd.core.ports import BarContext
from tradingd.features.catalog import FeatureSetId, verify_feature_set
from tradingd.inference.onnx import (
    MODELS,
    PUBLISHED_MODEL_DIR,
    EnsemblePredictor,
    ModelCard,
    ModelPair,
)

from .live_accuracy import DirectionalAccuracy

log = structlog.get_logger(__name__)

# /4: the salt names the runtime (`runtime_identity`); a /3 file could no longer hit, so it
# is ignored and replaced at the next save rather than read in full on every start.
# /5: the salt names the ONNX files' sha256 too; a /4 file could no longer hit either.
# /6: the salt names the card's input scaling and feature set; a /5 file could no longer hit.
CACHE_FORMAT = "tradingd-prediction-cache/6"
#: In `cache_dir`: held while a run merges its predictions into a version's file.
CACHE_LOCK = ".lock"

# Window keys (see the module docstring): arithmetic modulo the Mersenne prime 2^61 - 1 on
# uint64 arrays, where multiplying by 2^k is a rotation of 61 bits.
_P = np.uint64((1 << 61) - 1)
_BLOCK = 60  # rows per block: the sums of distinct powers 2^0 .. 2^59 are distinct below _P
_LANES = 3  # 61-bit lanes per key (183 bits)


def _mod(x: np.ndarray) -> np.ndarray:
    """Any uint64 values -> their residues modulo _P, in [0, _P)."""
    y = (x & _P) + (x >> np.uint64(61))  # 2^61 = 1 (mod _P); y <= _P + 7
    return np.where(y >= _P, y - _P, y)


def _add(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _mod(x + y)


def _sub(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _mod(x + (_P - y))


def _times_pow2(x: np.ndarray, k: np.ndarray | np.uint64) -> np.ndarray:
    """x * 2^k mod _P for residues x and 0 <= k < 61: a rotation of their 61 bits."""
    k = np.asarray(k, dtype=np.uint64)
    return ((x << k) | (x >> (np.uint64(61) - k))) & _P


def _half(x: np.ndarray) -> np.ndarray:
    """x / 2 mod _P (x * 2^60) for residues x: a rotation the other way."""
    return (x >> np.uint64(1)) | ((x & np.uint64(1)) << np.uint64(60))


def window_blocks(window: int) -> list[tuple[int, int]]:
    """The blocks of a window, oldest first, as (lag of the block's newest row behind the
    window's newest, rows in the block): a block has its own digest words."""
    out = []
    for start in range(0, window, _BLOCK):
        length = min(_BLOCK, window - start)
        out.append((window - start - length, length))
    return out


def row_digests(rows: np.ndarray, blocks: int) -> np.ndarray:
    """(K, features) float32 rows -> (K, blocks, _LANES) residues: BLAKE2b of each row's bytes,
    one call per row (per 8 words), each 64-bit word reduced modulo _P."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    data = cast(list[bytes], rows.view(np.dtype((np.void, rows.shape[1] * 4))).ravel().tolist())
    words = blocks * _LANES
    parts = []
    for c, start in enumerate(range(0, words, 8)):
        size = 8 * min(8, words - start)
        base = hashlib.blake2b(digest_size=size, person=b"tradingd-row%04d" % c)
        out = []
        for r in data:  # (copying a state is cheaper than the constructor's keywords)
            h = base.copy()
            h.update(r)
            out.append(h.digest())
        parts.append(np.frombuffer(b"".join(out), dtype="<u8").reshape(len(data), size // 8))
    w = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return _mod(w.astype(np.uint64)).reshape(len(data), blocks, _LANES)


def window_keys(digests: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """Keys of whole windows from their rows' digests (B, window, blocks, _LANES), oldest row
    first: salt + sum_j 2^(j mod 60) digest[j, j div 60], per lane. (B, _LANES) uint64.

    The reference that `WindowKeys` keeps up to date one row at a time."""
    b, w = digests.shape[:2]
    acc = np.broadcast_to(salt, (b, _LANES)).copy()
    for j in range(w):
        acc = _add(acc, _times_pow2(digests[:, j, j // _BLOCK], np.uint64(j % _BLOCK)))
    return acc


# Up to this many symbols a bar, `WindowKeys` does its arithmetic on Python ints: the numpy
# form is some 30 array operations a bar whatever the width (81 us a bar for 2 symbols,
# measured; the default backtest's 2 series). The operations are the same, on the same
# integers below 2^64 (nothing wraps: residues are below 2^61), so the keys are the same.
_FEW_SYMBOLS = 8
_P_INT = (1 << 61) - 1


def _mod_int(y: int) -> int:
    y = (y & _P_INT) + (y >> 61)
    return y - _P_INT if y >= _P_INT else y


def _times_pow2_int(x: int, k: int) -> int:
    return ((x << k) | (x >> (61 - k))) & _P_INT


def _half_int(x: int) -> int:
    return (x >> 1) | ((x & 1) << 60)


class WindowKeys:
    """The key of each symbol's window of its last `window` rows, updated in O(1) per row:
    per block, drop the oldest row's term, halve (every term's power of two goes down by one)
    and add the new row's term at the top power. A `reset` symbol starts its window again."""

    few = _FEW_SYMBOLS  # at most this many symbols a call: Python ints (an instance may vary it)

    def __init__(self, n_symbols: int, window: int) -> None:
        self.window = window
        self.blocks = window_blocks(window)
        m = len(self.blocks)
        # the digests of each symbol's last window + 1 rows (a block's row leaving the window
        # is window rows behind the new one), in a ring indexed by the symbol's row count
        self._ring = np.zeros((window + 1, n_symbols, m, _LANES), dtype=np.uint64)
        self._rows = np.zeros(n_symbols, dtype=np.int64)  # rows ever pushed
        self.held = np.zeros(n_symbols, dtype=np.int64)  # rows since the last reset
        self._sums = np.zeros((n_symbols, m, _LANES), dtype=np.uint64)  # per block, no salt

    def reset(self, mask: np.ndarray) -> None:
        self.held[mask] = 0
        self._sums[mask] = 0

    def push(self, idx: np.ndarray, rows: np.ndarray) -> None:
        """The new row (features,) of each symbol of `idx`, float32 as the models see it."""
        size = self.window + 1
        t = self._rows[idx]
        self._rows[idx] = t + 1
        self._ring[t % size, idx] = row_digests(rows, len(self.blocks))
        held = self.held[idx] + 1  # rows of the window so far, this one included
        self.held[idx] = held
        if len(idx) <= self.few:
            self._push_few(idx.tolist(), t.tolist(), held.tolist())
            return
        for k, (lag, length) in enumerate(self.blocks):
            live = held > lag  # the block has rows
            i, tl, before = idx[live], t[live], np.minimum(held[live] - 1 - lag, length)
            if i.size == 0:
                continue
            enter = self._ring[(tl - lag) % size, i, k]
            s = self._sums[i, k]
            full = before == length
            if full.any():  # the block slides: its oldest row leaves
                leave = self._ring[(tl - lag - length) % size, i, k]
                s = np.where(full[:, None], _half(_sub(s, leave)), s)
            top = np.where(full, length - 1, before).astype(np.uint64)[:, None]
            self._sums[i, k] = _add(s, _times_pow2(enter, top))

    def _push_few(self, idx: list[int], t: list[int], held: list[int]) -> None:
        """`push`'s update of the block sums, the same operations on Python ints."""
        size = self.window + 1
        ring, sums = self._ring, self._sums
        for i, ti, h in zip(idx, t, held, strict=True):
            for k, (lag, length) in enumerate(self.blocks):
                if h <= lag:
                    continue  # the block has no rows yet
                before = min(h - 1 - lag, length)
                enter = ring[(ti - lag) % size, i, k].tolist()
                lanes = sums[i, k].tolist()
                if before == length:  # the block slides: its oldest row leaves
                    leave = ring[(ti - lag - length) % size, i, k].tolist()
                    lanes = [
                        _half_int(_mod_int(a + (_P_INT - b)))
                        for a, b in zip(lanes, leave, strict=True)
                    ]
                top = length - 1 if before == length else before
                sums[i, k] = [
                    _mod_int(a + _times_pow2_int(e, top)) for a, e in zip(lanes, enter, strict=True)
                ]

    def keys(self, idx: np.ndarray, salt: np.ndarray) -> np.ndarray:
        """(len(idx), _LANES) keys of symbols whose window is full (held >= window)."""
        if len(idx) <= self.few:
            base = salt.tolist()
            out = []
            for i in idx.tolist():
                acc = base
                for k in range(len(self.blocks)):
                    acc = [
                        _mod_int(a + b) for a, b in zip(acc, self._sums[i, k].tolist(), strict=True)
                    ]
                out.append(acc)
            return np.array(out, dtype=np.uint64).reshape(len(out), _LANES)
        acc = np.broadcast_to(salt, (len(idx), _LANES)).copy()
        for k in range(len(self.blocks)):
            acc = _add(acc, self._sums[idx, k])
        return acc


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what `path` points at now (a switched `current` link points at
    another directory); None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _file_state(path: Path) -> tuple[int, ...] | None:
    """What tells a replaced file from the one seen before (an inode can be reused: its
    size and time too); None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _folder_state(path: Path) -> tuple[tuple[str, int, int, int, int], ...] | None:
    """What a folder holds, by name, inode, size, modification and change time: different
    once any file is written, replaced, added or removed (ctime even when a copy keeps the
    mtime). None when it cannot be listed."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
        out = []
        for e in entries:
            st = e.stat()
            out.append((e.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    except OSError:
        return None
    return tuple(out)


@dataclass(frozen=True)
class _FailedLoad:
    """A reload that failed: the folder, its files when it was tried, and why."""

    path: Path
    files: tuple[tuple[str, int, int, int, int], ...] | None
    reason: str


@dataclass(frozen=True)
class _Candidate:
    """A model folder to try at a bar: where, its files when found, and the bar's full
    windows (`full`: the symbols that have one; `windows`: theirs, copied), and its time."""

    target: Path
    files: tuple[tuple[str, int, int, int, int], ...] | None
    full: np.ndarray
    windows: np.ndarray
    at: datetime | None = None  # the bar's time: the first the model would decide


@dataclass(frozen=True)
class _Shape:
    """What a candidate must match to serve, and the batch its warm-up runs."""

    feature_set: FeatureSetId
    window: int
    batch: int


@dataclass(frozen=True)
class _Trial:
    """What trying a candidate gave: its pair and its ensemble predictions of the bar's
    windows (`checked`, None without any), or why it does not serve (`refused`: of another
    shape; else it failed to load or to forecast)."""

    pair: ModelPair | None
    error: str = ""
    refused: bool = False
    checked: np.ndarray | None = None


def _try_candidate(found: _Candidate, threads: int, shape: _Shape) -> _Trial:
    """Load the candidate, warm it up, and run it on the bar's windows: the warm-up runs it
    on the card's mean only, and a model finite there but NaN on real inputs was taken up
    and stopped the daemon at its next prediction (exit 2), then at every restart on the
    same `current`. Touches nothing of the plugin: it runs in a worker thread
    (`MlEnsemble.prepare_bar`). Never raises: a failure is the trial's `error`."""
    try:
        # From the resolved folder: what is loaded is what was resolved (the link may be
        # switched again meanwhile), and an error names the folder to repair.
        pair = ModelPair(found.target, threads)
        pair.warm_up(shape.batch)
        other = _other_shape(pair.card, shape)
        if other:
            return _Trial(None, other, refused=True)
        if not found.full.size:
            return _Trial(pair)
        ens = pair.card.data["ensemble"]
        out = EnsemblePredictor(ens["weights"], ens["residual_std"]).combine_predictions(
            pair.predict(found.windows)  # OnnxModel.run refuses a model's NaN or inf
        )
        if not np.isfinite(out).all():  # finite outputs, weighted sum overflowing
            raise ConfigError(
                f"the ensemble of the model at {pair.card.path.parent} is not finite for "
                f"{int((~np.isfinite(out)).sum())} of {len(out)} of this bar's windows"
            )
    except Exception as exc:  # keep trading on the model that works
        return _Trial(None, str(exc))
    return _Trial(pair, checked=out)


def _other_shape(card: ModelCard, shape: _Shape) -> str:
    """Why a candidate of another shape than the served model's cannot serve (`""`: it can),
    in the start's words (`verify_feature_set`: "at position 0 the card has ...", "feature
    set version ... (trained) != ..."), with what to do: "trained on another feature set or
    window" named neither model's value nor a way out."""
    problems = []
    if card.feature_set != shape.feature_set:
        try:
            verify_feature_set(card.feature_set, shape.feature_set, "the new model", card.path)
        except ConfigError as exc:
            problems.append(str(exc))
    if card.window != shape.window:
        problems.append(
            f"the new model's card ({card.path}) has window = {card.window} bars, the served "
            f"model's {shape.window}"
        )
    if not problems:
        return ""
    return (
        "; ".join(problems) + ". This run computes the served model's features and windows "
        "until it stops: to serve the new model, restart on a configuration it was trained "
        "with (the start checks it against [features]), or retrain it on this run's features "
        "and window and publish that"
    )


def default_model_dir() -> Path:
    """The model pair shipped inside the package: the fallback when nothing else is set."""
    return Path(str(files("tradingd_models") / "default"))


def locate_model(model_dir: str, cwd: str | Path | None = None) -> tuple[Path, str]:
    """The model directory a plugin configured with `model_dir` loads, and why (for the log).

    An explicit `model_dir` must exist (no silent fallback). An empty one means the model
    `tradingd retrain` published under the working directory (`var/models/current`) when
    there is one, else the pair shipped with the package."""
    base = Path.cwd() if cwd is None else Path(cwd)
    if model_dir:
        path = Path(model_dir).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise ConfigError(
                f"ml_ensemble: model_dir {model_dir!r} does not exist ({path}); point it at a "
                "folder with card.json and both ONNX files, or leave it empty for "
                f"{PUBLISHED_MODEL_DIR} (else the shipped model)"
            )
        return path, "model_dir is set"
    published = base / PUBLISHED_MODEL_DIR
    if published.exists():
        return published, f"model_dir is empty and {PUBLISHED_MODEL_DIR} exists"
    if published.is_symlink():  # a publication gone wrong must not silently change the model
        raise ConfigError(
            f"ml_ensemble: {published} is a broken link (its target "
            f"{os.readlink(published)!r} is missing): repair it, or set model_dir"
        )
    return default_model_dir(), f"model_dir is empty and there is no {published}: shipped model"


# The card's fields that decide a prediction or a signal besides the ONNX files: the input
# scaling, the features and their window, and the ensemble's weights, spread and threshold.
_DECISIVE_CARD_FIELDS = ("scaler", "feature_set", "window", "ensemble")


def card_identity(card: Mapping[str, Any]) -> dict[str, Any]:
    """What a model computes, from its card: its version, its ONNX files' sha256 (the version
    is never checked against the files) and a hash of the card's other decisive fields (a
    card edited under one version, a threshold or a scaler, decides otherwise: the
    prediction cache's salt counts them too). Not its path: `current` names another model
    after a retrain."""
    files = card["files"]
    decisive = {k: card.get(k) for k in _DECISIVE_CARD_FIELDS}
    text = json.dumps(decisive, sort_keys=True, default=str)
    return {
        "model_version": card["model_version"],
        "sha256": [files[m]["sha256"] for m in MODELS],
        "card": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


def _named(identity: Mapping[str, Any]) -> str:
    """A `card_identity` for a message: its version, the first 12 hex digits of each ONNX
    file's sha256 and the card's hash."""
    files = ", ".join(str(h)[:12] for h in identity.get("sha256") or ())
    return f"{identity.get('model_version')} (files {files}; card {identity.get('card')})"


# The CPU's vector instruction sets, from /proc/cpuinfo's "flags" (x86) or "Features" (Arm).
_ISA_FLAG = re.compile(r"^(avx|sse|ssse|fma|f16c|amx|asimd|sve|neon)", re.IGNORECASE)


@lru_cache(maxsize=1)
def runtime_identity() -> str:
    """What besides the model and its inputs decides a prediction's last bits: onnxruntime's
    version (its kernels change between releases) and the CPU's vector instruction sets (its
    MLAS kernels choose AVX-512, AVX2 or NEON at run time, and their sums round differently).
    In the salt, so a cache file carried to another machine, or kept across an onnxruntime
    upgrade, is predicted again rather than mixed with this runtime's values: a warm rerun
    must give what a cold one would (the GARCH fit cache was once found mixing two CPUs' fits,
    RESULTS.md). Linux reads the flags; elsewhere the processor's name stands in."""
    import onnxruntime

    cpu = cpu_isa() or f"{platform.machine()} {platform.processor()}"
    return f"onnxruntime {onnxruntime.__version__}; {cpu}"


def cpu_isa(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The vector instruction sets the CPU reports (sorted, space-separated); "" when the
    file cannot be read or names none."""
    isa: set[str] = set()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    isa.update(w.lower() for w in value.split() if _ISA_FLAG.match(w))
    except OSError:
        return ""
    return " ".join(sorted(isa))


def cache_salt(
    version: str,
    weights: Mapping[str, float],
    threads: int = 1,
    runtime: str | None = None,
    model_sha256: Sequence[str] = (),
    inputs: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Everything besides the window that the cached value depends on, the model version
    (models, scaler, feature-set version), the ONNX files' sha256 (`model_sha256`, as the
    card gives them and the load checked them: the card's model_version is never checked
    against the files, and a folder with one model's card and another's files served the
    first model's cached predictions), the ensemble weights, onnxruntime's thread count (its
    multi-threaded LSTM rounds differently in the last bits, enough to flip a decision at the
    threshold: a rerun must not mix them), the runtime (`runtime_identity`, this
    process's when None) and `inputs`, what the card says of the models' input (its scaler
    and feature set: a card whose scaler was edited under the same model_version and ONNX
    files was served the other scaler's predictions), as one residue per lane: added to
    every window's key."""
    runtime = runtime_identity() if runtime is None else runtime
    h = hashlib.blake2b(digest_size=8 * _LANES, person=b"tradingd-salt")
    h.update(
        json.dumps(
            [
                CACHE_FORMAT,
                version,
                list(model_sha256),
                sorted(weights.items()),
                threads,
                runtime,
                inputs,
            ],
            sort_keys=True,
        ).encode()
    )
    return _mod(np.frombuffer(h.digest(), dtype="<u8").astype(np.uint64))


@dataclass(frozen=True)
class MlEnsembleConfig:
    # empty: var/models/current when it exists (see locate_model), else the shipped model
    model_dir: str = ""
    threshold: float = 0.0  # 0: the card's confidence threshold (0.55)
    # Predictions kept, in memory and in the file (~37 bytes each: 110 MB at the default, which
    # holds a replay of 500 symbols x 20 years; a live daemon adds ~500 a day).
    cache_size: int = 3_000_000
    # onnxruntime intra-op threads (0 = one per core). One: the CNN+BiLSTM's recurrence
    # barely gains from a second thread (40 ms per 500 windows on one, 36 ms on two, idle),
    # and on a 2-core machine the second core is the GARCH fit worker's; measured with the
    # worker busy, two threads used 3x the CPU for the same bars (benchmarks/RESULTS.md).
    threads: int = 1
    # Predictions are kept here across runs, one file per model version ("" = in memory only).
    cache_dir: str = "var/cache/predictions"
    cache_versions: int = 5  # prediction files kept (newest first); older versions' are removed

    def __post_init__(self) -> None:
        if self.threshold and not 0.5 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0.5, 1), got {self.threshold}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {self.cache_size}")
        if self.cache_versions < 1:
            raise ValueError(f"cache_versions must be >= 1, got {self.cache_versions}")


# New predictions wait in a dict until there are this many, then join the sorted arrays.
_YOUNG_MAX = 1 << 16
_STAMP_MAX = (1 << 32) - 2  # uint32 stamps; the file's are renumbered 0, 1, ... at each save


# The prediction store's attributes (see _reset_store): what a model switch hands to a worker
# thread for the outgoing version's save and takes back from it for the new version's read.
_STORE_FIELDS = (
    "_k0",
    "_k1",
    "_k2",
    "_val",
    "_stamp",
    "_starts",
    "_shift",
    "_cache",
    "_clock",
    "_dirty",
    "_file_seen",
    "_cache_read",
)


def _switch_cache(
    outgoing: MlEnsemble, incoming: MlEnsemble, stopping: threading.Event | None = None
) -> None:
    """A model switch's cache files, in a worker thread (`MlEnsemble.prepare_bar`): the
    outgoing version's store saved (merged with its file, up to ~70 MB) and the new version's
    file read. Each is a copy of the plugin that alone holds its store's arrays and dict
    (`_take_up`, `_detached_store`): the plugin's own store is another, untouched here.
    `stopping` set (the bar's task cancelled: a stop) skips the read: the save keeps the
    outgoing predictions, while a read for a closing plugin only made the interpreter's exit
    wait for it (a cancelled `to_thread` does not stop its worker)."""
    outgoing._save_cache()
    if stopping is None or not stopping.is_set():
        incoming._read_cache()


def _key_bytes(keys: np.ndarray) -> list[bytes]:
    raw = np.ascontiguousarray(keys, dtype="<u8").tobytes()
    n = 8 * _LANES
    return [raw[i : i + n] for i in range(0, len(raw), n)]


class MlEnsemble:
    kind: ClassVar[str] = "signal"
    Config = MlEnsembleConfig
    # Built, it loads its model: `tradingd train` / `retrain` check its params only (the
    # model they make need not be the one served, nor exist yet: preflight.load_pipeline).
    serves_model: ClassVar[bool] = True

    # the prediction store (see _reset_store)
    _k0: np.ndarray
    _k1: np.ndarray
    _k2: np.ndarray
    _val: np.ndarray
    _stamp: np.ndarray
    _starts: np.ndarray
    _shift: np.uint64
    _cache: dict[bytes, list[Any]]
    _clock: int
    _dirty: bool
    _file_seen: tuple[int, ...] | None  # the cache file as loaded or saved last (`_file_state`)

    def __init__(self, config: MlEnsembleConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.name = "ml_ensemble"
        self.symbols = symbols
        self._dir, why = locate_model(config.model_dir)
        # Started on the shipped pair because nothing was published yet: the first model
        # `tradingd retrain` publishes (`var/models/current`) is taken up when it appears, as
        # later ones are; a daemon watching the shipped folder missed it until a restart
        # switched models without a word.
        published = Path.cwd() / PUBLISHED_MODEL_DIR
        self._awaiting: Path | None = (
            published if not config.model_dir and self._dir == default_model_dir() else None
        )
        self._dir_id = _identity(self._dir)
        self._loaded_from = self._dir.resolve()
        self._failed: _FailedLoad | None = None  # the last reload that failed, until another
        self.model_path = str(self._loaded_from)  # what this run loaded, for its summary
        # From the resolved folder, as a reload loads: through the link, a publish between
        # the resolve and the load mixed versions (model_path naming one, the card another).
        self.pair = ModelPair(self._loaded_from, config.threads)
        self.pair.warm_up(len(symbols))
        card = self.pair.card
        ens = card.data["ensemble"]
        self.predictor = EnsemblePredictor(ens["weights"], ens["residual_std"])
        self.threshold = config.threshold or float(ens["threshold"])
        self.version = card.version
        log.info("model.location", path=self.model_path, version=self.version, reason=why)
        self.feature_set = card.feature_set  # checked against the engine's at start-up
        self.features = card.feature_set.features
        self.window = card.window
        n, f = len(symbols), len(self.features)
        self._buf = np.zeros((self.window, n, f), dtype=np.float32)
        self._pos = np.full(n, -1, dtype=np.int64)
        self._filled = np.zeros(n, dtype=np.int64)
        # The first bar the model forecast on (None until a window is full): a backtest's
        # `backtest.model_fitted_after` counts the bars the model decided, not the warm-up.
        self.first_forecast: datetime | None = None
        self._back = np.arange(self.window - 1, -1, -1)[:, None]
        self._keys = WindowKeys(n, self.window)
        self._salt = self._cache_salt()
        # Follow a switched `current` link between bars (a live daemon) until `pin_model`.
        self._pinned = False
        self.model_calls = 0
        self.cache_hits = 0
        self._accuracy = DirectionalAccuracy(n, horizon=card.horizon)
        self._no_forecast = np.full(n, np.nan)
        self._deferred_said = False  # a save skipped while another process held the lock
        # The bar `prepare_bar` pushed (and what was ready), for its `score`.
        self._prepared: tuple[BarContext, np.ndarray] | None = None
        # A reload's predictions of its bar's windows (keys under the new salt, values).
        self._checked: tuple[np.ndarray, np.ndarray] | None = None
        # The run's checks of a model taken up mid-run (`check_reloaded_models`).
        self._model_checks: list[Callable[[ModelCard, datetime | None], None]] = []
        self._defer_cache()

    def required_features(self) -> tuple[str, ...]:
        return self.features

    @classmethod
    def run_inputs_of(cls, config: MlEnsembleConfig) -> dict[str, Any]:
        """The model a plugin built with `config` would load now (`card_identity`): a
        replay's run id names it (`app.run_id_for`), so that a rerun of one configuration
        on another published model is another run, not a replacement of the earlier one's
        record. Reads the card only; the files' hashes are checked when they are loaded."""
        path, _ = locate_model(config.model_dir)
        return card_identity(ModelCard.load(path).data)

    def run_inputs(self) -> dict[str, Any]:
        """`run_inputs_of` for the model this plugin loaded (what its run decided with)."""
        return card_identity(self.pair.card.data)

    @classmethod
    def params_for_run_inputs(
        cls, config: MlEnsembleConfig, inputs: Mapping[str, Any], path: str | None = None
    ) -> dict[str, Any]:
        """The params that make a plugin built with `config` load the model `inputs` names
        (`run_inputs`, as a run's record keeps them, with the folder it was loaded from,
        `path`): none when `config` loads it now, else `model_dir` = its folder, the
        recorded one or `versions/<model_version>` of the model root `config` loads from.
        A replay of a kept record (`tradingd report --attribution`) replayed the model
        `current` names now, and said "not the same run". ConfigError when that model is
        gone, naming both models and what to do."""
        now = cls.run_inputs_of(config)
        if now == dict(inputs):
            return {}
        version = str(inputs.get("model_version"))
        loaded, _ = locate_model(config.model_dir)
        places = [Path(path)] if path else []
        places.append(loaded.parent / "versions" / version)
        for folder in places:
            try:
                if card_identity(ModelCard.load(folder).data) == dict(inputs):
                    return {"model_dir": str(folder.resolve())}
            except ConfigError:  # not there, or not a model: look on
                continue
        raise ConfigError(
            f"the run was made with model {_named(inputs)}, and model_dir = "
            f"{config.model_dir!r} loads {_named(now)} now; no folder holds the run's model "
            f"(looked in {', '.join(str(p) for p in places)}): put that version's folder back "
            f"under {loaded.parent / 'versions'}, or pass a configuration (-c) whose "
            "model_dir names a copy of it; a report without --attribution needs no replay"
        )

    def _cache_salt(self) -> np.ndarray:
        """The salt of the loaded model's keys (`cache_salt`): its version, its files' hashes,
        its input scaling and feature set, its weights, the threads and the runtime."""
        card = self.pair.card.data
        return cache_salt(
            self.version,
            self.predictor.weights,
            self.config.threads,
            model_sha256=[card["files"][m]["sha256"] for m in MODELS],
            inputs={"scaler": card["scaler"], "feature_set": card["feature_set"]},
        )

    def _defer_cache(self) -> None:
        """An empty store; this version's file is read at the first warm-up bar or
        prediction, not now: the start-up check (`preflight.check_config`) builds a plugin
        only to see that it starts, and the file of a 500-symbol replay is ~70 MB."""
        self._reset_store()
        self._file_seen = None
        self._cache_read = False

    def _read_cache(self) -> None:
        if not self._cache_read:
            self._cache_read = True
            self._load_cache()

    @property
    def cache_entries(self) -> int:
        """Predictions held in memory (never more than cache_size)."""
        self._read_cache()
        return len(self._k0) + len(self._cache)

    def pin_model(self) -> None:
        """Keep the model loaded now until the end of the run: what a backtest's engine asks
        (see `core.ports`). A `tradingd retrain` publishing while a replay runs would
        otherwise switch it to the new version at its next bar, and the run's decisions and
        results would come from two models, its summary naming only the last."""
        self._pinned = True

    def check_reloaded_models(self, check: Callable[[ModelCard, datetime | None], None]) -> None:
        """Run `check(card, at)` on each model found mid-run before it serves (`at`: the time
        of the bar it would decide first; see `core.ports`): the run's own checks of its
        model (`app.warn_model_bar`: trained on bars of another length, `model.bar_differs`;
        over another universe with cross-sectional features, `model.universe_differs`; in a
        replay, fitted on the bars still to come, `replay.in_sample`), which its start made
        of the model it loaded only. A `ConfigError` from it refuses the model, as one of
        another shape is (`model.reload_refused`; the loaded one serves on)."""
        self._model_checks.append(check)

    def _maybe_reload(self, at: datetime | None = None) -> None:
        """A model root's `current` link may have been switched by `tradingd retrain`: load
        the new version between bars (not once pinned), here, on the caller's thread. The
        engine calls `prepare_bar` instead, which loads it off the event loop; this is the
        path of a plugin scored without it (`strategy_api`, a hand-made context). `at`: the
        bar's time."""
        found = self._candidate(at)
        if found is not None:
            outgoing = self._take_up(
                found, _try_candidate(found, self.config.threads, self._shape())
            )
            if outgoing is not None:
                outgoing._save_cache()  # the new version's file is read at its first prediction
                self._deferred_said = outgoing._deferred_said

    async def prepare_bar(self, ctx: BarContext) -> None:
        """Before `score` on a trading bar (the engine awaits it): push the bar, and try a
        newly published model in a worker thread. Loading two ONNX sessions, their warm-up
        and the try on the bar's windows ran inside score(), on a live daemon's event loop:
        the health endpoint, the heartbeat and the broker's stream stopped for as long as
        it took. The swap itself (a few assignments) is made here, on the loop, so `score`
        of this bar decides with the model tried on its windows.

        Once a new model is taken up, the outgoing version's prediction cache (merged with
        its file and written: up to ~70 MB) is saved and the new version's file read in a
        worker thread too (`_switch_cache`), on stores that the plugin no longer holds (the
        outgoing) or does not hold yet (the incoming, adopted here once read): nothing the
        loop may touch meanwhile (`close`, `cache_entries`) is shared with the worker.
        Cancelled meanwhile (a stop), the new version's file is read at its first
        prediction instead."""
        self._prepared = (ctx, self._push(ctx))
        found = self._candidate(ctx.time)
        if found is None:
            return
        try:
            trial = await asyncio.to_thread(
                _try_candidate, found, self.config.threads, self._shape()
            )
        except BaseException:
            self._dir_id = None  # cancelled (a stop): the link is looked at again next bar
            raise
        outgoing = self._take_up(found, trial)
        if outgoing is None:
            return
        incoming = self._detached_store()
        stopping = threading.Event()
        try:
            await asyncio.to_thread(_switch_cache, outgoing, incoming, stopping)
        except BaseException:
            stopping.set()  # the worker goes on: it saves, and reads nothing for a stop
            raise
        self._deferred_said = outgoing._deferred_said
        for name in _STORE_FIELDS:  # the new version's store, as read (`_read_cache`)
            setattr(self, name, getattr(incoming, name))

    def _detached_store(self) -> MlEnsemble:
        """A shallow copy of the plugin whose store (`_STORE_FIELDS`) is its own from now on:
        the plugin's next change of its store (`_defer_cache`, a load, a merge) assigns new
        arrays and a new dict, and the copy's changes likewise never reach the plugin's. For
        a worker thread's save or read of the cache file (`_switch_cache`); the copy uses
        nothing else of the plugin's but its config, name and version."""
        return copy.copy(self)

    def _shape(self) -> _Shape:
        """What a candidate must match to serve (its features and window) and its warm-up's
        batch: fixed for the plugin's life (a reload of another shape is refused)."""
        return _Shape(self.feature_set, self.window, len(self.symbols))

    def _candidate(self, at: datetime | None = None) -> _Candidate | None:
        """The model folder to try at this bar, if any. A candidate trained on other
        features is refused (by `_take_up`). The directory's identity (one stat) is checked
        every bar; the path is resolved only when it changed (a resolve stats every
        component: ~130 us a bar of a replay). A candidate that failed is tried again only
        once its folder's files change (`_FailedLoad`), and `status()` reports it
        meanwhile. The bar's full windows are copied here, on the caller's thread: the try
        may run in a worker while the loop goes on."""
        if self._pinned:
            return None
        if self._awaiting is not None and self._awaiting.exists():
            self._dir, self._awaiting = self._awaiting, None
            log.info("model.published_found", path=str(self._dir))
        ident = _identity(self._dir)
        if ident is not None and ident == self._dir_id and not self._failed_folder_changed():
            return None
        self._dir_id = ident
        target = self._dir.resolve()
        if not target.exists():
            self._broken_link(target)
            return None
        if target == self._loaded_from:
            self._failed = None  # the link names the model served again
            return None
        # A folder that failed is tried again once its files change (repaired in place, as
        # the error advises), not at every bar: it was marked loaded before the attempt, and
        # the repair went unnoticed until a restart.
        files = _folder_state(target)
        failed = self._failed
        if failed is not None and failed.path == target and failed.files == files:
            return None
        if failed is not None and failed.path == target:
            log.info("model.reload_retry", path=str(target), reason="its files changed")
        full = np.flatnonzero(self._filled >= self.window)
        return _Candidate(target, files, full, self._windows(full), at)

    def _take_up(self, found: _Candidate, trial: _Trial) -> MlEnsemble | None:
        """The candidate serves from now on, or its failure is logged and held for
        `status()` (the old model serves on: None). Taken up, the outgoing version's store is
        returned (`_detached_store`) for the caller to save: its predictions are kept, under
        its version's file, before the plugin's key changes; the plugin starts an empty store
        for the new version."""
        target = found.target
        if trial.pair is not None:
            trial = self._run_checks(trial, found.at)
        if trial.pair is None:
            self._failed = _FailedLoad(target, found.files, trial.error)
            if trial.refused:
                log.error(
                    "model.reload_refused",
                    path=str(target),
                    reason=trial.error,
                    serving=self.version,
                )
                return None
            log.error(
                "model.reload_failed",
                path=str(target),
                error=trial.error,
                serving=self.version,
                action="repair the folder (it is tried again when its files change) or point "
                "the link at another model",
            )
            return None
        pair = trial.pair
        self._failed = None
        self._loaded_from = target
        outgoing = self._detached_store()  # the outgoing version's store, for the caller to save
        ens = pair.card.data["ensemble"]
        self.pair = pair
        self.predictor = EnsemblePredictor(ens["weights"], ens["residual_std"])
        # The new card's threshold too (unless the config sets one): the old one stayed, and
        # the reloaded model traded below its own card's 0.9 where a restart, a backtest or
        # replay-check of the same model did not.
        self.threshold = self.config.threshold or float(ens["threshold"])
        self.version = pair.card.version
        self.model_path = str(target)
        # the new model's own, over its own target's horizon
        self._accuracy = DirectionalAccuracy(len(self.symbols), horizon=pair.card.horizon)
        self._salt = self._cache_salt()
        self._defer_cache()  # new arrays: the outgoing store is `outgoing`'s alone
        if trial.checked is not None and found.full.size:
            # The try's predictions serve this bar's decision (`score`), matched by key: the
            # same windows were predicted twice on every reload bar.
            self._checked = (self._keys.keys(found.full, self._salt), trial.checked)
        log.info("model.reloaded", version=self.version, path=str(target))
        return outgoing

    def _run_checks(self, trial: _Trial, at: datetime | None = None) -> _Trial:
        """The trial, or a refusal of its model by one of the run's checks
        (`check_reloaded_models`, given the bar's time `at`), which log what they warn of
        (`model.bar_differs`, `model.universe_differs`, `replay.in_sample`)."""
        assert trial.pair is not None
        try:
            for check in self._model_checks:
                check(trial.pair.card, at)
        except ConfigError as exc:
            return _Trial(None, str(exc), refused=True)
        return trial

    def _broken_link(self, target: Path) -> None:
        """The watched folder or link names nothing (the version folder deleted): the model
        in memory serves on, but the next start fails (`locate_model`). Held as a failed
        load for `status()`: a dangling `current` resolved to the served path and cleared
        the failure, and /ready said ok until the restart that could not start."""
        failed = self._failed
        if failed is not None and failed.path == target and failed.files is None:
            return  # said already
        reason = f"{self._dir} names {target}, which is missing"
        self._failed = _FailedLoad(target, None, reason)
        log.error(
            "model.link_broken",
            path=str(self._dir),
            target=str(target),
            serving=self.version,
            action=f"the next start will fail: point {self._dir} at a version folder",
        )

    def _failed_folder_changed(self) -> bool:
        """Whether the folder of the last failed reload has other files now (a few stats a
        bar, only while a reload has failed)."""
        failed = self._failed
        return failed is not None and _folder_state(failed.path) != failed.files

    def status(self) -> dict[str, Any]:
        """For `/ready` and `tradingd health` (read by their `model` check, app.health_inputs):
        not ok while the watched link names a model that failed to load, so that an operator
        sees that the daemon serves another version than the one published (the failure was
        one log line)."""
        data: dict[str, Any] = {"version": self.version, "path": self.model_path}
        failed = self._failed
        if failed is None:
            return {"ok": True, "detail": f"serving {self.version} from {self.model_path}", **data}
        if failed.files is None and not failed.path.exists():
            detail = (
                f"{failed.reason}: serving {self.version} (loaded from {self.model_path}), "
                f"but the next start will fail: point {self._dir} at a version folder"
            )
            return {"ok": False, "detail": detail, "not_served": str(failed.path), **data}
        detail = (
            f"{self._dir} names {failed.path}, which is not served ({failed.reason}); "
            f"serving {self.version} from {self.model_path}: repair that folder (it is tried "
            "again when its files change) or point the link at another model"
        )
        return {"ok": False, "detail": detail, "not_served": str(failed.path), **data}

    def cache_keys(self, windows: np.ndarray) -> np.ndarray:
        """(B, 3) uint64: the key of each window of `windows` (B, window, features), what the
        models would see (float32), under this model version and these weights."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        b, w, f = x.shape
        m = len(window_blocks(w))
        return window_keys(row_digests(x.reshape(b * w, f), m).reshape(b, w, m, _LANES), self._salt)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Ensemble predictions for `windows` (B, window, features), unscaled float32: from the
        cache when the same input was seen, else one batched call per model."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        return self._predict(self.cache_keys(x), lambda todo: x[todo])

    def observe(self, ctx: BarContext) -> None:
        """A warm-up bar (before the run trades): fill the windows, predict nothing. The
        engine calls this instead of `score` before `run.start`, so years of history before
        the start cost a buffer update per bar, not a model call. The prediction cache file
        is read here, on the first warm-up bar, rather than inside a live daemon's first
        trading bar (96 ms for a 2M-entry file)."""
        self._read_cache()
        self._push(ctx)
        # A catch-up bar is the realised move of the last traded bar's forecasts: scored, and
        # the next traded bar's return is over one bar again (splits included).
        self._score_forecasts(ctx, self._no_forecast)

    def score(self, ctx: BarContext) -> np.ndarray:
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] is ctx:
            ready = prepared[1]  # pushed, and a new model tried, by `prepare_bar`
        else:
            ready = self._push(ctx)
            # After the push: a candidate model is tried on this bar's windows before it
            # serves.
            self._maybe_reload(ctx.time)
        checked, self._checked = self._checked, None
        full = np.flatnonzero(ready & (self._filled >= self.window))
        out = np.full(len(self.symbols), np.nan)
        if full.size == 0:
            self._score_forecasts(ctx, out)
            return out
        keys = self._keys.keys(full, self._salt)
        known = checked[1] if checked is not None and np.array_equal(checked[0], keys) else None
        pred = self._predict(keys, lambda todo: self._windows(full[todo]), known)
        forecast = np.full(len(self.symbols), np.nan)
        forecast[full] = pred
        if self.first_forecast is None:
            self.first_forecast = ctx.time
        self._score_forecasts(ctx, forecast)
        signal, conf = self.predictor.generate_signal(pred, self.threshold)
        out[full] = signal * conf
        return out

    def _score_forecasts(self, ctx: BarContext, forecast: np.ndarray) -> None:
        # Live only: a replay (its model pinned, `pin_model`) has no health check to read it,
        # and paid for it at every bar. A context made by hand may have no bar.
        bar = ctx.bar
        if bar is not None and not self._pinned:
            self._accuracy.update(bar.close, bar.split, forecast)

    def accuracy(self) -> dict[str, Any]:
        """The forecasts' directional accuracy on the bars traded so far (the last
        `live_accuracy.DEFAULT_BARS`), beside the model card's, for the health server's model
        check (see `live_accuracy`): `card` is the held-out test split's (`metrics.test`)
        when the card has one, else the validation windows' (a card trained before the
        split), `card_split` says which. The validation windows early-stopped the CNN+LSTM
        and calibrated the confidence, so theirs is optimistic: a live figure below it read
        as decay that the test split would not have shown. Both splits' are kept
        (`validation`, `test`: None when the card has none)."""
        metrics = self.pair.card.data.get("metrics") or {}

        def rate(split: str) -> float | None:
            value = ((metrics.get(split) or {}).get("ensemble") or {}).get("directional_accuracy")
            return float(value) if isinstance(value, int | float) else None

        validation, test = rate("validation"), rate("test")
        return {
            **self._accuracy.summary(),
            "card": test if test is not None else validation,
            "card_split": "test" if test is not None else "validation",
            "validation": validation,
            "test": test,
        }

    def _windows(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), window, features) float32: the full windows of these symbols."""
        t_idx = (self._pos[idx][None, :] - self._back) % self.window  # (window, B) oldest first
        return np.ascontiguousarray(self._buf[t_idx, idx[None, :]].transpose(1, 0, 2))

    def _push(self, ctx: BarContext) -> np.ndarray:
        ready = ctx.ready if ctx.ready is not None else ctx.tradable
        # A symbol that misses readiness starts its window again: windows are consecutive bars.
        self._filled[~ready] = 0
        self._keys.reset(~ready)
        idx = np.flatnonzero(ready)
        if idx.size:
            row = np.stack([ctx.features[f][idx] for f in self.features], axis=-1)
            row = row.astype(np.float32)  # what the models see
            p = (self._pos[idx] + 1) % self.window
            self._pos[idx] = p
            self._buf[p, idx] = row
            self._filled[idx] += 1
            self._keys.push(idx, row)
        return ready

    # -- the store: sorted arrays (loaded, or merged) + the dict of new predictions ----------

    def _predict(
        self,
        keys: np.ndarray,
        windows: Callable[[np.ndarray], np.ndarray],
        known: np.ndarray | None = None,
    ) -> np.ndarray:
        """Predictions for these keys: from the cache, else from the models for
        `windows(misses)`, in one batched call per model. `known`: the loaded model's
        ensemble predictions for all these keys, made already (a reload's try on the bar's
        windows): used for the misses instead of a second call."""
        self._read_cache()
        self._clock += 1
        pred, todo = self._lookup(keys)
        self.cache_hits += len(keys) - len(todo)
        if todo.size:
            try:
                ens = (
                    known[todo]
                    if known is not None
                    else self.predictor.combine_predictions(self.pair.predict(windows(todo)))
                )
            except ConfigError as exc:  # names the file and what came out (OnnxModel.run)
                raise ConfigError(self._model_fault(str(exc))) from None
            self.model_calls += 1
            if not np.isfinite(ens).all():  # each model's output is (OnnxModel.run): overflow
                raise ConfigError(
                    self._model_fault(
                        f"its ensemble is not finite for {int((~np.isfinite(ens)).sum())} of "
                        f"{len(ens)} windows (weights {self.predictor.weights}); nothing was "
                        "cached"
                    )
                )
            pred[todo] = ens
            self._insert(keys[todo], ens)
        return pred

    def _model_fault(self, detail: str) -> str:
        """The error of a model that cannot forecast real windows, with the folder it was
        loaded from and what to do. Loaded through a link (`var/models/current`), a restart
        loads the same model and fails again: the daemon crash-looped on "output nan" with
        the link's path, which named neither the version nor the way out."""
        where = f"ml_ensemble: model {self.version} in {self.model_path}"
        if self._dir.is_symlink():
            fix = (
                f"it was loaded through {self._dir}, so a restart fails the same way: point "
                f"{self._dir} back at the version served before it (a folder under "
                f"{self._dir.parent / 'versions'}) or set the plugin's model_dir, then restart"
            )
        else:
            fix = "re-export or retrain it, or point the plugin's model_dir at another model"
        return f"{where} cannot forecast this bar: {detail}. {fix}"

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, indices of the keys not found); marks what was found as used now."""
        pred = np.empty(len(keys))
        found = np.zeros(len(keys), dtype=bool)
        n = len(self._k0)
        if n:
            q0 = keys[:, 0]
            # = np.searchsorted(self._k0, q0), from the bucket of q0's top bits (2-4 entries)
            b = (q0 >> self._shift).astype(np.intp)
            left, end = self._starts[b].astype(np.intp), self._starts[b + 1].astype(np.intp)
            a = np.flatnonzero(left < end)
            while a.size:
                a = a[self._k0[left[a]] < q0[a]]
                left[a] += 1
                a = a[left[a] < end[a]]
            at = np.minimum(left, n - 1)
            same0 = self._k0[at] == q0
            found = same0 & (self._k1[at] == keys[:, 1]) & (self._k2[at] == keys[:, 2])
            for q in np.flatnonzero(same0 & ~found):  # other entries share the first lane
                lo = int(left[q])
                hi = int(np.searchsorted(self._k0, q0[q], side="right"))
                match = (self._k1[lo:hi] == keys[q, 1]) & (self._k2[lo:hi] == keys[q, 2])
                if match.any():
                    at[q] = left[q] + np.argmax(match)
                    found[q] = True
            at = at[found]
            pred[found] = self._val[at]
            self._stamp[at] = self._clock
        todo = np.flatnonzero(~found)
        if todo.size and self._cache:
            still = []
            for i, key in zip(todo.tolist(), _key_bytes(keys[todo]), strict=True):
                entry = self._cache.get(key)
                if entry is None:
                    still.append(i)
                else:
                    pred[i] = entry[0]
                    entry[1] = self._clock
            todo = np.asarray(still, dtype=np.int64)
        return pred, todo

    def _insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        if not self.config.cache_size:
            return
        for key, v in zip(_key_bytes(keys), values.tolist(), strict=True):
            self._cache[key] = [v, self._clock]
        self._dirty = True
        if len(self._cache) >= _YOUNG_MAX or self.cache_entries > self.config.cache_size:
            self._merge()

    def _merge(self) -> None:
        """The new predictions into the sorted arrays, then the bound: beyond cache_size, the
        entries used least recently go (down to some headroom, so that a full cache does not
        merge at every bar)."""
        changed = bool(self._cache)
        if self._cache:
            n = len(self._cache)
            keys = np.frombuffer(b"".join(self._cache), dtype="<u8").reshape(n, _LANES)
            keys = keys.astype(np.uint64)
            vals = np.fromiter((e[0] for e in self._cache.values()), dtype=np.float64, count=n)
            stamps = np.fromiter((e[1] for e in self._cache.values()), dtype=np.uint32, count=n)
            self._cache.clear()
            order = np.argsort(keys[:, 0], kind="stable")
            keys, vals, stamps = keys[order], vals[order], stamps[order]
            at = np.searchsorted(self._k0, keys[:, 0])
            self._k0 = np.insert(self._k0, at, keys[:, 0])
            self._k1 = np.insert(self._k1, at, keys[:, 1])
            self._k2 = np.insert(self._k2, at, keys[:, 2])
            self._val = np.insert(self._val, at, vals)
            self._stamp = np.insert(self._stamp, at, stamps)
        limit = self.config.cache_size
        n = len(self._k0)
        if n > limit:
            keep = limit - min(limit // 16, _YOUNG_MAX)
            mask = np.zeros(n, dtype=bool)
            if keep:
                mask[np.argpartition(self._stamp, n - keep)[n - keep :]] = True
            self._k0, self._k1, self._k2 = self._k0[mask], self._k1[mask], self._k2[mask]
            self._val, self._stamp = self._val[mask], self._stamp[mask]
            self._dirty = changed = True
        if changed:
            self._reindex()

    def _reindex(self) -> None:
        """Where each bucket of first lanes (by their top bits, 2-4 entries a bucket) starts in
        the sorted arrays: 1-2 bytes an entry, and a bar's lookups skip the binary search."""
        bits = max(len(self._k0).bit_length() - 2, 0)
        self._shift = np.uint64(61 - bits)
        counts = np.bincount((self._k0 >> self._shift).astype(np.intp), minlength=1 << bits)
        starts = np.zeros(len(counts) + 1, dtype=np.uint32)
        np.cumsum(counts, out=starts[1:])
        self._starts = starts

    def _reset_store(self) -> None:
        self._k0 = self._k1 = self._k2 = np.empty(0, dtype=np.uint64)  # sorted by _k0
        self._val = np.empty(0, dtype=np.float64)
        self._stamp = np.empty(0, dtype=np.uint32)  # when each entry was last used
        # predictions new since the last merge: key (24 bytes) -> [value, stamp]
        self._cache = {}
        self._clock = 0  # advanced once per batch looked up
        self._dirty = False  # entries added or evicted since the load
        self._reindex()

    def _cache_file(self) -> Path | None:
        return (
            Path(self.config.cache_dir) / f"{self.version}.npz" if self.config.cache_dir else None
        )

    def _load_cache(self) -> None:
        self._reset_store()
        self._file_seen = None
        path = self._cache_file()
        if path is None or not self.config.cache_size:
            return
        legacy = path.with_suffix(".json")
        if legacy.exists():
            log.warning(
                "prediction_cache.ignored",
                path=str(legacy),
                reason="the previous (JSON) format: not read, removed at the next save",
            )
        seen = _file_state(path)
        read = self._read_file(path, quiet=False)
        if read is None:
            return
        self._file_seen = seen
        self._k0, self._k1, self._k2, self._val, self._stamp = read[0]
        self._clock = read[1]
        self._reindex()
        self._merge()  # the bound, if cache_size is now smaller than the file
        log.info("prediction_cache.loaded", path=str(path), entries=self.cache_entries)

    def _read_file(self, path: Path, quiet: bool) -> tuple[list[np.ndarray], int] | None:
        """The file's arrays (k0, k1, k2, value, stamp) and clock, if it is this format's and
        this model version's and whole; else None, said with a warning unless `quiet`."""
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes())
                if not (
                    isinstance(header, dict)
                    and header.get("format") == CACHE_FORMAT
                    and header.get("model_version") == self.version
                ):
                    if not quiet:
                        log.warning(
                            "prediction_cache.ignored",
                            path=str(path),
                            reason="another format or model version",
                        )
                    return None
                arrays = [z[k] for k in ("k0", "k1", "k2", "value", "stamp")]
            clock = header["clock"]
            _check_arrays(arrays, clock)
        except Exception as exc:  # a cache is never worth failing a run for
            if not quiet:
                log.warning("prediction_cache.unreadable", path=str(path), error=repr(exc))
            return None
        return arrays, clock

    def _merge_file(self, path: Path) -> None:
        """The entries the file holds now and this store does not (another run's, saved
        since this one loaded it) join the store, ranked below all of this run's, so the
        bound drops them first. The store's arrays are merged already (`_merge`). A file
        this run loaded or saved last, unchanged since, holds nothing new: not read again
        (70 MB after a 500-symbol replay)."""
        seen = _file_state(path)
        if seen is not None and seen == self._file_seen:
            return
        read = self._read_file(path, quiet=True)
        if read is None or not len(read[0][0]):
            return
        k0, k1, k2, val, stamp = read[0]
        n = len(self._k0)
        keys = [np.concatenate(pair) for pair in ((self._k0, k0), (self._k1, k1), (self._k2, k2))]
        # Sorted by key, this store's entry first among equal keys: the file's entries that
        # differ from their predecessor are the ones this store lacks.
        order = np.lexsort((np.arange(len(keys[0])), keys[2], keys[1], keys[0]))
        new = np.ones(len(order), dtype=bool)
        new[1:] = (
            (keys[0][order[1:]] != keys[0][order[:-1]])
            | (keys[1][order[1:]] != keys[1][order[:-1]])
            | (keys[2][order[1:]] != keys[2][order[:-1]])
        )
        theirs = order[new & (order >= n)] - n  # in k0 order (the file's is sorted by k0)
        if not theirs.size:
            return
        ranks = np.unique(stamp[theirs], return_inverse=True)[1].reshape(-1)
        shift = int(ranks.max()) + 1
        mine = self._stamp.astype(np.int64) + shift
        at = np.searchsorted(self._k0, k0[theirs])
        self._k0 = np.insert(self._k0, at, k0[theirs])
        self._k1 = np.insert(self._k1, at, k1[theirs])
        self._k2 = np.insert(self._k2, at, k2[theirs])
        self._val = np.insert(self._val, at, val[theirs])
        # (int64 for now: `_save_cache` renumbers the stamps 0, 1, ... as uint32 next)
        self._stamp = np.insert(mine, at, ranks.astype(np.int64))
        self._clock += shift
        self._reindex()
        log.info("prediction_cache.merged", path=str(path), entries=int(theirs.size))

    def close(self) -> None:
        """Called by the engine at the end of a run: keep this version's predictions. A
        replay (its model pinned: no stream or heartbeat to hold up) waits its turn at the
        folder's lock, so that a sweep's points keep each other's predictions; a live
        daemon, stopping at SIGTERM, does not (`_save_cache`)."""
        self._save_cache(wait=self._pinned)

    def _save_cache(self, wait: bool = False) -> None:
        """Written only when entries were added or evicted: a warm rerun writes nothing (the
        entries' last use then stays that of the run that wrote them). Merged, under the
        folder's lock, with what the file holds by then (`_merge_file`).

        Unless `wait`, the lock is only tried: while another process holds it (a sweep
        sharing `cache_dir`, merging a file of up to ~70 MB) this save is skipped, its
        entries kept in memory for the next save. A live daemon's close() at SIGTERM runs it
        on the event loop (a model switch saves the outgoing version's store in a worker
        thread, `prepare_bar`): waiting there stalled the stream, the health checks and the
        heartbeats behind the other process's save."""
        path = self._cache_file()
        if path is None or not self._dirty:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Parallel runs (a sweep's points) load the file at their start and save at their
            # end: without the lock and the merge, the last one's file replaced the others'
            # (15,090 of 29,174 entries kept).
            lock_path = path.parent / CACHE_LOCK
            with lock_path.open("a", encoding="utf-8") as lock:
                try:  # released when closed
                    fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if flock.is_held(exc) and not wait:
                        self._save_deferred(path)
                        return
                    if not flock.is_unsupported(exc):
                        self._lock_failed(lock_path, exc)
                        return
                    self._unlocked(lock_path, exc)
                self._merge()
                self._merge_file(path)
                self._merge()  # the bound: the other runs' entries go first
                self._write(path, tmp)
                self._file_seen = _file_state(path)
                self._dirty = False
                self._prune(path)
        except OSError as exc:
            # A full or read-only disk: a cache is never worth failing a run for (a model
            # switch saved the outgoing version's here, inside score(), and the daemon
            # stopped). Its predictions are computed again.
            tmp.unlink(missing_ok=True)
            log.warning(
                "prediction_cache.unwritable",
                plugin=self.name,
                path=str(path),
                error=f"{type(exc).__name__}: {exc}",
            )
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _lock_failed(self, lock_path: Path, exc: OSError) -> None:
        """flock failed on the cache folder's lock for a reason other than a holder or a
        filesystem without locks (EIO, EBADF, ...: `core.flock`): the cache is not written
        without it, said as a warning naming the lock file and the errno. The predictions
        stay in memory for the next save."""
        log.warning(
            "prediction_cache.lock_failed",
            plugin=self.name,
            path=str(lock_path),
            error=flock.errno_text(exc),
            detail="the prediction cache is not written without its lock (the predictions "
            "are kept in memory for the next save); fix the file or its disk",
        )

    def _unlocked(self, lock_path: Path, exc: OSError) -> None:
        """On a filesystem without file locks (ENOLCK: some NFS and FUSE mounts) the cache is
        saved without the lock, with a warning: it is merged with the file and replaced whole
        (a temporary file renamed), so a save at the same moment by another process may lose
        the other's new predictions (computed again), never cut the file. Refused, it was
        never saved there."""
        log.warning(
            "prediction_cache.unlocked",
            plugin=self.name,
            path=str(lock_path),
            error=flock.errno_text(exc),
            detail="this filesystem refuses file locks: the prediction cache is saved without "
            "one, so processes saving into this cache_dir at the same moment may drop each "
            "other's new predictions (computed again when needed)",
        )

    def _save_deferred(self, path: Path) -> None:
        """Said at info the first time (then at debug): the predictions stay in memory, for
        the next save (after a model switch, the outgoing version's are computed again if
        that version is served again)."""
        (log.debug if self._deferred_said else log.info)(
            "prediction_cache.save_deferred",
            plugin=self.name,
            path=str(path),
            reason="another process holds the cache folder's lock; kept in memory for the "
            "next save",
        )
        self._deferred_said = True

    def _write(self, path: Path, tmp: Path) -> None:
        # renumber the stamps 0, 1, ... in order: they never overflow across runs
        ranks = np.unique(self._stamp, return_inverse=True)[1].reshape(-1).astype(np.uint32)
        self._stamp, self._clock = ranks, int(ranks.max()) + 1 if len(ranks) else 0
        header = {"format": CACHE_FORMAT, "model_version": self.version, "clock": self._clock}
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                k0=self._k0,
                k1=self._k1,
                k2=self._k2,
                value=self._val,
                stamp=self._stamp,
            )
        os.replace(tmp, path)

    def _prune(self, path: Path) -> None:
        try:
            path.with_suffix(".json").unlink(missing_ok=True)  # this version's, old format
            # One file per model version: weekly retraining must not grow the folder forever.
            # (Files of the previous format, *.json, count and go the same way.)
            kept = [p for p in path.parent.iterdir() if p.suffix in (".npz", ".json")]
            kept.sort(key=lambda p: p.stat().st_mtime, reverse=True)
            for old in kept[self.config.cache_versions :]:
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError as exc:  # another process pruning too: the save itself is done
            log.info("prediction_cache.prune_skipped", path=str(path.parent), error=str(exc))


def _check_arrays(arrays: list[np.ndarray], clock: object) -> None:
    """What `_load_cache` relies on, or ValueError."""
    k0, k1, k2, _, stamp = arrays
    kinds = [(a.dtype, a.ndim) for a in arrays]
    if kinds != [(np.dtype(np.uint64), 1)] * 3 + [
        (np.dtype(np.float64), 1),
        (np.dtype(np.uint32), 1),
    ]:
        raise ValueError(f"unexpected arrays {kinds}")
    if len({len(a) for a in arrays}) != 1:
        raise ValueError("arrays of different lengths")
    if not isinstance(clock, int) or not 0 <= clock <= _STAMP_MAX:
        raise ValueError(f"bad clock {clock!r}")
    if not np.isfinite(arrays[3]).all():  # written before non-finite outputs were refused
        raise ValueError("predictions that are not finite")
    if len(k0) and (
        (k0[1:] < k0[:-1]).any()
        or max(k0.max(), k1.max(), k2.max()) >= _P
        or int(stamp.max()) >= clock
    ):
        raise ValueError("keys not sorted, not residues, or stamps past the clock")
