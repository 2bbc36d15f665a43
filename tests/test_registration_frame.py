"""Registration's frame, regions, keypoint tables, the `register` command and the cache key.

Detection itself (src/registration/heuristic.py) is tested elsewhere: here the keypoints come
from the phantom's ground truth or from a fake detector, so these tests fail only for what this
part does."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from src.data.cache import CACHE_VERSION, PreprocessCache, cache_key
from src.data.layout import DatasetPaths
from src.data.preprocess import validate_steps
from src.engine.config import load_config
from src.registration.frame import (REGIONS, crop_region, fallback_to_frame, frame_matrix, frame_size, map_points,
                                    warp_to_frame)
from src.registration.keypoint_io import keypoints_from_row, read_keypoint_table, write_keypoint_table
from src.registration.types import KEYPOINT_COLUMNS, HandKeypoints
from src.utils.errors import DataError, UserError
from src.utils.io import read_id_csv
from tests.helpers import audited

REGISTERED = [{"name": "register", "frame_scale": 0.1}, {"name": "pad_square"}, {"name": "resize"}]


def rotated_hand(mirrored: bool = False) -> HandKeypoints:
    """A hand tilted by about 20 degrees, 600 px from tip to capitate."""
    return HandKeypoints(middle=(400.0, 80.0), thumb=(150.0 if mirrored else 650.0, 360.0),
                         capitate=(605.2, 643.8), confidence=0.9, mirrored=mirrored, method="heuristic")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """12 phantom hands at 0.1 scale; seed 2 makes 3 of them mirrored films."""
    from src.data.phantom import PhantomParams, generate

    root = tmp_path_factory.mktemp("reg") / "reg-phantom"
    generate(root, PhantomParams(seed=2, scale=0.1, n_train=12, n_test=0), workers=1)
    return root


def truth(root: Path) -> pd.DataFrame:
    return read_keypoint_table(DatasetPaths(root).keypoints_csv)


def padded_and_resized(frame: np.ndarray, size: int = 48) -> np.ndarray:
    """What pad_square + resize make of a frame at scale 0.1 (160 x 208)."""
    square = cv2.copyMakeBorder(frame, 0, 0, 24, 24, cv2.BORDER_CONSTANT, value=0)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def write_registration(root: Path, table: pd.DataFrame) -> Path:
    table = table.assign(confidence=table.get("confidence", 1.0), method=table.get("method", "learned"))
    return write_keypoint_table(table, DatasetPaths(root).work_dir() / "registration" / "keypoints.csv")


# ------------------------------------------------------------------------------ (1) the affine map


@pytest.mark.parametrize("scale", [1.0, 0.25])
@pytest.mark.parametrize("mirrored", [False, True])
def test_frame_matrix_sends_the_keypoints_where_the_frame_says(scale, mirrored):
    kp = rotated_hand(mirrored)
    matrix = frame_matrix(kp, scale)
    tip, capitate, thumb = map_points(matrix, [kp.middle, kp.capitate, kp.thumb])
    np.testing.assert_allclose(tip, np.array([800, 100]) * scale, atol=1e-6)
    np.testing.assert_allclose(capitate, np.array([800, 1600]) * scale, atol=1e-6)
    assert thumb[0] > tip[0]  # a normal left hand, mirrored film or not
    assert np.sign(np.linalg.det(matrix[:, :2])) == (-1 if mirrored else 1)  # a reflection only when mirrored
    assert frame_size(scale) == (round(1600 * scale), round(2080 * scale))


def test_warp_moves_pixels_with_the_points():
    """Bright disks at the tip and the capitate end up at the frame's targets, through the
    shrink-first path (the map shrinks 600 px to 150)."""
    kp = rotated_hand()
    image = np.zeros((900, 800), np.uint8)
    for x, y in (kp.middle, kp.capitate):
        cv2.circle(image, (int(x), int(y)), 20, 255, -1)
    frame = warp_to_frame(image, kp, 0.1)
    assert frame.shape == (208, 160)
    assert frame[10, 80] > 200 and frame[160, 80] > 200
    assert frame[85, 80] < 20  # between them: nothing


def test_regions_crop_the_documented_windows():
    yy, xx = np.mgrid[0:520, 0:400]  # the frame at scale 0.25
    frame = (yy * 1000 + xx).astype(np.int32)  # each pixel holds its own position
    crops = {name: crop_region(frame, name) for name in REGIONS}
    assert {name: c.shape for name, c in crops.items()} == {"A": (500, 375), "B": (125, 250), "C": (250, 300)}
    # top-left corners, at scale 0.25: A (50, 40), B (300, 1400), C (200, 500) in frame px at scale 1
    assert [divmod(int(crops[n][0, 0]), 1000) for n in "ABC"] == [(10, 12), (350, 75), (125, 50)]
    with pytest.raises(UserError, match="not a registered"):
        crop_region(np.zeros((100, 100), np.uint8), "A")


def test_fallback_letterboxes_the_whole_image():
    image = np.full((300, 100), 200, np.uint8)  # tall and narrow: fills the height, centred
    frame = fallback_to_frame(image, 0.1)
    assert frame.shape == (208, 160)
    cols = np.flatnonzero(frame.max(0) > 100)
    assert abs((cols.min() + cols.max()) / 2 - 79.5) <= 1 and abs(len(cols) - 208 / 3) <= 2
    assert frame[:, 0].max() == 0 and frame[:, -1].max() == 0


# ------------------------------------------------------------------------------ (2) mirrored films


def _thumb_band_extents(frame_mask: np.ndarray, thumb_y: float) -> tuple[int, int]:
    """How far the hand reaches left and right of the frame's axis in the rows of the thumb tip."""
    y = int(round(thumb_y))
    cols = np.flatnonzero((frame_mask[max(0, y - 3):y + 4] > 127).any(0))
    axis = frame_mask.shape[1] / 2
    return int(axis - cols.min()), int(cols.max() - axis)


