"""Safe artefact writing.

`atomic_path` writes beside the target and renames over it only when the writer succeeded, so a
killed run never leaves a half-written file behind. Before the rename the data is fsynced (a
power cut right after a write never leaves an empty file) and given the mode the user's umask
asks for (mkstemp makes 0600 files). A full disk or quota is a `DiskFullError` that names the
file and the space left, not a traceback.

Temporary files are named `.NAME.<pid>.<random>.tmp<suffix>`, so `sweep_orphan_temps` can tell
the leftovers of a killed process (a killed Inception run leaves a half-written `last.pt` of
hundreds of MB) from a write still in progress.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import yaml

from .errors import DiskFullError

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)

# `.NAME.<pid>.<random>.tmp<suffix>`, <random> being mkstemp's 8 characters.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp(?P<suffix>.*)$")
# What atomic_path made before temp names carried the PID: `.NAME.<random>.tmp<suffix>`.
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>.*)$")

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way to read it is to set it: set a restrictive one for that instant,
    # so a file another thread creates meanwhile is never more open than intended.
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def is_disk_full(exc: BaseException | None, free_before_cleanup: int | None = None) -> bool:
    """An OSError ENOSPC/EDQUOT anywhere in the chain, or a library's own wording of one (torch.save
    reports a full disk as RuntimeError '... file write failed' without an errno)."""
    seen, current = 0, exc
    while current is not None and seen < 10:
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        text = str(current)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        if "file write failed" in text and free_before_cleanup is not None and free_before_cleanup < (16 << 20):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _disk_full_error(path: Path, exc: BaseException) -> DiskFullError:
    reason = os.strerror(errno.ENOSPC)
    seen, current = 0, exc
    while current is not None and seen < 10:
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            reason = os.strerror(current.errno)
            break
        current = current.__cause__ or current.__context__
        seen += 1
    free = _free_bytes(path.parent)
    space = "free space unknown" if free is None else f"{free:,} bytes ({human_bytes(free)}) free"
    return DiskFullError(f"disk full ({reason}) while writing {path}: {space} in {path.parent}; "
                         f"free some space (old runs, caches) and run again")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        try:
            os.fsync(fd)
        except OSError as exc:  # a file system without fsync is no error; a failed flush (ENOSPC, EIO) is
            if exc.errno not in (errno.EINVAL, errno.EBADF, getattr(errno, "ENOTSUP", errno.EINVAL)):
                raise
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - nothing better to do while another error propagates
        log.warning("could not remove temporary file %s: %s", path, exc)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The block writes the temporary file by its path. Afterwards the file is fsynced, given the
    mode 0666 & ~umask, renamed over `path`, and the folder is fsynced. On any error the
    temporary file is removed; a full disk or quota raises DiskFullError naming `path`.
    `fsync=False` skips both fsyncs, for many small files that can be rebuilt (a cache).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + path.suffix,
                                   dir=path.parent)
        os.close(fd)
    except OSError as exc:
        if is_disk_full(exc):
            raise _disk_full_error(path, exc) from exc
        raise
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync:
            _fsync_file(tmp_path)
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except Exception as exc:
        free = _free_bytes(path.parent) if not isinstance(exc, DiskFullError) else None
        _unlink_quietly(tmp_path)
        if not isinstance(exc, DiskFullError) and is_disk_full(exc, free):
            raise _disk_full_error(path, exc) from exc
        raise
    except BaseException:  # KeyboardInterrupt, SystemExit: still no half-written file
        _unlink_quietly(tmp_path)
        raise
    if fsync:
        _fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    """False only when the process certainly does not exist; anything unsure counts as alive."""
    if pid <= 0 or os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def _orphan_reason(name: str, mtime: float, now: float, legacy_age_s: float) -> str | None:
    """Why the file called `name` is an abandoned atomic_path temporary file, or None if it is not one."""
    match = _TEMP_RE.match(name)
    if match and match["suffix"] == Path(match["name"]).suffix:
        pid = int(match["pid"])
        return None if _pid_alive(pid) else f"writer pid {pid} is gone"
    match = _LEGACY_TEMP_RE.match(name)
    if match and match["suffix"] == Path(match["name"]).suffix and now - mtime >= legacy_age_s:
        return f"no pid in the name, untouched for {(now - mtime) / 3600:.0f} h"
    return None


def sweep_orphan_temps(root: str | os.PathLike, *, legacy_age_s: float = 24 * 3600.0) -> list[Path]:
    """Remove, recursively under `root`, the temporary files atomic_path made for processes that
    no longer exist, and return their paths.

    A temporary file names its writer's PID; it is removed only when no process with that PID
    exists (os.kill(pid, 0) raises ProcessLookupError), so a write in progress is never touched.
    (A PID of another machine or PID namespace sharing the folder cannot be checked; do not sweep
    a folder that processes elsewhere are writing.) Older temporary files without a PID are removed
    once untouched for `legacy_age_s` seconds. Symlinks are neither followed nor removed.
    """
    root = Path(root)
    removed: list[Path] = []
    freed = 0
    if not root.is_dir():
        return removed
    now = time.time()
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if not name.startswith(".") or ".tmp" not in name:
                continue
            path = Path(folder) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            reason = _orphan_reason(name, st.st_mtime, now, legacy_age_s)
            if reason is None:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not remove orphaned temporary file %s: %s", path, exc)
                continue
            removed.append(path)
            freed += st.st_size
            if len(removed) <= 20:
                log.info("removed orphaned temporary file %s (%s; %s)", path, human_bytes(st.st_size), reason)
    if removed:
        log.info("removed %d orphaned temporary file(s) under %s, %s freed", len(removed), root, human_bytes(freed))
    return removed


def write_csv(df, path: str | os.PathLike, **kwargs) -> Path:
    """Write a pandas DataFrame atomically (index off by default)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(obj, path: str | os.PathLike) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def write_yaml(obj, path: str | os.PathLike) -> Path:
    return write_text(yaml.safe_dump(obj, sort_keys=False), path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_id_csv(path: str | os.PathLike, **kwargs):
    """Read a CSV the project wrote: `id` always as strings (joins never mix 1377 and '1377'),
    and `male`, when present, as bool whether it was stored as True/False or 1/0."""
    import pandas as pd

    dtype = dict(kwargs.pop("dtype", {}) or {})
    dtype.setdefault("id", str)
    table = pd.read_csv(path, dtype=dtype, **kwargs)
    if "male" in table:
        text = table["male"].astype(str).str.strip().str.lower()
        known = text.isin(["true", "1", "1.0", "false", "0", "0.0"])
        if not known.all():
            from .errors import DataError

            rows = (table.index[~known][:10] + 2).tolist()  # 1-based, after the header
            raise DataError(f"{path}: column 'male' has values other than True/False or 1/0 in rows {rows}")
        table["male"] = text.isin(["true", "1", "1.0"])
    return table


def read_json_object(path: str | os.PathLike, advice: str) -> dict:
    """A JSON file the project wrote, as a dict; a missing or unreadable one is a UserError
    that ends with `advice` (the command that rebuilds it)."""
    from .errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: {advice}")
    try:
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}): {advice}") from exc
    return obj
