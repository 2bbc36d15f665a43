"""Audit: every bad-input case is detected, named (file or row + problem), fails the default
run, and is dropped exactly (yet still listed) with --skip-bad; plus outputs, cache, CLI and
the real rsna-100px data."""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from src.data.audit import AuditFailed, audit_status, run_audit
from src.data.images import MIN_SIDE, inspect_image, read_gray8
from src.data.layout import TEST_CSV, TEST_DIR, TEST_LABELS_CSV, TRAIN_CSV, TRAIN_DIR, dataset_name
from src.utils.errors import DataError, UserError


# --------------------------------------------------------------------------- builders

def noisy(h: int = 80, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grad = np.tile(np.linspace(20, 220, w), (h, 1))
    return np.clip(grad + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)


def write_png(path: Path, img: np.ndarray | None = None, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), noisy(seed=seed) if img is None else img)
    return path


def make_kaggle(root: Path, n_train: int = 6, test_ids=(), labels: str | None = None) -> Path:
    """Clean Kaggle layout: train ids 1001.. (CSV rows 2..), ages 12, 24, ..., male alternating."""
    lines = ["id,boneage,male"]
    for i in range(n_train):
        lines.append(f"{1001 + i},{12 * (i + 1)},{'True' if i % 2 == 0 else 'False'}")
        write_png(root / TRAIN_DIR / f"{1001 + i}.png", seed=i)
    (root / TRAIN_CSV).write_text("\n".join(lines) + "\n")
    if test_ids:
        rows = ["Case ID,Sex"] + [f"{t},{'M' if k % 2 == 0 else 'F'}" for k, t in enumerate(test_ids)]
        for k, t in enumerate(test_ids):
            write_png(root / TEST_DIR / f"{t}.png", seed=100 + k)
        (root / TEST_CSV).write_text("\n".join(rows) + "\n")
    if labels is not None:
        (root / TEST_LABELS_CSV).write_text(labels)
    return root


def train_image(root: Path, image_id) -> Path:
    return root / TRAIN_DIR / f"{image_id}.png"


def replace_train_row(root: Path, image_id: str, new_line: str) -> None:
    path = root / TRAIN_CSV
    lines = path.read_text().splitlines()
    lines = [new_line if line.split(",")[0] == image_id else line for line in lines]
    path.write_text("\n".join(lines) + "\n")


def append_train_row(root: Path, line: str) -> None:
    with open(root / TRAIN_CSV, "a") as fh:
        fh.write(line + "\n")


