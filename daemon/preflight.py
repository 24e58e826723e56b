"""Start-up checks that need the outside world, run by every command before any work.

`config.py` checks what a value can be on its own. What depends on this machine is checked
here, before data is loaded or a replay starts, so a mistake costs seconds rather than a whole
replay or a live session: the configured plugins (installed? parameters valid?), the folders
the command will write to, the optional training packages, and the services behind
`storage.url` and `cache.url`. Every failure is a `ConfigError` (or `PluginError`) naming the
key, the value (credentials masked) and what is allowed. A PostgreSQL that could not be
used (no answer, a host not found, a refusal for now) is `ServiceUnavailable`, the
ConfigError a restart may end: `tradingd run` exits 2 on it, which systemd restarts, and
EX_CONFIG (78, not restarted) on the others (`tradingd.__main__.exit_code`). A Redis that
cannot be used for now is only a warning (`_check_redis`): it is a cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from .config import Config, PluginSpec, name_origin, redis_db_index, url_label
from .core.endpoints import is_postgres_url
from .core.errors import (
    ConfigError,
    PluginError,
    ServiceUnavailable,
    StorageError,
    TradingdError,
)
from .secrets import mask_text, mask_url, scrub

log = structlog.get_logger(__name__)

# Plugins are instantiated once to validate their parameters; the universe is not known
# before the data is loaded, so they get the configured symbols or none. Not a stand-in name:
# plugins check the symbols they are given (sector_exposure warned that "PREFLIGHT" has no
# sector, on every new user's first backtest).
PLACEHOLDER_SYMBOLS: tuple[str, ...] = ()

# What each command writes, so that e.g. `tradingd config` never fails on a folder it would
# not touch: "output" = run.output_dir (or --output), "audit" = log.audit_dir, "store" = the
# SQLite file's folder, "out" = the --out / --root folder of train / retrain.
WRITES: dict[str, tuple[str, ...]] = {
    "backtest": ("output", "audit", "store"),
    "run": ("audit", "store"),
    "fetch": ("store",),
    "train": ("out",),
    "retrain": ("out",),
}

# The modules `tradingd_models` imports for training and export (models/cnn_lstm.py,
# models/forest.py, and Keras' ONNX export), with the distribution that provides each.
TRAIN_MODULES = {
    "keras": "keras",
    "tensorflow": "tensorflow-cpu",
    "sklearn": "scikit-learn",
    "skl2onnx": "skl2onnx",
    "tf2onnx": "tf2onnx",
    "onnx": "onnx",
}
# The commands that train a model rather than serve one (`load_pipeline(serving=False)`).
TRAINING_COMMANDS = frozenset({"train", "retrain"})
# The commands whose plugins run on live.bar: a live run and a replay of a live run's bars.
LIVE_BAR_COMMANDS = frozenset({"run", "replay-check"})

TRAIN_INSTALL = "pip install '.[train]' (from a checkout) or pip install 'tradingd[train]'"

DEFAULT_SERVICE_TIMEOUT_S = 3.0


def check_config(config: Config, command: str, *, output_dir: str | Path | None = None) -> None:
    """Everything about `config` that can be checked without running: one path for every
    command, so `tradingd config` rejects what `tradingd backtest` would reject.

    `output_dir` is the command's explicit output folder: `backtest --output` (instead of
    run.output_dir), `train --out`, `retrain --root`."""
    for bar in run_bars(config, command):
        # train / retrain make a model: the one the configuration serves need not exist yet
        # (`tradingd train` refused a model_dir it was about to fill), and its features are
        # not the new model's. Its params are still checked.
        pipeline = load_pipeline(config, bar, serving=command not in TRAINING_COMMANDS)
        _check_features(config, pipeline)
    if not config.risk:
        log.warning(
            "config.no_risk_rules",
            detail="risk = [] with run.allow_no_risk = true: no risk rule limits any order",
        )
    for what in WRITES.get(command, ()):
        if what == "output":
            check_record_folder(config, output_dir)
        elif what == "audit":
            check_writable_dir(config.log.audit_dir, "log.audit_dir")
        elif what == "store":
            db = _sqlite_file(config.storage.url)
            if db is not None:
                # The variable that set it (DATABASE_URL, TRADINGD_STORAGE__URL), if one did.
                label = url_label(config, "storage.url", "DATABASE_URL")
                if db.is_dir() or _names_a_folder(config.storage.url):
                    # SQLite's own words ("unable to open database file") came later, after
                    # the instance lock had made `<folder>.locks/` beside it.
                    raise ConfigError(
                        f"{label} names the folder {db}, not a database "
                        "file: name a file in it, e.g. sqlite:///" + (db / "tradingd.db").as_posix()
                    )
                check_writable_dir(db.parent, f"{label} folder")
                _check_store_not_left_undecoded(config.storage.url, db, label)
        elif what == "out" and output_dir is not None:
            check_writable_dir(output_dir, "--out" if command == "train" else "--root")
    if command == "run":
        check_live_feed(config)
    if command in ("run", "config"):
        check_broker_keys(config, refuse=command == "run")
        warn_unused_spool_dir(config)


def check_record_folder(
    config: Config, output_dir: str | Path | None = None, key: str = "--output"
) -> Path:
    """The folder a backtest writes its record to, checked as `check_writable_dir` does with
    the record's files in it: `output_dir` (named `key`) when given, else the run's own folder
    in run.output_dir, `<run.output_dir>/<run id>`. A path too long for the record failed only
    after the whole replay; with run.output_dir only the parent folder was checked, and the
    run id (up to 84 characters) and the files in it were not counted."""
    from .app import run_id_for
    from .backtest import record_names

    if output_dir is not None:
        return check_writable_dir(output_dir, key, names=record_names())
    # The setting itself first: a folder that cannot be written is the operator's value.
    root = check_writable_dir(config.run.output_dir, "run.output_dir")
    folder = root / run_id_for(config, "backtest")
    return check_writable_dir(folder, "run.output_dir's record folder", names=record_names())


def warn_unused_spool_dir(config: Config) -> None:
    """`storage.spool_dir` set on a store that is not PostgreSQL: the warning
    `storage.spool_dir_unused`, naming the value and why. Only a live run on PostgreSQL
    spools (SQLite writes to its own file, which has no outage to ride out), and the setting
    was ignored without a word: a folder an operator meant to check, or one that could not
    be used (a file's path), went unnoticed."""
    st = config.storage
    if not st.spool_dir or is_postgres_url(st.url):
        return
    variable = getattr(config, "env_sources", {}).get("storage.spool_dir")
    log.warning(
        "storage.spool_dir_unused",
        spool_dir=st.spool_dir,
        setting="storage.spool_dir" + (f" ({variable})" if variable else ""),
        store=mask_url(st.url),
        rule="the spool keeps a live run on PostgreSQL going through a database outage; "
        "this store is not PostgreSQL and never spools, so storage.spool_dir is not used "
        "(nor made or checked): unset it, or set storage.url to a postgresql:// URL",
    )


def check_live_feed(config: Config) -> None:
    """A recorded feed holds only past bars, and the real-time clock (bars_per_second = 0)
    waits for the next bar to close after now: such a daemon warmed up, then idled for good,
    /ready answering 503 while its trading check said "trading". The defaults are that
    combination, right for a backtest, not for `tradingd run`."""
    if config.broker.kind == "alpaca":
        from .app import accelerated_on_an_account, replays_on_an_account

        if replays_on_an_account(config):
            raise accelerated_on_an_account(config)
    if config.feed.source == "recorded" and config.live.bars_per_second == 0:
        raise ConfigError(
            "feed.source = 'recorded' replays stored history: set live.bars_per_second > 0 "
            "(config/demo.toml: 20), or a vendor feed for real time (feed.source = 'yahoo', "
            "'alphavantage' or 'alpaca', with data.symbols; config/paper.toml)"
        )


def check_broker_keys(config: Config, *, refuse: bool = True) -> None:
    """`broker.kind = "alpaca"` needs the account's keys in the environment: found only
    mid-start before (`app._alpaca_or`), after the store was opened and the health server
    started. `tradingd run` refuses; `tradingd config` (`refuse` False) warns, since it is
    often run where the keys are not (an operator's shell, not the unit's env file). Names
    the variables, never a value."""
    if config.broker.kind != "alpaca":
        return
    from .app import replays_on_an_account
    from .brokers.alpaca_mapping import alpaca_keys_from_env, missing_keys_error

    if replays_on_an_account(config) or alpaca_keys_from_env() is not None:
        return
    error = missing_keys_error()
    if refuse:
        raise error
    log.warning(
        "config.broker_keys_missing",
        detail=str(error),
        rule="tradingd run refuses to start without them here; where the daemon runs "
        "(systemd's EnvironmentFile, the container's env) they may be set",
    )


def run_bars(config: Config, command: str) -> tuple[str, ...]:
    """The bar lengths `command`'s run builds its plugins for (`build_engine`): the run's
    defaults (`app.run_defaults`: periods_per_year) depend on them, and a plugin built
    without them passed or failed the check unlike the run. A live run and a replay of one
    use live.bar; a backtest the data's bar, known only once the data is loaded: daily here
    (intraday data is built for its own bar after loading). `tradingd config` checks both a
    backtest and a live run would check."""
    live = config.live.bar
    if command in LIVE_BAR_COMMANDS:
        return (live,)
    if command == "config":
        return tuple(dict.fromkeys(("1d", live)))
    return ("1d",)


def load_pipeline(config: Config, bar: str = "1d", *, serving: bool = True) -> Any:
    """Every configured plugin loaded and instantiated with its parameters, exactly as
    `tradingd.app.build_pipeline` does on bars of length `bar` (same loader, the same run
    defaults, same key names in errors, the file that set a key named). An unexpected
    exception from a plugin's constructor becomes a PluginError naming the key.

    `serving=False` (train, retrain): a signal plugin that serves a model (`serves_model`:
    `ml_ensemble`) has its params checked, and is not built (which loads its model) nor
    part of the pipeline returned."""
    from .app import run_defaults
    from .engine.engine import Pipeline
    from .engine.plugins import GROUP, _config, available, check_names, load_plugin

    symbols = tuple(config.data.symbols) or PLACEHOLDER_SYMBOLS
    defaults = run_defaults(config, bar)
    try:
        eps = available()  # read once, as build_pipeline does
    except Exception as exc:  # a broken installed distribution's metadata
        raise PluginError(
            f"the installed plugins (entry points {GROUP!r}) could not be read: "
            f"{type(exc).__name__}: {exc}"
        ) from exc

    def load(spec: PluginSpec, kind: str, where: str) -> Any:
        try:
            return load_plugin(spec, kind, symbols, where, eps, defaults)
        except ConfigError as exc:
            name_origin(config, exc)  # as build_pipeline: "... (set in paper.toml)"
            raise
        except TradingdError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{where}.name = {spec.name!r}: the plugin failed to start with its params: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def serves_model(spec: PluginSpec, where: str) -> bool:
        """Whether the signal of `spec` serves a model, its params checked when it does."""
        ep = eps.get(spec.name)
        try:
            cls = ep.load() if ep is not None else None
        except Exception:
            return False  # load_plugin says why
        if cls is None or not getattr(cls, "serves_model", False):
            return False
        if getattr(cls, "kind", None) != "signal":
            return False
        try:
            _config(cls.Config, spec, where, defaults)
        except ConfigError as exc:
            name_origin(config, exc)
            raise
        return True

    # (config key, registered name, plugin) of each plugin built, for `check_names`.
    configured: list[tuple[str, str, Any]] = []

    def built(spec: PluginSpec, kind: str, where: str) -> Any:
        plugin = load(spec, kind, where)
        configured.append((where, spec.name, plugin))
        return plugin

    signals = [
        (built(spec, "signal", f"signals[{i}]"), spec.weight)
        for i, spec in enumerate(config.signals)
        if serving or not serves_model(spec, f"signals[{i}]")
    ]
    sizing = built(config.sizing, "sizing", "sizing")
    risks = [built(spec, "risk", f"risk[{i}]") for i, spec in enumerate(config.risk)]
    try:
        check_names(configured)  # a name another plugin goes by: the two would be mixed up
    except ConfigError as exc:
        name_origin(config, exc)
        raise
    return Pipeline(signals=signals, sizing=sizing, risks=risks)


def _check_features(config: Config, pipeline: Any) -> None:
    """The feature set, the extra features and every feature a plugin asks for must parse,
    and a model's feature set must match the engine's (as at engine start)."""
    from .app import make_catalog, verify_model_features
    from .features.catalog import resolve_set

    f = config.features
    owners = pipeline.feature_owners()
    names = (*resolve_set(f.set, f.extra), *sorted(owners))
    catalog = make_catalog(config)
    for name in names:
        try:
            catalog.node(name)
        except ConfigError as exc:
            if name in f.extra:
                where = f"features.extra[{f.extra.index(name)}]"
            elif name in owners:
                where = f"plugin {owners[name]!r} asks for the feature"
            else:
                where = "feature"
            raise ConfigError(f"{where} = {name!r}: {exc}") from None
    verify_model_features(config, pipeline)


def check_writable_dir(path: str | Path, key: str, names: Sequence[str] = ()) -> Path:
    """Fail now if `path` cannot be a folder this process writes into, without creating it:
    it is an existing writable folder, or the nearest existing ancestor is one (so it can be
    created). Writability is probed with an anonymous temporary file, which also holds for
    root, read-only mounts and ACLs, where permission bits mislead. `names` are the files
    the command will create in it (temporary names included): the longest must fit the file
    system's limits on a path and on a name (`_check_lengths`)."""
    p = Path(path).expanduser()
    target = p
    # A relative path is the working directory's (a service's WorkingDirectory=): said with
    # its absolute path too, "'var/audit' (/opt/tradingd/var/audit)".
    shown = repr(str(path)) if p.is_absolute() else f"{str(path)!r} ({p.absolute()})"
    try:
        while not target.exists():
            if target.parent == target:
                break
            target = target.parent
    except OSError as exc:
        # A name over NAME_MAX (ENAMETOOLONG), a folder this user may not look into: the
        # check itself ended in a traceback.
        fix = (
            "give a shorter path"
            if exc.errno == errno.ENAMETOOLONG
            else "must be a folder this user can create or write to"
        )
        raise ConfigError(
            f"{key} = {_shown(str(path))!r} is invalid: {_shown(str(target))} cannot be looked up "
            f"({exc.strerror or exc}); {fix}"
        ) from None
    if not target.is_dir():
        what = "it exists and" if target == p else f"{target.absolute()} exists and"
        raise ConfigError(
            f"{key} = {shown} is invalid: {what} is not a folder; must be a folder this "
            "user can create or write to"
        )
    try:
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        where = "" if target == p else f" (its nearest existing folder {target.absolute()})"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # A full disk is no set-up mistake: a service restarted once space is freed
            # goes through (exit 2, as a full storage spool; README, "Exit codes"). It was
            # EX_CONFIG, the unit not restarted, and "must be a folder this user can write".
            raise StorageError(
                f"{key} = {shown}{where}: a file could not be created there "
                f"({exc.strerror or exc}): free space on its disk"
            ) from None
        raise ConfigError(
            f"{key} = {shown} is invalid: not writable{where}: a file could not be "
            f"created there ({exc.strerror or exc}); must be a folder this user can create or "
            "write to"
        ) from None
    if names:
        _check_lengths(p, target, key, max(names, key=lambda n: len(os.fsencode(n))))
    return p


def _check_lengths(p: Path, target: Path, key: str, longest: str) -> None:
    """The path of `longest` in `p` (as this process will pass it) and every name in it that
    does not exist yet are within the limits of the file system they will be on (PATH_MAX,
    NAME_MAX: ENAMETOOLONG otherwise). The kernel is asked too: a stat of that path says
    ENAMETOOLONG before it says the file does not exist."""
    full = p / longest
    try:
        path_max = os.pathconf(target, "PC_PATH_MAX")
        name_max = os.pathconf(target, "PC_NAME_MAX")
    except (OSError, ValueError):  # a system that does not say: the probe below still asks
        path_max = name_max = -1
    size = len(os.fsencode(full)) + 1  # with its terminating NUL, as PATH_MAX counts
    problem = ""
    if 0 < path_max < size:
        problem = (
            f"the paths of the files written in it would be up to {size - 1:,} bytes, over "
            f"this file system's limit of {path_max - 1:,}"
        )
    for name in [*p.parts[len(target.parts) :], longest]:
        if not problem and 0 < name_max < len(os.fsencode(name)):
            problem = (
                f"the name {_shown(name)!r} would be {len(os.fsencode(name)):,} bytes, over "
                f"this file system's limit of {name_max:,} for a file or folder name"
            )
    if not problem:
        try:
            os.stat(full)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                problem = f"the files written in it cannot be created there ({exc.strerror})"
    if problem:
        raise ConfigError(f"{key} = {_shown(str(p))!r} is invalid: {problem}; give a shorter path")


def _shown(text: str, keep: int = 60) -> str:
    """A path short enough for an error line (a 4,000-character one buried the message)."""
    if len(text) <= 2 * keep:
        return text
    return f"{text[:keep]}...{text[-keep:]} ({len(text):,} characters)"


def _sqlite_file(url: str) -> Path | None:
    """The SQLite file of a store URL as the store reads it (`sqlite_path`: decoded), or None
    for another store or one in memory."""
    from .storage.factory import sqlite_path

    url = url.strip()
    if not url.lower().startswith("sqlite:///"):
        return None
    path = sqlite_path(url)
    # `~` as the store and its locks expand it (SqliteStore).
    return None if path == ":memory:" else Path(path).expanduser()


def _check_store_not_left_undecoded(url: str, db: Path, label: str) -> None:
    """A store made before SQLite URLs were percent-decoded is at the URL's path as written
    (`var/my%20db.db`): opened at the decoded path, it was silently an empty database, and a
    live daemon began a new run without its checkpoint. Refused while the decoded file does
    not exist, naming both and the two ways out."""
    raw = Path(url.strip()[len("sqlite:///") :].split("?", 1)[0]).expanduser()
    try:
        left = raw != db and not db.exists() and raw.exists()
    except OSError:  # the path as written too long (%-escapes triple it): no store there
        return
    if not left:
        return
    raise ConfigError(
        f"{label} names the SQLite file {db} (its %-escapes decoded), "
        f"which does not exist, while a store exists at {raw}, the path as written, which "
        "earlier versions opened: starting would open an empty database (a live run would "
        f"begin again without its checkpoint). Rename {raw} to {db}, or keep the file and "
        "write each % of the URL's path as %25"
    )


def _names_a_folder(url: str) -> bool:
    """`sqlite:////data/db/`: a path ending in a separator is a folder, even one not made
    yet (SQLite would make a database file of that name). The decoded path (`%2F` too)."""
    from .storage.factory import sqlite_path

    return sqlite_path(url.strip()).endswith(("/", "\\"))


def check_train_extra() -> None:
    """Training imports TensorFlow, scikit-learn and the ONNX converters lazily, deep inside
    the run: without the `train` extra it would fail after the data is loaded. Ask first."""
    missing = [dist for mod, dist in TRAIN_MODULES.items() if not _importable(mod)]
    if missing:  # a ConfigError: `tradingd retrain`'s unit cannot succeed before the install
        raise ConfigError(
            f"training needs the train extra, which is not installed (missing: "
            f"{', '.join(missing)}); install it with: {TRAIN_INSTALL}"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or None entry in sys.modules
        return False


async def check_services(
    config: Config, timeout_s: float = DEFAULT_SERVICE_TIMEOUT_S, *, live: bool = False
) -> None:
    """The configured PostgreSQL and Redis answer, each within `timeout_s`: a wrong port, a
    missing database or a Redis database index the server does not have is reported now,
    not at the first write or publish. `live`: a PostgreSQL that cannot be reached (connection
    refused, host unreachable) is waited for by the store's start, for
    `storage.start_retry_s` (a database restarting beside the daemon, systemd starting both),
    so it is logged here, not an error; a server that answers and refuses stays an error."""
    wait_s = config.storage.start_retry_s if live else 0.0
    await _check_postgres(
        config.storage.url, timeout_s, wait_s, url_label(config, "storage.url", "DATABASE_URL")
    )
    await _check_redis(config.cache.url, timeout_s, url_label(config, "cache.url", "REDIS_URL"))


async def _check_postgres(
    url: str, timeout_s: float, wait_s: float = 0.0, label: str = "storage.url (DATABASE_URL)"
) -> None:
    url = url.strip()
    if not is_postgres_url(url):
        return
    import asyncpg

    key = f"{label} = {mask_url(url)!r}"
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url, timeout=timeout_s), timeout_s + 1)
    except Exception as exc:
        # Refused, or a server still starting: restarting, or not up yet. Anything else (no
        # answer in time, a service that is not a PostgreSQL, TLS, an unknown host) is a
        # mistake to report now, not to wait out.
        if wait_s > 0 and _not_up_yet(exc):
            log.warning(
                "preflight.database_unavailable",
                url=mask_url(url),
                error=f"{type(exc).__name__}: {scrub(str(exc), url)}",
                waits_s=wait_s,
                detail="the store's start waits storage.start_retry_s for it",
            )
            return
        if isinstance(exc, TimeoutError):
            raise ServiceUnavailable(
                f"{key}: no PostgreSQL answered within {timeout_s:g} s; check host and port, "
                "and that a PostgreSQL server (not another service) listens there"
            ) from None
        # Any other failure to connect is reported the same way.
        error = ConfigError if _refused_the_url(exc) else ServiceUnavailable
        raise error(
            f"{key}: cannot connect to PostgreSQL: {type(exc).__name__}: {scrub(str(exc), url)}"
        ) from None
    with contextlib.suppress(Exception):
        await conn.close(timeout=timeout_s)


