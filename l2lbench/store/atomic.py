"""Files written whole or not at all: a temporary sibling, then one rename.

Used for checkpoints and imported datasets (and anything else a crash must not leave half
written). The temporary file is created by ``os.open`` with mode 0o666, so the process's
umask applies as for any file it creates: nothing reads or flips the umask (a flip is a
race with every other thread of the process, e.g. a Dask worker's), and a file meant to be
shared is not left 0600 as ``tempfile.mkstemp`` would make it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import IO, Callable


def temp_beside(dest: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new, empty file in ``dest``'s folder (so that renaming it over ``dest`` is atomic),
    named ``.<dest name>.<random><suffix>``: its descriptor and path."""
    for _ in range(100):
        path = dest.parent / f".{dest.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {dest}")


def write_atomically(dest: Path, fill: Callable[[IO[bytes]], None], *, suffix: str = ".tmp",
                     durable: bool = False) -> None:
    """Write ``dest`` by ``fill(handle)`` into a temporary sibling renamed over it.

    ``durable``: fsync the file before the rename and the folder after it, so that the new
    content survives a power loss too, not only a crash of this process.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(dest, suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(dest.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: the folder entry must reach the disk)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
