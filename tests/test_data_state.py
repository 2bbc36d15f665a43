"""State that can't go stale or leak: the preprocessing cache follows its source files, a full
disk is reported as such, dataset roots never share working/<dataset>/, training and folds
require a current audit, and folds.json must match folds.csv."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from src.data import cache as cache_module
from src.data.audit import audit_status, require_audit, run_audit
from src.data.cache import PreprocessCache
from src.data.folds import read_folds_meta, resolve_folds
from src.data.images import read_gray8
from src.data.layout import (
    PROJECT_ROOT, TEST_CSV, TEST_DIR, TEST_LABELS_CSV, TRAIN_CSV, TRAIN_DIR, DatasetPaths, dataset_name,
)
from src.data.preprocess import StepContext, run_pipeline
from src.utils.errors import DataError, UserError
from src.utils.io import DISK_FULL_ERRNOS

STEPS = [{"name": "pad_square"}, {"name": "resize"}]


def noisy(h: int = 80, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grad = np.tile(np.linspace(20, 220, w), (h, 1))
    return np.clip(grad + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)


def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def make_kaggle(root: Path, n_train: int = 5, test_ids=(), labels: str | None = None) -> Path:
    lines = ["id,boneage,male"]
    for i in range(n_train):
        lines.append(f"{1001 + i},{12 * (i + 1)},{'True' if i % 2 == 0 else 'False'}")
        write_png(root / TRAIN_DIR / f"{1001 + i}.png", noisy(seed=i))
    (root / TRAIN_CSV).write_text("\n".join(lines) + "\n")
    if test_ids:
        rows = ["Case ID,Sex"] + [f"{t},{'M' if k % 2 == 0 else 'F'}" for k, t in enumerate(test_ids)]
        for k, t in enumerate(test_ids):
            write_png(root / TEST_DIR / f"{t}.png", noisy(seed=100 + k))
        (root / TEST_CSV).write_text("\n".join(rows) + "\n")
    if labels is not None:
        (root / TEST_LABELS_CSV).write_text(labels)
    return root


def source_table(folder: Path, n: int = 4) -> pd.DataFrame:
    rows = []
    for i in range(n):
        path = write_png(folder / f"{1001 + i}.png", noisy(seed=i))
        rows.append({"id": str(1001 + i), "path": str(path), "male": i % 2 == 0, "boneage": 12.0 * (i + 1)})
    return pd.DataFrame(rows)


def file_state(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns




# --------------------------------------------------------------------------- 1. the cache follows its sources

def test_cache_rebuilds_an_image_whose_source_changed_and_only_that_one(tmp_path):
    table = source_table(tmp_path / "src")
    cache = PreprocessCache("t", str(tmp_path / "src"), 32, STEPS)
    cache.build(table, workers=1)
    assert cache.missing(table).empty
    before = {i: file_state(cache.path(i)) for i in table["id"]}
    old_pixels = cache.load("1002")

    # regenerate one source into the same folder: other pixels, another mtime (same labels, same path)
    source = Path(table.loc[table["id"] == "1002", "path"].iloc[0])
    old_mtime = source.stat().st_mtime_ns
    write_png(source, 255 - noisy(seed=42))
    os.utime(source, ns=(old_mtime + 5_000_000_000, old_mtime + 5_000_000_000))
    assert list(cache.missing(table)["id"]) == ["1002"]

    cache.build(table, workers=1)
    assert cache.missing(table).empty
    expected = run_pipeline(read_gray8(source).pixels, cache.steps, StepContext(size=32, record={}))
    assert np.array_equal(cache.load("1002"), expected) and not np.array_equal(cache.load("1002"), old_pixels)
    after = {i: file_state(cache.path(i)) for i in table["id"]}
    assert after["1002"] != before["1002"]
    assert {i: s for i, s in after.items() if i != "1002"} == {i: s for i, s in before.items() if i != "1002"}
    sources = pd.read_csv(cache.dir / "sources.csv", dtype={"id": str}).set_index("id")
    assert list(sources.columns) == ["path", "size", "mtime_ns"]
    assert sources.loc["1002", "mtime_ns"] == source.stat().st_mtime_ns == old_mtime + 5_000_000_000
    assert sources.loc["1002", "size"] == source.stat().st_size


def test_cache_without_source_records_is_rebuilt(tmp_path):
    """A cache built before sources.csv existed cannot tell which pixels it holds: rebuilt once."""
    table = source_table(tmp_path / "src", n=3)
    cache = PreprocessCache("t", str(tmp_path / "src"), 32, STEPS)
    cache.build(table, workers=1)
    (cache.dir / "sources.csv").unlink()
    assert len(cache.missing(table)) == 3
    cache.build(table, workers=1)
    assert cache.missing(table).empty


def test_interrupted_cache_build_keeps_its_records_and_resumes(tmp_path, monkeypatch):
    table = source_table(tmp_path / "src", n=4)
    cache = PreprocessCache("t", str(tmp_path / "src"), 32, STEPS)
    real = cache_module._process_one
    calls = []

    def stop_at_third(job):
        calls.append(job[0]["id"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(cache_module, "_process_one", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        cache.build(table, workers=1)
    monkeypatch.setattr(cache_module, "_process_one", real)
    assert sorted(cache.read_sources()) == ["1001", "1002"]
    assert list(cache.missing(table)["id"]) == ["1003", "1004"]
    kept = file_state(cache.path("1001"))
    cache.build(table, workers=1)
    assert cache.missing(table).empty and file_state(cache.path("1001")) == kept


@pytest.mark.parametrize("code", sorted(DISK_FULL_ERRNOS), ids=errno.errorcode.get)
def test_full_disk_while_caching_is_reported_as_a_full_disk(tmp_path, monkeypatch, code):
    table = source_table(tmp_path / "src", n=3)
    cache = PreprocessCache("t", str(tmp_path / "src"), 32, STEPS)

    @contextlib.contextmanager
    def full_disk(path, **kwargs):
        raise OSError(code, os.strerror(code), str(path))
        yield  # pragma: no cover

    monkeypatch.setattr(cache_module, "atomic_path", full_disk)
    with pytest.raises(UserError) as info:
        cache.build(table, workers=1)
    message = str(info.value)
    assert not isinstance(info.value, DataError)
    assert str(cache.dir) in message and "full" in message and "free" in message
    assert "audit" not in message
    assert re.search(r"\d+(\.\d)? (B|KiB|MiB|GiB|TiB) free", message)


# --------------------------------------------------------------------------- 2. dataset names

def test_two_roots_with_the_same_folder_name_get_different_names(tmp_path):
    a, b = tmp_path / "a" / "x", tmp_path / "b" / "x"
    assert dataset_name(a) != dataset_name(b)
    assert re.fullmatch(r"x-[0-9a-f]{6}", dataset_name(a)) and re.fullmatch(r"x-[0-9a-f]{6}", dataset_name(b))
    assert dataset_name(a) == dataset_name(str(a)) == dataset_name(tmp_path / "b" / ".." / "a" / "x")
    assert DatasetPaths(a).work_dir() != DatasetPaths(b).work_dir()
    outside = hashlib.sha1(a.resolve().as_posix().encode()).hexdigest()[:6]
    assert dataset_name(a) == f"x-{outside}"


def test_dataset_names_inside_the_project_hash_the_relative_path():
    assert dataset_name(PROJECT_ROOT / "input") == "rsna-bone-age"
    assert dataset_name(PROJECT_ROOT / "input" / "phantom") == \
        "phantom-" + hashlib.sha1(b"input/phantom").hexdigest()[:6]


def test_two_roots_with_the_same_folder_name_audit_apart(tmp_path):
    a = make_kaggle(tmp_path / "a" / "ds", n_train=3)
    b = make_kaggle(tmp_path / "b" / "ds", n_train=4)
    ra, rb = run_audit(a, quiet=True), run_audit(b, quiet=True)
    assert ra.out_dir != rb.out_dir
    assert require_audit(a)["counts"]["train_rows"] == 3 and require_audit(b)["counts"]["train_rows"] == 4


# --------------------------------------------------------------------------- 3. require_audit

def test_require_audit_not_audited(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3)
    with pytest.raises(UserError, match="not audited yet") as info:
        require_audit(root)
    assert f"python -m src audit --input {root}" in str(info.value)
    assert audit_status(root) is None


def test_require_audit_failed_audit(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3)
    (root / TRAIN_DIR / "1002.png").unlink()
    with pytest.raises(DataError):
        run_audit(root, quiet=True)
    with pytest.raises(UserError, match="the last audit failed: .*missing image") as info:
        require_audit(root)
    assert f"python -m src audit --input {root}" in str(info.value)


def test_require_audit_ok_returns_the_info(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360,))
    run_audit(root, quiet=True)
    info = require_audit(root)
    assert info["status"] == "ok" and info["input"] == str(root.absolute())
    assert info["counts"]["train_rows"] == 3


def test_require_audit_another_root(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3)
    result = run_audit(root, quiet=True)
    status = result.out_dir / "audit.json"
    info = json.loads(status.read_text())
    info["input"] = str(tmp_path / "elsewhere" / "ds")
    status.write_text(json.dumps(info))
    with pytest.raises(UserError, match="another root") as info_:
        require_audit(root)
    assert "python -m src audit --input" in str(info_.value)


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))


@pytest.mark.parametrize("change,expect", [
    (lambda root: _touch(root / TRAIN_CSV), f"{TRAIN_CSV} has changed"),
    (lambda root: (root / TRAIN_CSV).write_text("id,boneage,male\n1001,12,True\n"), f"{TRAIN_CSV} has changed"),
    (lambda root: (root / TEST_LABELS_CSV).unlink(), f"{TEST_LABELS_CSV} has vanished"),
    (lambda root: write_png(root / TRAIN_DIR / "1999.png", noisy(seed=9)), "image folder"),
    (lambda root: (root / TRAIN_DIR / "1002.png").unlink(), "image folder"),
], ids=["csv-touched", "csv-rewritten", "labels-vanished", "image-added", "image-removed"])
def test_require_audit_stale_inputs(tmp_path, change, expect):
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360,), labels="id,boneage,male\n4360,50,True\n")
    run_audit(root, quiet=True)
    require_audit(root)
    change(root)
    with pytest.raises(UserError, match="stale") as info:
        require_audit(root)
    assert expect in str(info.value) and f"python -m src audit --input {root}" in str(info.value)
    assert audit_status(root) is None


def test_require_audit_new_csv_and_edited_table_are_stale(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360,))
    result = run_audit(root, quiet=True, skip_bad=True)
    (root / TEST_LABELS_CSV).write_text("id,boneage,male\n4360,50,True\n")
    with pytest.raises(UserError, match=f"{TEST_LABELS_CSV} appeared") as info:
        require_audit(root)
    assert "--skip-bad" in str(info.value)  # the rerun advice repeats the audit's own flags
    run_audit(root, quiet=True)
    with open(result.out_dir / "train.csv", "a") as fh:
        fh.write("1999,/x.png,True,10,\n")
    with pytest.raises(UserError, match="train.csv was modified"):
        require_audit(root)


def test_folds_cli_requires_a_current_audit(tmp_path, cli_main, capsys):
    root = make_kaggle(tmp_path / "ds", n_train=6)
    assert cli_main(["folds", "--input", str(root)]) == 2
    assert "not audited yet" in capsys.readouterr().err
    run_audit(root, quiet=True)
    _touch(root / TRAIN_CSV)
    assert cli_main(["folds", "--input", str(root)]) == 2
    err = capsys.readouterr().err
    assert "stale" in err and "Traceback" not in err
    run_audit(root, quiet=True)
    assert cli_main(["folds", "--input", str(root)]) == 0


# --------------------------------------------------------------------------- 4. folds.json

def labels(n: int = 60, start: int = 100001) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": [str(start + i) for i in range(n)], "boneage": rng.integers(1, 228, n).astype(float),
                         "male": rng.random(n) < 0.5})


def test_read_folds_meta_returns_the_saved_split(tmp_path):
    work = tmp_path / "work"
    resolve_folds(labels(), work, n_folds=4, seed=7)
    meta = read_folds_meta(work)
    assert (meta["mode"], meta["n_folds"], meta["seed"]) == ("own", 4, 7)
    again = resolve_folds(labels(), work)  # n_folds None: the saved 4-fold split is reused
    assert sorted(again.folds["fold"].unique()) == [0, 1, 2, 3]
    with pytest.raises(DataError, match="4-fold split, not 5 folds.*--rebuild --n-folds 5"):
        resolve_folds(labels(), work, n_folds=5)


def test_read_folds_meta_missing(tmp_path):
    work = tmp_path / "work"
    with pytest.raises(UserError, match="folds.json not found.*python -m src folds --input"):
        read_folds_meta(work)
    resolve_folds(labels(), work)
    (work / "folds.json").unlink()
    with pytest.raises(UserError, match="folds.json not found"):
        read_folds_meta(work)
    with pytest.raises(DataError, match="--rebuild"):
        resolve_folds(labels(), work)  # an own split without its folds.json is not reused


def test_read_folds_meta_rejects_a_hand_edited_folds_csv(tmp_path):
    work = tmp_path / "work"
    resolve_folds(labels(), work)
    folds = pd.read_csv(work / "folds.csv", dtype={"id": str})
    folds.loc[0, "fold"] = (folds.loc[0, "fold"] + 1) % 5
    folds.to_csv(work / "folds.csv", index=False)
    with pytest.raises(UserError, match="does not match the checksum"):
        read_folds_meta(work)
    with pytest.raises(DataError, match="cannot be trusted.*--rebuild"):
        resolve_folds(labels(), work)
    resolve_folds(labels(), work, rebuild=True)
    assert read_folds_meta(work)["n_folds"] == 5
