"""How good are the keypoints: errors against ground truth, in pixels and as a share of the hand's
length (so a 100 px thumbnail and a 2000 px film are judged alike), and a picture grid to look at.

Truth tables use the canonical columns `id, middle_x, middle_y, thumb_x, thumb_y, capitate_x,
capitate_y` and optionally `wrist_x, wrist_y, mcp_x, mcp_y`, all in the original image's pixels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..utils.io import atomic_path
from .types import POINTS, HandKeypoints

# Without a wrist point (the phantom's truth), the wrist is put on the line from the middle tip
# through the capitate, this share of the tip-capitate distance beyond the capitate. The phantom's
# hand (src/data/phantom/anatomy.py) has its origin on the radius' articular surface (the wrist),
# the capitate 18 mm above it and the middle tip about 187 mm above it (bones 184 mm plus a third
# of the soft-tissue pad), so the wrist lies 18 / (187 - 18) = 0.107 of the tip-capitate distance
# beyond the capitate; the hand's length is then 1.107 times the tip-capitate distance (against
# the phantom's own wrist point, 200 planned scenes: 1.107 +- 0.002).
WRIST_BEYOND_CAPITATE = 0.107
TOLERANCE = 0.10  # "within tolerance": closer than this share of the hand's length
COLOURS = {"middle": (40, 40, 230), "thumb": (40, 200, 40), "capitate": (230, 120, 30)}  # BGR


def _xy(table: pd.DataFrame, name: str) -> np.ndarray:
    return table[[f"{name}_x", f"{name}_y"]].to_numpy(dtype=float)


def _has(table: pd.DataFrame, name: str) -> bool:
    return f"{name}_x" in table.columns and f"{name}_y" in table.columns


def hand_length(truth: pd.DataFrame) -> pd.Series:
    """Middle-finger tip to wrist distance per row (original pixels), indexed like `truth`.

    Uses `wrist_x, wrist_y` where given; elsewhere derives the wrist from the capitate (see
    WRIST_BEYOND_CAPITATE). NaN where neither is known.
    """
    middle = _xy(truth, "middle")
    derived = np.full(len(truth), np.nan)
    if _has(truth, "capitate"):
        derived = (1.0 + WRIST_BEYOND_CAPITATE) * np.linalg.norm(middle - _xy(truth, "capitate"), axis=1)
    length = derived
    if _has(truth, "wrist"):
        direct = np.linalg.norm(middle - _xy(truth, "wrist"), axis=1)
        length = np.where(np.isnan(direct), derived, direct)
    return pd.Series(length, index=truth.index, name="hand_length")


def point_errors(pred: pd.DataFrame, truth: pd.DataFrame, points=POINTS) -> pd.DataFrame:
    """Per image and point: the error in pixels and as a share of the hand's length (ids joined as
    strings; only points that both tables have)."""
    pred = pred.assign(id=pred["id"].astype(str))
    truth = truth.assign(id=truth["id"].astype(str))
    truth = truth.assign(hand_length=hand_length(truth))
    shared = [p for p in points if _has(pred, p) and _has(truth, p)]
    cols = [f"{p}_{a}" for p in shared for a in "xy"]
    joined = pred[["id"] + cols].merge(truth[["id", "hand_length"] + cols], on="id", suffixes=("_pred", "_true"))
    out = pd.DataFrame({"id": joined["id"], "hand_length": joined["hand_length"]})
    for p in shared:
        dx = joined[f"{p}_x_pred"] - joined[f"{p}_x_true"]
        dy = joined[f"{p}_y_pred"] - joined[f"{p}_y_true"]
        out[f"{p}_px"] = np.hypot(dx, dy)
        out[f"{p}_frac"] = out[f"{p}_px"] / out["hand_length"]
    return out


def score_keypoints(pred: pd.DataFrame, truth: pd.DataFrame, points=POINTS) -> pd.DataFrame:
    """Per point: n, median and 90th-percentile error in pixels and as a share of the hand's
    length, and the share of images within TOLERANCE of the hand's length. Rows: the points
    present in both tables; an image counts for a point when both tables give it (and, for the
    shares, when its hand length is known)."""
    errors = point_errors(pred, truth, points)
    rows = []
    for p in points:
        if f"{p}_px" not in errors:
            continue
        px = errors[f"{p}_px"].dropna()
        frac = errors[f"{p}_frac"].dropna()
        rows.append({
            "point": p, "n": int(len(px)),
            "median_px": float(px.median()) if len(px) else math.nan,
            "p90_px": float(px.quantile(0.9)) if len(px) else math.nan,
            "median_frac": float(frac.median()) if len(frac) else math.nan,
            "p90_frac": float(frac.quantile(0.9)) if len(frac) else math.nan,
            "within_10pct": float((frac <= TOLERANCE).mean()) if len(frac) else math.nan,
        })
    return pd.DataFrame(rows, columns=["point", "n", "median_px", "p90_px", "median_frac", "p90_frac",
                                       "within_10pct"]).set_index("point")


def _tile(image: np.ndarray, keypoints: HandKeypoints | None, title: str, height: int) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3].astype(np.uint8), cv2.COLOR_RGB2GRAY)
    if img.dtype != np.uint8:
        lo, hi = float(np.min(img)), float(np.max(img))
        img = ((img.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)
    scale = height / img.shape[0]
    width = max(int(round(img.shape[1] * scale)), 1)
    tile = cv2.cvtColor(cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if scale < 1 else
                                   cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)
    radius = max(3, height // 60)
    if keypoints is not None:
        for name in POINTS:
            x, y = getattr(keypoints, name)
            if np.isfinite(x) and np.isfinite(y):
                centre = (int(round((x + 0.5) * scale - 0.5)), int(round((y + 0.5) * scale - 0.5)))
                cv2.circle(tile, centre, radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
                cv2.circle(tile, centre, radius, COLOURS[name], -1, cv2.LINE_AA)
    banner = np.full((18, width, 3), 32, np.uint8)
    cv2.putText(banner, title[: max(4, width // 7)], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.vstack([banner, tile])


def keypoint_grid(images: list[np.ndarray], keypoints: list[HandKeypoints | None], titles: list[str],
                  path: str | os.PathLike, columns: int = 6, tile_height: int = 256) -> Path:
    """A PNG grid: each image with its three points (middle red, thumb green, capitate blue) and
    a title line (e.g. id and confidence). Written atomically; returns the path."""
    if not (len(images) == len(keypoints) == len(titles)):
        raise ValueError(f"images, keypoints and titles differ in length ({len(images)}, {len(keypoints)}, "
                         f"{len(titles)})")
    if not images:
        raise ValueError("no images to draw")
    tiles = [_tile(img, kp, str(t), tile_height) for img, kp, t in zip(images, keypoints, titles)]
    cell_w = max(t.shape[1] for t in tiles)
    cell_h = tiles[0].shape[0]
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    grid = np.zeros((rows * cell_h + 20, columns * cell_w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[r * cell_h:(r + 1) * cell_h, c * cell_w:c * cell_w + tile.shape[1]] = tile
    x = 4
    for name in POINTS:  # legend along the bottom
        cv2.circle(grid, (x + 6, grid.shape[0] - 10), 5, COLOURS[name], -1, cv2.LINE_AA)
        cv2.putText(grid, name, (x + 16, grid.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
        x += 110
    ok, buf = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path
