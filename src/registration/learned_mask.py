"""The paper's learned hand mask: a U-Net (timm encoder, light decoder) trained on any folder of masks.

The classical mask (mask.py) fails on some films; a network trained on masks that are known to be
good (the phantom's ground truth, or classical masks that passed a quality check) generalises
from them. The loss is the paper's (TernausNet's) BCE - log(soft Jaccard), the soft Jaccard being
sum(p * y) / (sum(p) + sum(y) - sum(p * y)) over the whole batch, p the predicted probabilities:
BCE gets every pixel right, -log J keeps a small hand's overlap from drowning in background.

The decoder ends at stride 2 and is upsampled to the letterboxed input, so `predict_mask` returns
a bool mask in the ORIGINAL pixels. `positive_mining_loop` is the paper's loop: train, predict the
images without an accepted mask, keep the predictions that pass a quality check, repeat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import read_gray8
from ..utils.errors import DataError
from .learned_net import (DenseNet, EpochDataset, LearnedModel, NetConfig, as_gray, fingerprint, letterbox, to_tensor,
                          train_model)
from .mask import finger_gaps, hand_mask

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "boneage-hand-mask"
QualityCheck = Callable[[np.ndarray, np.ndarray], bool]  # (image, bool mask) -> good enough to train on


@dataclass
class MaskConfig(NetConfig):
    """NetConfig plus the loss's Jaccard weight and the probability threshold of a mask pixel."""

    width: int = 32
    epochs: int = 30
    jaccard_weight: float = 1.0
    threshold: float = 0.5


