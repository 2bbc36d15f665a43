"""Preprocess new images in memory with a model's own recipe, never into the training cache.

`MemoryImages` runs the recipe's steps (the same functions the cache runs) on each image once
and keeps the result, so several folds and TTA views reuse it. It answers `load(id)` like
`PreprocessCache`, so the engine's `BoneAgeDataset` reads it unchanged: a cached image is a
lossless PNG of the same array, so training and prediction see the same pixels.

A recipe with a `register` step needs keypoints: `detect_keypoints` runs the dataset's detector
on each new image, flags it with the threshold `python -m src register` used, and writes the
keypoint table into a temporary folder, which the `register` step then reads as it would read
`working/<dataset>/registration/keypoints.csv`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.images import read_gray8
from ..data.preprocess import StepContext, run_pipeline, step_inputs, validate_steps

log = logging.getLogger(__name__)
DEFAULT_MIN_CONFIDENCE = 0.5  # `python -m src register`'s default


class MemoryImages:
    """Preprocessed images of one recipe (size + steps), made on first use and kept in memory."""

    def __init__(self, table: pd.DataFrame, size: int, steps: list[dict], work_dir: Path | None = None):
        self.steps = validate_steps(steps)
        self.size = int(size)
        self.work_dir = work_dir
        self.inputs = step_inputs(self.steps, work_dir) if work_dir is not None else {}
        self.records = {str(r["id"]): r for r in table.to_dict("records")}
        self._done: dict[str, np.ndarray] = {}

    def load(self, image_id: str) -> np.ndarray:
        image = self._done.get(image_id)
        if image is None:
            record = self.records[image_id]
            ctx = StepContext(size=self.size, record=record, work_dir=self.work_dir, inputs=self.inputs)
            image = run_pipeline(read_gray8(record["path"]).pixels, self.steps, ctx)
            self._done[image_id] = image
        return image


def recipe_key(cfg: dict) -> str:
    """Models whose images are preprocessed alike share one MemoryImages."""
    import json

    return json.dumps([int(cfg["data"]["size"]), cfg["data"]["preprocess"]], sort_keys=True)


def registration_detector(registration: dict):
    """The detector the models' registration used (`registration.json`'s kind: the heuristic,
    on the learned mask if it used one, or the learned detector from its weights), with the
    interface `python -m src register` runs: version and results(jobs, workers)."""
    from ..commands.register import HeuristicRun, load_detector
    from ..utils.errors import UserError

    def weights(key: str, what: str) -> Path:
        path = registration.get(key)
        if not path or not Path(path).is_file():
            raise UserError(f"the models were trained on registered crops made with a learned {what}, whose weights "
                            f"({path or 'not named in registration.json'}) are missing")
        return Path(path)

    if registration.get("kind") == "learned":
        from ..registration.detectors import LearnedRun
        from ..registration.learned_keypoints import LearnedKeypointDetector

        path = weights("detector_weights", "keypoint detector")
        return LearnedRun(LearnedKeypointDetector.load(path), {}, path, {})
    detect, version = load_detector()
    if registration.get("mask") == "learned":
        from ..registration.learned_mask import LearnedHandMask

        path = weights("mask_weights", "hand mask")
        return HeuristicRun(detect, version, path, LearnedHandMask.load(path))
    return HeuristicRun(detect, version)


def detect_keypoints(table: pd.DataFrame, work_dir: Path, registration: dict) -> pd.DataFrame:
    """Detect the registration keypoints of every image of `table` (id, path) with the detector
    the models' registration used, flag them as `python -m src register` does, and write
    `work_dir/registration/keypoints.csv` for the `register` step. Returns id,
    registration_confidence, registration_method."""
    from ..commands.register import flag_reason
    from ..registration.keypoint_io import write_keypoint_table
    from ..registration.types import KEYPOINT_COLUMNS

    detector = registration_detector(registration)
    trained_with = registration.get("detector")
    if trained_with and trained_with != detector.version:
        log.warning("the models were trained on keypoints of detector %s, this code has %s: registered crops "
                    "may differ from training", trained_with, detector.version)
    min_confidence = float(registration.get("min_confidence", DEFAULT_MIN_CONFIDENCE))
    jobs = list(zip(table["id"].astype(str), table["path"].astype(str)))
    rows = []
    with detector.results(jobs, 1) as detections:
        for detection in detections:
            row = {c: detection.get(c) for c in KEYPOINT_COLUMNS}
            if flag_reason(detection, min_confidence):
                row["method"] = "fallback"
            rows.append(row)
    keypoints = pd.DataFrame(rows, columns=KEYPOINT_COLUMNS)
    write_keypoint_table(keypoints, Path(work_dir) / "registration" / "keypoints.csv")
    return pd.DataFrame({"id": keypoints["id"], "registration_confidence": keypoints["confidence"].astype(float),
                         "registration_method": keypoints["method"]})
