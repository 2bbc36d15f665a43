"""Registration keypoints: the classical hand mask, the heuristic three-point detector, and the QA
scores and pictures that judge them (on phantoms with known truth, and on the real 100 px hands
in ../shared when present)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
import pytest

from src.data.layout import MASKS_DIR, DatasetPaths
from src.registration.heuristic import detect_keypoints
from src.registration.mask import hand_mask, normalise_contrast
from src.registration.qa import COLOURS, hand_length, keypoint_grid, point_errors, score_keypoints
from src.registration.types import POINTS, HandKeypoints

# 40 phantom hands at 0.1 scale (about 200 x 260 px); seed 9 has 8 mirrored films among them.
PHANTOM = dict(seed=9, scale=0.1, n_train=40, n_test=0)


def _phantom_truth(root) -> pd.DataFrame:
    """The phantom's ground-truth keypoints in the canonical columns."""
    kp = pd.read_csv(DatasetPaths(root).keypoints_csv, dtype={"id": str})
    return pd.DataFrame({
        "id": kp["id"], "middle_x": kp["middle_finger_tip_x"], "middle_y": kp["middle_finger_tip_y"],
        "thumb_x": kp["thumb_tip_x"], "thumb_y": kp["thumb_tip_y"],
        "capitate_x": kp["capitate_x"], "capitate_y": kp["capitate_y"],
        "mirrored": kp["mirrored"].astype(str).str.lower() == "true", "width": kp["width"]})


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """(root, truth, {id: image}) for a small phantom generated once for this module."""
    from src.data.phantom import PhantomParams, generate

    root = tmp_path_factory.mktemp("keypoint-phantom") / "phantom"
    generate(root, PhantomParams(**PHANTOM), workers=1, progress=False)
    truth = _phantom_truth(root)
    images = {i: cv2.imread(str(DatasetPaths(root).train_dir / f"{i}.png"), cv2.IMREAD_GRAYSCALE) for i in truth["id"]}
    return root, truth, images


@pytest.fixture(scope="module")
def phantom_pred(phantom) -> pd.DataFrame:
    _, truth, images = phantom
    return pd.DataFrame([detect_keypoints(images[i]).row(i) for i in truth["id"]])


def test_heuristic_keypoints_within_tolerance_on_phantom(phantom, phantom_pred):
    _, truth, _ = phantom
    scores = score_keypoints(phantom_pred, truth)
    assert list(scores.index) == list(POINTS)
    assert (scores["n"] == len(truth)).all()
    for point in POINTS:
        assert scores.loc[point, "within_10pct"] >= 0.9, scores
        assert scores.loc[point, "median_frac"] < 0.07, scores
    assert phantom_pred["method"].eq("heuristic").all()
    assert phantom_pred["confidence"].between(0, 1).all()


def test_mirrored_phantoms_are_detected_as_mirrored(phantom, phantom_pred):
    _, truth, images = phantom
    joined = phantom_pred.merge(truth[["id", "mirrored", "width"]], on="id", suffixes=("", "_true"))
    assert joined["mirrored_true"].sum() >= 5  # the seed gives mirrored films to check
    assert (joined["mirrored"] == joined["mirrored_true"]).mean() >= 0.95
    # every film flipped left-right: the flag turns, and the points follow the flip
    flipped_truth = truth.copy()
    for point in POINTS:
        flipped_truth[f"{point}_x"] = truth["width"] - 1 - truth[f"{point}_x"]
    flipped = pd.DataFrame([detect_keypoints(np.ascontiguousarray(images[i][:, ::-1])).row(i) for i in truth["id"]])
    flipped = flipped.merge(truth[["id", "mirrored"]], on="id", suffixes=("", "_original"))
    assert (flipped["mirrored"] != flipped["mirrored_original"]).mean() >= 0.95
    assert (score_keypoints(flipped, flipped_truth)["within_10pct"] >= 0.9).all()