def corrupt_idat(path: Path) -> None:
    """Scramble compressed pixel data but keep the chunk structure and CRCs valid (IEND present)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4:at])[0]
    for k in range(at + 10, at + 4 + min(length, 60)):
        data[k] ^= 0xFF
    crc = zlib.crc32(bytes(data[at:at + 4 + length]))
    data[at + 4 + length:at + 8 + length] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def audit_rows(result) -> pd.DataFrame:
    frame = pd.read_csv(result.out_dir / "audit.csv", dtype={"id": str})
    assert list(frame.columns) == ["part", "id", "row", "file", "severity", "problem", "detail"]
    return frame


# --------------------------------------------------------------------------- clean data

def test_clean_dataset_writes_tables_and_status(tmp_path, isolated_working, capsys):
    root = make_kaggle(tmp_path / "ds", n_train=5, test_ids=(4360, 4361),
                       labels="id,boneage,male\n4360,100,True\n4361,90,False\n")
    result = run_audit(root)
    out = isolated_working / dataset_name(root)
    assert result.out_dir == out and result.ok and result.n_errors == 0
    train = pd.read_csv(out / "train.csv", dtype={"id": str})
    assert list(train.columns) == ["id", "path", "male", "boneage", "converted"]
    assert list(train["id"]) == ["1001", "1002", "1003", "1004", "1005"]
    assert train["male"].dtype == bool and list(train["boneage"]) == [12, 24, 36, 48, 60]
    assert all(os.path.isabs(p) and Path(p).is_file() for p in train["path"])
    test = pd.read_csv(out / "test.csv", dtype={"id": str})
    assert list(test["id"]) == ["4360", "4361"] and list(test["boneage"]) == [100, 90]
    assert len(audit_rows(result)) == 0
    status = json.loads((out / "audit.json").read_text())
    assert status["status"] == "ok" and status["input"] == str(root.absolute())
    assert status["counts"]["train_rows"] == 5 and status["counts"]["test_rows"] == 2
    assert audit_status(root)["status"] == "ok"
    assert "no problems found" in capsys.readouterr().out


def test_unlabelled_test_part_is_fine(tmp_path, isolated_working):
    result = run_audit(make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360,)))
    assert result.test["boneage"].isna().all()
    assert pd.read_csv(result.out_dir / "test.csv")["boneage"].isna().all()


# --------------------------------------------------------------------------- errors: fail by default, drop with --skip-bad

def _missing_image(root):
    train_image(root, 1003).unlink()
    return "missing image", "1003", 4, f"{TRAIN_DIR}/1003.png"


def _zero_byte(root):
    train_image(root, 1002).write_bytes(b"")
    return "zero-byte image", "1002", 3, f"{TRAIN_DIR}/1002.png"


def _truncated(root):
    path = train_image(root, 1004)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "truncated image", "1004", 5, f"{TRAIN_DIR}/1004.png"


def _truncated_before_iend(root):
    path = train_image(root, 1004)
    path.write_bytes(path.read_bytes()[:-12])  # every IDAT intact, IEND gone
    return "truncated image", "1004", 5, f"{TRAIN_DIR}/1004.png"


def _corrupt(root):
    corrupt_idat(train_image(root, 1002))
    return "unreadable image", "1002", 3, f"{TRAIN_DIR}/1002.png"


def _text_png(root):
    train_image(root, 1005).write_text("id,boneage\nthis is not an image\n")
    return "not an image", "1005", 6, f"{TRAIN_DIR}/1005.png"


def _binary_junk_png(root):
    train_image(root, 1005).write_bytes(bytes(range(256)) * 4)
    return "not an image", "1005", 6, f"{TRAIN_DIR}/1005.png"


def _tiny(root):
    write_png(train_image(root, 1002), noisy(h=200, w=MIN_SIDE - 1))
    return "tiny image", "1002", 3, f"{TRAIN_DIR}/1002.png"


def _blank_constant(root):
    write_png(train_image(root, 1003), np.zeros((80, 64), np.uint8))
    return "blank image", "1003", 4, f"{TRAIN_DIR}/1003.png"


def _blank_near_constant(root):
    img = np.full((80, 64), 120, np.uint8)
    img[::9, ::7] = 121
    write_png(train_image(root, 1003), img)
    return "blank image", "1003", 4, f"{TRAIN_DIR}/1003.png"


def _blank_16bit(root):
    write_png(train_image(root, 1003), np.full((80, 64), 3000, np.uint16))
    return "blank image", "1003", 4, f"{TRAIN_DIR}/1003.png"


def _duplicate_identical(root):
    append_train_row(root, "1002,24,False")
    return "duplicate id", "1002", 8, TRAIN_CSV


def _invalid_id_traversal(root):
    append_train_row(root, "../1001,24,False")
    return "invalid id", "../1001", 8, TRAIN_CSV


def _invalid_id_space(root):
    append_train_row(root, '"10 07",24,False')
    write_png(root / TRAIN_DIR / "10 07.png")
    return "invalid id", "10 07", 8, TRAIN_CSV


def _invalid_id_empty(root):
    append_train_row(root, ",24,False")
    return "invalid id", "", 8, TRAIN_CSV


def _invalid_id_chars(root):
    append_train_row(root, "10$7,24,False")
    return "invalid id", "10$7", 8, TRAIN_CSV


def _age(value):
    def case(root):
        replace_train_row(root, "1004", f"1004,{value},False")
        return "invalid age", "1004", 5, TRAIN_CSV
    case.__name__ = f"_age_{value or 'empty'}"
    return case


def _sex(value):
    def case(root):
        replace_train_row(root, "1006", f"1006,72,{value}")
        return "unknown sex", "1006", 7, TRAIN_CSV
    case.__name__ = f"_sex_{value or 'empty'}"
    return case


def _malformed(root):
    replace_train_row(root, "1003", "1003,36")
    return "malformed row", "1003", 4, TRAIN_CSV


ERROR_CASES = [_missing_image, _zero_byte, _truncated, _truncated_before_iend, _corrupt, _text_png, _binary_junk_png,
               _tiny, _blank_constant, _blank_near_constant, _blank_16bit, _duplicate_identical,
               _invalid_id_traversal, _invalid_id_space, _invalid_id_empty, _invalid_id_chars,
               _age("nan"), _age(""), _age("-3"), _age("241"), _age("abc"), _sex("X"), _sex("2"), _sex(""),
               _malformed]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.__name__.strip("_"))
def test_error_case(tmp_path, isolated_working, case, capsys):
    root = make_kaggle(tmp_path / "ds", n_train=6)
    problem, image_id, row, file = case(root)
    all_ids = {str(1001 + i) for i in range(6)} | ({image_id} if row == 8 else set())

    # default: fails, names the problem, points at audit.csv and --skip-bad, approves nothing
    with pytest.raises(AuditFailed) as info:
        run_audit(root)
    message = str(info.value)
    assert problem in message and "audit.csv" in message and "--skip-bad" in message
    out = capsys.readouterr().out
    assert problem in out and file in out and f"row {row}" in out  # the printed summary names it
    issues = info.value.result.issues
    errors = issues[issues["severity"] == "error"]
    assert len(errors) == 1, errors.to_string()
    err = errors.iloc[0]
    assert (err["problem"], err["id"], int(err["row"]), err["file"], err["part"]) == (problem, image_id, row, file,
                                                                                      "train")
    out_dir = isolated_working / dataset_name(root)
    assert not (out_dir / "train.csv").exists()
    assert json.loads((out_dir / "audit.json").read_text())["status"] == "failed"
    assert audit_status(root) is None

    # --skip-bad: exactly the bad row is left out, and it stays listed
    result = run_audit(root, skip_bad=True)
    kept = set(pd.read_csv(out_dir / "train.csv", dtype={"id": str})["id"])
    if problem == "duplicate id":
        assert kept == all_ids and len(result.train) == 6 and list(result.dropped["row"]) == [row]
    else:
        assert kept == all_ids - {image_id}
        assert list(result.dropped["row"]) == [row]
    listed = audit_rows(result)
    hit = listed[(listed["problem"] == problem) & (listed["row"] == row)]
    assert len(hit) == 1 and hit.iloc[0]["severity"] == "error" and hit.iloc[0]["file"] == file
    assert json.loads((out_dir / "audit.json").read_text())["status"] == "ok"
    # the kept rows are exactly the ones read_gray8 can decode
    for path in result.train["path"]:
        read_gray8(path)


def test_duplicate_id_with_conflicting_labels_drops_every_copy(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=4)
    append_train_row(root, "1002,100,True")
    with pytest.raises(AuditFailed, match="duplicate id"):
        run_audit(root, quiet=True)
    result = run_audit(root, skip_bad=True, quiet=True)
    assert set(result.train["id"]) == {"1001", "1003", "1004"}
    dups = result.issues[result.issues["problem"] == "duplicate id"]
    assert sorted(dups["row"]) == [3, 6]


def test_id_in_both_train_and_test(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(1002, 4360))
    with pytest.raises(AuditFailed, match="duplicate id"):
        run_audit(root, quiet=True)
    result = run_audit(root, skip_bad=True, quiet=True)
    assert list(result.train["id"]) == ["1001", "1003"] and list(result.test["id"]) == ["4360"]
    dups = result.issues[result.issues["problem"] == "duplicate id"]
    assert set(zip(dups["part"], dups["row"])) == {("train", 3), ("test", 2)}


def test_bad_test_rows_are_dropped_and_listed(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360, 4361, 4362))
    (root / TEST_DIR / "4361.png").unlink()
    (root / TEST_CSV).write_text("Case ID,Sex\n4360,M\n4361,F\n4362,Q\n")
    with pytest.raises(AuditFailed):
        run_audit(root, quiet=True)
    result = run_audit(root, skip_bad=True, quiet=True)
    assert list(result.test["id"]) == ["4360"]
    errors = result.issues[result.issues["severity"] == "error"]
    assert set(zip(errors["problem"], errors["file"], errors["row"])) == {
        ("missing image", f"{TEST_DIR}/4361.png", 3), ("unknown sex", TEST_CSV, 4)}


def test_bad_test_label_is_left_out_but_the_test_image_stays(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=2, test_ids=(4360, 4361),
                       labels="id,boneage,male\n4360,-5,True\n4361,80,False\n")
    with pytest.raises(AuditFailed, match="invalid age"):
        run_audit(root, quiet=True)
    result = run_audit(root, skip_bad=True, quiet=True)
    test = result.test.set_index("id")
    assert list(test.index) == ["4360", "4361"]
    assert np.isnan(test.loc["4360", "boneage"]) and test.loc["4361", "boneage"] == 80
    [issue] = result.issues[result.issues["problem"] == "invalid age"].itertuples()
    assert issue.file == TEST_LABELS_CSV and issue.row == 2


def test_several_problems_at_once(tmp_path, capsys):
    root = make_kaggle(tmp_path / "ds", n_train=8)
    for case in (_missing_image, _zero_byte, _truncated, _text_png, _sex("X")):
        case(root)
    write_png(train_image(root, 1007), noisy(h=20, w=20))
    with pytest.raises(AuditFailed) as info:
        run_audit(root)
    result = info.value.result
    assert result.n_errors == 6
    out = capsys.readouterr().out
    for problem in ("missing image", "zero-byte image", "truncated image", "not an image", "tiny image",
                    "unknown sex"):
        assert problem in out and problem in str(info.value)
    result = run_audit(root, skip_bad=True, quiet=True)
    assert sorted(result.train["id"]) == ["1001", "1008"]
    assert len(result.dropped) == 6


def test_fatal_missing_column_even_with_skip_bad(tmp_path, isolated_working, capsys):
    root = make_kaggle(tmp_path / "ds", n_train=3)
    (root / TRAIN_CSV).write_text("id,age_in_years,male\n1001,1,True\n")
    for skip in (False, True):
        with pytest.raises(AuditFailed) as info:
            run_audit(root, skip_bad=skip)
        message = str(info.value)
        assert TRAIN_CSV in message and "missing column" in message and "boneage" in message
        assert "'age_in_years'" in message  # the columns it found
    listed = pd.read_csv(isolated_working / dataset_name(root) / "audit.csv")
    assert list(listed["problem"]) == ["missing column"] and list(listed["file"]) == [TRAIN_CSV]
    assert "missing column" in capsys.readouterr().out


def test_nothing_left_is_an_error(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=2)
    for image_id in (1001, 1002):
        train_image(root, image_id).unlink()
    with pytest.raises(AuditFailed, match="no usable training rows"):
        run_audit(root, skip_bad=True, quiet=True)


def test_failed_audit_removes_stale_tables(tmp_path, isolated_working):
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360,))
    run_audit(root, quiet=True)
    assert (isolated_working / dataset_name(root) / "test.csv").exists()
    train_image(root, 1002).unlink()
    with pytest.raises(AuditFailed):
        run_audit(root, quiet=True)
    assert not (isolated_working / dataset_name(root) / "train.csv").exists()
    assert not (isolated_working / dataset_name(root) / "test.csv").exists()


# --------------------------------------------------------------------------- converted and warnings: pass by default

def _16bit(root):
    write_png(train_image(root, 1002), noisy(seed=5).astype(np.uint16) * 250)
    return "1002", "16-bit -> 8-bit"


def _rgb(root):
    write_png(train_image(root, 1003), cv2.cvtColor(noisy(), cv2.COLOR_GRAY2BGR))
    return "1003", "RGB -> gray"


def _rgba(root):
    write_png(train_image(root, 1004), cv2.cvtColor(noisy(), cv2.COLOR_GRAY2BGRA))
    return "1004", "RGBA -> gray"


@pytest.mark.parametrize("case", [_16bit, _rgb, _rgba], ids=lambda c: c.__name__.strip("_"))
def test_converted_images_are_kept_and_recorded(tmp_path, case):
    root = make_kaggle(tmp_path / "ds", n_train=6)
    image_id, note = case(root)
    result = run_audit(root, quiet=True)
    assert result.ok and len(result.train) == 6
    conv = result.issues[result.issues["severity"] == "converted"]
    assert len(conv) == 1
    assert (conv.iloc[0]["id"], conv.iloc[0]["problem"]) == (image_id, "converted image")
    assert note in conv.iloc[0]["detail"] and conv.iloc[0]["file"] == f"{TRAIN_DIR}/{image_id}.png"
    row = result.train.set_index("id").loc[image_id]
    assert row["converted"] == note
    decoded = read_gray8(row["path"])
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.ndim == 2 and note in decoded.conversions


def test_image_without_csv_row_and_non_image_files_are_warnings(tmp_path, capsys):
    root = make_kaggle(tmp_path / "ds", n_train=3)
    write_png(root / TRAIN_DIR / "2000.png")
    (root / TRAIN_DIR / "notes.txt").write_text("radiologist notes")
    (root / TRAIN_DIR / "2001.png").write_text("not really a png")
    (root / TRAIN_DIR / "subfolder").mkdir()
    result = run_audit(root)
    assert result.ok and len(result.train) == 3
    warn = result.issues.set_index("file")
    assert warn.loc[f"{TRAIN_DIR}/2000.png", "problem"] == "image without csv row"
    assert warn.loc[f"{TRAIN_DIR}/notes.txt", "problem"] == "non-image file"
    assert warn.loc[f"{TRAIN_DIR}/2001.png", "problem"] == "non-image file"
    assert set(warn["severity"]) == {"warning"}
    out = capsys.readouterr().out
    assert "image without csv row" in out and "notes.txt" in out


def test_bom_and_whitespace_warnings_and_the_data_still_loads(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3)
    (root / TRAIN_CSV).write_bytes("\ufeffid , boneage,male\n1001, 12 ,True\n1002,24,False \n1003,36,True\n"
                                   .encode("utf-8"))
    result = run_audit(root, quiet=True)
    assert list(result.train["boneage"]) == [12, 24, 36]
    problems = set(zip(result.issues["problem"], result.issues["row"].fillna(0).astype(int)))
    assert ("utf-8 bom", 1) in problems and ("whitespace", 1) in problems
    assert ("whitespace", 2) in problems and ("whitespace", 3) in problems
    assert set(result.issues["severity"]) == {"warning"}


def test_jpeg_named_png_is_a_warning(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3)
    ok, buf = cv2.imencode(".jpg", noisy())
    train_image(root, 1002).write_bytes(buf.tobytes())
    result = run_audit(root, quiet=True)
    [issue] = result.issues.itertuples()
    assert issue.problem == "not a png" and issue.severity == "warning" and issue.id == "1002"


def test_flat_folder_audit(tmp_path, isolated_working):
    root = tmp_path / "myflat"
    for i in range(3):
        write_png(root / "imgs" / f"p{i}.png", seed=i)
    (root / "labels.csv").write_text("image id,bone_age,gender\np0,10,M\np1,20,F\np2,30,m\n")
    result = run_audit(root, quiet=True)
    assert result.layout == "flat" and list(result.train["id"]) == ["p0", "p1", "p2"]
    assert (isolated_working / dataset_name(root) / "train.csv").is_file()


# --------------------------------------------------------------------------- images.py

def test_read_gray8_rejects_truncated_and_text(tmp_path):
    path = write_png(tmp_path / "a.png")
    data = path.read_bytes()
    path.write_bytes(data[:-12])
    with pytest.raises(DataError, match="truncated"):
        read_gray8(path)
    path.write_text("hello")
    with pytest.raises(DataError, match="not an image"):
        read_gray8(path)
    assert inspect_image(str(tmp_path / "missing.png")).problem == "unreadable image"


# --------------------------------------------------------------------------- cache and parallel decoding

def test_rerun_decodes_only_new_or_changed_files(tmp_path, isolated_working):
    root = make_kaggle(tmp_path / "ds", n_train=5)
    first = run_audit(root, quiet=True)
    assert first.counts["images_decoded"] == 5
    assert (isolated_working / dataset_name(root) / "audit_cache.csv").is_file()
    assert run_audit(root, quiet=True).counts["images_decoded"] == 0
    write_png(train_image(root, 1006), seed=9)
    append_train_row(root, "1006,50,True")
    assert run_audit(root, quiet=True).counts["images_decoded"] == 1
    write_png(train_image(root, 1002), np.zeros((80, 64), np.uint8))  # changed: now blank
    with pytest.raises(AuditFailed, match="blank image") as info:
        run_audit(root, quiet=True)
    assert info.value.result.counts["images_decoded"] == 1


def test_parallel_matches_serial(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=48)
    _truncated(root)
    _rgb(root)
    serial = run_audit(root, skip_bad=True, workers=1, quiet=True)
    os.environ["BONEAGE_WORKING"] = str(tmp_path / "working2")  # a fresh cache (autouse fixture restores)
    parallel = run_audit(root, skip_bad=True, workers=2, quiet=True)
    assert parallel.counts["images_decoded"] == 48
    pd.testing.assert_frame_equal(serial.train, parallel.train)
    pd.testing.assert_frame_equal(serial.issues, parallel.issues)


# --------------------------------------------------------------------------- CLI



def test_cli_broken_dataset_fails_without_traceback(tmp_path, cli_main, capsys):
    root = make_kaggle(tmp_path / "ds", n_train=6)
    _missing_image(root)
    _truncated(root)
    assert cli_main(["audit", "--input", str(root)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "\nerror: " in "\n" + captured.err and "--skip-bad" in captured.err and "audit.csv" in captured.err
    assert "missing image" in captured.out and "truncated image" in captured.out
    assert cli_main(["audit", "--input", str(root), "--skip-bad", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "left out 2 bad row(s)" in captured.out and "Traceback" not in captured.err


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_cli_unusable_input(tmp_path, cli_main, capsys, make):
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    assert cli_main(["audit", "--input", str(target)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "\nerror: " in "\n" + captured.err
    assert "kaggle datasets download kmader/rsna-bone-age -p input --unzip" in captured.err
    assert "bash run_all.sh --demo" in captured.err


def test_cli_rejects_bad_workers(tmp_path, cli_main, capsys):
    root = make_kaggle(tmp_path / "ds", n_train=2)
    assert cli_main(["audit", "--input", str(root), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_run_audit_missing_root_is_a_user_error(tmp_path, isolated_working):
    with pytest.raises(UserError, match="does not exist"):
        run_audit(tmp_path / "nope")
    assert not isolated_working.exists() or not any(isolated_working.iterdir())


# --------------------------------------------------------------------------- real data

def test_real_rsna100(rsna100, isolated_working):
    started = time.monotonic()
    result = run_audit(rsna100, quiet=True)
    elapsed = time.monotonic() - started
    assert result.ok and result.n_errors == 0
    assert len(result.train) == 3000 and result.test is None
    assert result.train["id"].is_unique and result.train["boneage"].between(0, 240).all()
    assert result.train["converted"].eq("").all()
    table = pd.read_csv(isolated_working / dataset_name(rsna100) / "train.csv", dtype={"id": str})
    assert len(table) == 3000
    assert elapsed < 30, f"audit of rsna-100px took {elapsed:.1f} s"
    again = run_audit(rsna100, quiet=True)
    assert again.counts["images_decoded"] == 0 and len(again.train) == 3000


def test_two_level_16bit_image_is_blank(tmp_path):
    img = np.full((80, 64), 3000, np.uint16)
    img[::5, ::3] = 3001
    path = write_png(tmp_path / "b.png", img)
    report = inspect_image(str(path))
    assert report.problem == "blank image" and "near-constant" in report.detail


# --------------------------------------------------------------------------- --skip-bad never empties the test part

def test_skip_bad_cannot_lose_every_test_row_to_a_mixed_delimiter_test_csv(tmp_path, isolated_working, cli_main,
                                                                          capsys):
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360, 4361))
    (root / TEST_CSV).write_text("Case ID;Sex\n4360,M\n4361,F\n")  # header saved with ';', rows with ','
    with pytest.raises(AuditFailed) as info:
        run_audit(root, skip_bad=True, quiet=True)
    message = str(info.value)
    assert TEST_CSV in message and "header is separated by ';' but the rows by ','" in message
    assert audit_status(root) is None and not (isolated_working / dataset_name(root) / "train.csv").exists()
    capsys.readouterr()
    assert cli_main(["audit", "--input", str(root), "--skip-bad"]) == 2
    err = capsys.readouterr().err
    assert TEST_CSV in err and "Traceback" not in err


def test_skip_bad_cannot_drop_every_test_row(tmp_path, cli_main, capsys):
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360, 4361))
    for image_id in (4360, 4361):
        (root / TEST_DIR / f"{image_id}.png").unlink()
    with pytest.raises(AuditFailed) as info:
        run_audit(root, skip_bad=True, quiet=True)
    message = str(info.value)
    assert f"no usable test rows are left in {TEST_CSV}" in message and "missing image 2" in message
    assert audit_status(root) is None
    assert cli_main(["audit", "--input", str(root), "--skip-bad"]) == 2
    assert TEST_CSV in capsys.readouterr().err


def test_test_csv_without_rows_is_an_error(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360,))
    (root / TEST_CSV).write_text("Case ID,Sex\n")
    with pytest.raises(AuditFailed, match=f"no usable test rows are left in {TEST_CSV}.*no data rows"):
        run_audit(root, skip_bad=True, quiet=True)
