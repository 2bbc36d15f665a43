"""The learned models behind `python -m src register`: the keypoint detector (--detector learned)
and the hand mask (--mask learned), trained or reused in working/<dataset>/registration/, run
resumably, and the predictions its QA may score.

Keypoint detector (`registration/detector/`): from a training table (--keypoints), or by the
paper's pseudo-label loop from the confident heuristic detections, `rounds` rounds in
`round<r>/` (each `detector.pt` reused under the same config and labels fingerprint, its
training rows in `labels.csv`); the result is `detector.pt` beside `detector.json`, which names
what it was made from, so a rerun with the same table and config loads it and trains nothing.
Or an already trained detector (--detector-weights). Its detections' version is
`learned-<fingerprint>-<weights sha256[:8]>`, so another model redoes them.

QA never scores the detector on an image it trained on: the scored images among its training
rows are predicted out of fold (`cv/fold<k>/`: detectors trained on the same rows less that
fold); an external detector's scored training images (by id, unless its checkpoint names another
dataset) are left out of the scores. In pseudo-label mode the folds drop the scored images from the
last round's labels; other images' pseudo-labels may still come from an earlier round's detector
that trained on a scored image's heuristic label (never on its ground truth).

Hand mask (`registration/mask/`): the paper's positive mining from the classical masks of the
dataset's images that pass `mask_quality` (`round<r>/mask.pt`, result `mask.pt` beside
`mask.json`). The heuristic then reads the keypoints from the learned mask of each image where
that mask passes the same check, and from the classical mask elsewhere.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from ..utils.errors import DataError
from ..utils.io import file_sha256, write_json
from .learned_keypoints import (COORDS, DetectorConfig, LearnedKeypointDetector, capitate_proxy,
                                cross_validated_predictions, pseudo_label_loop)
from .learned_mask import LearnedHandMask, MaskConfig, mask_quality, positive_mining_loop
from .learned_net import LazyImages, fingerprint
from .resumable import tracked
from .types import KEYPOINT_COLUMNS

log = logging.getLogger("register")

DETECTOR_DIR, MASK_DIR = "detector", "mask"
BATCH = 64  # images the learned detector reads and predicts at a time
MASK_QA_IMAGES = 200  # at most this many ground-truth masks are scored


def dataset_images(images: pd.DataFrame) -> LazyImages:
    """The audited images (id, path) as the learned models' id -> pixels mapping, read on demand."""
    return LazyImages(dict(zip(images["id"].astype(str), images["path"].astype(str))))


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------ keypoint detector


