"""What an OSError from `fcntl.flock` means, for every caller that locks files (the instance
and account locks, the trial ledger, a backtest's record folder, the store's spool, the
prediction and GARCH fit caches).

Three answers, and only the first two are answers a caller may act on:

* held: another process holds the lock (`EWOULDBLOCK`/`EAGAIN`, a non-blocking request);
* unsupported: this filesystem does not do file locks (`ENOLCK`: some NFS and FUSE mounts;
  `EOPNOTSUPP`/`ENOTSUP`, `ENOSYS`, `EINVAL`: a file or filesystem that cannot be locked);
* failed: anything else (`EBADF`, `EIO`, `EACCES`, `ENOSPC`, ...). The lock was not taken
  and nothing says the filesystem lacks locks: a caller that carried on unlocked here ran
  beside a holder it could not see. Read as "unsupported" before, a failing disk or a
  closed descriptor let a second daemon or writer in, with a warning only.
"""

from __future__ import annotations

import errno

HELD = frozenset({errno.EWOULDBLOCK, errno.EAGAIN})
UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})


def is_held(exc: OSError) -> bool:
    """Whether `exc` says another process holds the lock."""
    return exc.errno in HELD


def is_unsupported(exc: OSError) -> bool:
    """Whether `exc` says the filesystem does not support file locks."""
    return exc.errno in UNSUPPORTED


def errno_text(exc: OSError) -> str:
    """The error's errno by name and its text ("EIO, Input/output error"), for messages
    that must name it: the number alone differs between systems."""
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "?"
    return f"{name}, {exc.strerror or exc}"