def soft_jaccard(prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Soft intersection over union of probabilities and a 0/1 target, over the whole batch."""
    intersection = (prob * target).sum()
    union = prob.sum() + target.sum() - intersection
    return (intersection + eps) / (union + eps)


class MaskLoss:
    """The engine's `codec`: BCE - jaccard_weight * log(soft Jaccard), in fp32."""

    def __init__(self, jaccard_weight: float = 1.0):
        self.jaccard_weight = jaccard_weight

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return bce - self.jaccard_weight * torch.log(soft_jaccard(torch.sigmoid(logits), target))


class MaskNet(DenseNet):
    """DenseNet from stride 2 up, its logits upsampled to the input's size."""

    def __init__(self, cfg: MaskConfig):
        super().__init__(cfg.backbone, 1, out_indices=(0, 1, 2, 3), width=cfg.width, pretrained=cfg.pretrained)

    def forward(self, image: torch.Tensor, male: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().forward(image, male)
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


def read_masks(folder: str | Path, ids) -> dict[str, np.ndarray]:
    """id -> bool mask of `<folder>/<id>.png` (non-zero = hand), e.g. the phantom's ground-truth/masks."""
    return {str(i): read_gray8(Path(folder) / f"{i}.png").pixels > 127 for i in ids}


def mask_quality(image: np.ndarray, mask: np.ndarray) -> bool:
    """A default check that a mask looks like one hand: its largest part covers 3-80% of the image,
    holds at least 90% of the mask, and shows at least 3 deep gaps between fingers."""
    mask = np.asarray(mask, bool)
    share = mask.mean()
    if not 0.03 <= share <= 0.80:
        return False
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return False
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < 0.9 * mask.sum():
        return False
    contours, _ = cv2.findContours((labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    return finger_gaps(contour, float(cv2.contourArea(contour))) >= 3


class MaskDataset(EpochDataset):
    """Letterboxed images and masks, augmented together (a function of seed, epoch and row)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], cfg: MaskConfig, augment: bool):
        super().__init__(images, cfg, augment, keypoints=False)
        self.masks = masks

    def __getitem__(self, index: int) -> dict:
        image, mask = self.images[index], self.masks[index]
        out = self.augmented(index, mask=mask)
        if out is not None:
            image, mask = out["image"], out["mask"]
        return self.sample(index, image, torch.from_numpy((mask > 0).astype(np.float32))[None])


class LearnedHandMask(LearnedModel):
    """A trained MaskNet with its config: `predict_mask(image) -> bool mask` in the original pixels."""

    KIND, CONFIG, FILE, WHAT = CHECKPOINT_KIND, MaskConfig, "mask.pt", "hand mask"

    @classmethod
    def network(cls, cfg: MaskConfig) -> MaskNet:
        return MaskNet(cfg)

    @torch.no_grad()
    def predict_many(self, images: list[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        device = next(self.model.parameters()).device
        self.model.eval()
        out = []
        for start in range(0, len(images), batch_size):
            grays = [as_gray(img) for img in images[start:start + batch_size]]
            boxed = [letterbox(g, self.cfg.side) for g in grays]
            prob = torch.sigmoid(self.model(to_tensor(np.stack([b[0] for b in boxed])).to(device)))[:, 0].cpu().numpy()
            for gray, (_, box), p in zip(grays, boxed, prob):
                h, w = gray.shape
                x0, y0 = int(box.offset_x), int(box.offset_y)
                inner = p[y0:y0 + int(round(h * box.scale_y)), x0:x0 + int(round(w * box.scale_x))]
                out.append(cv2.resize(inner, (w, h), interpolation=cv2.INTER_LINEAR) >= self.cfg.threshold)
        return out

    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        return self.predict_many([image])[0]


def train_mask(images: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], cfg: MaskConfig | None = None,
               work_dir: str | Path | None = None, init_from: str | Path | None = None,
               resume: bool = True) -> LearnedHandMask:
    """Train on every id of `masks` (bool, the shape of `images[id]`). With `work_dir`, `last.pt`
    is saved each epoch and resumed under the same fingerprint; the result is `mask.pt`."""
    cfg = cfg or MaskConfig()
    cfg.check()
    ids = sorted(str(i) for i in masks)
    if len(ids) < 2:
        raise DataError(f"need at least 2 masks to train the hand mask, got {len(ids)}")
    for i in ids:
        if i not in images:
            raise DataError(f"mask {i} has no image")
        if np.shape(masks[i])[:2] != np.shape(images[i])[:2]:
            raise DataError(f"mask {i} is {np.shape(masks[i])[:2]}, its image {np.shape(images[i])[:2]}")
    boxed = [letterbox(as_gray(images[i]), cfg.side)[0] for i in ids]
    boxed_masks = [letterbox(np.asarray(masks[i], np.uint8) * 255, cfg.side)[0] >= 128 for i in ids]
    labels = "".join(f"{i}:{np.packbits(m).tobytes().hex()[:64]}:{int(m.sum())};" for i, m in zip(ids, boxed_masks))
    made_from = fingerprint(cfg, labels, str(init_from or ""))
    return train_model(LearnedHandMask, cfg, made_from, ids,
                       lambda _: MaskDataset(boxed, [m.astype(np.uint8) for m in boxed_masks], cfg, augment=True),
                       MaskLoss(cfg.jaccard_weight), work_dir, init_from, resume)


def positive_mining_loop(images: Mapping[str, np.ndarray], initial_masks: Mapping[str, np.ndarray] | None = None,
                         rounds: int = 3, quality_check: QualityCheck = mask_quality, cfg: MaskConfig | None = None,
                         work_dir: str | Path | None = None) -> tuple[LearnedHandMask, dict[str, np.ndarray], list[dict]]:
    """The paper's loop: train on the accepted masks, predict the images without one, accept the
    predictions that pass `quality_check`, repeat `rounds` times.

    Accepted masks start from `initial_masks` (e.g. ground truth), else from the classical mask
    of every image that passes `quality_check`. Returns the last model, the accepted masks and one
    history row per round."""
    if initial_masks is None:
        initial_masks = {}
        for i, image in images.items():
            classical = hand_mask(image)
            if quality_check(image, classical):
                initial_masks[i] = classical
    accepted = {str(i): np.asarray(m, bool) for i, m in initial_masks.items()}
    history, model = [], None
    for round_no in range(rounds):
        model = train_mask(images, accepted, cfg, work_dir=Path(work_dir) / f"round{round_no}" if work_dir else None)
        rest = [i for i in images if i not in accepted]
        predicted = model.predict_many([images[i] for i in rest]) if rest else []
        passed = {i: m for i, m in zip(rest, predicted) if quality_check(images[i], m)}
        history.append({"round": round_no, "trained_on": len(accepted), "predicted": len(rest), "added": len(passed)})
        log.info("hand mask round %d: trained on %d, %d of %d others pass the check", round_no, len(accepted),
                 len(passed), len(rest))
        if round_no + 1 < rounds:
            accepted.update(passed)
    return model, accepted, history