def test_a_mirrored_phantom_is_flipped_back_to_a_left_hand(phantom):
    table = truth(phantom)
    assert table["mirrored"].sum() >= 2, "the fixture must hold mirrored films"
    paths = DatasetPaths(phantom)
    for row in table.to_dict("records"):
        kp = keypoints_from_row(row)
        matrix = frame_matrix(kp, 0.1)
        tip, thumb = map_points(matrix, [kp.middle, kp.thumb])
        assert thumb[0] > tip[0] + 10, f"image {row['id']}: thumb not right of the middle finger"
        mask = cv2.imread(str(paths.masks_dir / f"{row['id']}.png"), cv2.IMREAD_GRAYSCALE)
        left, right = _thumb_band_extents(warp_to_frame(mask, kp, 0.1), thumb[1])
        assert right > left, f"image {row['id']}: the warped pixels do not put the thumb on the right"
        if row["mirrored"]:  # the same film without the flip would show the thumb on the left
            unflipped = HandKeypoints(kp.middle, kp.thumb, kp.capitate, 1.0, False, "learned")
            left, right = _thumb_band_extents(warp_to_frame(mask, unflipped, 0.1), thumb[1])
            assert left > right


# ------------------------------------------------------------------------------ (3) readers


def test_csv_reader_maps_the_phantom_and_the_real_spellings(tmp_path):
    phantom_csv = tmp_path / "gt.csv"
    phantom_csv.write_text("id,part,width,height,mirrored,middle_finger_tip_x,middle_finger_tip_y,thumb_tip_x,"
                           "thumb_tip_y,capitate_x,capitate_y\n7,train,100,120,True,50,5,80,40,52,90\n"
                           "8,train,100,120,0,51,6,,,53,91\n")
    table = read_keypoint_table(phantom_csv)
    assert list(table.columns[:7]) == ["id", "middle_x", "middle_y", "thumb_x", "thumb_y", "capitate_x", "capitate_y"]
    assert table["id"].tolist() == ["7", "8"] and table["mirrored"].tolist() == [True, False]
    assert np.isnan(table.loc[1, "thumb_x"]) and table.loc[0, "capitate_y"] == 90.0
    assert keypoints_from_row(table.iloc[0].to_dict()).mirrored and keypoints_from_row(table.iloc[1].to_dict()) is None

    real_csv = tmp_path / "real.csv"
    real_csv.write_text("id,orig_width,orig_height,middle_finger4_x,middle_finger4_y,thumb4_x,thumb4_y,wrist_x,"
                        "wrist_y,middle_finger1_x,middle_finger1_y\n1387,1514,2044,34.0,7.63,79.02,31.59,39.24,"
                        "76.57,38.34,39.63\n")
    real = read_keypoint_table(real_csv)
    assert {"middle_x", "thumb_x", "wrist_x", "mcp_y", "orig_width"} <= set(real.columns)
    assert "capitate_x" not in real.columns and real.loc[0, "mcp_y"] == pytest.approx(39.63)

    bad = tmp_path / "bad.csv"
    bad.write_text("id,middle_x,middle_y\n1,3,4\n2,x,4\n")
    with pytest.raises(DataError, match=r"bad\.csv.*'middle_x'.*rows \[3\]"):
        read_keypoint_table(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("id,middle_x,middle_y\n1,3,4\n1,3,4\n")
    with pytest.raises(DataError, match="duplicate ids"):
        read_keypoint_table(dup)


def test_coco_reader_takes_ids_from_file_names_and_v0_as_missing(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "1387.png"}, {"id": 2, "file_name": "hand_b.png"}],
           "categories": [{"id": 1, "name": "hand", "keypoints": ["middle_finger4", "thumb4", "capitate", "pinky"]}],
           "annotations": [
               {"image_id": 1, "category_id": 1, "keypoints": [34, 7.5, 2, 79, 31, 2, 40, 70, 1, 9, 9, 2]},
               {"image_id": 2, "category_id": 1, "keypoints": [10, 11, 2, 0, 0, 0, 12, 60, 2, 9, 9, 2]}]}
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(doc))
    table = read_keypoint_table(path)
    assert table["id"].tolist() == ["1387", "2"]
    assert table.loc[0, ["middle_x", "middle_y", "capitate_y"]].tolist() == [34.0, 7.5, 70.0]
    assert np.isnan(table.loc[1, "thumb_x"]) and np.isnan(table.loc[1, "thumb_y"])
    doc["annotations"][1]["keypoints"] = [1, 2, 2]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"annotations\[1\]"):
        read_keypoint_table(path)