def test_hand_mask_covers_the_phantom_hand(phantom):
    root, truth, images = phantom
    ious = []
    for image_id in truth["id"]:
        gt = cv2.imread(str(root / MASKS_DIR / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE) > 127
        mask = hand_mask(images[image_id])
        assert mask.shape == gt.shape and mask.dtype == bool
        ious.append((mask & gt).sum() / max((mask | gt).sum(), 1))
    ious = np.array(ious)
    assert np.median(ious) >= 0.9, ious
    assert (ious >= 0.8).mean() >= 0.9, ious


def test_normalise_contrast_blanks_the_background(phantom):
    _, truth, images = phantom
    image = images[truth["id"].iloc[0]]
    mask = hand_mask(image)
    out = normalise_contrast(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert not out[~mask].any()
    assert np.percentile(out[mask], 99) - np.percentile(out[mask], 1) > 150  # stretched to the full range
    with pytest.raises(ValueError):
        normalise_contrast(image, mask[:-1])


@pytest.mark.parametrize("image", [
    np.zeros((100, 100), np.uint8),
    np.full((300, 200), 128, np.uint8),
    np.random.default_rng(0).integers(0, 256, (120, 90)).astype(np.uint8),
    np.zeros((1, 1), np.uint8),
], ids=["black", "flat", "noise", "one-pixel"])
def test_detector_answers_with_low_confidence_on_images_without_a_hand(image):
    keypoints = detect_keypoints(image)
    assert isinstance(keypoints, HandKeypoints)
    assert keypoints.confidence < 0.1
    h, w = image.shape
    for point in POINTS:
        x, y = getattr(keypoints, point)
        assert 0 <= x <= w - 1 and 0 <= y <= h - 1


def test_confidence_is_higher_on_hands_than_on_noise(phantom_pred):
    noise = np.random.default_rng(1).integers(0, 256, (256, 200)).astype(np.uint8)
    assert phantom_pred["confidence"].median() > 0.5
    assert detect_keypoints(noise).confidence < phantom_pred["confidence"].quantile(0.1)


def test_score_keypoints_matches_a_hand_computation():
    truth = pd.DataFrame({
        "id": ["1", "2", "3"],
        "middle_x": [0.0, 10.0, 20.0], "middle_y": [0.0, 10.0, 20.0],
        "thumb_x": [50.0, 50.0, 50.0], "thumb_y": [50.0, 50.0, 50.0],
        "capitate_x": [0.0, 10.0, 20.0], "capitate_y": [90.0, 60.0, 220.0],
        "wrist_x": [0.0, 10.0, np.nan], "wrist_y": [100.0, 60.0, np.nan],
    })
    pred = pd.DataFrame({
        "id": [1, 2, 3, 4],  # ints: the join is on ids as strings; id 4 has no truth
        "middle_x": [3.0, 10.0, 26.0, 0.0], "middle_y": [4.0, 10.0, 28.0, 0.0],
        "thumb_x": [50.0, 80.0, 50.0, 0.0], "thumb_y": [50.0, 90.0, 62.0, 0.0],
    })  # no capitate column: only middle and thumb are scored
    # hand lengths: 100 and 50 from the wrist; the third has no wrist: 1.107 * 200 from the capitate
    lengths = hand_length(truth)
    assert lengths.tolist() == pytest.approx([100.0, 50.0, 221.4])
    scores = score_keypoints(pred, truth)
    assert list(scores.index) == ["middle", "thumb"]
    middle_px = np.array([5.0, 0.0, 10.0])
    middle_frac = middle_px / np.array([100.0, 50.0, 221.4])
    assert scores.loc["middle", "n"] == 3
    assert scores.loc["middle", "median_px"] == pytest.approx(5.0)
    assert scores.loc["middle", "p90_px"] == pytest.approx(9.0)  # linear: 5 + 0.8 * (10 - 5)
    assert scores.loc["middle", "median_frac"] == pytest.approx(np.median(middle_frac))
    assert scores.loc["middle", "p90_frac"] == pytest.approx(np.quantile(middle_frac, 0.9))
    assert scores.loc["middle", "within_10pct"] == pytest.approx(1.0)
    # thumb errors 0, 50 (1.0 of the hand) and 12 (0.054): two of three within 10%
    assert scores.loc["thumb", "median_px"] == pytest.approx(12.0)
    assert scores.loc["thumb", "p90_px"] == pytest.approx(12.0 + 0.8 * 38.0)
    assert scores.loc["thumb", "within_10pct"] == pytest.approx(2 / 3)
    errors = point_errors(pred, truth)
    assert sorted(errors["id"]) == ["1", "2", "3"]


def test_keypoint_grid_writes_a_png(tmp_path, phantom, phantom_pred):
    _, truth, images = phantom
    ids = list(truth["id"][:5])
    keypoints = [HandKeypoints(**{p: (r[f"{p}_x"], r[f"{p}_y"]) for p in POINTS}, confidence=r["confidence"],
                               mirrored=r["mirrored"], method=r["method"])
                 for _, r in phantom_pred.set_index("id").loc[ids].reset_index().iterrows()]
    path = keypoint_grid([images[i] for i in ids], keypoints, [f"{i} {k.confidence:.2f}" for i, k in zip(ids, keypoints)],
                         tmp_path / "grid" / "keypoints.png", columns=3, tile_height=128)
    grid = cv2.imread(str(path))
    assert grid is not None and grid.shape[0] > 2 * 128 and grid.shape[1] >= 3 * 90
    assert list(path.parent.iterdir()) == [path]  # written atomically: no temporary file left
    for colour in COLOURS.values():  # each point drawn in its own colour
        assert np.all(grid == np.array(colour, np.uint8), axis=2).any()
    with pytest.raises(ValueError):
        keypoint_grid([images[ids[0]]], [], ["x"], tmp_path / "bad.png")


def _real_truth(keypoints_csv) -> pd.DataFrame:
    kp = pd.read_csv(keypoints_csv, dtype={"id": str})
    return pd.DataFrame({
        "id": kp["id"], "middle_x": kp["middle_finger4_x"], "middle_y": kp["middle_finger4_y"],
        "thumb_x": kp["thumb4_x"], "thumb_y": kp["thumb4_y"], "wrist_x": kp["wrist_x"], "wrist_y": kp["wrist_y"]})


def test_heuristic_on_real_hands(rsna100):
    keypoints_csv = rsna100 / "keypoints.csv"
    if not keypoints_csv.is_file():
        pytest.skip(f"{keypoints_csv} is absent")
    truth = _real_truth(keypoints_csv)
    train_dir = DatasetPaths(rsna100).train_dir
    rows = []
    for image_id in truth["id"]:
        image = cv2.imread(str(train_dir / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
        rows.append(detect_keypoints(image).row(image_id))
    scores = score_keypoints(pd.DataFrame(rows), truth, points=("middle", "thumb"))
    assert scores.loc["middle", "n"] == len(truth) and not math.isnan(scores.loc["middle", "median_frac"])
    assert scores.loc["middle", "within_10pct"] >= 0.9, scores
    assert scores.loc["thumb", "within_10pct"] >= 0.9, scores