def training_table(path: str | Path, images: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A keypoint CSV or COCO JSON (keypoint_io) as training labels for this dataset's images:
    rows of other images are dropped (said in the log); a missing capitate is filled from wrist
    and MCP (`capitate_proxy`) where the table has those, as the real 100 px set's."""
    from .keypoint_io import read_keypoint_table

    table = read_keypoint_table(path)
    outside = ~table["id"].astype(str).isin(set(images))
    if outside.any():
        log.warning("%s: %d rows name no image of this dataset and are left out (first: %s)", path,
                    int(outside.sum()), table.loc[outside, "id"].astype(str).tolist()[:5])
        table = table[~outside].reset_index(drop=True)
    if {"capitate_x", "capitate_y"} - set(table.columns) or table[["capitate_x", "capitate_y"]].isna().any().any():
        if {"wrist_x", "wrist_y", "mcp_x", "mcp_y"} <= set(table.columns):
            log.info("%s: capitate filled in from wrist and MCP where absent (capitate_proxy)", path)
            table = capitate_proxy(table)
    if table.empty:
        raise DataError(f"{path}: no row names an image of this dataset")
    return table


@dataclass
class LearnedRun:
    """A learned detector ready to run: what `register` detects with and QA scores."""

    detector: LearnedKeypointDetector
    images: Mapping[str, np.ndarray]
    weights: Path
    info: dict
    labels: pd.DataFrame | None = None  # the rows it trained on (None: external weights)
    cv_dir: Path | None = None
    folds: int = 5
    kind: str = field(default="learned", init=False)

    @functools.cached_property
    def version(self) -> str:
        return f"learned-{self.detector.fingerprint or 'unknown'}-{file_sha256(self.weights)[:8]}"

    def results(self, jobs: list[tuple[str, str]], workers: int = 1):
        """A block yielding one detections.csv row per job (id, path), under a progress bar."""
        return tracked(self._rows(jobs), len(jobs), "register (learned)")

    def _rows(self, jobs: list[tuple[str, str]]) -> Iterator[dict]:
        from ..data.images import read_gray8

        for start in range(0, len(jobs), BATCH):
            rows, read = {}, {}
            for image_id, path in jobs[start:start + BATCH]:
                try:
                    read[image_id] = read_gray8(path).pixels
                except Exception as exc:  # recorded per image, listed in flagged.csv
                    rows[image_id] = _failed(image_id, exc)
            try:
                found = dict(zip(read, self.detector.detect_many(list(read.values()))))
            except Exception:  # one bad film spoils a batch: detect one at a time to tell which
                found = {}
                for image_id, pixels in read.items():
                    try:
                        found[image_id] = self.detector.detect(pixels)
                    except Exception as exc:
                        rows[image_id] = _failed(image_id, exc)
            for image_id, keypoints in found.items():
                rows[image_id] = {**keypoints.row(image_id), "error": ""}
            for image_id, _ in jobs[start:start + BATCH]:
                yield {**rows[image_id], "detector": self.version, "mask": ""}

    def honest_predictions(self, predicted: pd.DataFrame, scored: list[str]) -> tuple[pd.DataFrame, dict]:
        """`predicted` with the scored images the detector trained on replaced by out-of-fold
        predictions (or, without its training rows, left out), and what was done."""
        trained = set(self.detector.trained_ids)
        inside = sorted(i for i in scored if i in trained)
        info = {"detector": "learned", "version": self.version, "scored": len(scored),
                "never_trained_on": len(scored) - len(inside), "out_of_fold": 0, "left_out": 0,
                "cross_validated": False}
        if not inside:
            info["note"] = ("no scored image is among the detector's training images" if self.labels is not None
                            or self.detector.dataset else "no scored image id is among the detector's training "
                            "ids (the dataset it trained on is unknown)")
            return predicted, info
        folds = min(self.folds, len(inside))
        if self.labels is None or folds < 2:
            why = "no training table to cross-validate with" if self.labels is None else "too few to cross-validate"
            info.update(left_out=len(inside), note=f"the {len(inside)} scored images the detector trained on are left "
                                                   f"out of the scores ({why})")
            return predicted[~predicted["id"].astype(str).isin(inside)], info
        log.info("qa: %d scored images are training images of the detector: %d-fold cross-validation",
                 len(inside), folds)
        oof = cross_validated_predictions(self.images, self.labels, folds=folds, cfg=self.detector.cfg,
                                          work_dir=self.cv_dir, held_out=inside)
        rest = predicted[~predicted["id"].astype(str).isin(inside)]
        table = pd.concat([rest, oof[KEYPOINT_COLUMNS]], ignore_index=True)
        info.update(out_of_fold=len(oof), folds=folds, cross_validated=True,
                    note=f"the {len(oof)} scored training images are predicted by {folds} detectors trained "
                         f"on the same rows less their fold ({self.cv_dir})")
        return table, info


def _failed(image_id: str, exc: Exception) -> dict:
    return {"id": image_id, "confidence": 0.0, "mirrored": False, "method": "fallback",
            "error": f"{type(exc).__name__}: {exc}"[:300]}


def learned_run(images: Mapping[str, np.ndarray], work_dir: Path, cfg: DetectorConfig, *, dataset: str = "",
                table: pd.DataFrame | None = None, seeds: pd.DataFrame | None = None, rounds: int = 2,
                min_confidence: float = 0.5, weights: str | Path | None = None, folds: int = 5) -> LearnedRun:
    """The learned detector: loaded from `weights`, or trained (or reused) in `work_dir` on
    `table` (a training table: rows without confidence count as certain) or, by the pseudo-label
    loop, from `seeds` (the heuristic's detections with their confidence). `dataset` names the
    images' dataset (saved with the weights: their training ids refer to it)."""
    if weights is not None:
        detector = LearnedKeypointDetector.load(weights)
        info = {"source": "weights", "weights": str(weights), "fingerprint": detector.fingerprint,
                "trained_on": len(detector.trained_ids), "trained_on_dataset": detector.dataset or "unknown",
                "config": asdict(detector.cfg)}
        if detector.dataset and dataset and detector.dataset != dataset:
            detector.trained_ids = []  # ids of another dataset's images: none of these
        return LearnedRun(detector, images, Path(weights), info, folds=folds)
    initial = table if table is not None else seeds
    if initial is None:
        raise ValueError("a learned detector needs weights, a training table or seeds")
    source = "table" if table is not None else "pseudo-labels"
    initial = initial.assign(id=initial["id"].astype(str))
    if "confidence" in initial.columns:  # what the loop starts from: the confident rows
        initial = initial[initial["confidence"].fillna(0) >= min_confidence]
    shown = ["id"] + [c for c in COORDS if c in initial.columns]
    key = fingerprint(cfg, initial[shown].round(2).to_csv(index=False), f"rounds={rounds}",
                      f"min_confidence={min_confidence:g}" if rounds > 1 else "")
    manifest, final = work_dir / "detector.json", work_dir / "detector.pt"
    done = _read_json(manifest)
    if done.get("key") == key and final.is_file():
        detector = LearnedKeypointDetector.load(final)
        log.info("detector: %s was made from the same %s and config: reused", final, source)
        info = done["info"]
    else:
        log.info("detector: training on %s (%d rounds) in %s", source, rounds, work_dir)
        detector, _, history = pseudo_label_loop(images, initial, rounds=rounds, min_confidence=min_confidence,
                                                 cfg=cfg, work_dir=work_dir, predict_all=False)
        detector.dataset = dataset
        detector.save(final)
        info = {"source": source, "rounds": rounds, "min_confidence": min_confidence, "history": history,
                "fingerprint": detector.fingerprint, "trained_on": len(detector.trained_ids),
                "config": asdict(cfg), "weights": str(final)}
        write_json({"key": key, "info": info}, manifest)
    labels_csv = work_dir / f"round{rounds - 1}" / "labels.csv"
    labels = pd.read_csv(labels_csv, dtype={"id": str}) if labels_csv.is_file() else None
    return LearnedRun(detector, images, final, info, labels=labels, cv_dir=work_dir / "cv", folds=folds)


# ------------------------------------------------------------------------------ hand mask


def learned_mask(images: Mapping[str, np.ndarray], work_dir: Path, cfg: MaskConfig, rounds: int,
                 code_version: str) -> tuple[LearnedHandMask, Path, dict]:
    """The learned hand mask, trained (or reused) by positive mining from the classical masks of
    `images` that pass `mask_quality`; `code_version` (the heuristic's) keys the classical masks."""
    key = fingerprint(cfg, ",".join(sorted(images)), f"rounds={rounds}", code_version)
    manifest, final = work_dir / "mask.json", work_dir / "mask.pt"
    done = _read_json(manifest)
    if done.get("key") == key and final.is_file():
        log.info("hand mask: %s was made from the same images and config: reused", final)
        return LearnedHandMask.load(final), final, done["info"]
    log.info("hand mask: positive mining from the classical masks of %d images (%d rounds) in %s", len(images),
             rounds, work_dir)
    model, accepted, history = positive_mining_loop(images, None, rounds=rounds, cfg=cfg, work_dir=work_dir)
    model.save(final)
    info = {"source": "positive mining from classical masks", "rounds": rounds, "history": history,
            "accepted": len(accepted), "trained_on": len(model.trained_ids), "fingerprint": model.fingerprint,
            "config": asdict(cfg), "weights": str(final)}
    write_json({"key": key, "info": info}, manifest)
    return model, final, info


def mask_version(weights: Path, model: LearnedHandMask) -> str:
    return f"mask-{model.fingerprint or 'unknown'}-{file_sha256(weights)[:8]}"


@functools.lru_cache(maxsize=2)
def _mask_model(weights: str) -> LearnedHandMask:
    """A saved mask model, once per process; a pool worker runs torch on one thread."""
    import multiprocessing

    import torch

    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)
    return LearnedHandMask.load(weights)


