"""Pixels from a Scene: soft tissue, bones, then what the X-ray room adds (collimation, lead
markers, exposure, noise, blur).

Drawing happens straight in image pixels (polygons moved by the scene's affine), so the hand
mask and keypoints share the image's geometry exactly; bones are drawn inside their bounding
boxes only, which keeps a full-size (1514x2044) image well under a second.
"""

from __future__ import annotations

import cv2
import numpy as np

from .growth import subject_rng
from .scene import Scene

SHIFT = 3  # sub-pixel bits for cv2.fillPoly
_ONE = 1 << SHIFT


def _fixed(pts_px: np.ndarray) -> np.ndarray:
    return np.round(pts_px * _ONE).astype(np.int32).reshape(-1, 1, 2)


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Return (image uint8 HxW, hand mask uint8 0/255 HxW)."""
    rng = subject_rng(scene.seed, scene.image_id, 2)  # pixel noise: its own stream
    h, w = scene.height, scene.width
    look = scene.look
    soft_aa = np.zeros((h, w), np.uint8)
    for poly in scene.hand.soft:  # one call each: overlapping polygons in one call would cancel out
        cv2.fillPoly(soft_aa, [_fixed(scene.to_px(poly))], 255, cv2.LINE_AA, SHIFT)
    mask = np.where(soft_aa >= 128, np.uint8(255), np.uint8(0))

    soft = _soft_thickness(soft_aa, scene.hand.pad * scene.px_per_mm)
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    gx, gy = look["gradient"]
    img = soft * np.float32(look["soft"])
    img += np.float32(look["background"]) + np.float32(gx) * xx + np.float32(gy) * yy

    bone, (x0, y0, x1, y1) = _bones(scene, h, w)  # only the box around the bones
    if bone.size:
        bone = cv2.GaussianBlur(bone, (0, 0), max(0.25 * scene.px_per_mm, 0.4))
        bone = _texture(bone, rng, scene, look["texture"])
        bone = 1.0 - np.exp(np.float32(-1.5) * bone)  # overlapping bones saturate like real attenuation
        img[y0:y1, x0:x1] += np.float32(look["bone"] / 0.78) * bone
    _collimate(img, scene, look["collimation"])
    _markers(img, scene, look["markers"])
    blur = look["blur_mm"] * scene.px_per_mm
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img += rng.standard_normal((h, w), dtype=np.float32) * np.float32(look["noise"])
    return _expose(img, look), mask


def _soft_thickness(soft_aa: np.ndarray, pad_px: float) -> np.ndarray:
    """Soft tissue is thicker in the middle of the palm and forearm than at the finger edges."""
    h, w = soft_aa.shape
    k = max(1.0, pad_px / 2.0)
    small = cv2.resize(soft_aa, (max(int(w / k), 8), max(int(h / k), 8)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small.astype(np.float32) / 255.0, (0, 0), 5.0)
    thick = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return (soft_aa.astype(np.float32) / 255.0) * (0.35 + 0.65 * thick)


def _bones(scene: Scene, h: int, w: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Bone density in the box around all bones (plus a blur margin): (layer, (x0, y0, x1, y1))."""
    bones = [[(scene.to_px(s.outer), None if s.inner is None else scene.to_px(s.inner), s) for s in bone]
             for bone in scene.hand.bones]
    allp = np.vstack([p for bone in bones for p, _, _ in bone])
    margin = int(np.ceil(2.0 * scene.px_per_mm)) + 2
    bx0, by0 = np.maximum(np.floor(allp.min(axis=0)).astype(int) - margin, 0)
    bx1, by1 = np.minimum(np.ceil(allp.max(axis=0)).astype(int) + margin, [w, h])
    layer = np.zeros((max(by1 - by0, 0), max(bx1 - bx0, 0)), np.float32)
    lh, lw = layer.shape
    for parts in bones:
        pts = np.vstack([p for p, _, _ in parts])
        x0, y0 = np.maximum(np.floor(pts.min(axis=0)).astype(int) - (bx0, by0) - 2, 0)
        x1, y1 = np.minimum(np.ceil(pts.max(axis=0)).astype(int) - (bx0, by0) + 2, [lw, lh])
        if x1 <= x0 or y1 <= y0:
            continue
        off = np.array([bx0 + x0, by0 + y0], float)
        patch = np.zeros((y1 - y0, x1 - x0), np.float32)
        tmp = np.zeros(patch.shape, np.uint8)
        for outer, inner, shape in parts:  # parts of one bone merge by max
            tmp[:] = 0
            cv2.fillPoly(tmp, [_fixed(outer - off)], 255, cv2.LINE_AA, SHIFT)
            val = tmp.astype(np.float32) * np.float32(shape.density / 255.0)
            if inner is not None:
                tmp[:] = 0
                cv2.fillPoly(tmp, [_fixed(inner - off)], 255, cv2.LINE_AA, SHIFT)
                val += tmp.astype(np.float32) * np.float32((shape.inner_density - shape.density) / 255.0)
            np.maximum(patch, val, out=patch)
        layer[y0:y1, x0:x1] += patch  # separate bones add up where they overlap
    return layer, (int(bx0), int(by0), int(bx1), int(by1))


