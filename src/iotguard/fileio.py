"""Durable file writes: a crash leaves either the old file or the new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "create_exclusive"]


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600,
                 owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    The data goes to a uniquely named temporary file in the same directory,
    is fsynced, renamed over ``path``, and the directory is fsynced, so a
    crash at any point leaves the old or the new content, never a mix.

    Args:
        path: Destination (its directory is created, mode 0700, if missing).
        data: New content.
        mode: File permissions (secret material stays 0600).
        owner: Optional (uid, gid) to give the file (e.g. a broker that drops root).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_exclusive(path: str | os.PathLike[str], data: bytes) -> bool:
    """Create ``path`` with ``data`` (mode 0600) unless it exists; returns whether it was created.

    Two processes racing to create the same file both end up reading the one
    that won, so a per-install secret is never silently replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True
