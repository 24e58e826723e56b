"""Operator actions on a stored live run while no daemon runs it (`tradingd reset-halt RUN`).

A running daemon owns its run: it holds the run's lock on the store and the instance lock,
and rewrites the checkpoint after every bar, so an edit behind its back would be overwritten
(or worse, half-applied). These actions take the same locks first and refuse while a daemon
holds either (the running daemon's `POST /reset-halt` is the way then). The run's lock is
what always meets the daemon's: the instance lock's account comes from the broker keys,
which this shell may not have.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog

from .config import Config
from .core.errors import ConfigError
from .secrets import mask_url
from .storage.factory import missing_sqlite_store, open_store

log = structlog.get_logger(__name__)


def _account(config: Config, run_id: str) -> str:
    """The lock account a daemon of this configuration takes (see app._instance_lock)."""
    from .brokers.alpaca_mapping import alpaca_keys_from_env
    from .instance_lock import broker_account

    keys = alpaca_keys_from_env() if config.broker.kind != "simulated" else None
    if keys is not None:
        return broker_account("alpaca", keys[0], config.broker.alpaca.base_url)
    return f"simulated:{run_id}"


def _run_locks(config: Config, run_id: str) -> Any:
    """The run's own lock on the store, which every daemon of the run holds (app._run_lock).
    The account lock alone missed a running daemon whenever this shell's Alpaca keys were
    not the daemon's (the systemd unit keeps them in a file only the daemon reads): the two
    accounts differed, and the reset was written back over by the daemon's next bar. The
    store's lock only: the audit folder's is the daemon host's, and may not be writable by
    the operator."""
    from .app import RunLock, _run_lock
    from .instance_lock import holder_text

    url = config.storage.url.strip()
    engine_lock = _run_lock(config, run_id)

    def refusal(what: str, holder: dict[str, Any]) -> str:
        return (
            f"run {run_id!r} is in use by {holder_text(holder)} with {what}: nothing was "
            "reset; reset the running daemon with POST /reset-halt (bearer token), or stop "
            "it first"
        )

    store_only = [lock for lock in engine_lock.locks if lock[1] == url]
    return RunLock(run_id, engine_lock.fixed_id, store_only, refusal)


async def reset_halt(config: Config, run_id: str) -> dict[str, Any]:
    """Lift every halted kill switch in the run's checkpoint; the next start trades again.
    Returns what was reset (empty when nothing was halted). A SQLite store that does not
    exist is named and left uncreated: the command looked in the wrong place."""
    missing = missing_sqlite_store(config.storage.url)
    if missing is not None:
        raise ConfigError(
            f"run {run_id!r}: no store at {mask_url(config.storage.url)} ({missing}): no "
            "live run was stored there, nothing was reset or created; check the run id "
            "and the storage URL (a daemon under systemd reads DATABASE_URL from its "
            "EnvironmentFile: run this command with the unit's environment, systemd/README.md)"
        )
    run_lock = _run_locks(config, run_id)
    await run_lock.start()
    try:
        return await _reset_halt(config, run_id)
    finally:
        await run_lock.stop()


async def _reset_halt(config: Config, run_id: str) -> dict[str, Any]:
    from .engine.engine import BEFORE_FIRST_BAR
    from .instance_lock import AnotherDaemonRunning, acquire_instance_lock

    try:
        lock = await acquire_instance_lock(config.storage.url, _account(config, run_id))
    except AnotherDaemonRunning as exc:
        raise ConfigError(
            f"{exc}; a running daemon is reset with POST /reset-halt (bearer token)"
        ) from None
    store = open_store(config.storage.url, spool=False)
    try:
        await store.start()
        try:
            rows = await store.fetch("checkpoints", run_id)
            # A control's row before the run's first bar (engine.BEFORE_FIRST_BAR) is no
            # bar's checkpoint: no kill switch has state there to reset.
            if not rows or rows[-1]["state"].get(BEFORE_FIRST_BAR):
                raise ConfigError(
                    f"run {run_id!r} has no checkpoint in the store "
                    f"{mask_url(config.storage.url)}: no live run of that id completed a bar "
                    "there (check the run id and the storage URL; a daemon under systemd "
                    "reads DATABASE_URL from its EnvironmentFile, systemd/README.md)"
                )
            bar_time: datetime = rows[-1]["bar_time"]
            state = rows[-1]["state"]
            reset = []
            for name, saved in (state.get("plugins") or {}).items():
                if isinstance(saved, dict) and saved.get("halted") is not None:
                    saved.update({"halted": None, "peak": None, "rebase_next": True})
                    reset.append(name)
            if reset:
                store.record_checkpoint(run_id, bar_time, state)
                await store.flush()
            log.warning("control.reset_halt", run_id=run_id, reset=reset, stored=True)
            return {"run_id": run_id, "reset": reset, "checkpoint": bar_time.isoformat()}
        finally:
            await store.stop()
    finally:
        await lock.release()
