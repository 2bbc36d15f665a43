"""One radiograph's plan: subject, hand, image size, placement and nuisances, all drawn from
(seed, id) so that any image can be re-planned (for keypoints) or re-rendered bit for bit.

Planning is cheap (no pixels), which lets a resumed run rebuild every keypoint row without
rendering the images it already has.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from .anatomy import Hand, build_hand
from .growth import Subject, sample_subject, subject_rng

# RSNA image sizes (W, H) at scale 1 and how often they occur; the rest are drawn at random.
COMMON_SIZES = ((1514, 2044, 0.55), (2040, 2570, 0.18), (1280, 1600, 0.05), (1760, 2140, 0.05))
MIRROR_P = 0.10
KEYPOINTS = ("middle_finger_tip", "thumb_tip", "capitate")


@dataclass
class Scene:
    seed: int
    image_id: int
    subject: Subject
    hand: Hand
    width: int
    height: int
    affine: np.ndarray  # 2x3: hand millimetres -> image pixels
    mirrored: bool
    px_per_mm: float
    look: dict  # exposure, noise, blur, background, collimation, markers

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, float).reshape(-1, 2)
        return pts @ self.affine[:, :2].T + self.affine[:, 2]

    def keypoints_px(self) -> dict[str, tuple[float, float]]:
        return {k: tuple(float(v) for v in self.to_px(self.hand.keypoints[k])[0]) for k in KEYPOINTS}


def image_size(rng: np.random.Generator, scale: float) -> tuple[int, int]:
    u = rng.random()
    for w, h, p in COMMON_SIZES:
        if u < p:
            break
        u -= p
    else:
        w = int(rng.integers(1100, 2300))
        h = int(w * rng.uniform(1.18, 1.42))
    return max(int(round(w * scale)), 32), max(int(round(h * scale)), 32)


def _affine(theta_deg: float, mirrored: bool, s: float, centre_mm, target_px) -> np.ndarray:
    """Mirror (right hand), flip y (image rows go down), rotate, scale, then put centre_mm at target_px."""
    t = np.deg2rad(theta_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    lin = s * rot @ np.diag([-1.0 if mirrored else 1.0, -1.0])
    return np.hstack([lin, (np.asarray(target_px) - lin @ np.asarray(centre_mm))[:, None]])


def plan_scene(seed: int, image_id: int, scale: float, subject: Subject | None = None) -> Scene:
    subject = subject or sample_subject(seed, image_id)
    rng = subject_rng(seed, image_id, 1)
    hand = build_hand(subject, rng)
    w, h = image_size(rng, scale)
    mirrored = bool(rng.random() < MIRROR_P)
    theta = float(rng.uniform(-30, 30)) if rng.random() < 0.12 else float(np.clip(rng.normal(0, 8), -30, 30))

    tip = hand.keypoints["middle_finger_tip"]
    length_mm = float(tip[1]) + 2.0 * hand.pad
    frac = float(np.clip(0.8 * (length_mm / 200.0) ** 0.3 * np.exp(rng.normal(0, 0.07)), 0.45, 0.9))
    s = frac * h / length_mm
    centre = 0.5 * (tip + hand.keypoints["capitate"])
    target = np.array([w * (0.5 + rng.normal(0, 0.04)), h * (0.38 + rng.normal(0, 0.03))])
    margin = 0.03 * min(w, h)
    for _ in range(4):  # keep the whole hand in the frame: shift, and shrink if it cannot fit
        affine = _affine(theta, mirrored, s, centre, target)
        pts = hand.outline @ affine[:, :2].T + affine[:, 2]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        size = hi - lo
        room = np.array([w, h]) - 2 * margin
        if np.any(size > room):
            s *= float(np.min(room / size)) * 0.97
            continue
        target = target + np.maximum(margin - lo, 0) - np.maximum(hi - (np.array([w, h]) - margin), 0)
        affine = _affine(theta, mirrored, s, centre, target)
        break
    look = _look(rng, w, h, mirrored)
    return Scene(int(seed), int(image_id), subject, hand, w, h, affine, mirrored, s, look)


def _look(rng: np.random.Generator, w: int, h: int, mirrored: bool) -> dict:
    """Exposure and acquisition nuisances, sized to vary like RSNA without hiding the bones."""
    dim = rng.random() < 0.06  # an under-exposed, low-contrast film
    look = {
        "background": float(rng.uniform(0.0, 0.13)),
        "gradient": (float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.08, 0.08))),
        "soft": float(rng.uniform(0.30, 0.44)),
        "bone": float(rng.uniform(0.28, 0.42)),
        "gamma": float(rng.uniform(0.75, 1.3)),
        "black": float(rng.uniform(0, 18)),
        "white": float(rng.uniform(90, 150) if dim else rng.uniform(205, 255)),
        "noise": float(rng.uniform(0.006, 0.03)),
        "blur_mm": float(rng.uniform(0.05, 0.3)),
        "texture": float(rng.uniform(0.06, 0.14)),
        "collimation": None,
        "markers": [],
    }
    u = rng.random()
    if u < 0.25:
        look["collimation"] = {
            "kind": "bright_outside" if u < 0.15 else "plate",
            "margins": [float(x) for x in rng.uniform(0.0, 0.12, size=4)],
            "angle": float(np.clip(rng.normal(0, 4), -12, 12)),
            "level": float(rng.uniform(0.5, 0.95) if u < 0.15 else rng.uniform(0.05, 0.16)),
        }
    if rng.random() < 0.85:
        letter = "R" if (mirrored and rng.random() < 0.5) else "L"
        look["markers"].append({"text": letter, "size": float(rng.uniform(0.05, 0.09)), "box": bool(rng.random() < 0.6),
                                "corner": int(rng.choice(4, p=[0.35, 0.4, 0.1, 0.15]))})
        if rng.random() < 0.5:
            chars = string.ascii_uppercase + string.digits
            look["markers"].append({"text": "".join(rng.choice(list(chars), size=int(rng.integers(2, 5)))),
                                    "size": float(rng.uniform(0.015, 0.025)), "box": False, "corner": -1})
        if rng.random() < 0.25:
            look["markers"].append({"text": "O", "size": float(rng.uniform(0.03, 0.05)), "box": False, "corner": -1})
    return look