def test_written_table_reads_back(tmp_path):
    rows = [rotated_hand().row("5"), rotated_hand(True).row("4")]
    path = write_keypoint_table(pd.DataFrame(rows), tmp_path / "k.csv")
    assert path.read_text().splitlines()[0] == ",".join(KEYPOINT_COLUMNS)
    back = read_keypoint_table(path)
    assert back["id"].tolist() == ["4", "5"] and back["mirrored"].tolist() == [True, False]
    assert keypoints_from_row(back.iloc[1].to_dict()) == rotated_hand()


def test_the_real_keypoint_file_reads(rsna100):
    table = read_keypoint_table(rsna100 / "keypoints.csv")
    assert len(table) >= 100 and table["id"].is_unique
    for column in ("middle_x", "middle_y", "thumb_x", "thumb_y", "wrist_x", "wrist_y", "mcp_x", "mcp_y"):
        assert table[column].notna().mean() > 0.9, column
    assert table["middle_y"].median() < table["mcp_y"].median() < table["wrist_y"].median()  # tip at the top


# ------------------------------------------------------------------------------ (4) the command


class FakeDetector:
    """The ground truth of the images, called in `order` (one worker keeps the table's order),
    except that the call numbers in `failing` raise and those in `unsure` have confidence 0.2."""

    def __init__(self, order: list[str], table: pd.DataFrame, failing=(0,), unsure=(1,)):
        self.order, self.failing, self.unsure, self.calls = order, failing, unsure, 0
        self.truth = {r["id"]: keypoints_from_row(r) for r in table.to_dict("records")}

    def __call__(self, image, mask=None):
        call, self.calls = self.calls, self.calls + 1
        if call in self.failing:
            raise RuntimeError("no hand found")
        kp = self.truth[self.order[call % len(self.order)]]
        return HandKeypoints(kp.middle, kp.thumb, kp.capitate, 0.2 if call in self.unsure else 0.95, kp.mirrored,
                             "heuristic")


