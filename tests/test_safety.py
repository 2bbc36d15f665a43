"""Safe files: atomic writes are durable (fsync), get the umask's mode, name their writer's PID so
a sweep can clear what killed runs left, and a full disk is a clear DiskFullError."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.cli import main as cli_main
from src.utils import io
from src.utils.errors import DiskFullError, UserError
from src.utils.io import atomic_path, sweep_orphan_temps, write_text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert proc.wait(timeout=60) == 0
    return proc.pid  # exited and reaped: no process has this PID (unless reused, very unlikely)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_is_a_clear_error_and_leaves_no_temp_file(tmp_path, code):
    target = tmp_path / "run" / "last.pt"
    with pytest.raises(DiskFullError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(code, os.strerror(code), str(tmp))
    message = str(info.value)
    assert "disk full" in message and str(target) in message and "bytes" in message and "free" in message
    assert isinstance(info.value, UserError) and info.value.__cause__.errno == code
    assert not target.exists() and _leftovers(target.parent) == []


def test_full_disk_in_write_text_and_at_fsync(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(DiskFullError, match="report.txt"):
        write_text("x", tmp_path / "report.txt")
    monkeypatch.undo()
    monkeypatch.setattr(os, "fsync", no_space)  # delayed allocation: the error comes at fsync
    with pytest.raises(DiskFullError, match="report.txt"):
        write_text("x", tmp_path / "report.txt")
    assert list(tmp_path.iterdir()) == []


def test_torch_style_write_failure_on_a_full_disk(tmp_path, monkeypatch):
    """torch.save says 'file write failed' without an errno; with no space left it is a full disk."""
    monkeypatch.setattr(io, "_free_bytes", lambda folder: 0)
    with pytest.raises(DiskFullError, match="last.pt"):
        with atomic_path(tmp_path / "last.pt"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(io, "_free_bytes", lambda folder: 10 << 30)
    with pytest.raises(RuntimeError):  # plenty of space: not a disk problem, the error passes unchanged
        with atomic_path(tmp_path / "last.pt"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert _leftovers(tmp_path) == []


def test_other_errors_pass_unchanged_and_leave_no_temp_file(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "a.csv") as tmp:
            tmp.write_text("half")
            raise ValueError("writer bug")
    assert list(tmp_path.iterdir()) == []


def test_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text("hello", tmp_path / "a.txt")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        os.umask(0o027)
        write_text("hello", tmp_path / "b.txt")
        assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640
        assert io.current_umask() == 0o027 and os.umask(0o027) == 0o027  # reading it changed nothing
    finally:
        os.umask(old)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names an fd's file through /proc (Linux)")
def test_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append((Path(os.readlink(f"/proc/self/fd/{fd}")), target.exists()))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_text("{}", target)
    assert target.read_text() == "{}"
    files = [(p, existed) for p, existed in synced if p != tmp_path]
    assert files, synced
    temp, existed_then = files[0]
    assert temp.parent == tmp_path and temp.name.startswith(f".metrics.json.{os.getpid()}.")
    assert not existed_then  # the data reached the disk before the rename made it visible
    assert (tmp_path, True) in synced  # then the folder, so the rename itself is durable


def test_fsync_can_be_skipped_for_rebuildable_files(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", calls.append)
    with atomic_path(tmp_path / "cache.png", fsync=False) as tmp:
        tmp.write_bytes(b"png")
    assert calls == [] and (tmp_path / "cache.png").read_bytes() == b"png"


def test_temp_names_carry_the_writers_pid(tmp_path):
    with atomic_path(tmp_path / "last.pt") as tmp:
        assert tmp.name.startswith(f".last.pt.{os.getpid()}.") and tmp.name.endswith(".tmp.pt")
        assert tmp.parent == tmp_path


def test_sweep_removes_dead_writers_temps_and_keeps_live_ones(tmp_path, caplog):
    dead = _dead_pid()
    nested = tmp_path / "exp" / "fold0"
    nested.mkdir(parents=True)
    orphan = nested / f".last.pt.{dead}.abcd1234.tmp.pt"
    orphan.write_bytes(b"x" * 1000)
    live = nested / f".best.pt.{os.getpid()}.abcd1234.tmp.pt"
    live.write_bytes(b"y")
    keep = [nested / "last.pt", nested / f".notes.{dead}.txt", nested / f".x.csv.{dead}.abcd1234.tmp.pt"]
    for path in keep:  # a real file, a dotfile, a suffix that does not match: not ours to remove
        path.write_bytes(b"z")
    legacy_old, legacy_new = nested / ".oof.csv.abcd1234.tmp.csv", nested / ".test.csv.abcd1234.tmp.csv"
    legacy_old.write_bytes(b"old")
    legacy_new.write_bytes(b"new")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(legacy_old, (day_ago, day_ago))
    with caplog.at_level("INFO"):
        removed = sweep_orphan_temps(tmp_path)
    assert sorted(removed) == sorted([orphan, legacy_old])
    assert not orphan.exists() and not legacy_old.exists()
    assert live.exists() and legacy_new.exists() and all(p.exists() for p in keep)
    assert str(orphan) in caplog.text and "1003 B freed" in caplog.text
    assert sweep_orphan_temps(tmp_path / "absent") == []


def test_sweep_never_removes_a_temp_file_being_written(tmp_path):
    with atomic_path(tmp_path / "last.pt") as tmp:
        tmp.write_bytes(b"in progress")
        assert sweep_orphan_temps(tmp_path) == [] and tmp.exists()
    assert (tmp_path / "last.pt").read_bytes() == b"in progress"


def test_cli_sweeps_the_working_tree_before_a_command(isolated_working, tmp_path, monkeypatch):
    orphan = isolated_working / "ds" / "exp" / f".last.pt.{_dead_pid()}.abcd1234.tmp.pt"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    monkeypatch.setenv("RANK", "1")  # a torchrun rank other than 0 leaves the sweep to rank 0
    assert cli_main(["folds", "--input", str(tmp_path / "nothing")]) == 2
    assert orphan.exists()
    monkeypatch.delenv("RANK")
    assert cli_main(["folds", "--input", str(tmp_path / "nothing")]) == 2  # the command itself fails
    assert not orphan.exists()
