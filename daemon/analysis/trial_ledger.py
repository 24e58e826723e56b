"""The trial ledger: a line per finished backtest beside the run folders, so the variants a
rerun under the same run id replaced still count as tried (`trials.count_trials`). Apart
from `trials`, which reads run folders with pandas: a backtest writes a line at its end,
and a rerun of one imports neither."""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from ..core import flock
from ..core.errors import StorageError
from ..core.json_file import json_object_file
from .return_metrics import simple_returns

__all__ = [
    "DEFAULT_IGNORED_CONFIG",
    "HASH_VERSION",
    "TRIALS_LEDGER",
    "LedgerLockError",
    "canonical_params",
    "config_hash",
    "config_hash_v2",
    "config_hash_v3",
    "ledger_entries",
    "legacy_config_hash",
    "plugin_code_identity",
    "plugin_default_params",
    "plugin_specs_of",
    "record_trial",
    "variant_settings",
]

log = structlog.get_logger(__name__)

# Beside the run folders: a line per finished backtest. A rerun under the same run id
# replaces its folder, and with it the record that the earlier variant was tried.
TRIALS_LEDGER = ".trials.jsonl"

# Parts of a run's config.json that do not make it another strategy variant: where it is
# written, its name, the database, caches, logs, alerts, health port and live-only settings.
DEFAULT_IGNORED_CONFIG: tuple[str, ...] = (
    "run.name",
    "run.run_id",
    "run.output_dir",
    "storage",
    "cache",
    "log",
    "alerts",
    "health",
    "live",
)


def _drop(tree: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)


# The scheme of the ledger's `config_hash`: lines without it hold `legacy_config_hash`es,
# lines of version 2 `config_hash_v2`es, of version 3 `config_hash_v3`es (the models by
# version only: two models of one version and other files were one variant), of version 4
# `config_hash`es without the plugins' code (an edited plugin rerun was one variant).
HASH_VERSION = 5

# The package of tradingd's own plugins: its code is tradingd's, whose upgrade makes no
# other variant (a record of an earlier build is the rerun's variant: `variant_settings`).
BUILTIN_PACKAGE = "tradingd_plugins"

# A plugin's place in a list beyond the default list's length: its weight's default.
_PLUGIN_FIELD = re.compile(r"(signals|risk)\[\d+\]\.weight")


def _tree(config: Mapping[str, Any], ignore: Iterable[str]) -> dict[str, Any]:
    tree = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
    for key in ignore:
        _drop(tree, key)
    return tree


def _digest(tree: Any) -> str:
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def _defaults() -> dict[str, Any]:
    from ..config import Config
    from ..reload import flatten

    return flatten(json.loads(Config().to_public_json()))