def _texture(bone: np.ndarray, rng: np.random.Generator, scene: Scene, amount: float) -> np.ndarray:
    """Trabecular mottling: low-resolution noise that modulates bone density a little."""
    h, w = bone.shape
    k = max(1.0, 0.5 * scene.px_per_mm)
    small = rng.standard_normal((max(int(h / k), 4), max(int(w / k), 4)), dtype=np.float32)
    tex = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return bone * (1.0 + np.float32(amount) * tex)


def _collimate(img: np.ndarray, scene: Scene, col: dict | None) -> None:
    """A rotated exposure field: bright unexposed film outside it, or a lighter cassette plate inside."""
    if not col:
        return
    h, w = img.shape
    centre = np.array([w / 2, h / 2])
    t = np.deg2rad(col["angle"])
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    hand = (scene.to_px(scene.hand.outline) - centre) @ rot  # hand in the field's frame
    ml, mt, mr, mb = col["margins"]
    lo = np.minimum(np.array([-w / 2 + ml * w, -h / 2 + mt * h]), hand.min(axis=0) - 0.03 * w)
    hi = np.maximum(np.array([w / 2 - mr * w, h / 2 - mb * h]), hand.max(axis=0) + 0.03 * w)
    if col["kind"] == "plate":  # the plate stops short of the forearm end
        hi[1] = min(hi[1], h / 2 - mb * h)
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]]) @ rot.T + centre
    field = np.zeros((h, w), np.uint8)
    cv2.fillPoly(field, [_fixed(corners)], 255, cv2.LINE_AA, SHIFT)
    f = field.astype(np.float32) / 255.0
    if col["kind"] == "bright_outside":
        img *= f
        img += (1.0 - f) * np.float32(col["level"])
    else:
        img += f * np.float32(col["level"])


def _markers(img: np.ndarray, scene: Scene, markers: list[dict]) -> None:
    """Lead letters ("L") and technician text, bright like lead, in a corner away from the hand."""
    if not markers:
        return
    h, w = img.shape
    hand = scene.to_px(scene.hand.outline)
    lo, hi = hand.min(axis=0), hand.max(axis=0)
    x = y = 0
    step = 1  # stacked text goes down from a top corner, up from a bottom one
    for mk in markers:
        scale_px = mk["size"] * h
        font_scale = scale_px / 22.0
        thick = max(1, int(round(scale_px / 9)))
        (tw, th), base = cv2.getTextSize(mk["text"], cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
        if mk["corner"] >= 0:
            order = [mk["corner"]] + [c for c in (1, 0, 3, 2) if c != mk["corner"]]
            for corner in order:
                x = int(0.04 * w) if corner in (0, 1) else int(0.96 * w - tw)
                y = int(0.06 * h + th) if corner in (0, 2) else int(0.92 * h)
                overlap = (x < hi[0] and x + tw > lo[0] and y - th < hi[1] and y > lo[1])
                if not overlap:
                    break
            step = 1 if corner in (0, 2) else -1
            prev_th = th
        else:
            y = y + int(1.6 * th) + base if step > 0 else y - int(1.6 * prev_th) - base
            prev_th = th
        if not th <= y < h - base:
            continue
        x0, y0 = max(x - thick * 2, 0), max(y - th - thick * 2, 0)
        x1, y1 = min(x + tw + thick * 2, w), min(y + base + thick * 2, h)
        if x1 <= x0 or y1 <= y0:
            continue
        patch = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.putText(patch, mk["text"], (x - x0, y - y0), cv2.FONT_HERSHEY_SIMPLEX, font_scale, 255, thick, cv2.LINE_AA)
        roi = img[y0:y1, x0:x1]
        if mk["box"]:
            roi[:] = roi * 0.3 + 0.25
        np.maximum(roi, patch.astype(np.float32) / 255.0 * 0.98, out=roi)


def _expose(img: np.ndarray, look: dict) -> np.ndarray:
    """Film/detector response: gamma and window (black/white levels) through a lookup table."""
    lut = np.linspace(0.0, 1.0, 1024, dtype=np.float32) ** np.float32(look["gamma"])
    lut = np.clip(look["black"] + (look["white"] - look["black"]) * lut, 0, 255).round().astype(np.uint8)
    idx = np.clip(img, 0.0, 1.0)
    idx *= 1023.0
    return lut[idx.astype(np.uint16)]