def _not_up_yet(exc: BaseException) -> bool:
    """Nothing listens yet (connection refused, host or network unreachable) or PostgreSQL
    says it is starting up or shutting down (SQLSTATE 57P03, cannot_connect_now)."""
    if isinstance(exc, OSError) and exc.errno in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    ):
        return True
    return str(getattr(exc, "sqlstate", "") or "") == "57P03"


def _refused_the_url(exc: BaseException) -> bool:
    """The URL itself is wrong, which no restart gets past: the server answered that the
    role or its password (SQLSTATE class 28) or the database (3D000) is not there, or asyncpg
    cannot use the URL's options (ClientConfigurationError: an unknown sslmode, say). Anything
    else (no answer, a host not found, too many connections, a server restarting) may end by
    itself: `ServiceUnavailable`."""
    import asyncpg

    state = str(getattr(exc, "sqlstate", "") or "")
    return (
        state.startswith("28")
        or state == "3D000"
        or isinstance(exc, asyncpg.ClientConfigurationError)
    )


def _refused(exc: BaseException) -> bool:
    """A connection refused (nothing listens) as opposed to a server that answered wrongly."""
    text = str(exc).lower()
    return "refused" in text or "error 111" in text or "errno 111" in text


# At most this much of what a server that is not Redis answered is quoted in the warning.
_ANSWER_SHOWN = 60


