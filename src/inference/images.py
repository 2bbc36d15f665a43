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


def detect_keypoints(table: pd.DataFrame, work_dir: Path, registration: dict) -> pd.DataFrame:
    """Detect the registration keypoints of every image of `table` (id, path), flag them as
    `python -m src register` does, and write `work_dir/registration/keypoints.csv` for the
    `register` step. Returns id, registration_confidence, registration_method."""
    from ..commands.register import _detect_one, flag_reason, load_detector
    from ..registration.keypoint_io import write_keypoint_table
    from ..registration.types import KEYPOINT_COLUMNS

    _, version = load_detector()
    trained_with = registration.get("detector")
    if trained_with and trained_with != version:
        log.warning("the models were trained on keypoints of detector %s, this code has %s: registered crops "
                    "may differ from training", trained_with, version)
    min_confidence = float(registration.get("min_confidence", DEFAULT_MIN_CONFIDENCE))
    rows = []
    for image_id, path in zip(table["id"].astype(str), table["path"].astype(str)):
        detection = _detect_one((image_id, path))
        row = {c: detection.get(c) for c in KEYPOINT_COLUMNS}
        if flag_reason(detection, min_confidence):
            row["method"] = "fallback"
        rows.append(row)
    keypoints = pd.DataFrame(rows, columns=KEYPOINT_COLUMNS)
    write_keypoint_table(keypoints, Path(work_dir) / "registration" / "keypoints.csv")
    return pd.DataFrame({"id": keypoints["id"], "registration_confidence": keypoints["confidence"].astype(float),
                         "registration_method": keypoints["method"]})