def test_register_flags_failures_falls_back_and_resumes(phantom, monkeypatch, cli_main, capsys):
    import src.commands.register as register_cmd

    root = audited(phantom)
    work = DatasetPaths(root).work_dir()
    order = read_id_csv(work / "train.csv")["id"].tolist()
    fake = FakeDetector(order, truth(root))
    monkeypatch.setattr(register_cmd, "load_detector", lambda: (fake, "fake-1"))
    assert cli_main(["register", "--input", str(root), "--workers", "1"]) == 0
    assert "2 flagged (1 failed, 1 below confidence" in capsys.readouterr().out
    flagged = pd.read_csv(work / "registration" / "flagged.csv", dtype={"id": str})
    assert flagged.set_index("id")["reason"].to_dict() == {order[0]: "failed", order[1]: "low_confidence"}
    keypoints = read_keypoint_table(work / "registration" / "keypoints.csv")
    assert list(keypoints.columns) == KEYPOINT_COLUMNS and len(keypoints) == len(order)
    methods = keypoints.set_index("id")["method"]
    assert methods[order[0]] == methods[order[1]] == "fallback" and methods[order[2]] == "heuristic"
    assert keypoints.set_index("id").loc[order[1], "confidence"] == pytest.approx(0.2)  # the guess is kept

    # the step: flagged images are the letterboxed fallback, the others registered
    table = read_id_csv(work / "train.csv")
    cache = PreprocessCache(DatasetPaths(root).name, str(root), 48, REGISTERED)
    cache.build(table, workers=1)
    paths = dict(zip(table["id"], table["path"]))
    for image_id, expect_fallback in ((order[0], True), (order[1], True), (order[2], False)):
        image = cv2.imread(paths[image_id], cv2.IMREAD_GRAYSCALE)
        registered = warp_to_frame(image, fake.truth[image_id], 0.1)
        expected = fallback_to_frame(image, 0.1) if expect_fallback else registered
        want = padded_and_resized(expected)
        assert np.abs(cache.load(image_id).astype(int) - want.astype(int)).mean() < 1.0, image_id

    # the step's own threshold is stricter than the command's: 0.99 sends the 0.95 detections back too
    strict = [{"name": "register", "frame_scale": 0.1, "min_confidence": 0.99}] + REGISTERED[1:]
    cache = PreprocessCache(DatasetPaths(root).name, str(root), 48, strict)
    cache.build(table, workers=1)
    image = cv2.imread(paths[order[2]], cv2.IMREAD_GRAYSCALE)
    want = padded_and_resized(fallback_to_frame(image, 0.1))
    assert np.abs(cache.load(order[2]).astype(int) - want.astype(int)).mean() < 1.0

    # resumable: a rerun detects nothing; a new detector version detects everything again
    calls = fake.calls
    assert cli_main(["register", "--input", str(root), "--workers", "1"]) == 0
    assert fake.calls == calls
    fake.calls = 0
    monkeypatch.setattr(register_cmd, "load_detector", lambda: (fake, "fake-2"))
    assert cli_main(["register", "--input", str(root), "--workers", "1", "--limit", "5"]) == 0
    assert fake.calls == 5 and "still to detect" in capsys.readouterr().out


def test_register_qa_scores_against_the_ground_truth_and_draws_grids(phantom, monkeypatch, cli_main):
    import src.commands.register as register_cmd
    import src.registration as registration

    root = audited(phantom)
    order = read_id_csv(DatasetPaths(root).work_dir() / "train.csv")["id"].tolist()
    fake = FakeDetector(order, truth(root), failing=(), unsure=())
    monkeypatch.setattr(register_cmd, "load_detector", lambda: (fake, "fake-1"))
    seen = {}

    def score_keypoints(pred, truth_df):
        seen["truth_columns"] = set(truth_df.columns)
        return pd.DataFrame({"id": pred["id"], "error_px": 0.0})

    def keypoint_grid(images, keypoints, titles, path):
        seen.setdefault("grids", []).append((images, keypoints))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.hstack(images))
        return Path(path)

    qa = types.SimpleNamespace(score_keypoints=score_keypoints, keypoint_grid=keypoint_grid)
    monkeypatch.setitem(sys.modules, "src.registration.qa", qa)
    monkeypatch.setattr(registration, "qa", qa, raising=False)
    assert cli_main(["register", "--input", str(root), "--workers", "1", "--qa"]) == 0
    qa_dir = DatasetPaths(root).work_dir() / "registration" / "qa"
    assert (qa_dir / "scores.csv").is_file() and {"middle_x", "capitate_x", "mirrored"} <= seen["truth_columns"]
    assert (qa_dir / "grid_random.png").is_file() and (qa_dir / "grid_least_confident.png").is_file()
    images, keypoints = seen["grids"][0]
    assert images[0].shape == (416, 320)
    for kp in keypoints:  # points drawn where the frame put them
        assert kp.middle == pytest.approx((160.0, 20.0), abs=0.5) and kp.thumb[0] > kp.middle[0]