def _redis_found(exc: BaseException, url: str, timeout_s: float) -> str:
    """What a Redis check that did not succeed found, in the operator's words: Redis
    loading, something else listening, no such host, nothing listening, no answer."""
    import socket

    from redis.exceptions import BusyLoadingError, InvalidResponse, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, BusyLoadingError):
        return "Redis is loading its dataset"
    if isinstance(exc, InvalidResponse):
        # redis-py's "Protocol Error: b'HTTP/1.1 400 Bad Request'": the bytes it read.
        answer = mask_text(scrub(str(exc), url)).removeprefix("Protocol Error: ")
        if len(answer) > _ANSWER_SHOWN:
            answer = answer[:_ANSWER_SHOWN] + "..."
        return f"not a Redis server: it answered {answer}"
    if isinstance(exc, ResponseError):
        return f"Redis refused: {mask_text(scrub(str(exc), url))}"
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, socket.gaierror) or isinstance(exc, socket.gaierror):
        return "host not found"
    if isinstance(exc, (TimeoutError, RedisTimeoutError)):
        return f"no answer within {timeout_s:g} s"
    if _refused(exc):
        return "connection refused: nothing listens there"
    if "closed by server" in str(exc).lower():
        return "the server closed the connection without an answer (not a Redis server?)"
    return f"the connection failed: {type(exc).__name__}: {mask_text(scrub(str(exc), url))}"


