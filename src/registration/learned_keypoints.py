"""The learned keypoint detector: same interface as the heuristic one, trained on any keypoint table.

A timm encoder (features_only, 1 input channel) feeds a small top-down decoder (`DenseNet`) that
outputs one heatmap per point (middle tip, thumb tip, capitate) at the encoder's stride-4
resolution. A heatmap is read by soft-argmax (the probability-weighted mean of its softmax), so
points are sub-pixel although the map is coarse, and training fits the coordinates directly (L1)
plus a cross-entropy pulling each map towards a Gaussian of `sigma` cells, which keeps maps
unimodal and makes their sharpness a confidence. The input is the image letterboxed (aspect kept,
centred, 0-padded) into a `side` x `side` square; points go back to ORIGINAL pixels.

`mirrored` is not learned: the three points are distinct (a horizontal flip swaps none), and a
mirrored film is one whose thumb lies on the other side of the capitate->middle axis. With x right
and y down, cross(middle - capitate, thumb - capitate) > 0 is a normal RSNA left hand (thumb to the
right of the middle finger) and < 0 a mirrored one. So flipped training images need no label.

Confidence: per point, the softmax mass within 2 sigma of its soft-argmax, divided by what a
perfect Gaussian of that sigma holds there (0.865), clipped to 1 (sharpness), times the agreement
of the film's and its mirror image's readings (flip TTA, on by default); the image's confidence
is the least of its points', and 0 when middle tip and capitate are implausibly close.

Training reuses the engine: `train_one_epoch` (autocast via Precision, grad clipping, progress),
timm's AdamW and cosine schedule, atomic full-state checkpoints resumed only under the same
fingerprint (config, labels, initial weights) and seeding as in the trainer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from ..utils.errors import DataError
from ..utils.io import write_csv
from .learned_net import (DenseNet, EpochDataset, LearnedModel, NetConfig, as_gray, fingerprint, letterbox, to_tensor,
                          train_model)
from .types import KEYPOINT_COLUMNS, POINTS, HandKeypoints

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "boneage-keypoint-detector"
COORDS = [f"{p}_{a}" for p in POINTS for a in "xy"]
_GAUSS_MASS_2SIGMA = 1.0 - np.exp(-2.0)  # share of a 2-D Gaussian within 2 sigma of its centre


@dataclass
class DetectorConfig(NetConfig):
    """NetConfig plus the heatmap target: a Gaussian of `sigma` cells, weighted `heat_weight`, and
    `max_train`: train on at most this many labelled rows (a seeded sample; None: all of them),
    which keeps a pseudo-label loop over thousands of films within a CPU's reach."""

    sigma: float = 1.5
    heat_weight: float = 1.0
    max_train: int | None = None


def is_mirrored(middle, thumb, capitate) -> bool:
    """True when the thumb lies left of the capitate->middle axis (see the module docstring)."""
    ax, ay = middle[0] - capitate[0], middle[1] - capitate[1]
    bx, by = thumb[0] - capitate[0], thumb[1] - capitate[1]
    return ax * by - ay * bx < 0


# ------------------------------------------------------------------------------ heatmaps


def input_to_cells(points: np.ndarray, stride: int) -> np.ndarray:
    """Input pixels -> heatmap cells (cell j's centre is input pixel (j + 0.5) * stride - 0.5)."""
    return (np.asarray(points, dtype=np.float64) + 0.5) / stride - 0.5


def cells_to_input(points: np.ndarray, stride: int) -> np.ndarray:
    return (np.asarray(points, dtype=np.float64) + 0.5) * stride - 0.5


