"""Atomic file and folder writes, so an interrupted stage never leaves output a later stage accepts,
and the small file helpers every module shares (checksums, names)."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds. A `path`
    that is a symbolic link is written through: the file it points to is replaced, the link stays."""
    path = _through_link(Path(path))
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~umask())  # mkstemp creates 0600; the file gets what the user's umask allows
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary sibling folder; it replaces `path` only once the block completes. A `path`
    that is a symbolic link (e.g. a data folder kept on another disk) is written through: the
    folder it points to is replaced there, the link stays."""
    path = _through_link(Path(path))
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp creates 0700; the folder gets what the user's umask allows
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _through_link(path: Path) -> Path:
    """Where a write of `path` lands: the target of a symbolic link, `path` itself otherwise."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def umask() -> int:
    """The process's file mode creation mask: read from /proc where there is one, so that no
    other thread ever sees it changed."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _naming(path: Path):
    """Report a full disk or an unwritable folder as `path`, not as the hidden temporary one
    written in its place (which the caller never named)."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT) or _full(path.parent):
            raise _no_space(path) from err
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and (err.filename or "").startswith(
            str(path.parent / f".{path.name}.")
        ):
            raise OSError(
                err.errno,
                f"cannot write {path}: {path.parent} is not writable ({err.strerror}); choose a writable folder",
            ) from err
        raise
    except RuntimeError as err:  # torch.save reports a short write as "unexpected pos ..."
        if _full(path.parent):
            raise _no_space(path, f" ({err})") from err
        raise


def _no_space(path: Path, detail: str = "") -> OSError:
    return OSError(
        errno.ENOSPC,
        f"no space left on the device holding {path} while writing it{detail}: {path} keeps its previous "
        f"content (if any); free space there ({_free(path.parent)} left) and run again",
    )


def _full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _free(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown"


def clean_leftovers(path: str | os.PathLike) -> None:
    """Remove what interrupted atomic writes of `path` left beside it (hidden `.tmp` siblings, a
    `.old` copy) and directly inside it, moving the `.old` copy back when its replacement never
    arrived. Only for a caller that holds `path`'s lock (sda_lib.utils.locks), as another writer's
    temporary files look alike."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        log.warning(f"{path} was being replaced when its writer stopped: its previous content {old} is moved back")
        os.replace(old, path)
    leftovers = [*path.parent.glob(f".{glob.escape(path.name)}.*.tmp"), *path.glob(".*.tmp")]
    leftovers += [old] if old.exists() else []
    for left in leftovers:
        log.info(f"removing {left}, left by an interrupted write of {path}")
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                left.unlink()


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and prove a file can be written in it, so a long job fails at
    its start, naming the folder, rather than after its work is done."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OSError(f"cannot write in {folder} ({err.strerror or err}): choose a writable output folder") from err
    return folder


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=jsonable) + "\n")


def read_json(path: str | os.PathLike):
    """The JSON in `path`, or None when it is missing or unreadable (e.g. never completed)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def jsonable(x):
    """`json.dumps`'s `default` for numpy and torch scalars and arrays, and paths."""
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, in hex (read in blocks: feature tables run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def save_with_digest(path: str | os.PathLike, write) -> None:
    """`write(tmp)` atomically onto `path`, then its SHA-256 into `<path>.sha256`, which
    `digest_problem` checks when the file is read back."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write(tmp)
        digest = file_sha256(tmp)
    with atomic_path(_digest_file(path)) as tmp:
        tmp.write_text(digest + "\n")


def digest_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with `path` against its recorded SHA-256, or None. A file without a recorded
    digest (cut off before it was recorded, or not written by the workbench) is not vouched for."""
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    try:
        recorded = _digest_file(path).read_text().strip()
    except FileNotFoundError:
        return f"{path} has no recorded checksum ({_digest_file(path).name} is missing)"
    if file_sha256(path) != recorded:
        return f"{path} does not match its checksum in {_digest_file(path).name} (damaged on disk)"
    return None


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def slug(text: str) -> str:
    """A file-name-safe form of a title or variant name: lower case, runs of other characters as '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
