"""The hand mask, classically: no model, so it works on any film from the first run and gives the
keypoint heuristic and the learned detector's training a silhouette to start from.

A radiograph is not a bright object on a dark field: films carry bright collimation frames and
plates with straight (often rotated) edges, lead letters, dark or washed-out exposures, and
hands of every size. One global threshold cannot serve them all, so the mask climbs a ladder of
thresholds and keeps the component that looks most like a hand: it has fingers (deep
concavities between convex lobes), is neither solid nor rectangular (a plate), has a plausible
size, and its border follows a real edge all the way round (a leak into the background does
not). A frame or plate edge the forearm touches is cut off as a thin part reaching the image's
edge; when nothing hand-like is found and the film has a plate, the ladder climbs again inside
the plate. Everything runs on a copy whose longer side is WORK_SIZE pixels (fast, and the same
kernels fit every input size); results are scaled back to the original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORK_SIZE = 256  # longer side of the working copy, pixels
_MIN_AREA = 0.03  # smallest plausible hand, as a share of the image
_MAX_AREA = 0.80  # a "hand" bigger than this is the background or a plate
_LEVELS = np.linspace(0.04, 0.80, 11)  # threshold ladder, as quantiles of the image's grey levels
_FINGER_FACTOR = (0.05, 0.15, 0.35, 0.7, 1.0)  # by number of finger gaps: a hand has 4
_FRAME_RADIUS = 0.06  # parts thinner than twice this (share of the shorter side) that reach the edge: a frame
_NEAR_BEST = 0.5  # candidates this close to the best score compete on size (the skin edge is outermost)
_OPENING = 7  # diameter (working px) of the opening that drops thin lines (plate edges, text), not fingers
_GOOD_TOTAL = 0.08  # shape score times edge strength of a clearly outlined hand: mask score 1
_PLATE_RETRY = 0.5  # below this mask score, look for the hand inside a plate too


@dataclass
class WorkingMask:
    """The mask at working resolution, with what is needed to go back to the original pixels."""

    gray: np.ndarray  # uint8, the denoised working copy
    mask: np.ndarray  # bool, same shape as gray
    scale: float  # working pixels per original pixel (the same on both axes)
    score: float  # how hand-like the chosen component is, in [0, 1]
    fingers: int  # deep concavities (gaps between fingers) of the chosen component
    threshold: float  # the grey level that made it (working copy)

    def to_original(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask resized to the original image's (height, width)."""
        if not self.mask.any():
            return np.zeros(shape[:2], bool)
        big = cv2.resize(self.mask.astype(np.uint8) * 255, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        return big >= 128


def as_gray_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit grayscale view of `image` (RGB(A) to grey, 16-bit or float rescaled to 0-255)."""
    img = np.asarray(image)
    if img.ndim == 3:
        if img.shape[2] >= 3:
            img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY) if img.dtype == np.uint8 \
                else img[..., :3].astype(np.float32).mean(axis=2)
        else:
            img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale or 3-D colour image, got shape {img.shape}")
    if img.dtype != np.uint8:
        img = img.astype(np.float32)
        lo, hi = float(np.min(img)), float(np.max(img))
        img = np.zeros(img.shape, np.uint8) if hi <= lo else ((img - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return np.ascontiguousarray(img)


def working_copy(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The denoised working copy (longer side WORK_SIZE) and its scale (working px per original px)."""
    gray = as_gray_uint8(image)
    h, w = gray.shape
    scale = WORK_SIZE / max(h, w)
    size = (max(int(round(w * scale)), 8), max(int(round(h * scale)), 8))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(gray, size, interpolation=interp)
    small = cv2.medianBlur(small, 5)
    return small, scale


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a bool mask: what the background, flooded from outside, cannot reach."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return mask | holes


def _disk(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def finger_gaps(contour: np.ndarray, area: float) -> int:
    """Deep concavities of a contour: the gaps between fingers (and beside the thumb)."""
    if len(contour) < 8:
        return 0
    hull = cv2.convexHull(contour, returnPoints=False)
    try:
        defects = cv2.convexityDefects(contour, hull)
    except cv2.error:  # a self-touching contour; rare, and no reason to fail
        return 0
    if defects is None:
        return 0
    depth = defects.reshape(-1, 4)[:, 3] / 256.0
    return int(np.sum(depth > 0.12 * np.sqrt(area)))


def _edge_contact(component: np.ndarray) -> float:
    """Share of the image's border pixels that the component covers."""
    return float(np.concatenate([component[0], component[-1], component[:, 0], component[:, -1]]).mean())


def _span(component: np.ndarray) -> float:
    """The larger of the component's extents across and down the image, as shares of the image's."""
    rows, cols = np.flatnonzero(component.any(axis=1)), np.flatnonzero(component.any(axis=0))
    if rows.size == 0:
        return 0.0
    return max((rows[-1] - rows[0] + 1) / component.shape[0], (cols[-1] - cols[0] + 1) / component.shape[1])


@dataclass
class _Shape:
    """What the ladder needs to know about one component's outline."""

    score: float  # how hand-like, in [0, 1]
    gaps: int  # finger gaps
    plate_like: bool  # a large, solid, rectangular component: a plate or the collimated field


def _shape_score(component: np.ndarray, image_area: float) -> _Shape:
    """How hand-like one filled component is: it has fingers, is neither solid nor rectangular,
    has a plausible size and does not run along the image's edge."""
    contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return _Shape(0.0, 0, False)
    contour = max(contours, key=cv2.contourArea)
    area = float(cv2.contourArea(contour))
    if area <= 0:
        return _Shape(0.0, 0, False)
    hull_area = float(cv2.contourArea(cv2.convexHull(contour)))
    solidity = area / max(hull_area, 1.0)
    (_, _), (rw, rh), _ = cv2.minAreaRect(contour)
    rect_fill = area / max(rw * rh, 1.0)
    gaps = finger_gaps(contour, area)
    share = area / image_area
    finger_term = _FINGER_FACTOR[min(gaps, 4)] * (0.85 ** max(gaps - 7, 0))  # many gaps: a ragged leak
    solid_term = float(np.clip((0.95 - solidity) / 0.25, 0.0, 1.0))  # a plate or a blob is solid
    rect_term = float(np.clip((0.97 - rect_fill) / 0.2, 0.0, 1.0))
    size_term = float(np.clip((share - _MIN_AREA) / 0.07, 0.0, 1.0) * np.clip((_MAX_AREA - share) / 0.1, 0.0, 1.0))
    # A forearm crosses the image's edge over a fraction of one side; a frame or plate runs along it.
    edge_term = float(np.clip((0.35 - _edge_contact(component)) / 0.15, 0.0, 1.0))
    score = finger_term * (0.5 + 0.25 * solid_term + 0.25 * rect_term) * size_term ** 0.5 * edge_term
    plate_like = rect_fill >= 0.85 and solidity >= 0.9 and 0.1 <= share <= 0.92
    return _Shape(float(score), gaps, plate_like)


def without_frame_parts(component: np.ndarray, min_radius: float) -> np.ndarray | None:
    """The component less its thin parts that look like a frame or plate edge (they reach the
    image's edge, or are long and straight), or None when it has none. A bright collimation
    frame or plate edge that the forearm touches is such a part; fingers are thin too, but end
    inside the image and are short. Thin means thinner than about the forearm: under 1.1 times
    the radius of the largest inscribed disc (the palm's), and `min_radius` at least."""
    comp = component.astype(np.uint8)
    h, w = comp.shape
    inside = cv2.distanceTransform(comp, cv2.DIST_L2, 3)
    radius = max(min_radius, 0.55 * float(inside.max()))
    core = inside > radius
    if not core.any():
        return None
    opened = (cv2.distanceTransform((~core).astype(np.uint8), cv2.DIST_L2, 3) <= radius) & component
    count, labels, stats, _ = cv2.connectedComponentsWithStats((component & ~opened).astype(np.uint8), connectivity=8)
    frame_like = []
    for label in range(1, count):
        x, y, bw, bh = stats[label, :4]
        at_edge = x == 0 or y == 0 or x + bw == w or y + bh == h
        long_side = max(bw, bh)
        if at_edge or long_side > 0.55 * max(h, w) or long_side > 9 * max(stats[label, cv2.CC_STAT_AREA] / long_side, 1):
            frame_like.append(label)
    if not frame_like:
        return None
    kept = component & ~np.isin(labels, frame_like)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(kept.astype(np.uint8), connectivity=4)
    if count <= 1:
        return None
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _edge_strength(component: np.ndarray, gray_grad: tuple[np.ndarray, np.ndarray], spread: float,
                   counted: np.ndarray | None = None) -> float:
    """How well the component's border follows a real edge with the hand on its bright side: the
    harmonic mean, along the border, of the grey-level slope towards the inside (in units of
    the image's grey spread per pixel). A threshold cut through a smooth or noisy background (a
    leak), or a cut along a line through tissue, has a stretch of border with no such slope,
    and the harmonic mean is ruled by it (this is MSER's stability: the area a threshold step
    adds is the border integral of 1/|grad|). The border on the image's edge does not count, nor
    any outside `counted` (where the hand leaves a plate it was searched in)."""
    border = component & ~cv2.erode(component.astype(np.uint8), _disk(3)).astype(bool)
    border[:3, :] = border[-3:, :] = False
    border[:, :3] = border[:, -3:] = False
    if counted is not None:
        border &= counted
    if border.sum() < 10:
        return 0.0
    soft = cv2.GaussianBlur(component.astype(np.float32), (0, 0), 2.0)
    nx, ny = cv2.Sobel(soft, cv2.CV_32F, 1, 0)[border], cv2.Sobel(soft, cv2.CV_32F, 0, 1)[border]
    inward = (gray_grad[0][border] * nx + gray_grad[1][border] * ny) / np.maximum(np.hypot(nx, ny), 1e-6)
    values = np.maximum(inward / spread, 1e-3)
    return float(1.0 / np.mean(1.0 / values))


def _candidates(binary: np.ndarray):
    """Connected components of a binary image that are big enough to be a hand."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=4)
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] >= _MIN_AREA * binary.size:
            yield labels == label


@dataclass
class _Scored:
    total: float  # shape score times edge strength
    area: int
    threshold: float
    shape: _Shape
    component: np.ndarray


class _Ladder:
    """One image's threshold ladder: every hand-sized component above each threshold, scored."""

    def __init__(self, gray: np.ndarray):
        self.gray = gray
        smooth = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.5)
        self.grad = (cv2.Sobel(smooth, cv2.CV_32F, 1, 0) / 8.0, cv2.Sobel(smooth, cv2.CV_32F, 0, 1) / 8.0)
        lo, hi = np.percentile(gray, [2, 98])
        self.spread = max(float(hi - lo), 8.0)
        self.frame_radius = _FRAME_RADIUS * min(gray.shape)
        self.plates: list[np.ndarray] = []

    def run(self, region: np.ndarray | None = None) -> list[_Scored]:
        """Score the components, within `region` (a plate's inside) when given."""
        gray, image_area = self.gray, float(self.gray.size)
        values = gray if region is None else gray[region]
        thresholds = sorted(set(float(t) for t in np.quantile(values, _LEVELS)) |
                            {float(cv2.threshold(values.reshape(1, -1), 0, 255,
                                                 cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])})
        counted = None if region is None else cv2.erode(region.astype(np.uint8), _disk(7)).astype(bool)
        scored = []
        for threshold in thresholds:
            binary = gray > threshold
            if region is not None:
                binary &= region
            binary = cv2.morphologyEx(binary.astype(np.uint8), cv2.MORPH_OPEN, _disk(_OPENING))
            for whole in _candidates(binary):
                filled = fill_holes(whole)
                options = [(filled, _shape_score(filled, image_area))]
                if options[0][1].plate_like and region is None:
                    self.plates.append(filled)
                # perhaps a frame or plate edge came along: the component spans (nearly) the whole
                # image. Without its frame-like parts it replaces the whole if about as hand-like.
                if _span(whole) >= 0.85:
                    trimmed = without_frame_parts(whole, self.frame_radius)
                    if trimmed is not None:
                        trimmed = fill_holes(trimmed)
                        shape = _shape_score(trimmed, image_area)
                        if shape.score >= 0.9 * options[0][1].score:
                            options = []
                        options.append((trimmed, shape))
                for component, shape in options:
                    if shape.score < 0.1:
                        continue
                    strength = _edge_strength(component, self.grad, self.spread, counted)
                    if strength > 0:
                        scored.append(_Scored(shape.score * strength, int(component.sum()), threshold, shape,
                                              component))
        return scored


def _pick(scored: list[_Scored]) -> _Scored:
    """Bones inside the hand make edges as strong as the skin's; the skin edge is the outermost
    of them, so among candidates nearly as good (and as hand-like) as the best, the largest."""
    top = max(scored, key=lambda item: item.total)
    near = [item for item in scored
            if item.total >= _NEAR_BEST * top.total and item.shape.score >= 0.9 * top.shape.score]
    return max(near, key=lambda item: item.area)


def working_mask(image: np.ndarray) -> WorkingMask:
    """The hand mask at working resolution: over a ladder of thresholds, the component with the
    most hand-like shape and the clearest border. When that is poor and the film has a plate
    (a bright rectangle the hand lies on), the ladder runs again inside the plate, where the hand
    is brighter than its surroundings."""
    gray, scale = working_copy(image)
    ladder = _Ladder(gray)
    scored = ladder.run()
    if (not scored or _pick(scored).total < _PLATE_RETRY * _GOOD_TOTAL) and ladder.plates:
        plate = max(ladder.plates, key=lambda m: int(m.sum()))
        inside = cv2.erode(plate.astype(np.uint8), _disk(5)).astype(bool)
        if inside.sum() > _MIN_AREA * gray.size:
            scored += ladder.run(inside)
    if not scored:
        return WorkingMask(gray, np.zeros(gray.shape, bool), scale, 0.0, 0, 0.0)
    best = _pick(scored)
    mask = cv2.morphologyEx(best.component.astype(np.uint8), cv2.MORPH_CLOSE, _disk(3)).astype(bool)
    return WorkingMask(gray, mask, scale, float(min(best.total / _GOOD_TOTAL, 1.0)), best.shape.gaps, best.threshold)


def hand_mask(image: np.ndarray) -> np.ndarray:
    """Boolean hand mask in the original image's pixels (empty when nothing hand-like is found)."""
    gray = as_gray_uint8(image)
    return working_mask(gray).to_original(gray.shape)


def normalise_contrast(image: np.ndarray, mask: np.ndarray, clip_limit: float = 2.0) -> np.ndarray:
    """Background set to 0, the hand stretched to its own 1-99% grey range and equalised locally
    (CLAHE), so films of different exposure look alike to a model."""
    gray = as_gray_uint8(image)
    mask = np.asarray(mask, bool)
    if mask.shape != gray.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the image's {gray.shape}")
    if not mask.any():
        return np.zeros_like(gray)
    lo, hi = np.percentile(gray[mask], [1, 99])
    stretched = np.clip((gray.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0)), 0, 255).astype(np.uint8)
    tiles = max(2, int(round(max(gray.shape) / 128)))
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    out = clahe.apply(stretched)
    out[~mask] = 0
    return out