def gaussian_maps(points: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """(..., 2) points in cells -> (..., height, width) Gaussians, each summing to 1: the training
    target. Near the border the cut Gaussian's mean moves inwards; training also fits the
    soft-argmax itself (the L1 term), so the detector learns to place such points right."""
    xs = torch.arange(width, dtype=torch.float32, device=points.device)
    ys = torch.arange(height, dtype=torch.float32, device=points.device)
    gx = torch.exp(-(xs - points[..., 0, None]) ** 2 / (2 * sigma ** 2))
    gy = torch.exp(-(ys - points[..., 1, None]) ** 2 / (2 * sigma ** 2))
    maps = gy[..., :, None] * gx[..., None, :]
    return maps / maps.flatten(-2).sum(-1)[..., None, None].clamp(min=1e-12)


def encode_heatmap(points: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """(K, 2) points in cells -> (K, size, size) target maps (see gaussian_maps)."""
    pts = torch.as_tensor(np.asarray(points, dtype=np.float32).reshape(-1, 2))
    return gaussian_maps(pts, size, size, sigma).numpy()


def decode_heatmap(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) logits -> soft-argmax points (N, K, 2) in cells (x, y), and the softmax maps."""
    n, k, h, w = logits.shape
    prob = logits.float().flatten(2).softmax(-1).view(n, k, h, w)
    xs = torch.arange(w, dtype=prob.dtype, device=prob.device)
    ys = torch.arange(h, dtype=prob.dtype, device=prob.device)
    x = (prob.sum(2) * xs).sum(-1)
    y = (prob.sum(3) * ys).sum(-1)
    return torch.stack([x, y], dim=-1), prob


def point_confidence(prob: torch.Tensor, points: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, K) share of each map's mass within 2 sigma of its point, relative to a perfect Gaussian's."""
    h, w = prob.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=prob.device), torch.arange(w, device=prob.device), indexing="ij")
    d2 = (xs[None, None] - points[..., 0, None, None]) ** 2 + (ys[None, None] - points[..., 1, None, None]) ** 2
    mass = (prob * (d2 <= (2 * sigma) ** 2)).flatten(2).sum(-1)
    return (mass / _GAUSS_MASS_2SIGMA).clamp(max=1.0)


class HeatmapLoss:
    """The engine's `codec`: L1 on soft-argmax cells + heat_weight x CE towards the Gaussian target.
    Targets are (N, K, 3): x, y in cells and a visibility weight (0 for points pushed outside)."""

    def __init__(self, sigma: float, heat_weight: float):
        self.sigma, self.heat_weight = sigma, heat_weight

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        points, _ = decode_heatmap(logits)
        visible = target[..., 2]
        l1 = ((points - target[..., :2]).abs().sum(-1) * visible).sum() / visible.sum().clamp(min=1)
        gauss = gaussian_maps(target[..., :2], logits.shape[-2], logits.shape[-1], self.sigma).flatten(2)
        ce = -(gauss * logits.float().flatten(2).log_softmax(-1)).sum(-1)
        ce = (ce * visible).sum() / visible.sum().clamp(min=1)
        return l1 + self.heat_weight * ce


# ------------------------------------------------------------------------------ data


