"""Intake: the Kaggle layout (both folder variants), flat folders, column and sex spellings,
and the CSV-level problems intake reports (each naming its file and row)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from src.data.intake import IntakeError, check_id, normalise_sex, parse_age, read_dataset
from src.data.layout import TEST_CSV, TEST_DIR, TEST_LABELS_CSV, TRAIN_CSV, TRAIN_DIR
from src.utils.errors import DataError, UserError


# --------------------------------------------------------------------------- builders

def write_png(path: Path, h: int = 80, w: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    grad = np.tile(np.linspace(20, 220, w), (h, 1))
    img = np.clip(grad + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def make_kaggle(root: Path, n_train: int = 6, test_ids=(), labels: str | None = None,
                single_level: bool = False) -> Path:
    """A clean Kaggle-layout root: ids 1001.., ages 12, 24, ..., male alternating."""
    train_dir = root / (Path(TRAIN_DIR).parent if single_level else TRAIN_DIR)
    lines = ["id,boneage,male"]
    for i in range(n_train):
        image_id = 1001 + i
        lines.append(f"{image_id},{12 * (i + 1)},{'True' if i % 2 == 0 else 'False'}")
        write_png(train_dir / f"{image_id}.png", seed=i)
    root.mkdir(parents=True, exist_ok=True)
    (root / TRAIN_CSV).write_text("\n".join(lines) + "\n")
    if test_ids:
        test_dir = root / (Path(TEST_DIR).parent if single_level else TEST_DIR)
        rows = ["Case ID,Sex"] + [f"{t},{'M' if k % 2 == 0 else 'F'}" for k, t in enumerate(test_ids)]
        for k, t in enumerate(test_ids):
            write_png(test_dir / f"{t}.png", seed=100 + k)
        (root / TEST_CSV).write_text("\n".join(rows) + "\n")
    if labels is not None:
        (root / TEST_LABELS_CSV).write_text(labels)
    return root


def set_train_csv(root: Path, text: str, encoding: str = "utf-8") -> None:
    (root / TRAIN_CSV).write_bytes(text.encode(encoding))


def issues_of(intake, problem: str):
    return [i for i in intake.issues if i.problem == problem]


# --------------------------------------------------------------------------- layouts

def test_kaggle_layout_train_and_test(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=4, test_ids=(4360, 4361, 4362))
    intake = read_dataset(root)
    assert intake.layout == "kaggle"
    table = intake.table
    assert list(table.columns[:5]) == ["id", "path", "male", "boneage", "part"]
    train, test = intake.part("train"), intake.part("test")
    assert list(train["id"]) == ["1001", "1002", "1003", "1004"]
    assert all(isinstance(i, str) for i in table["id"])
    assert list(train["boneage"]) == [12.0, 24.0, 36.0, 48.0]
    assert list(train["male"]) == [True, False, True, False]
    assert list(train["row"]) == [2, 3, 4, 5]
    assert list(test["id"]) == ["4360", "4361", "4362"]
    assert list(test["male"]) == [True, False, True]  # M/F
    assert test["boneage"].isna().all()  # unlabelled test part
    for path in table["path"]:
        assert os.path.isabs(path) and Path(path).is_file()
    assert Path(train["path"].iloc[0]) == (root / TRAIN_DIR / "1001.png").absolute()
    assert intake.issues == []


def test_test_part_is_optional(tmp_path):
    intake = read_dataset(make_kaggle(tmp_path / "ds", n_train=3))
    assert set(intake.table["part"]) == {"train"}
    assert "test" not in intake.sources


def test_test_labels_are_merged(tmp_path):
    labels = "id,boneage,male\n4360,100,True\n4361,150.5,False\n9999,20,True\n"
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360, 4361, 4362), labels=labels)
    intake = read_dataset(root)
    test = intake.part("test").set_index("id")
    assert test.loc["4360", "boneage"] == 100.0
    assert test.loc["4361", "boneage"] == 150.5
    assert math.isnan(test.loc["4362", "boneage"])
    [orphan] = issues_of(intake, "label without test row")
    assert orphan.id == "9999" and orphan.file == TEST_LABELS_CSV and orphan.row == 4
    [unlabelled] = issues_of(intake, "unlabelled test row")
    assert unlabelled.id == "4362" and unlabelled.severity == "warning"


def test_test_labels_sex_mismatch_is_a_warning(tmp_path):
    labels = "id,boneage,male\n4360,100,False\n"
    root = make_kaggle(tmp_path / "ds", n_train=2, test_ids=(4360,), labels=labels)
    intake = read_dataset(root)
    [issue] = issues_of(intake, "sex mismatch")
    assert issue.severity == "warning" and issue.id == "4360"
    assert bool(intake.part("test")["male"].iloc[0]) is True  # the test CSV wins


def test_single_level_folder_variant(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3, test_ids=(4360,), single_level=True)
    intake = read_dataset(root)
    assert "single-level" in intake.layout
    assert Path(intake.table["path"].iloc[0]) == (root / "boneage-training-dataset" / "1001.png").absolute()
    assert all(Path(p).is_file() for p in intake.table["path"])


@pytest.mark.parametrize("header", ["image id,bone_age,gender", "Case ID,Age,Sex", "ID,boneage,MALE"])
def test_flat_folder_with_flexible_columns(tmp_path, header):
    root = tmp_path / "flat"
    for i in range(3):
        write_png(root / f"{i + 1}.png", seed=i)
    sex = ["M", "F", "M"] if "male" not in header.lower() else ["True", "False", "True"]
    (root / "labels.csv").write_text(header + "\n" + "".join(f"{i + 1},{10 * (i + 1)},{sex[i]}\n" for i in range(3)))
    intake = read_dataset(root)
    assert intake.layout == "flat"
    train = intake.part("train")
    assert list(train["id"]) == ["1", "2", "3"]
    assert list(train["boneage"]) == [10.0, 20.0, 30.0]
    assert list(train["male"]) == [True, False, True]
    assert Path(train["path"].iloc[0]) == (root / "1.png").absolute()
    assert intake.issues == []


def test_flat_folder_with_images_in_one_subfolder_and_filename_ids(tmp_path):
    root = tmp_path / "flat"
    write_png(root / "images" / "a1.png")
    write_png(root / "images" / "a2.png", seed=1)
    (root / "meta.csv").write_text("filename,bone age,sex\na1.png,100,male\na2.png,120,female\n")
    intake = read_dataset(root)
    assert list(intake.table["id"]) == ["a1", "a2"]
    assert Path(intake.table["path"].iloc[1]) == (root / "images" / "a2.png").absolute()


# --------------------------------------------------------------------------- sex and values

ACCEPTED_SEX = [("True", True), ("False", False), ("true", True), ("FALSE", False), ("M", True), ("f", False),
                ("m", True), ("F", False), ("1", True), ("0", False), ("male", True), ("Female", False),
                ("MALE", True), ("fEmAlE", False), (" M ", True), ("\tfalse ", False)]
REJECTED_SEX = ["X", "2", "", "yes", "mal", "-1", "1.0", "T", "unknown", "nan"]


@pytest.mark.parametrize("value,expected", ACCEPTED_SEX)
def test_sex_spellings_accepted(tmp_path, value, expected):
    assert normalise_sex(value) is expected
    root = make_kaggle(tmp_path / "ds", n_train=2)
    set_train_csv(root, f"id,boneage,male\n1001,12,{value}\n1002,24,True\n")
    intake = read_dataset(root)
    assert bool(intake.table["male"].iloc[0]) is expected
    assert not issues_of(intake, "unknown sex")


@pytest.mark.parametrize("value", REJECTED_SEX)
def test_sex_spellings_rejected_name_the_row(tmp_path, value):
    assert normalise_sex(value) is None
    root = make_kaggle(tmp_path / "ds", n_train=3)
    set_train_csv(root, f"id,boneage,male\n1001,12,True\n1002,24,{value}\n1003,36,False\n")
    intake = read_dataset(root)
    [issue] = issues_of(intake, "unknown sex")
    assert (issue.part, issue.id, issue.row, issue.file, issue.severity) == ("train", "1002", 3, TRAIN_CSV, "error")
    assert repr(value.strip()) in issue.detail
    assert issue.index == 1


def test_normalise_sex_python_values():
    assert normalise_sex(True) is True and normalise_sex(np.bool_(False)) is False
    assert normalise_sex(1) is True and normalise_sex(np.int64(0)) is False and normalise_sex(1.0) is True
    for bad in (None, float("nan"), 2, -1, 0.5, object()):
        assert normalise_sex(bad) is None


@pytest.mark.parametrize("value,ok", [("0", True), ("12", True), ("240", True), ("100.5", True), (" 7 ", True),
                                      ("", False), ("nan", False), ("NaN", False), ("-1", False), ("241", False),
                                      ("abc", False), ("inf", False)])
def test_parse_age(value, ok):
    age, why = parse_age(value)
    assert (why == "") is ok
    assert (not math.isnan(age)) is ok


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "a\\b", "..", "a b", "x$y", "", "é1", "1;2"])
def test_invalid_ids_are_rejected(tmp_path, bad_id):
    assert check_id(bad_id)
    root = make_kaggle(tmp_path / "ds", n_train=2)
    quoted = '"' + bad_id + '"' if bad_id else ""
    set_train_csv(root, f"id,boneage,male\n1001,12,True\n{quoted},30,True\n")
    intake = read_dataset(root)
    [issue] = issues_of(intake, "invalid id")
    assert issue.row == 3 and issue.severity == "error" and issue.file == TRAIN_CSV
    assert intake.table["path"].iloc[1] == ""  # never joined onto a folder


@pytest.mark.parametrize("good_id", ["1377", "abc_1", "x-2.v1", "A"])
def test_valid_ids(good_id):
    assert check_id(good_id) == ""


def test_duplicate_ids(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=3)
    set_train_csv(root, "id,boneage,male\n1001,12,True\n1002,24,False\n1001,12,True\n1003,36,True\n1003,40,True\n")
    intake = read_dataset(root)
    dups = issues_of(intake, "duplicate id")
    assert {(i.id, i.row) for i in dups} == {("1001", 4), ("1003", 5), ("1003", 6)}
    assert all(i.severity == "error" for i in dups)


def test_missing_column_is_fatal_and_names_file_column_and_found_columns(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=2)
    set_train_csv(root, "id,male\n1001,True\n")
    with pytest.raises(IntakeError) as info:
        read_dataset(root)
    message = str(info.value)
    assert TRAIN_CSV in message and "boneage" in message and "found columns: 'id', 'male'" in message
    assert isinstance(info.value, DataError)
    [issue] = info.value.issues
    assert issue.problem == "missing column" and issue.file == TRAIN_CSV


def test_test_csv_missing_sex_is_fatal(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=2, test_ids=(4360,))
    (root / TEST_CSV).write_text("Case ID\n4360\n")
    with pytest.raises(IntakeError, match=r"boneage-test-dataset.csv.*missing column 'male"):
        read_dataset(root)


def test_bom_is_stripped_with_a_warning(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=2)
    set_train_csv(root, "id,boneage,male\n1001,12,True\n1002,24,False\n", encoding="utf-8-sig")
    intake = read_dataset(root)
    assert list(intake.table["id"]) == ["1001", "1002"]
    [issue] = issues_of(intake, "utf-8 bom")
    assert issue.severity == "warning" and issue.file == TRAIN_CSV


def test_whitespace_in_headers_and_values_is_stripped_with_warnings(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=2)
    set_train_csv(root, " id , boneage ,male\n 1001 ,12, True\n1002,24,False\n")
    intake = read_dataset(root)
    assert list(intake.table["id"]) == ["1001", "1002"]
    assert bool(intake.table["male"].iloc[0]) is True
    issues = issues_of(intake, "whitespace")
    assert {(i.row, i.severity) for i in issues} == {(1, "warning"), (2, "warning")}
    assert "' id '" in issues[0].detail or "' id '" in issues[1].detail


def test_semicolon_csv_and_latin1_are_read_with_warnings(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=2)
    set_train_csv(root, "id;boneage;male;note\n1001;12;True;caf\xe9\n1002;24;False;x\n", encoding="latin-1")
    intake = read_dataset(root)
    assert list(intake.table["boneage"]) == [12.0, 24.0]
    assert issues_of(intake, "delimiter") and issues_of(intake, "encoding")


def test_malformed_row(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=2)
    set_train_csv(root, "id,boneage,male\n1001,12,True\n1002,24\n")
    intake = read_dataset(root)
    [issue] = issues_of(intake, "malformed row")
    assert issue.row == 3 and issue.id == "1002" and issue.severity == "error"


def test_unlabelled_training_row_is_an_error_but_test_rows_may_be_unlabelled(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=2, test_ids=(4360,))
    set_train_csv(root, "id,boneage,male\n1001,,True\n1002,24,False\n")
    intake = read_dataset(root)
    [issue] = issues_of(intake, "invalid age")
    assert issue.part == "train" and issue.row == 2 and "missing bone age" in issue.detail


# --------------------------------------------------------------------------- unusable roots

def _assert_helpful(message: str) -> None:
    assert "kaggle datasets download kmader/rsna-bone-age -p input --unzip" in message
    assert "bash run_all.sh --demo" in message
    assert TRAIN_CSV in message  # says what was expected


def test_missing_root(tmp_path):
    with pytest.raises(UserError) as info:
        read_dataset(tmp_path / "nope")
    assert "does not exist" in str(info.value)
    _assert_helpful(str(info.value))


def test_empty_root_lists_what_is_there(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as info:
        read_dataset(tmp_path / "empty")
    assert "it is empty" in str(info.value)
    _assert_helpful(str(info.value))


def test_unrecognised_root_lists_contents(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    (root / "a.csv").write_text("x\n")
    (root / "b.csv").write_text("y\n")
    (root / "readme.txt").write_text("hi")
    with pytest.raises(UserError) as info:
        read_dataset(root)
    message = str(info.value)
    assert "a.csv" in message and "b.csv" in message and "readme.txt" in message
    _assert_helpful(message)


def test_nested_kaggle_root_is_suggested(tmp_path):
    make_kaggle(tmp_path / "input" / "rsna-bone-age", n_train=1)
    with pytest.raises(UserError, match="--input .*rsna-bone-age"):
        read_dataset(tmp_path / "input")


def test_kaggle_csv_without_images(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / TRAIN_CSV).write_text("id,boneage,male\n1,2,True\n")
    with pytest.raises(UserError, match="no images in boneage-training-dataset/boneage-training-dataset"):
        read_dataset(root)


def test_flat_csv_without_images(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    (root / "labels.csv").write_text("id,boneage,male\n1,2,True\n")
    with pytest.raises(UserError, match="no PNG images"):
        read_dataset(root)


@pytest.mark.parametrize("text,header_sep,row_sep", [
    ("Case ID;Sex\n4360,M\n4361,F\n", ";", ","),
    ("Case ID,Sex\n4360;M\n4361;F\n", ",", ";"),
])
def test_header_and_rows_with_different_separators_is_fatal(tmp_path, text, header_sep, row_sep):
    root = make_kaggle(tmp_path / "ds", n_train=2, test_ids=(4360, 4361))
    (root / TEST_CSV).write_text(text)
    with pytest.raises(IntakeError) as info:
        read_dataset(root)
    message = str(info.value)
    assert TEST_CSV in message and f"the header is separated by {header_sep!r} but the rows by {row_sep!r}" in message
    assert "none of its 2 rows can be split into the header's 2 columns" in message
    [issue] = [i for i in info.value.issues if i.severity == "error"]
    assert issue.file == TEST_CSV and issue.problem == "unsplittable csv"


def test_one_good_row_keeps_the_file_readable(tmp_path):
    root = make_kaggle(tmp_path / "ds", n_train=2)
    set_train_csv(root, "id,boneage,male\n1001;12;True\n1002,24,False\n")
    intake = read_dataset(root)
    [issue] = issues_of(intake, "malformed row")
    assert issue.row == 2