# ------------------------------------------------------------------------------ (5) the cache key


def test_registration_parameters_and_the_keypoint_table_key_the_cache(phantom):
    root, dataset = str(phantom), DatasetPaths(phantom).name
    with pytest.raises(UserError, match="python -m src register"):
        PreprocessCache(dataset, root, 48, REGISTERED)  # no keypoint table yet
    table_path = write_registration(phantom, truth(phantom))

    def key(*steps) -> str:
        return PreprocessCache(dataset, root, 48, list(steps) + [{"name": "pad_square"}, {"name": "resize"}]).key

    register = {"name": "register", "frame_scale": 0.1}
    base = key(register, {"name": "region", "region": "A"})
    assert base == key(register, {"name": "region", "region": "A"})
    assert base != key(register, {"name": "region", "region": "B"})
    assert base != key({**register, "frame_scale": 0.2}, {"name": "region", "region": "A"})
    assert base != key({**register, "min_confidence": 0.9}, {"name": "region", "region": "A"})
    assert base != key(register)
    lines = table_path.read_text().splitlines()
    table_path.write_text("\n".join(lines[:-1]) + "\n")  # one keypoint row less
    assert base != key(register, {"name": "region", "region": "A"})

    # recipes without registration keep the key they always had: existing caches stay valid
    plain = [{"name": "pad_square"}, {"name": "resize"}]
    spec = {"version": CACHE_VERSION, "source": str(Path(root).resolve()), "size": 48, "steps": plain}
    old = f"{dataset}-48px-{hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]}"
    assert PreprocessCache(dataset, root, 48, plain).key == old == cache_key(dataset, root, 48, plain)


@pytest.mark.parametrize("steps, message", [
    ([{"name": "pad_square"}, {"name": "register"}, {"name": "resize"}], "move pixels"),
    ([{"name": "register"}, {"name": "resize"}], "pad_square"),
    ([{"name": "region", "region": "A"}, {"name": "pad_square"}, {"name": "resize"}], "'register' must come before"),
    ([{"name": "register"}, {"name": "region", "region": "D"}, {"name": "pad_square"}, {"name": "resize"}],
     "one of"),
    ([{"name": "register", "scale": 0.1}, {"name": "pad_square"}, {"name": "resize"}], "unknown parameter"),
    ([{"name": "register", "frame_scale": 0}, {"name": "pad_square"}, {"name": "resize"}], "frame_scale"),
    ([{"name": "register"}, {"name": "pad_square"}, {"name": "region"}, {"name": "resize"}], "must follow"),
])
def test_bad_registration_recipes_are_refused_before_any_work(steps, message):
    with pytest.raises(UserError, match=message):
        validate_steps(steps)


@pytest.mark.parametrize("config", ["m46_regression_region_a", "m46_regression_region_b", "m46_regression_region_c",
                                    "resnet_classification_region_a", "resnet_classification_region_b",
                                    "resnet_classification_region_c"])
@pytest.mark.parametrize("profile", [None, "demo", "cpu", "full"])
def test_region_configs_resolve_to_valid_registered_recipes(config, profile):
    cfg = load_config(config, profile)
    steps = validate_steps(cfg["data"]["preprocess"])
    assert [s["name"] for s in steps][:2] == ["register", "region"]
    assert steps[1]["region"] == config[-1].upper() and cfg["name"] == config
    # the region is cached at about the network's input side, not far above or below it
    region = REGIONS[steps[1]["region"]]
    side = max(region.width, region.height) * steps[0]["frame_scale"]
    assert 0.7 * cfg["data"]["size"] <= side <= 1.6 * cfg["data"]["size"], (side, cfg["data"]["size"])