def labelled_rows(table: pd.DataFrame, images: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Rows with all three points, every one with an image (a missing image is a DataError)."""
    missing = [c for c in COORDS if c not in table.columns]
    if missing:
        raise DataError(f"keypoint table lacks {missing}: the detector needs {list(POINTS)} "
                        f"(for the real 100 px set, fill capitate with `capitate_proxy`)")
    rows = table[table[COORDS].notna().all(axis=1)].copy()
    rows["id"] = rows["id"].astype(str)
    absent = [i for i in rows["id"] if i not in images]
    if absent:
        raise DataError(f"keypoint table row(s) with id {absent[:10]} have no image")
    return rows.reset_index(drop=True)


class KeypointDataset(EpochDataset):
    """Letterboxed images with their points (input pixels); augmented when `augment`."""

    def __init__(self, images: list[np.ndarray], points: list[np.ndarray], cfg: DetectorConfig, stride: int,
                 augment: bool):
        super().__init__(images, cfg, augment, keypoints=True)
        self.points, self.stride = points, stride

    def __getitem__(self, index: int) -> dict:
        image, points = self.images[index], self.points[index]
        out = self.augmented(index, keypoints=points.astype(np.float32))
        if out is not None:
            image, points = out["image"], np.asarray(out["keypoints"], dtype=np.float64)[:, :2]
        visible = ((points >= 0) & (points <= self.cfg.side - 1)).all(axis=1).astype(np.float32)
        cells = input_to_cells(points, self.stride).astype(np.float32)
        # the engine's loop reads the target from "age" and passes "male" to the model (ignored here)
        return self.sample(index, image, torch.from_numpy(np.concatenate([cells, visible[:, None]], axis=1)))


# ------------------------------------------------------------------------------ the detector


class LearnedKeypointDetector(LearnedModel):
    """A trained DenseNet with its config: `detect(image) -> HandKeypoints(method="learned")`;
    `trained_ids`: the images it trained on (saved with it)."""

    KIND, CONFIG, FILE, WHAT = CHECKPOINT_KIND, DetectorConfig, "detector.pt", "detector"

    @classmethod
    def network(cls, cfg: DetectorConfig) -> DenseNet:
        return DenseNet(cfg.backbone, len(POINTS), width=cfg.width, pretrained=cfg.pretrained)

    @torch.no_grad()
    def detect_many(self, images: list[np.ndarray], batch_size: int = 32, flip_tta: bool = True) -> list[HandKeypoints]:
        """Keypoints for each image, in its original pixels. With `flip_tta` the mirrored film is
        read too: the points are the mean of both readings, and each point's confidence is also
        scaled by how well they agree (1 when they coincide, e^-1 when 2 sigma apart)."""
        device = next(self.model.parameters()).device
        self.model.eval()
        out: list[HandKeypoints] = []
        for start in range(0, len(images), batch_size):
            boxed = [letterbox(as_gray(img), self.cfg.side) for img in images[start:start + batch_size]]
            batch = to_tensor(np.stack([b[0] for b in boxed])).to(device)
            cells, prob = decode_heatmap(self.model(batch))
            confidence = point_confidence(prob, cells, self.cfg.sigma)
            if flip_tta:
                flipped_cells, flipped_prob = decode_heatmap(self.model(batch.flip(-1)))
                confidence = torch.minimum(confidence, point_confidence(flipped_prob, flipped_cells, self.cfg.sigma))
                flipped_cells[..., 0] = prob.shape[-1] - 1 - flipped_cells[..., 0]  # back to the unflipped film
                gap = (cells - flipped_cells).norm(dim=-1)
                confidence = confidence * torch.exp(-(gap / (2 * self.cfg.sigma)) ** 2)
                cells = (cells + flipped_cells) / 2
            inputs = cells_to_input(cells.cpu().numpy(), self.model.stride)
            for (_, box), pts, conf in zip(boxed, inputs, confidence.min(dim=1).values.cpu().numpy()):
                middle, thumb, capitate = (tuple(p) for p in box.to_original(pts))
                if np.hypot(*(pts[0] - pts[2])) < 0.15 * self.cfg.side:  # tip and capitate nearly coincide
                    conf = 0.0
                out.append(HandKeypoints(middle, thumb, capitate, float(conf), is_mirrored(middle, thumb, capitate),
                                         "learned"))
        return out

    def detect(self, image: np.ndarray, mask: np.ndarray | None = None) -> HandKeypoints:
        """The heuristic's signature, so either plugs in; `mask` is unused (the network sees the film)."""
        return self.detect_many([image])[0]

    def predict(self, images: Mapping[str, np.ndarray], ids, chunk: int = 256) -> pd.DataFrame:
        """Rows of registration/keypoints.csv for `ids`, reading `images` a chunk at a time (so a
        lazily read dataset is never held in memory whole)."""
        ids = [str(i) for i in ids]
        parts = [predictions_table(ids[s:s + chunk], self.detect_many([images[i] for i in ids[s:s + chunk]]))
                 for s in range(0, len(ids), chunk)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=KEYPOINT_COLUMNS)


def train_detector(images: Mapping[str, np.ndarray], table: pd.DataFrame, cfg: DetectorConfig | None = None,
                   work_dir: str | Path | None = None, init_from: str | Path | None = None,
                   resume: bool = True) -> LearnedKeypointDetector:
    """Train on every row of `table` with all three points (ORIGINAL pixels of `images[id]`), or
    on a seeded sample of `cfg.max_train` of them.

    With `work_dir`, `last.pt` is saved each epoch (resumed under the same fingerprint), the rows
    trained on go to `labels.csv` and the result is `detector.pt` (returned as is when it exists
    under the same fingerprint). `init_from`: a detector checkpoint to start from (pretraining,
    e.g. on the phantom)."""
    cfg = cfg or DetectorConfig()
    cfg.check()
    rows = training_rows(table, images, cfg)
    made_from = fingerprint(cfg, rows[["id"] + COORDS].round(2).to_csv(index=False), str(init_from or ""))

    def dataset(model: DenseNet) -> KeypointDataset:
        boxed = [letterbox(as_gray(images[i]), cfg.side) for i in rows["id"]]
        points = [box.to_input(xy.reshape(3, 2)) for (_, box), xy in zip(boxed, rows[COORDS].to_numpy(float))]
        return KeypointDataset([b[0] for b in boxed], points, cfg, model.stride, augment=True)

    detector = train_model(LearnedKeypointDetector, cfg, made_from, rows["id"].tolist(), dataset,
                           HeatmapLoss(cfg.sigma, cfg.heat_weight), work_dir, init_from, resume)
    if work_dir:
        write_csv(rows[["id"] + COORDS].round(2), Path(work_dir) / "labels.csv")
    return detector


def training_rows(table: pd.DataFrame, images: Mapping[str, np.ndarray], cfg: DetectorConfig) -> pd.DataFrame:
    """The labelled rows a detector of `cfg` trains on: all, or a seeded sample of cfg.max_train
    (drawn from the rows ordered by id, so the same labels give the same sample and fingerprint)."""
    rows = labelled_rows(table, images)
    if cfg.max_train is not None and len(rows) > cfg.max_train:
        rows = rows.sort_values("id", kind="stable").reset_index(drop=True)
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(rows), size=cfg.max_train, replace=False))
        rows = rows.iloc[keep].reset_index(drop=True)
    if len(rows) < 2:
        raise DataError(f"need at least 2 labelled images to train the detector, got {len(rows)}")
    return rows


