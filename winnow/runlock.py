"""One process per directory: an exclusive advisory lock (``flock``) on a file in it that names the holder's PID.

``winnow up`` holds one on its run directory (two runs never share one); the learner holds one on its checkpoint
directory (two learners on one lineage would release the same request ids and train their groups twice). The
kernel drops the lock when the holder dies, kill -9 included, so a restarted process takes it again at once. On a
network file system the lock is as good as the file system's ``flock``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from winnow.config import ConfigError

log = logging.getLogger(__name__)


def hold_lock(directory: Path, *, name: str = ".lock", busy: str, unwritable: str, not_a_directory: str) -> IO[str]:
    """Create ``directory`` and hold an exclusive lock on ``directory/name`` while the returned file (or a copy of
    it handed to a child process) is open. A lock held elsewhere: ``ConfigError`` with ``busy`` (formatted with
    ``{pid}``, the holder's); a directory that cannot be written: ``ConfigError`` with ``unwritable`` (formatted with
    ``{why}``); ``directory`` a file: ``ConfigError`` with ``not_a_directory``."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(not_a_directory)
    path = directory / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):  # a lock file left writable in a read-only directory
            raise PermissionError(13, "Permission denied", str(directory))
        lock = open(path, "a+")  # noqa: SIM115 - held for the holder's life
    except OSError as e:
        raise ConfigError(unwritable.format(why=f"{e.strerror or e}: {e.filename or path}")) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):  # a file system without flock
            log.warning("cannot lock %s (%s): running without the one-process guard", path, e.strerror or e)
            return lock
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ConfigError(busy.format(pid=holder)) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
