"""One writer per output folder: a run folder, an adapter, a feature table, a prepared dataset.

`folder_lock(folder)` holds an exclusive `fcntl.flock` on the sibling file `.<name>.lock` for as
long as the block runs, and writes the holder's process id and host into it. A second writer is
refused with `LockError`, naming that holder. The kernel drops the lock when its holder dies (even
by SIGKILL), so a lock file left behind by a dead process is taken over, with a warning naming it.
Taking a folder over also clears what an interrupted writer of it left: its hidden `.tmp` and
`.old` siblings (see `io.atomic_dir`); an `.old` folder whose replacement never arrived is moved
back.

Readers that use a folder for a long time (an export or an adaptation reading a prepared dataset's
images) hold `reading(folder)`: a shared lock on the same file. A writer is refused while a reader
holds it, and a reader waits while a writer holds it, so nobody reads a folder that is being
replaced. A reader that cannot create the lock file (a read-only folder, which nobody replaces
either) reads without it.

The lock file is opened without following symbolic links and must be a regular file with one
link: a planted link never makes the workbench write elsewhere.

The locks are reentrant within a process (the export stage locks its table, then saves it), and
not inherited by child processes. Under `accelerate launch` / torchrun only rank 0 takes them: the
other ranks of the same job work under them.
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
import stat
import sys
from pathlib import Path

from .io import clean_leftovers

log = logging.getLogger(__name__)
_held: set[Path] = set()  # folders this process holds
_reading: dict[Path, int] = {}  # folders this process reads under a shared lock: how many times


class LockError(RuntimeError):
    """The folder is being written (or read) by another live process."""


class LockFileError(OSError):
    """The lock path is not a plain file of the workbench's (a link, a folder, a device)."""


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


@contextlib.contextmanager
def reading(folder: str | os.PathLike, what: str):
    """Hold a shared lock on `folder` while the block reads it: writers are refused meanwhile, and
    the block waits for a writer holding it to finish first (logging who). `what` names the reader."""
    folder = Path(folder).resolve()
    if _rank() != 0 or folder in _held or folder in _reading:
        _reading[folder] = _reading.get(folder, 0) + 1
        try:
            yield folder
        finally:
            _reading[folder] -= 1
            if not _reading[folder]:
                del _reading[folder]
        return
    fd = _open_shared(folder, what)
    _reading[folder] = 1
    try:
        yield folder
    finally:
        del _reading[folder]
        if fd is not None:
            _release_shared(folder, fd)


def _open_shared(folder: Path, what: str) -> int | None:
    path = lock_file(folder)
    while True:
        fd = _open_for_reading(path)
        if fd is None:
            log.debug(f"reading {folder} without a lock: {path} cannot be opened or created here")
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            log.warning(
                f"{what}: waiting for {folder}, which {holder.get('command', 'another process')} (process "
                f"{holder.get('pid', '?')} on host {holder.get('host', '?')}) is writing"
            )
            fcntl.flock(fd, fcntl.LOCK_SH)
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the writer removed the file we waited on: lock the current one


def _open_for_reading(path: Path) -> int | None:
    """The lock file opened (created if missing) for a shared lock, or None where this process may
    not open or create it (another user's file, a read-only folder, no folder yet)."""
    for flags in (os.O_RDONLY, os.O_RDWR | os.O_CREAT):
        try:
            return _open(path, flags)
        except LockFileError:
            raise
        except FileNotFoundError:
            continue
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return None
            raise
    return None


def _release_shared(folder: Path, fd: int) -> None:
    """Drop a shared lock, removing the lock file when no one else holds it and no writer wrote in
    it (a writer that died leaves its name there, for the next writer to warn about)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _same_file(fd, lock_file(folder)) and os.fstat(fd).st_size == 0:
            with contextlib.suppress(OSError):
                os.unlink(lock_file(folder))
    except BlockingIOError:
        pass  # other readers (or a writer now) hold it
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _open(path: Path, flags: int) -> int:
    """Open lock file `path` without following a symbolic link, and refuse one that is not a
    regular file with a single link (a planted link, a folder, a device): the workbench writes
    into its lock file, and must not write anywhere else."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise _not_a_lock_file(path) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise _not_a_lock_file(path)
    return fd


def _not_a_lock_file(path: Path) -> LockFileError:
    if path.is_symlink():
        kind = f"a symbolic link (to {os.readlink(path)})"
    elif path.is_dir():
        kind = "a folder"
    elif path.is_file():
        kind = "a file with more than one hard link"
    else:
        kind = "not a regular file"
    return LockFileError(
        errno.EEXIST,
        f"{path}, the lock file of {path.with_name(path.name[1 : -len('.lock')])}, is {kind}: the workbench "
        f"writes its lock there and will not write through anything else; remove {path} and run again",
    )


def _acquire(folder: Path, what: str) -> int:
    path = lock_file(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create {path.parent} ({err.strerror or err}): choose a writable output folder") from err
    while True:
        try:
            fd = _open(path, os.O_RDWR | os.O_CREAT)
        except LockFileError:
            raise
        except OSError as err:
            raise OSError(
                f"cannot write in {path.parent} ({err.strerror or err}), so {folder} cannot be locked for "
                "writing: choose a writable output folder"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            writer, holder = _held_by_writer(fd), _read(fd)
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if not writer:
                raise LockError(
                    f"{folder} is being read by another process (an export, an adaptation or a notebook "
                    f"loading it): wait for it to finish, or stop it (lock file {path})"
                ) from None
            raise LockError(
                f"{folder} is in use by {holder.get('command', 'another process')} (process "
                f"{holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('since', '?')}): "
                f"wait for it to finish, stop it, or choose another folder (lock file {path})"
            ) from None
        # the previous holder may have unlinked the file between our open and our flock
        if _same_file(fd, path):
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


def _held_by_writer(fd: int) -> bool:
    """Whether the lock that `fd`'s file is held with is a writer's (exclusive): a shared lock
    would then be refused too. Readers write nothing into the file, so its content names the
    last writer only."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
