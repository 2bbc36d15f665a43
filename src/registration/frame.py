"""The paper's canonical frame and its regions A/B/C.

Every registered image is a 1600 (W) x 2080 (H) frame at scale 1: a similarity transform (plus a
reflection for mirrored films) puts the middle-finger tip at (800, 100) and the centre of the
capitate at (800, 1600), so the hand's long axis is vertical and every hand has the same
tip-to-capitate length (1500 px). Mirrored films are flipped, so the output is always a normal
left hand, thumb to the right of the middle finger. `scale` shrinks the whole frame (0.25 gives
400 x 520), so a 100 px input is not blown up to 2080 rows.

Regions are crops of the frame, given in frame coordinates at scale 1 (x right, y down) and
multiplied by the frame's scale (`REGIONS`; `regions_table()` renders it as Markdown):

| region | what it holds | centre (x, y) | size W x H | x range | y range | at frame_scale 0.25 |
|---|---|---|---|---|---|---|
| A | the whole hand | (800, 1040) | 1500 x 2000 | 50-1550 | 40-2040 | 375 x 500 |
| B | carpal bones, distal radius and ulna | (800, 1650) | 1000 x 500 | 300-1300 | 1400-1900 | 250 x 125 |
| C | metacarpals and proximal phalanges | (800, 1000) | 1200 x 1000 | 200-1400 | 500-1500 | 300 x 250 |

A is the paper's whole-hand window (2000 x 1500 row-first, centre (1040, 800) row-first), which
at frame_scale 0.25 is exactly its 500 x 375 input. B is landscape because the wrist is wider
than tall: it runs from the metacarpal bases (about 200 px above the capitate) through both
carpal rows to the growth plates of the radius and ulna (300 px below it), across the whole
wrist. C spans from the carpometacarpal joints (y ~1500) up to the heads of the proximal
phalanges (y ~500), and across all five rays including the thumb's metacarpal. B and C are this
project's choice (the paper gives no numbers for them); they assume the usual proportions of a
hand, about 85 frame px per cm.

An image whose registration failed or is not trusted becomes the fallback: the whole
unregistered image resized into the frame, aspect kept and centred (letterboxed with 0), so no
image is dropped; its regions are then the same windows of that letterboxed image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..utils.errors import UserError
from .types import HandKeypoints

FRAME_W, FRAME_H = 1600, 2080
MIDDLE_AT = (800.0, 100.0)    # where the middle-finger tip lands, frame px at scale 1
CAPITATE_AT = (800.0, 1600.0)  # where the capitate's centre lands


@dataclass(frozen=True)
class Region:
    """A crop of the frame, in frame pixels at scale 1."""

    centre_x: float
    centre_y: float
    width: float
    height: float
    holds: str

    def box(self, scale_x: float, scale_y: float | None = None) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in the pixels of a frame at this scale (y1, x1 exclusive)."""
        scale_y = scale_x if scale_y is None else scale_y
        x0 = int(round((self.centre_x - self.width / 2) * scale_x))
        y0 = int(round((self.centre_y - self.height / 2) * scale_y))
        return x0, y0, x0 + int(round(self.width * scale_x)), y0 + int(round(self.height * scale_y))


REGIONS: dict[str, Region] = {
    "A": Region(800, 1040, 1500, 2000, "the whole hand"),
    "B": Region(800, 1650, 1000, 500, "carpal bones, distal radius and ulna"),
    "C": Region(800, 1000, 1200, 1000, "metacarpals and proximal phalanges"),
}


def frame_size(scale: float = 1.0) -> tuple[int, int]:
    """(width, height) of the frame at `scale`."""
    if not scale > 0:
        raise UserError(f"frame scale must be > 0, got {scale!r}")
    return max(1, int(round(FRAME_W * scale))), max(1, int(round(FRAME_H * scale)))


def frame_matrix(kp: HandKeypoints, scale: float = 1.0) -> np.ndarray:
    """The 2x3 affine map from original pixels to the frame at `scale`.

    A similarity (rotation, uniform scale, shift) is fixed by two point pairs: the middle tip and
    the capitate. For a mirrored film x is negated first, which makes the map a reflection, so
    the output is a normal left hand. Raises ValueError when the two points coincide.
    """
    sign = -1.0 if kp.mirrored else 1.0
    z_tip = complex(sign * kp.middle[0], kp.middle[1])
    z_cap = complex(sign * kp.capitate[0], kp.capitate[1])
    if not np.isfinite([z_tip.real, z_tip.imag, z_cap.real, z_cap.imag]).all():
        raise ValueError("keypoints are not finite")
    if abs(z_cap - z_tip) < 1e-6:
        raise ValueError("the middle-finger tip and the capitate coincide")
    q_tip = complex(*MIDDLE_AT) * scale
    q_cap = complex(*CAPITATE_AT) * scale
    a = (q_cap - q_tip) / (z_cap - z_tip)  # rotation and scale as one complex number
    b = q_tip - a * z_tip
    return np.array([[a.real * sign, -a.imag, b.real],
                     [a.imag * sign, a.real, b.imag]], dtype=np.float64)


