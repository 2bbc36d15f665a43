"""One PNG that puts phantoms beside real radiographs, to judge realism by eye.

Rows: phantoms at their own aspect, the same phantoms squashed to 100x100 the way the shared
real set was made, and real 100px radiographs of similar ages.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ...utils.io import atomic_path
from ..layout import TRAIN_CSV, TRAIN_DIR
from .growth import make_subject
from .render import render
from .scene import plan_scene

PREVIEW_SUBJECTS = ((10, False), (30, True), (60, False), (96, True), (126, False), (150, True), (174, False), (210, True))
PREVIEW_SCALE = 0.3


def phantom_tiles(seed: int = 0, scale: float = PREVIEW_SCALE) -> list[tuple[np.ndarray, str]]:
    """Eight phantoms spanning the age range, both sexes, rendered in memory."""
    tiles = []
    for i, (age, male) in enumerate(PREVIEW_SUBJECTS):
        img, _ = render(plan_scene(seed, 900000 + i, scale, make_subject(age, male)))
        tiles.append((img, f"{age} m {'M' if male else 'F'}"))
    return tiles


def real_tiles(real_root: str | os.PathLike | None, n: int = 8) -> list[tuple[np.ndarray, str]]:
    """n real radiographs whose ages span the set (evenly spaced quantiles); [] if the set is absent."""
    if real_root is None:
        return []
    root = Path(real_root)
    if not (root / TRAIN_CSV).is_file():
        return []
    import pandas as pd

    df = pd.read_csv(root / TRAIN_CSV).sort_values("boneage").reset_index(drop=True)
    tiles = []
    for q in (np.arange(n) + 0.5) / n:
        row = df.iloc[int(q * (len(df) - 1))]
        img = cv2.imread(str(root / TRAIN_DIR / f"{int(row['id'])}.png"), cv2.IMREAD_GRAYSCALE)
        if img is not None:
            male = str(row["male"]).strip().lower() in ("true", "1", "m")
            tiles.append((img, f"{int(row['boneage'])} m {'M' if male else 'F'}"))
    return tiles


def make_preview(out_png: str | os.PathLike, real_root: str | os.PathLike | None = None, seed: int = 0,
                 scale: float = PREVIEW_SCALE) -> tuple[Path, int]:
    """Draw the preview; return (path, number of real tiles shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phantoms = phantom_tiles(seed, scale)
    reals = real_tiles(real_root)
    rows = [("phantom", phantoms),
            ("phantom 100x100", [(cv2.resize(im, (100, 100), interpolation=cv2.INTER_AREA), t) for im, t in phantoms])]
    if reals:
        rows.append(("real RSNA 100px", reals))
    cols = len(phantoms)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.0 * cols, 2.6 * len(rows)), squeeze=False)
    for r, (name, tiles) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(tiles):
                img, title = tiles[c]
                ax.imshow(img, cmap="gray", vmin=0, vmax=255, aspect="auto" if r else "equal")
                ax.set_title(f"{name}\n{title}", fontsize=8)
    fig.suptitle("synthetic hand phantom vs real radiographs" if reals else
                 "synthetic hand phantom (real radiographs not available)", fontsize=11)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png, len(reals)