# ------------------------------------------------------------------------------ scoring and loops


def predictions_table(ids, keypoints: list[HandKeypoints]) -> pd.DataFrame:
    """Detector output as rows of registration/keypoints.csv (KEYPOINT_COLUMNS)."""
    return pd.DataFrame([kp.row(i) for i, kp in zip(ids, keypoints)])


def capitate_proxy(table: pd.DataFrame) -> pd.DataFrame:
    """Fill a missing capitate with 0.75 * wrist + 0.25 * middle MCP: the real 100 px set marks no
    capitate, and it sits about a quarter of the way from the wrist to the MCP joint. Score with
    qa.score_keypoints (hand length from the wrist where marked)."""
    out = table.copy()
    if not {"wrist_x", "mcp_x"} <= set(out.columns):
        raise DataError("capitate proxy needs wrist and mcp (middle_finger1) columns")
    for axis in "xy":
        proxy = 0.75 * out[f"wrist_{axis}"] + 0.25 * out[f"mcp_{axis}"]
        out[f"capitate_{axis}"] = out[f"capitate_{axis}"].fillna(proxy) if f"capitate_{axis}" in out else proxy
    return out


def cross_validated_predictions(images: Mapping[str, np.ndarray], table: pd.DataFrame, folds: int = 5,
                                cfg: DetectorConfig | None = None, work_dir: str | Path | None = None,
                                init_from: str | Path | None = None, held_out=None) -> pd.DataFrame:
    """Each labelled row predicted by a detector trained on the other folds only (KFold, seeded by
    cfg.seed), so a score never counts an image its detector trained on; adds a `fold` column.

    `held_out`: only the labelled rows with these ids are split into folds and predicted; the
    other rows train in every fold (to score a few images of a large training table, e.g. those
    with ground truth, at the cost of `folds` trainings on nearly all of it)."""
    from sklearn.model_selection import KFold

    cfg = cfg or DetectorConfig()
    rows = labelled_rows(table, images)
    held_rows = rows if held_out is None else rows[rows["id"].isin({str(i) for i in held_out})]
    if len(held_rows) < folds:
        raise DataError(f"{folds}-fold cross-validation needs at least {folds} labelled images, got {len(held_rows)}")
    parts = []
    for fold, (_, held_idx) in enumerate(KFold(folds, shuffle=True, random_state=cfg.seed).split(held_rows)):
        held = held_rows["id"].iloc[held_idx].tolist()
        fold_dir = Path(work_dir) / f"fold{fold}" if work_dir else None
        detector = train_detector(images, rows[~rows["id"].isin(held)], cfg, work_dir=fold_dir, init_from=init_from)
        parts.append(detector.predict(images, held).assign(fold=fold))
        log.info("detector CV: fold %d/%d predicted %d held-out images", fold + 1, folds, len(held))
    return pd.concat(parts, ignore_index=True).sort_values("id", kind="stable").reset_index(drop=True)