def checked_learned_mask(image: np.ndarray, weights: str) -> np.ndarray | None:
    """The learned mask of `image` when it passes `mask_quality`, else None (use the classical one)."""
    mask = _mask_model(str(weights)).predict_mask(image)
    return mask if mask_quality(image, mask) else None


def mask_qa(model: LearnedHandMask, images: Mapping[str, np.ndarray], masks_dir: Path,
            limit: int = MASK_QA_IMAGES) -> tuple[pd.DataFrame, dict]:
    """IoU of the learned and the classical mask against the ground-truth masks (`<id>.png` in
    `masks_dir`, at most `limit` of them, by id), marking the images whose (classical) mask the
    learned one trained on: its ground truth never was."""
    from .learned_mask import read_masks
    from .mask import hand_mask

    ids = sorted(i for i in images if (masks_dir / f"{i}.png").is_file())[:limit]
    truth = read_masks(masks_dir, ids)
    trained = set(model.trained_ids)
    rows = []
    for image_id in ids:
        image = images[image_id]
        gt = truth[image_id]
        learned, classical = model.predict_mask(image), hand_mask(image)
        rows.append({"id": image_id, "iou_learned": _iou(learned, gt), "iou_classical": _iou(classical, gt),
                     "learned_passes_check": bool(mask_quality(image, learned)), "trained_on": image_id in trained})
    table = pd.DataFrame(rows, columns=["id", "iou_learned", "iou_classical", "learned_passes_check", "trained_on"])
    summary = {"images": len(table)}
    for name, part in (("all", table), ("trained_on", table[table["trained_on"]]),
                       ("not_trained_on", table[~table["trained_on"]])):
        summary[name] = {"n": len(part), **{c: round(float(part[c].mean()), 4) if len(part) else None
                                            for c in ("iou_learned", "iou_classical")}}
    return table, summary


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
