"""Three keypoints from the hand mask's geometry alone: the fallback when no learned detector is
trained yet, and the source of its first training targets.

The palm centre is the centre of the largest disc inside the mask; the forearm is where the mask
leaves the image (or, when that disagrees with the fingers, the side away from them);
fingertips are narrow, prominent far points of the contour from the palm. Ordered by angle
around the palm, the outer tip that looks more like a thumb (wider web and gap to its
neighbour, thicker, pointing off the others' way, ending lower; the right-hand side of a film
that is not mirrored gets a lead) is the thumb, and the middle finger is the second finger from
it. The wrist lies on the line from the middle tip through the palm centre, the palm centre
being PALM_SHARE of the hand's length from the tip, and the capitate CAPITATE_SHARE of that
length above the wrist. All of it runs on the mask at working resolution (mask.WORK_SIZE) and
answers in the original image's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.signal import find_peaks

from .mask import WorkingMask, as_gray_uint8, fill_holes, working_copy, working_mask
from .types import HandKeypoints

# Capitate centre as a share of the wrist -> middle-tip length (adult hand anatomy: the capitate
# lies 15-20 mm distal of the radius' articular surface in a hand about 185 mm long).
CAPITATE_SHARE = 0.10
# Share of the hand's length (wrist to middle tip) between the palm centre (largest inscribed
# disc) and the middle tip: 0.72 on real 100 px hands, 0.79 on the phantom; between the two.
PALM_SHARE = 0.75
# Lead of the right-hand outer digit in the thumb-likeness contest (units: a typical thumb beats
# a little finger by 4-5): films of left hands shown mirrored are rare in RSNA.
MIRROR_PRIOR = 1.5
# A fingertip stands out from the contour around it by this many palm radii (fingers held close
# together make shallow valleys between them).
PROMINENCE = 0.25
THUMB_BAND = (0.3, 0.72)  # where a thumb tip lies along the wrist -> middle tip line, as shares


@dataclass
class HandGeometry:
    """What the detector read from the mask, in working pixels (for debugging and confidence)."""

    palm: np.ndarray  # centre of the largest inscribed disc
    palm_radius: float
    base: np.ndarray  # where the forearm leaves the image (or a stand-in)
    tips: list[np.ndarray] = field(default_factory=list)  # fingertip candidates
    middle: np.ndarray | None = None
    thumb: np.ndarray | None = None
    wrist: np.ndarray | None = None
    capitate: np.ndarray | None = None
    webs: tuple[float, float] | None = None  # thumb-likeness of the two outer tips (low angle side, high)
    problems: list[str] = field(default_factory=list)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.hypot(*v))
    return v / n if n > 1e-9 else np.array([0.0, -1.0])


def _cross(a: np.ndarray, b: np.ndarray) -> float:
    return float(a[0] * b[1] - a[1] * b[0])


def _largest_contour(mask: np.ndarray) -> np.ndarray | None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    return contour.reshape(-1, 2).astype(np.float64) if len(contour) >= 16 else None


def _forearm_base(mask: np.ndarray) -> np.ndarray | None:
    """Centre of the longest stretch where the mask meets the image's edge (the forearm's cut)."""
    h, w = mask.shape
    # the image's edge walked once around: top, right, bottom (backwards), left (backwards)
    xs = np.concatenate([np.arange(w), np.full(h, w - 1), np.arange(w)[::-1], np.zeros(h, int)])
    ys = np.concatenate([np.zeros(w, int), np.arange(h), np.full(w, h - 1), np.arange(h)[::-1]])
    on = mask[ys, xs]
    if not on.any():
        return None
    if on.all():
        return None
    start = int(np.argmin(on))  # begin the walk on a background pixel so no run wraps around
    on, xs, ys = np.roll(on, -start), np.roll(xs, -start), np.roll(ys, -start)
    edges = np.flatnonzero(np.diff(on.astype(np.int8)))
    runs = [(a + 1, b + 1) for a, b in zip(edges[::2], edges[1::2])]
    if not runs:
        return None
    a, b = max(runs, key=lambda r: r[1] - r[0])
    if b - a < 3:
        return None
    return np.array([xs[a:b].mean(), ys[a:b].mean()], float)


def _protrusions(contour: np.ndarray, palm: np.ndarray, radius: float, shape: tuple[int, int]) -> list[int]:
    """Contour indices of digit-like protrusions: local maxima of the distance to the palm centre,
    prominent by PROMINENCE palm radii, and as narrow as a digit half a palm radius back from the
    tip. The corners of a forearm cut square by a plate's or the image's edge are wider, or their
    sides are not parallel; a plate's edge strip is thinner."""
    h, w = shape
    dist = np.hypot(*(contour - palm).T)
    n = len(dist)
    peaks, _ = find_peaks(np.concatenate([dist, dist, dist]), prominence=PROMINENCE * radius,
                          distance=max(3, n // 60))
    step = max(2, int(round(0.5 * radius)))  # contour points are about a pixel apart
    tips = []
    for i in sorted({int(p) % n for p in peaks if n <= p < 2 * n}):
        across = _digit_width(contour, i, radius) / radius
        sides = float(np.dot(_unit(contour[(i - 2 * step) % n] - contour[(i - step) % n]),
                             _unit(contour[(i + 2 * step) % n] - contour[(i + step) % n])))
        x, y = contour[i]
        on_edge = x <= 2 or y <= 2 or x >= w - 3 or y >= h - 3
        # a wide digit (a thumb), or one the image's edge cuts, passes if its sides run parallel
        narrow = 0.18 <= across <= (0.8 if sides >= 0.8 else 0.62) and (sides >= 0.8 or not on_edge)
        if dist[i] >= 1.3 * radius and narrow:
            tips.append(i)
    return tips


def _finger_direction(contour: np.ndarray, tips: list[int], palm: np.ndarray) -> np.ndarray | None:
    """Mean direction from the palm to the largest bunch of protrusions within 70 degrees of one
    another: the fingers (a forearm's corners or a stray blob stand alone)."""
    if not tips:
        return None
    dirs = np.array([_unit(contour[i] - palm) for i in tips])
    close = dirs @ dirs.T >= np.cos(np.deg2rad(70))
    best = int(np.argmax(close.sum(axis=1)))
    return _unit(dirs[close[best]].mean(axis=0))


def analyse(mask: np.ndarray) -> HandGeometry:
    """Palm, forearm, fingertips, middle tip, thumb tip, wrist and capitate from a working mask."""
    h, w = mask.shape
    # distance to the background, the image's edge counting as background (else the forearm's
    # cut at the edge looks as wide as a palm)
    inside = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    radius = float(inside.max())
    py, px = np.unravel_index(int(np.argmax(inside)), inside.shape)
    palm = np.array([px, py], float)
    contour = _largest_contour(mask)
    geo = HandGeometry(palm=palm, palm_radius=radius, base=palm + np.array([0.0, 2.0 * radius]))
    if contour is None or radius < 2:
        geo.problems.append("no hand-sized mask")
        return geo
    protrusions = _protrusions(contour, palm, radius, (h, w))
    fingers_way = _finger_direction(contour, protrusions, palm)
    base = _forearm_base(mask)
    forward = None if base is None else _unit(palm - base)
    if forward is None or (fingers_way is not None and float(np.dot(forward, fingers_way)) < np.cos(np.deg2rad(75))):
        if fingers_way is None:
            geo.problems.append("no forearm and no fingers")
            forward = np.array([0.0, -1.0])
        else:
            geo.problems.append("forearm not where the fingers point from")
            forward = fingers_way
        base = palm - forward * 2.5 * radius
    geo.base = base
    tip_index = [i for i in protrusions if float(np.dot(_unit(contour[i] - palm), forward)) >= -0.35]
    geo.tips = [contour[i].copy() for i in tip_index]
    if not tip_index:
        geo.problems.append("no fingertips")
        geo.middle = palm + forward * 3.3 * radius
        geo.thumb = palm + forward * 1.3 * radius + np.array([-forward[1], forward[0]]) * 2.0 * radius
    else:
        geo.middle, geo.thumb = _middle_and_thumb(geo, contour, tip_index, palm, forward)
    _palm_near_middle(geo, inside)
    axis = _unit(geo.middle - geo.palm)
    length = float(np.dot(geo.middle - geo.palm, axis)) / PALM_SHARE
    geo.wrist = geo.middle - axis * length
    geo.capitate = geo.wrist + CAPITATE_SHARE * (geo.middle - geo.wrist)
    _thumb_not_a_finger(geo, contour)
    return geo


def _thumb_not_a_finger(geo: HandGeometry, contour: np.ndarray) -> None:
    """A thumb tip ends 40-65% of the way from wrist to middle tip; one found higher is a finger
    (the thumb lay against the index or merged into a plate's edge). Then take the contour point
    furthest out to the side in the thumb's band, on the thumb's side of a film that is not
    mirrored."""
    axis = geo.middle - geo.wrist
    length = float(np.hypot(*axis))
    if length < 1e-6:
        return
    axis = axis / length
    along = float(np.dot(geo.thumb - geo.wrist, axis)) / length
    if along <= THUMB_BAND[1] + 0.05:
        return
    geo.problems.append("thumb found as high as a finger")
    rel = contour - geo.wrist
    along_c = rel @ axis / length
    side_c = (axis[0] * rel[:, 1] - axis[1] * rel[:, 0]) / length  # positive: right of the axis
    sign = 1.0  # the side the outer "thumb" was found on means nothing now: a film not mirrored
    band = (along_c >= THUMB_BAND[0]) & (along_c <= THUMB_BAND[1]) & (sign * side_c > 0)
    if band.any():
        pick = np.flatnonzero(band)[int(np.argmax(sign * side_c[band]))]
        geo.thumb = contour[pick].copy()


def _palm_near_middle(geo: HandGeometry, inside: np.ndarray) -> None:
    """Move the palm centre to the largest inscribed disc within reach of the middle tip: the
    global one can sit in a thick forearm or in a piece of plate the mask kept."""
    h, w = inside.shape
    yy, xx = np.mgrid[0:h, 0:w]
    reach = np.hypot(xx - geo.middle[0], yy - geo.middle[1]) <= 3.6 * geo.palm_radius
    local = np.where(reach, inside, 0)
    py, px = np.unravel_index(int(np.argmax(local)), local.shape)
    if local[py, px] > 0:
        geo.palm = np.array([px, py], float)
        geo.palm_radius = float(local[py, px])


def _digit_width(contour: np.ndarray, i: int, radius: float) -> float:
    """Width of the digit whose tip is contour index i, half a palm radius back from the tip."""
    n = len(contour)
    step = max(2, int(round(0.5 * radius)))  # contour points are about a pixel apart
    return float(np.hypot(*(contour[(i - step) % n] - contour[(i + step) % n])))


def _digit_direction(contour: np.ndarray, i: int, radius: float) -> np.ndarray:
    """Which way the digit with its tip at contour index i points: from the midpoints of its two
    sides (0.3 to 0.8 palm radii back along the contour) to the tip."""
    n = len(contour)
    back = np.arange(max(1, int(0.3 * radius)), max(2, int(0.8 * radius)) + 1)
    mids = (contour[(i - back) % n] + contour[(i + back) % n]) / 2.0
    return _unit(contour[i] - mids.mean(axis=0))


def _web_area(contour: np.ndarray, i: int, j: int) -> float:
    """Area between the chord from contour index i to j and the shorter contour arc joining them:
    the web between two neighbouring digits (wide and deep beside the thumb)."""
    n = len(contour)
    forward_arc = (j - i) % n
    start, length = (i, forward_arc) if forward_arc <= n - forward_arc else (j, n - forward_arc)
    arc = contour[(start + np.arange(length + 1)) % n]
    return abs(float(cv2.contourArea(arc.astype(np.float32))))


def _middle_and_thumb(geo: HandGeometry, contour: np.ndarray, tip_index: list[int], palm: np.ndarray,
                      forward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order the tips by angle around the palm; the thumb is the more thumb-like of the two outer
    tips; the middle is the second finger from the thumb side when all four fingers are there,
    else the finger farthest from the palm."""
    tips = [contour[i] for i in tip_index]
    angles = np.array([np.arctan2(_cross(forward, t - palm), float(np.dot(forward, t - palm))) for t in tips])
    order = np.argsort(angles)
    tips, tip_index, angles = [tips[k] for k in order], [tip_index[k] for k in order], angles[order]
    dist = np.array([float(np.hypot(*(t - palm))) for t in tips])
    radius = geo.palm_radius
    if len(tips) == 1:
        geo.problems.append("one fingertip")
        normal = np.array([-forward[1], forward[0]])
        return tips[0], palm + forward * 1.3 * radius + normal * 2.0 * radius
    if len(tips) == 2:
        geo.problems.append("two fingertips")
        k = int(np.argmax(dist))
        return tips[k], tips[1 - k]

    directions = [_digit_direction(contour, i, radius) for i in tip_index]
    reach = np.array([float(np.dot(t - palm, forward)) for t in tips])
    usual = _unit(np.median(np.array(directions), axis=0))

    def thumb_side_score(end: int, neighbour: int) -> float:
        """Thumb-likeness of an outer tip, to compare with the other side's: the thumb has the
        wider web and angle to its neighbour, is thicker, points further off the others' way
        and ends lower (each term is about 1 for a typical thumb-versus-little-finger
        difference)."""
        web = _web_area(contour, tip_index[end], tip_index[neighbour]) / radius ** 2
        gap = abs(float(angles[end] - angles[neighbour]))
        width = _digit_width(contour, tip_index[end], radius) / radius
        off = float(np.arccos(np.clip(np.dot(directions[end], usual), -1.0, 1.0)))
        shortfall = 1.0 - reach[end] / max(float(reach.max()), 1e-6)
        return float(np.log(max(web, 1e-3)) + gap / np.deg2rad(15.0) + np.log(max(width, 1e-3)) / 0.2
                     + 0.5 * off / np.deg2rad(15.0) + 0.5 * shortfall / 0.15)

    # On the right of the fingers (high angles) lies the thumb of a film that is not mirrored,
    # which nearly all are: that side starts with a lead.
    low_side = thumb_side_score(0, 1)
    high_side = thumb_side_score(len(tips) - 1, len(tips) - 2) + MIRROR_PRIOR
    geo.webs = (low_side, high_side)
    if low_side >= high_side:
        thumb, fingers = tips[0], tips[1:]
    else:
        thumb, fingers = tips[-1], tips[:-1][::-1]
    if abs(low_side - high_side) < 1.0:
        geo.problems.append("thumb side unclear")
    # reach of each finger from about the wrist (the palm centre sits off the axis when the
    # thumb is spread)
    below = palm - forward * radius
    finger_dist = [float(np.hypot(*(f - below))) for f in fingers]
    if len(fingers) == 4:
        middle = fingers[1]
        if max(finger_dist) > 1.12 * finger_dist[1]:
            geo.problems.append("second finger from the thumb is not the longest")
    elif len(fingers) == 3:
        # one finger lost (most often the little one, thin and short): the second from the thumb,
        # unless the first reaches clearly further (then the index was lost)
        geo.problems.append("3 fingers besides the thumb")
        middle = fingers[0] if finger_dist[0] > 1.05 * finger_dist[1] else fingers[1]
    else:
        geo.problems.append(f"{len(fingers)} fingers besides the thumb")
        middle = fingers[int(np.argmax(finger_dist[:3]))]
    return middle, thumb


def _to_original(point: np.ndarray, scale: float, shape: tuple[int, int]) -> tuple[float, float]:
    """Working pixels to the original image's pixels (pixel centres align), kept inside the image."""
    x = float(np.clip((point[0] + 0.5) / scale - 0.5, 0, shape[1] - 1))
    y = float(np.clip((point[1] + 0.5) / scale - 0.5, 0, shape[0] - 1))
    return x, y


def detect_keypoints(image: np.ndarray, mask: np.ndarray | None = None) -> HandKeypoints:
    """The heuristic's three points for one radiograph (original pixels), never raising on a
    valid image: a hopeless one gets a low-confidence guess."""
    gray = as_gray_uint8(image)
    if mask is None:
        work = working_mask(gray)
    else:
        small, scale = working_copy(gray)
        m = cv2.resize(np.asarray(mask, np.uint8) * 255, (small.shape[1], small.shape[0])) >= 128
        work = WorkingMask(small, fill_holes(m), scale, 1.0, 4, 0.0)
    geo = analyse(work.mask)
    middle, thumb, capitate = geo.middle, geo.thumb, geo.capitate
    if middle is None:
        h, w = work.mask.shape
        middle, thumb, capitate = np.array([w / 2, 0.1 * h]), np.array([0.8 * w, 0.4 * h]), np.array([w / 2, 0.75 * h])
    axis = middle - (geo.wrist if geo.wrist is not None else capitate)
    mirrored = _cross(axis, thumb - capitate) < 0
    confidence = _confidence(work, geo)
    shape = gray.shape
    return HandKeypoints(middle=_to_original(middle, work.scale, shape), thumb=_to_original(thumb, work.scale, shape),
                         capitate=_to_original(capitate, work.scale, shape), confidence=confidence,
                         mirrored=bool(mirrored), method="heuristic")


def _within(value: float, lo: float, hi: float, soft: float) -> float:
    """1 inside [lo, hi], falling linearly to 0 over `soft` outside it."""
    return float(np.clip(1.0 - max(lo - value, value - hi, 0.0) / soft, 0.0, 1.0))


def _confidence(work: WorkingMask, geo: HandGeometry) -> float:
    """How far to trust the points, in [0, 1]: a hand-like mask, five digits found, no problem
    met on the way, and a plausible hand (thumb tip 30-72% of the way from wrist to middle tip
    and 20-75% of that length off the axis; hand length 2.4-5.5 palm radii)."""
    if geo.middle is None or geo.wrist is None:
        return 0.0
    mask_q = float(np.sqrt(np.clip(work.score, 0.0, 1.0)))
    n = len(geo.tips)
    tips_q = 1.0 if n == 5 else 0.75 if n in (4, 6) else 0.4
    axis = geo.middle - geo.wrist
    length = float(np.hypot(*axis))
    if length < 1e-6:
        return 0.0
    axis = axis / length
    thumb = geo.thumb - geo.wrist
    along, side = float(np.dot(thumb, axis)) / length, abs(_cross(axis, thumb)) / length
    plausible = (_within(along, 0.3, 0.72, 0.15) * _within(side, 0.2, 0.75, 0.2)
                 * _within(length / max(geo.palm_radius, 1e-6), 2.4, 5.5, 1.0))
    return float(np.clip(mask_q * tips_q * plausible * 0.6 ** len(geo.problems), 0.0, 1.0))
