"""flock failing on chosen files, for the tests of what each caller does with its error
(core.flock's kinds: held, unsupported, failed)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import Any

import pytest


def failing_on(monkeypatch: pytest.MonkeyPatch, name: Callable[[str], bool], code: int) -> None:
    """flock raises OSError(`code`) on an exclusive lock of a file whose path `name`
    accepts; real elsewhere (every module's `fcntl.flock` is the one patched)."""
    real = fcntl.flock

    def flock(fd: Any, operation: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
        if name(path) and operation & fcntl.LOCK_EX:
            raise OSError(code, os.strerror(code))
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