def pseudo_label_loop(images: Mapping[str, np.ndarray], initial_table: pd.DataFrame | None = None, rounds: int = 3,
                      min_confidence: float = 0.5, cfg: DetectorConfig | None = None,
                      work_dir: str | Path | None = None, init_from: str | Path | None = None,
                      predict_all: bool = True) -> tuple[LearnedKeypointDetector, pd.DataFrame | None, list[dict]]:
    """The paper's loop: train on the confident labels, predict the rest, add the confident
    predictions to the labels, repeat `rounds` times.

    Labels start from `initial_table` (rows without `confidence` count as certain, e.g. ground
    truth), else from the heuristic detector run on every image. Every round starts from
    `init_from` (e.g. a phantom-pretrained detector) when given. Returns the last detector, its
    predictions for every image (KEYPOINT_COLUMNS; None with `predict_all=False`, which also
    skips predicting the rest after the last round) and one history row per round."""
    if initial_table is None:
        from .heuristic import detect_keypoints

        ids = list(images)
        initial_table = predictions_table(ids, [detect_keypoints(images[i]) for i in ids])
    table = initial_table.copy()
    table["id"] = table["id"].astype(str)
    confidence = table["confidence"] if "confidence" in table else pd.Series(1.0, index=table.index)
    labels = labelled_rows(table[confidence.fillna(0) >= min_confidence], images)
    history, detector = [], None
    for round_no in range(rounds):
        round_dir = Path(work_dir) / f"round{round_no}" if work_dir else None
        detector = train_detector(images, labels, cfg, work_dir=round_dir, init_from=init_from)
        labelled = set(labels["id"])
        rest = [i for i in images if i not in labelled] if predict_all or round_no + 1 < rounds else []
        found = detector.predict(images, rest)
        added = found[found["confidence"] >= min_confidence]
        history.append({"round": round_no, "trained_on": len(detector.trained_ids) or len(labels),
                        "labels": len(labels), "predicted": len(rest), "added": len(added)})
        log.info("pseudo-labels round %d: trained on %d of %d labels, %d of %d others confident", round_no,
                 history[-1]["trained_on"], len(labels), len(added), len(rest))
        if round_no + 1 < rounds and len(added):
            labels = pd.concat([labels, added], ignore_index=True)
    return detector, detector.predict(images, list(images)) if predict_all else None, history
