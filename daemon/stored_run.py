"""Operator actions on a stored live run while no daemon runs it (`tradingd reset-halt RUN`).

A running daemon owns its run: it holds the instance lock and rewrites the checkpoint after
every bar, so an edit behind its back would be overwritten (or worse, half-applied). These
actions take the same lock first and refuse while a daemon holds it (the running daemon's
`POST /reset-halt` is the way then).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog

from .config import Config
from .core.errors import ConfigError
from .storage.factory import open_store

log = structlog.get_logger(__name__)


def _account(config: Config, run_id: str) -> str:
    """The lock account a daemon of this configuration takes (see app._instance_lock)."""
    from .brokers.alpaca_mapping import alpaca_keys_from_env
    from .instance_lock import account_for

    keys = alpaca_keys_from_env() if config.broker.kind != "simulated" else None
    if keys is not None:
        return account_for("alpaca", f"{keys[0]}@{config.broker.alpaca.base_url}")
    return f"simulated:{run_id}"


async def reset_halt(config: Config, run_id: str) -> dict[str, Any]:
    """Lift every halted kill switch in the run's checkpoint; the next start trades again.
    Returns what was reset (empty when nothing was halted)."""
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
            if not rows:
                raise ConfigError(
                    f"run {run_id!r} has no checkpoint in this store: no live run of that id "
                    "completed a bar here (check the run id and the storage URL)"
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
