"""The synthetic hand phantom: layout, determinism, resume, anatomy, keypoints, learnability."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from src.cli import main
from src.data.layout import KEYPOINTS_CSV, MASKS_DIR, PHANTOM_MARKER, TEST_CSV, TEST_DIR, TEST_LABELS_CSV, TRAIN_CSV, TRAIN_DIR
from src.data.phantom import FIRST_ID, PhantomParams, generate, make_subject, plan_scene, render, sample_subject
from src.data.phantom.anatomy import build_hand
from src.data.phantom.growth import subject_rng
from src.data.phantom.preview import make_preview
from src.utils.errors import UserError

SMALL = PhantomParams(seed=3, scale=0.1, n_train=6, n_test=3)
KP_COLUMNS = ["id", "part", "width", "height", "mirrored", "middle_finger_tip_x", "middle_finger_tip_y",
              "thumb_tip_x", "thumb_tip_y", "capitate_x", "capitate_y", "true_age"]


def _files(root: Path) -> dict[str, bytes]:
    """Every output file except the marker, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != PHANTOM_MARKER}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "small"
    generate(root, SMALL, workers=1, progress=False)
    return root


def test_kaggle_layout_and_columns(small_set):
    train = pd.read_csv(small_set / TRAIN_CSV)
    assert list(train.columns) == ["id", "boneage", "male"]
    assert train["id"].tolist() == list(range(FIRST_ID, FIRST_ID + SMALL.n_train))
    assert train["male"].dtype == bool and train["boneage"].dtype.kind == "i"
    assert train["boneage"].between(1, 228).all()
    assert (small_set / TEST_CSV).read_text().splitlines()[0] == "Case ID,Sex"
    test = pd.read_csv(small_set / TEST_CSV)
    assert test["Case ID"].tolist() == list(range(FIRST_ID + SMALL.n_train, FIRST_ID + SMALL.n_train + SMALL.n_test))
    assert set(test["Sex"]) <= {"M", "F"}
    labels = pd.read_csv(small_set / TEST_LABELS_CSV)
    assert list(labels.columns) == ["id", "boneage", "male"]
    assert labels["id"].tolist() == test["Case ID"].tolist()
    assert (labels["male"].map({True: "M", False: "F"}) == test["Sex"]).all()
    kp = pd.read_csv(small_set / KEYPOINTS_CSV)
    assert list(kp.columns) == KP_COLUMNS
    assert kp["part"].tolist() == ["train"] * SMALL.n_train + ["test"] * SMALL.n_test
    assert (kp["true_age"] - pd.concat([train, labels])["boneage"].to_numpy()).abs().max() < 60
    for row in kp.itertuples():
        folder = TRAIN_DIR if row.part == "train" else TEST_DIR
        img = cv2.imread(str(small_set / folder / f"{row.id}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(small_set / MASKS_DIR / f"{row.id}.png"), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.ndim == 2 and img.shape == (row.height, row.width)
        assert mask.shape == img.shape and set(np.unique(mask)) <= {0, 255}
    marker = pd.read_json(small_set / PHANTOM_MARKER, typ="series")
    assert marker["status"] == "complete" and marker["seed"] == SMALL.seed and marker["n_train"] == SMALL.n_train


def test_deterministic_across_workers_and_seeds(small_set, tmp_path):
    generate(tmp_path / "again", SMALL, workers=2, progress=False)
    assert _files(tmp_path / "again") == _files(small_set)
    other = PhantomParams(seed=SMALL.seed + 1, scale=SMALL.scale, n_train=SMALL.n_train, n_test=SMALL.n_test)
    generate(tmp_path / "other", other, workers=1, progress=False)
    a, b = _files(small_set), _files(tmp_path / "other")
    assert a[TRAIN_CSV] != b[TRAIN_CSV]
    assert all(a[k] != b[k] for k in a if k.startswith(TRAIN_DIR))


def test_resume_and_already_complete(small_set, tmp_path, capsys):
    root = tmp_path / "resume"
    generate(root, SMALL, workers=1, progress=False)
    (root / PHANTOM_MARKER).unlink()
    (root / TRAIN_DIR / f"{FIRST_ID + 1}.png").unlink()
    (root / MASKS_DIR / f"{FIRST_ID + SMALL.n_train}.png").unlink()
    result = generate(root, SMALL, workers=2, progress=False)
    assert (result.rendered, result.reused) == (2, SMALL.n_train + SMALL.n_test - 2)
    assert _files(root) == _files(small_set)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    argv = ["phantom", "--out", str(root), "--seed", str(SMALL.seed), "--scale", str(SMALL.scale),
            "--n-train", str(SMALL.n_train), "--n-test", str(SMALL.n_test)]
    assert main(argv) == 0  # (no wall-time assertion: timing belongs in a benchmark, not a test)
    assert "already complete" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing rendered or rewritten
    again = generate(root, SMALL, workers=1, progress=False)
    assert again.status == "already complete" and again.rendered == 0


def test_changed_counts_move_images_between_parts(small_set, tmp_path):
    root = tmp_path / "moved"
    generate(root, SMALL, workers=1, progress=False)
    more = PhantomParams(SMALL.seed, SMALL.scale, SMALL.n_train + 1, SMALL.n_test - 1)
    result = generate(root, more, workers=1, progress=False)
    moved = FIRST_ID + SMALL.n_train
    assert result.rendered == 1 and not (root / TEST_DIR / f"{moved}.png").exists()
    assert (root / TRAIN_DIR / f"{moved}.png").read_bytes() == (small_set / TEST_DIR / f"{moved}.png").read_bytes()


def test_a_phantom_without_test_images_has_no_test_part_and_audits(tmp_path):
    from src.data.audit import run_audit

    root = tmp_path / "train-only"
    generate(root, PhantomParams(seed=4, scale=0.06, n_train=12, n_test=2), workers=1, progress=False)
    generate(root, PhantomParams(seed=4, scale=0.06, n_train=12, n_test=0), workers=1, progress=False)
    assert not (root / TEST_CSV).exists() and not (root / TEST_LABELS_CSV).exists()
    result = run_audit(root, quiet=True)
    assert len(result.train) == 12 and result.test is None


def test_refuses_real_data_and_bad_arguments(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / TRAIN_CSV).write_text("id,boneage,male\n1377,180,False\n")
    with pytest.raises(UserError, match="not a phantom"):
        generate(real, SMALL, workers=1, progress=False)
    assert main(["phantom", "--out", str(tmp_path / "x"), "--scale", "0"]) == 2
    assert main(["phantom", "--out", str(tmp_path / "x"), "--n-train", "0", "--n-test", "0"]) == 2


def test_keypoints_inside_hand_mask_and_image():
    for image_id in range(FIRST_ID, FIRST_ID + 40):
        scene = plan_scene(11, image_id, 0.12)
        _, mask = render(scene)
        for name, (x, y) in scene.keypoints_px().items():
            assert 0 <= x < scene.width and 0 <= y < scene.height, (image_id, name)
            assert mask[int(round(y)), int(round(x))] == 255, (image_id, name, scene.mirrored)


def test_keypoints_csv_matches_masks(small_set):
    kp = pd.read_csv(small_set / KEYPOINTS_CSV)
    for row in kp.itertuples():
        mask = cv2.imread(str(small_set / MASKS_DIR / f"{row.id}.png"), cv2.IMREAD_GRAYSCALE)
        for name in ("middle_finger_tip", "thumb_tip", "capitate"):
            x, y = getattr(row, f"{name}_x"), getattr(row, f"{name}_y")
            assert mask[int(round(y)), int(round(x))] == 255, (row.id, name)


def test_age_distribution_and_sex_ratio():
    subjects = [sample_subject(0, FIRST_ID + i) for i in range(2000)]
    labels = np.array([s.label for s in subjects], float)
    ages = np.array([s.true_age for s in subjects])
    male = np.array([s.male for s in subjects])
    assert 110 <= labels.mean() <= 145 and 32 <= labels.std() <= 50
    assert labels.min() >= 1 and labels.max() <= 228 and ages.min() >= 1 and ages.max() <= 228
    assert abs(male.mean() - 0.54) < 0.05
    assert np.median(labels) > labels.mean()  # left-skewed: few infants, most 8-16 years
    assert 4.5 < np.abs(labels - ages).mean() < 7.5  # reader-like label noise (sd ~7 months)


def test_anatomy_follows_maturity():
    def hand(age, male=True):
        return build_hand(make_subject(age, male), subject_rng(0, 1, 1))

    counts = [len(hand(a).carpals) for a in (2, 30, 54, 84, 150)]
    assert counts == sorted(counts) and counts[0] <= 2 and counts[-1] == 8
    assert hand(6).carpals[:2] == ["capitate", "hamate"] and "pisiform" not in hand(120).carpals
    assert len(hand(90, male=False).carpals) > len(hand(90, male=True).carpals) - 1  # girls not later
    assert len(hand(126, male=False).carpals) >= len(hand(126, male=True).carpals)
    tip = [hand(a).keypoints["middle_finger_tip"][1] for a in (6, 60, 120, 168, 216)]
    assert np.all(np.diff(tip) > 0) and tip[-1] > 1.9 * tip[0]  # hand length roughly doubles
    # growth plates: open epiphyses are separate parts; fused bones are one piece
    parts = lambda h: sum(len(b) for b in h.bones)  # noqa: E731
    assert parts(hand(200, male=False)) < parts(hand(150, male=True))


def test_learnable_from_pixels():
    """A linear model on a 32x32 thumbnail + histograms must beat the mean predictor clearly."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats, labels = [], []
    for image_id in range(FIRST_ID, FIRST_ID + 300):
        scene = plan_scene(0, image_id, 0.1)
        img, _ = render(scene)
        im = img.astype(np.float32)
        lo, hi = np.percentile(im, (2, 99.5))
        im = np.clip((im - lo) / max(hi - lo, 1.0), 0, 1).astype(np.float32)
        grad = cv2.magnitude(cv2.Sobel(im, cv2.CV_32F, 1, 0), cv2.Sobel(im, cv2.CV_32F, 0, 1))
        feats.append(np.concatenate([cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA).ravel(),
                                     np.histogram(im, 16, (0, 1))[0] / im.size,
                                     np.histogram(grad, 16, (0, 2))[0] / im.size]))
        labels.append(scene.subject.label)
    x, y = np.array(feats), np.array(labels, float)
    model = make_pipeline(StandardScaler(), Ridge(alpha=300.0)).fit(x[:200], y[:200])
    mae = np.abs(model.predict(x[200:]) - y[200:]).mean()
    baseline = np.abs(y[:200].mean() - y[200:]).mean()
    assert mae < 0.75 * baseline, (mae, baseline)


def test_preview_phantoms_only(tmp_path, isolated_working, capsys):
    assert main(["phantom", "--preview", "--real", str(tmp_path / "absent")]) == 0
    out = capsys.readouterr().out
    path = isolated_working / "phantom-preview.png"
    assert "phantoms only" in out and str(path) in out
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 100


def test_preview_with_real_images(rsna100, tmp_path):
    path, n_real = make_preview(tmp_path / "p.png", rsna100)
    assert n_real == 8 and cv2.imread(str(path)) is not None