def _configured_password(url: str) -> bool:
    """Whether `url` gives Redis a password (`redis://:PW@...`, `?password=PW`)."""
    from redis.asyncio.connection import parse_url

    try:
        return bool(parse_url(url).get("password"))
    except (ValueError, TypeError):
        return True  # cannot tell: the credentials' own message


async def _check_redis(url: str, timeout_s: float, label: str = "cache.url (REDIS_URL)") -> None:
    """The Redis of `url` answers PING. Only what no restart of either side mends is an
    error (ConfigError, exit 78): credentials refused or missing, a database index the
    server does not have, a URL redis-py cannot read. Anything else (Redis down, hung or
    loading its dataset, a host not found, a port where something else answers, a refusal
    such as MASTERDOWN) is the warning `preflight.redis_unreachable` naming what was found:
    Redis is a cache, and mid-run the same states only degrade it (the daemon serves from
    the process and reconnects in the background). They stopped the start with exit 2,
    and under systemd a Redis loading for a minute left the unit in start-limit-hit."""
    url = url.strip()
    if url.lower() in ("", "memory://"):
        return
    import redis.asyncio as aioredis
    from redis.exceptions import (
        AuthenticationError,
        AuthenticationWrongNumberOfArgsError,
        NoPermissionError,
        ResponseError,
    )

    key = f"{label} = {mask_url(url)!r}"
    db = redis_db_index(label, url)
    try:
        client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except (ValueError, TypeError) as exc:
        # redis-py's reading of the URL's options (`?health_check_interval=x`): was a
        # traceback.
        raise ConfigError(
            f"{key} is invalid: {scrub(str(exc), url)}; check the URL's query options"
        ) from None
    try:
        # Connecting SELECTs the URL's database, so this also checks the index.
        await asyncio.wait_for(client.ping(), timeout_s + 1)
    except (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError) as exc:
        # The URL's user or password, which no restart changes (a ConnectionError to
        # redis-py: it was told to "check host and port", which were right).
        if isinstance(exc, AuthenticationError) and not _configured_password(url):
            # redis-py's words for it ("HELLO must be called with the client already
            # authenticated ...") spoke of credentials that were never given.
            raise ConfigError(
                f"{key}: Redis requires a password and none is configured: set it in "
                "REDIS_URL (redis://:PASSWORD@host:port) or REDIS_PASSWORD (with REDIS_HOST; "
                "REDIS_URL wins)"
            ) from None
        raise ConfigError(
            f"{key}: Redis refused the credentials ({scrub(str(exc), url)}): check the user "
            "name and password in the URL against the server's `requirepass` / `ACL LIST`"
        ) from None
    except Exception as exc:
        if isinstance(exc, ResponseError) and "index" in str(exc).lower():
            raise ConfigError(
                f"{key}: database index {db} does not exist on this server ({exc}); valid: "
                "0..15 unless the server's `databases` setting allows more"
            ) from None
        log.warning(
            "preflight.redis_unreachable",
            setting=label,
            url=mask_url(url),
            found=_redis_found(exc, url, timeout_s),
            error=mask_text(scrub(f"{type(exc).__name__}: {exc}", url)),
            effect="the cache falls back to the process and reconnects in the background",
        )
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