def fallback_matrix(width: int, height: int, scale: float = 1.0) -> np.ndarray:
    """The 2x3 map that letterboxes a whole `width` x `height` image into the frame (aspect kept)."""
    out_w, out_h = frame_size(scale)
    k = min(out_w / width, out_h / height)
    return np.array([[k, 0.0, (out_w - k * width) / 2],
                     [0.0, k, (out_h - k * height) / 2]], dtype=np.float64)


def map_points(matrix: np.ndarray, points) -> np.ndarray:
    """Apply a 2x3 affine map to points given as (x, y) or an (N, 2) array; returns (N, 2)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def map_keypoints(matrix: np.ndarray, kp: HandKeypoints) -> HandKeypoints:
    """The same keypoints in the coordinates `matrix` maps to (e.g. the frame's, for drawing)."""
    middle, thumb, capitate = (tuple(p) for p in map_points(matrix, [kp.middle, kp.thumb, kp.capitate]))
    return HandKeypoints(middle, thumb, capitate, kp.confidence, kp.mirrored, kp.method)


def warp_with(image: np.ndarray, matrix: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Warp `image` into the frame at `scale` by `matrix` (border 0).

    When the map shrinks the image, it is first shrunk with area averaging to about the final
    resolution: bilinear sampling alone would skip pixels and lose thin cortex."""
    out_w, out_h = frame_size(scale)
    zoom = float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2]))))
    h, w = image.shape[:2]
    if zoom < 0.9:
        small_w, small_h = max(1, int(round(w * zoom))), max(1, int(round(h * zoom)))
        image = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
        # pixel centres: original x maps to small (x + 0.5) * small_w / w - 0.5
        to_small = np.array([[small_w / w, 0, 0.5 * small_w / w - 0.5],
                             [0, small_h / h, 0.5 * small_h / h - 0.5], [0, 0, 1]])
        matrix = np.vstack([matrix, [0, 0, 1]]) @ np.linalg.inv(to_small)
        matrix = matrix[:2]
    return cv2.warpAffine(image, np.asarray(matrix, dtype=np.float64), (out_w, out_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_to_frame(image: np.ndarray, kp: HandKeypoints, scale: float = 1.0) -> np.ndarray:
    """The registered frame of `image` (a normal left hand, tip at the top)."""
    return warp_with(image, frame_matrix(kp, scale), scale)


def fallback_to_frame(image: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The unregistered image letterboxed into the frame: what a failed registration becomes."""
    h, w = image.shape[:2]
    return warp_with(image, fallback_matrix(w, h, scale), scale)


def crop_region(frame: np.ndarray, name: str) -> np.ndarray:
    """Region `name` (A, B or C) of a registered frame at any scale (read from its size).

    Parts of the window outside the frame are filled with 0."""
    if name not in REGIONS:
        raise UserError(f"region must be one of {sorted(REGIONS)}, got {name!r}")
    h, w = frame.shape[:2]
    scale = w / FRAME_W
    if abs(h - FRAME_H * scale) > 1.5:
        raise UserError(f"region {name}: the image is {w}x{h}, not a registered {FRAME_W}:{FRAME_H} frame; "
                        f"put the 'region' step right after 'register' in data.preprocess")
    x0, y0, x1, y1 = REGIONS[name].box(w / FRAME_W, h / FRAME_H)
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pad):
        frame = cv2.copyMakeBorder(frame, *pad, cv2.BORDER_CONSTANT, value=0)
        x0, x1, y0, y1 = x0 + pad[2], x1 + pad[2], y0 + pad[0], y1 + pad[0]
    return frame[y0:y1, x0:x1].copy()


def regions_table() -> str:
    """The regions as a Markdown table (for the README and --help)."""
    lines = ["| region | holds | centre (x, y) | size W x H |", "|---|---|---|---|"]
    for name, r in REGIONS.items():
        lines.append(f"| {name} | {r.holds} | ({r.centre_x:g}, {r.centre_y:g}) | {r.width:g} x {r.height:g} |")
    return "\n".join(lines)
