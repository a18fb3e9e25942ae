"""One writer per output folder: a run folder, an adapter, a feature table, a prepared dataset.

`folder_lock(folder)` holds an exclusive `fcntl.flock` on the sibling file `.<name>.lock` for as
long as the block runs, and writes the holder's process id and host into it. A second writer is
refused with `LockError`, naming that holder. The kernel drops the lock when its holder dies (even
by SIGKILL), so a lock file left behind by a dead process is taken over, with a warning naming it.
Taking a folder over also clears what an interrupted writer of it left: its hidden `.tmp` and
`.old` siblings (see `io.atomic_dir`); an `.old` folder whose replacement never arrived is moved
back.

The lock is reentrant within a process (the export stage locks its table, then saves it), and not
inherited by child processes. Under `accelerate launch` / torchrun only rank 0 takes it: the other
ranks of the same job write under it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path

from .io import clean_leftovers

log = logging.getLogger(__name__)
_held: set[Path] = set()  # folders this process holds


class LockError(RuntimeError):
    """The folder is being written by another live process."""


def lock_file(folder: str | os.PathLike) -> Path:
    folder = Path(folder).resolve()  # one lock whichever way (symlink, relative path) the folder is named
    return folder.with_name(f".{folder.name}.lock")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str):
    """Hold `folder` for this process while the block runs; `what` names the job in messages."""
    folder = Path(folder).resolve()
    if _rank() != 0 or folder in _held:
        yield folder
        return
    fd = _acquire(folder, what)
    _held.add(folder)
    try:
        clean_leftovers(folder)
        yield folder
    finally:
        _held.discard(folder)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_file(folder))
        os.close(fd)  # releases the flock


def _rank() -> int:
    """This process's rank in a distributed job (0 when alone): the launcher's RANK, or the
    process group's when one was started without it."""
    dist = sys.modules.get("torch.distributed")  # only if loaded: plain data preparation needs no torch
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _acquire(folder: Path, what: str) -> int:
    path = lock_file(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create {path.parent} ({err.strerror or err}): choose a writable output folder") from err
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
        except OSError as err:
            raise OSError(
                f"cannot write in {path.parent} ({err.strerror or err}), so {folder} cannot be locked for "
                "writing: choose a writable output folder"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read(fd)
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise LockError(
                f"{folder} is in use by {holder.get('command', 'another process')} (process "
                f"{holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('since', '?')}): "
                f"wait for it to finish, stop it, or choose another folder (lock file {path})"
            ) from None
        # the previous holder may have unlinked the file between our open and our flock
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    before = _read(fd)
    if before.get("pid") and (before.get("pid"), before.get("host")) != (os.getpid(), socket.gethostname()):
        log.warning(
            f"taking over {folder}: its lock names process {before['pid']} on host {before.get('host')}, "
            "which no longer holds it (it was stopped or crashed)"
        )
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": what,
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    return fd


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