def _canonical_number(value: Any) -> Any:
    """An integral float as the int (1.0 is 1): the hash must not tell how a value was
    written. A bool is not a number here (True is not 1)."""
    if isinstance(value, dict):
        return {k: _canonical_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical_number(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@functools.cache
def _plugin_config(name: str) -> type | None:
    """The `Config` dataclass of the plugin registered as `name`, or None where it cannot
    be found (not installed, registered twice, failing to import, no dataclass Config): its
    params are then taken as written. Loading a plugin imports its module only, which is
    what a run does; the built-in plugins import their heavy libraries at first use."""
    from ..engine.plugins import available

    reason = ""
    try:
        ep = available().get(name)
        cls = ep.load() if ep is not None else None
        if ep is None:
            reason = "not registered once (not installed, or two packages register it)"
    except Exception as exc:  # a plugin that fails to import: its run says so
        cls, reason = None, f"failed to import: {type(exc).__name__}: {exc}"
    config_cls = getattr(cls, "Config", None)
    if cls is not None and not (
        isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)
    ):
        config_cls, reason = None, "it has no dataclass Config"
    if config_cls is None:
        log.info(
            "trials.plugin_defaults_unknown",
            plugin=name,
            reason=reason,
            detail="its params are compared as written (one at its default still counts)",
        )
    return config_cls


def _declared(config_cls: type, key: str, value: Any) -> Any:
    """`value` as the plugin's Config holds it (`config.build` turns an int into a float
    field's float): `kelly_multiplier = 1` and `= 1.0` are one setting."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    try:
        hint = typing.get_type_hints(config_cls).get(key)
    except Exception:  # an annotation that does not resolve: as written
        return value
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    if hint is float:
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def canonical_params(name: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """A plugin's params as its identity: without the cache folders (`config.CACHE_PARAMS`,
    where it keeps files, not what it decides) and each number in the type its Config
    declares (so 1 and 1.0 are one value where the plugin cannot tell them apart). Params
    of a plugin that cannot be found (`_plugin_config`) are kept as written."""
    from ..config import CACHE_PARAMS

    config_cls = _plugin_config(name) if isinstance(name, str) else None
    out = {}
    for key, value in params.items():
        if key in CACHE_PARAMS:
            continue
        out[key] = value if config_cls is None else _declared(config_cls, key, value)
    return out


def plugin_default_params(name: str) -> dict[str, Any] | None:
    """The params the plugin registered as `name` takes where a config does not write them
    (its Config's defaults, as config.json would hold them: a tuple as a list), without
    those the run sets (`RUN_KEYS`); None where its Config cannot be found
    (`_plugin_config`)."""
    from ..engine.plugins import RUN_KEYS

    config_cls = _plugin_config(name)
    if config_cls is None:
        return None
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        if f.name in RUN_KEYS:
            continue  # the run sets it where the params do not: written, it is not the same
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = json.loads(json.dumps(_declared(config_cls, f.name, value), default=str))
    return out


@functools.cache
def _plugin_defaults(name: str) -> dict[str, str]:
    """The plugin's Config defaults, each as canonical JSON; {} where it cannot be found."""
    defaults = plugin_default_params(name) or {}
    return {k: _canonical_json(v) for k, v in defaults.items()}


def _canonical_json(value: Any) -> str:
    return json.dumps(_canonical_number(json.loads(json.dumps(value, default=str))), sort_keys=True)


def _plugin_params(spec: Any, where: str) -> Any:
    """A plugin spec (signals' or risk's list item, sizing's table, at dotted `where`) with
    its params as its identity: `canonical_params`, less those equal to the plugin's own
    default (written or not, the plugin runs alike). A spec lacking its name has the
    default's there, as any setting a config lacks."""
    if not (isinstance(spec, dict) and isinstance(spec.get("params"), dict)):
        return spec
    name = spec.get("name", _defaults().get(f"{where}.name"))
    params = canonical_params(name, spec["params"])
    defaults = _plugin_defaults(name) if isinstance(name, str) else {}
    kept = {k: v for k, v in params.items() if defaults.get(k) != _canonical_json(v)}
    return {**spec, "params": kept}


def _off_defaults(tree: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    from ..reload import flatten

    out: dict[str, Any] = {}
    tables = {k.rsplit(".", 1)[0] for k in defaults if "." in k}
    for key, value in flatten(tree).items():
        if value == {} and key in tables:
            continue  # a table whose every setting is missing: all at their defaults
        if ".params" not in key:
            if key in defaults:
                if value == defaults[key]:
                    continue
            elif _PLUGIN_FIELD.fullmatch(key) and value == 1.0:
                continue
        out[key] = value
    return out


def variant_settings(
    config: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG
) -> dict[str, Any]:
    """The settings (dotted, `reload.flatten`'s form) that make `config` the variant it is:
    those not at this build's default. A build that adds a setting at its default writes it
    into every later config.json, and the old records lack it: hashing the whole file made
    the same strategy two trials after each upgrade. A setting a config lacks is at its
    default, as `run_continuation.differences` treats one for a live run; a setting whose
    default changed between builds still differs (the run behaves otherwise). A plugin's
    params count as `_plugin_params` gives them: its cache folders and those at the
    plugin's own default dropped, numbers as its Config holds them. Numbers are compared
    as values: 1.0 and 1 are one (a bool is not a number)."""
    tree = _tree(config, ignore)
    for section in ("signals", "sizing", "risk"):
        value = tree.get(section)
        if isinstance(value, list):
            tree[section] = [_plugin_params(s, f"{section}[{i}]") for i, s in enumerate(value)]
        elif value is not None:
            tree[section] = _plugin_params(value, section)
    return _off_defaults(_canonical_number(tree), _canonical_number(_defaults()))


def plugin_specs_of(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, plugin name) of each plugin of a config.json (`signals[0]`, `sizing`,
    `risk[1]`), in the pipeline's order, as `environment.plugin_sources` names them."""
    out: list[tuple[str, str]] = []
    for section in ("signals", "sizing", "risk"):
        value = config.get(section)
        specs = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, spec in specs:
            if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
                out.append((section if i is None else f"{section}[{i}]", spec["name"]))
    return out


def plugin_code_identity(plugins: Any) -> list[dict[str, Any]]:
    """What of the plugins' code makes a variant, from environment.json's `plugins` (or
    a ledger line's list): each third-party plugin's place and the digest of
    its package's code. An author's edit of a plugin is another strategy tried (and a
    whitespace edit counts too: one trial too many makes the deflated Sharpe ratio
    stricter, one too few laxer); tradingd's own plugins are left out (`BUILTIN_PACKAGE`),
    as is a plugin whose code is unknown (a record made before it was recorded)."""
    if not isinstance(plugins, list):
        return []
    return [
        {"plugin": p.get("key"), "code": p["code"]}
        for p in plugins
        if isinstance(p, Mapping)
        and isinstance(p.get("code"), str)
        and p.get("package") != BUILTIN_PACKAGE
    ]


def config_hash(
    config: Mapping[str, Any],
    ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG,
    run_inputs: Sequence[Mapping[str, Any]] = (),
    plugin_code: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A run configuration's identity as a strategy variant: sha256 of the canonical JSON of
    its `variant_settings` (without the `ignore`d keys, dotted paths, that do not change
    what the run decides), and of `run_inputs`, what its plugins decided from besides their
    params: the list its run id hashes (`app.pipeline_run_inputs`, its summary's
    `run_inputs`; the ML plugin's model by version, ONNX files and card). One config on two
    models is two backtests (two run ids) and two variants tried, also when the two models
    share a version: the trials compared versions only, and counted such a pair once.
    `plugin_code`: the third-party plugins' code (`plugin_code_identity`): an edited
    plugin rerun under the same run id was one variant with the run before the edit.
    Without inputs and code, the hash it always was."""
    settings = variant_settings(config, ignore)
    if run_inputs:
        inputs = json.loads(json.dumps(list(run_inputs), sort_keys=True, default=str))
        settings = {**settings, "run_inputs": inputs}
    if plugin_code:
        settings = {**settings, "plugin_code": [dict(p) for p in plugin_code]}
    return _digest(settings)


def config_hash_v3(
    config: Mapping[str, Any],
    ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG,
    models: Sequence[str] = (),
) -> str:
    """The hash ledger lines of hash_version 3 hold: the models by their versions (a
    summary's `models[].version`). Only to tell which folder such a line names."""
    settings = variant_settings(config, ignore)
    if models:
        settings = {**settings, "models": list(models)}
    return _digest(settings)


def config_hash_v2(
    config: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG
) -> str:
    """The hash ledger lines of hash_version 2 hold: plugin params as written (their cache
    folders and values at their defaults included), numbers as written. Only to tell which
    folder such a line names."""
    return _digest(_off_defaults(_tree(config, ignore), _defaults()))


def legacy_config_hash(
    config: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG
) -> str:
    """The hash ledger lines written before HASH_VERSION 2 hold: of the whole config.json
    (without the `ignore`d keys). Only to tell which folder such a line names."""
    return _digest(_tree(config, ignore))


def plugin_code_in(folder: Path) -> list[dict[str, Any]]:
    """The third-party plugins' code a run folder's environment.json names
    (`plugin_code_identity`): what the count reads of a folder and a backtest's ledger line
    of the record it has just written. None without the file or before it named code.
    ValueError naming the file for one that cannot be read."""
    file = folder / "environment.json"
    if not file.exists():
        return []
    env = json_object_file(file)
    return plugin_code_identity(env.get("plugins"))


def record_trial(
    runs_root: str | Path,
    run_id: str,
    config: Mapping[str, Any],
    equity: Any,
    initial_capital: float,
    run_inputs: Sequence[Mapping[str, Any]] = (),
    plugin_code: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Note a finished run in `runs_root`'s ledger, for `count_trials`: its variant
    (`config_hash`) and its per-bar returns' count, mean and standard deviation (a Sharpe
    ratio at any risk-free rate). Five momentum lookbacks run one after the other under one
    `run.run_id` left one folder, and the deflated Sharpe counted 1 trial, not 5. A line is
    added once per run id and variant, so reruns of one configuration do not grow it.
    `plugin_code`: `plugin_code_identity`'s list, of the run's environment.json as the
    count reads it (`plugin_code_in`)."""
    root = Path(runs_root)
    key = config_hash(config, run_inputs=run_inputs, plugin_code=plugin_code)
    ledger = root / TRIALS_LEDGER
    r = simple_returns(equity, initial_capital)
    stats: dict[str, Any] = {"bars": int(r.size), "mean": None, "std": None}
    if r.size >= 3 and np.all(np.isfinite(r)):
        stats["mean"], stats["std"] = float(np.mean(r)), float(np.std(r, ddof=1))
    line = json.dumps(
        {"run_id": run_id, "config_hash": key, "hash_version": HASH_VERSION, **stats},
        sort_keys=True,
    )
    # The look for this line and its append are one step under the ledger's exclusive lock:
    # a sweep's workers end their backtests together, and without it two could both find
    # the line missing and both add it, or a reader see half a line.
    with ledger.open("a+b") as fh:
        _lock_to_append(fh.fileno(), ledger)
        fh.seek(0)
        data = fh.read()
        for entry in _parsed(data, ledger):
            if (
                entry.get("run_id") == run_id
                and entry.get("config_hash") == key
                and entry.get("hash_version") == HASH_VERSION
            ):
                return
        start = b""
        if data and not data.endswith(b"\n"):
            # A last line cut by a crash or a full disk: appended to, it took this entry
            # with it into one unreadable line.
            start = b"\n"
            log.warning(
                "trials.ledger_line_ended",
                file=str(ledger),
                detail="its last line was cut (a crash or a full disk during a write): the "
                "new entry starts a line of its own, the cut one stays reported as skipped",
            )
        fh.write(start + line.encode("utf-8") + b"\n")
        fh.flush()  # within the lock: the next holder reads the whole line


def ledger_entries(path: Path) -> list[dict[str, Any]]:
    """The ledger's entries, read under a shared lock (an append in progress is whole or
    absent). A line that is not an entry (a write cut by a full disk, bytes that are not
    UTF-8, an edit) is skipped and said, with its line number, so the count it leaves out
    can be found and mended."""
    try:
        with path.open("rb") as fh:
            _lock_to_read(fh.fileno(), path)
            data = fh.read()
    except FileNotFoundError:
        return []
    return _parsed(data, path)


# The (folder, step) pairs whose ledger was read or appended to without a lock, said once
# each (`_unlocked`).
_UNLOCKED_FOLDERS: set[tuple[str, str]] = set()


class LedgerLockError(StorageError, OSError):
    """flock failed on the ledger for a reason other than a filesystem without locks (EIO,
    EBADF, EACCES, ...: `core.flock`). Read as "no locks here" before, the ledger was read or
    appended to unlocked, with a warning once per folder. An OSError too, so a backtest's
    end says it (`backtest.trial_not_recorded`) rather than fail; the count stops on it."""

    def __str__(self) -> str:
        return str(self.strerror)


def _lock_failed(path: Path, step: str, exc: OSError) -> LedgerLockError:
    """The error of a lock that neither is unsupported nor succeeded, naming the file and
    the errno."""
    return LedgerLockError(
        exc.errno,
        f"cannot lock the trial ledger {path} to {step} it ({flock.errno_text(exc)}): not "
        f"{'read' if step == 'read' else 'appended to'} without the lock, as on a filesystem "
        "that has none; fix the file or its disk",
    )


def _lock_to_read(fd: int, path: Path) -> None:
    """A shared lock for a read; on a filesystem that refuses locks (ENOLCK: some NFS and
    FUSE mounts; `core.flock.UNSUPPORTED`) the ledger is read without one, said once per
    folder: the count read fine there before readers locked, and must not fail now. A line
    appended meanwhile may then be read cut (reported as skipped by `_parsed`). Any other
    failure is `LedgerLockError`."""
    _lock(
        fd,
        path,
        fcntl.LOCK_SH,
        "read",
        "this filesystem refuses file locks: the trial ledger is read without one, so a "
        "line a backtest ending meanwhile writes may be read cut (and reported as "
        "skipped); count again once the runs are done, or keep the runs on a local disk",
    )


def _lock_to_append(fd: int, path: Path) -> None:
    """The exclusive lock for an append; where the filesystem refuses locks (as for
    `_lock_to_read`) the line is appended without one, said once per folder: the backtest
    noted no trial at all there (`backtest.trial_not_recorded` at every run), and a
    deflated Sharpe ratio then missed the variants whose folders a rerun replaced. Any
    other failure is `LedgerLockError`: no line is appended."""
    _lock(
        fd,
        path,
        fcntl.LOCK_EX,
        "append",
        "this filesystem refuses file locks: trials are appended to the ledger without "
        "one, so backtests ending together into this folder (a parallel sweep's workers) "
        "may add a variant's line twice (counted once) or cut each other's lines "
        "(reported as skipped when counted); run parallel sweeps into a folder on a "
        "local disk",
    )


def _lock(fd: int, path: Path, operation: int, what: str, unlocked: str) -> None:
    """flock `operation` on the ledger for `what` (read, append): on a filesystem without
    locks it goes on unlocked, said once per folder with `unlocked`; any other failure is
    `LedgerLockError`."""
    try:
        fcntl.flock(fd, operation)
    except OSError as exc:
        if not flock.is_unsupported(exc):
            raise _lock_failed(path, what, exc) from exc
        _unlocked(path, what, exc, unlocked)


def _unlocked(path: Path, step: str, exc: OSError, detail: str) -> None:
    folder = str(path.parent)
    if (folder, step) in _UNLOCKED_FOLDERS:
        return
    _UNLOCKED_FOLDERS.add((folder, step))
    log.warning(
        "trials.ledger_unlocked",
        folder=folder,
        step=step,
        error=exc.strerror or str(exc),
        detail=detail,
    )


# The line numbers a warning names at most (the count names them all).
_SHOWN_LINES = 20


def _parsed(data: bytes, path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("config_hash"), str):
            out.append(entry)
        else:
            bad.append(number)
    if bad:
        log.warning(
            "trials.ledger_lines_skipped",
            file=str(path),
            lines=len(bad),
            line_numbers=bad[:_SHOWN_LINES],
            detail="not counted as trials: each line must be one JSON entry with a "
            "config_hash; mend or remove them (a cut line: its run's variant is missing)",
        )
    return out
