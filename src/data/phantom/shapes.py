"""Small 2-D geometry helpers: bone and soft-tissue outlines as polygons in hand millimetres.

Everything is a polygon so that one affine transform (rotation, scale, shift, mirroring) moves
bones, soft tissue and keypoints together, and cv2.fillPoly can draw them at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Shape:
    """A bone (or bone part): `outer` at `density`, `inner` (the medulla / spongy core) at `inner_density`."""

    outer: np.ndarray
    density: float
    inner: np.ndarray | None = None
    inner_density: float = 0.0


def unit(angle_deg: float) -> np.ndarray:
    """Direction at `angle_deg` from +y (distal) towards +x (the thumb side of a left hand)."""
    a = np.deg2rad(angle_deg)
    return np.array([np.sin(a), np.cos(a)])


def normal(d: np.ndarray) -> np.ndarray:
    """The left-hand normal of direction d (points to -x when d points distally)."""
    return np.array([-d[1], d[0]])


def bone_outline(p0, p1, hw0: float, hw_mid: float, hw1: float, cap0: float, cap1: float,
                 flare: float = 0.22, n: int = 9, arc: int = 7) -> np.ndarray:
    """A long bone from p0 to p1 (its extreme ends): a waisted shaft with rounded ends.

    hw0/hw1 are the half-widths at the ends, hw_mid along the shaft; cap0/cap1 how far the
    rounded ends bulge (0 gives a flat end); `flare` how far (fraction of the length) the
    ends widen into the shaft.
    """
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0)) + 1e-9
    d = (p1 - p0) / length
    nrm = normal(d)
    a = p0 + d * cap0
    span = max(length - cap0 - cap1, 1e-6)
    t = np.linspace(0.0, 1.0, n)
    if flare < 0.1:  # long forearm bones: sample the flaring end densely
        t = np.unique(np.concatenate([t, 1.0 - np.linspace(0.0, 3.0 * flare, n), np.linspace(0.0, 3.0 * flare, n)]))
    hw = (hw_mid + (hw0 - hw_mid) * np.exp(-(t / flare) ** 2)
          + (hw1 - hw_mid) * np.exp(-((1.0 - t) / flare) ** 2))
    axis = a + np.outer(t * span, d)
    left = axis + np.outer(hw, nrm)
    right = axis - np.outer(hw, nrm)
    phi = np.linspace(0.0, np.pi, arc)[1:-1]
    b = a + d * span
    cap_end = b + np.outer(hw1 * np.cos(phi), nrm) + np.outer(cap1 * np.sin(phi), d)
    cap_start = a - np.outer(hw0 * np.cos(phi), nrm) - np.outer(cap0 * np.sin(phi), d)
    return np.vstack([left, cap_end, right[::-1], cap_start])


def blob(center, half_across: float, half_along: float, angle_deg: float = 0.0,
         power: float = 2.0, n: int = 24) -> np.ndarray:
    """A (super)ellipse: `half_along` along the direction `angle_deg`, `half_across` across it."""
    d = unit(angle_deg)
    nrm = normal(d)
    th = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(th), np.sin(th)
    e = 2.0 / power
    u = np.sign(c) * np.abs(c) ** e * half_across
    v = np.sign(s) * np.abs(s) ** e * half_along
    return np.asarray(center, float) + np.outer(u, nrm) + np.outer(v, d)


def quad(p0, p1, hw0: float, hw1: float) -> np.ndarray:
    """A trapezoid along p0->p1 (used for the bony bridge of a fusing growth plate)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-9)
    nrm = normal(d)
    return np.array([p0 + nrm * hw0, p1 + nrm * hw1, p1 - nrm * hw1, p0 - nrm * hw0])


def tube(points, half_widths, tip: float = 0.0, arc: int = 9) -> np.ndarray:
    """The outline of a finger: a polyline with a half-width per node and a round tip `tip` beyond the end."""
    pts = np.asarray(points, float)
    hw = np.asarray(half_widths, float)
    seg = np.diff(pts, axis=0)
    seg /= np.linalg.norm(seg, axis=1, keepdims=True) + 1e-9
    dirs = np.vstack([seg[:1], seg[:-1] + seg[1:], seg[-1:]])
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True) + 1e-9
    nrms = np.stack([-dirs[:, 1], dirs[:, 0]], axis=1)
    left = pts + nrms * hw[:, None]
    right = pts - nrms * hw[:, None]
    d, nrm, end = dirs[-1], nrms[-1], pts[-1]
    phi = np.linspace(0.0, np.pi, arc)[1:-1]
    cap = end + np.outer(hw[-1] * np.cos(phi), nrm) + np.outer(max(tip, 1e-6) * np.sin(phi), d)
    return np.vstack([left, cap, right[::-1]])
