"""Registration as preprocessing steps: `register` warps each image into the canonical frame by
its keypoints, `region` crops region A, B or C of that frame.

A registered recipe in `data.preprocess` reads

    - {name: register, frame_scale: 0.25, min_confidence: 0.5}
    - {name: region, region: A}          # optional; `name` is the step's, so the region is `region`
    - {name: pad_square}                 # the frame and the regions are not square
    - {name: resize}

`register` reads `working/<dataset>/registration/keypoints.csv` (written by `python -m src
register`). Its sha256 enters the cache key (with every step parameter), so new keypoints or
a new threshold build a new cache, and training retrains. An image whose row says
`method=fallback`, whose confidence is below `min_confidence`, or whose points are missing or
degenerate becomes the fallback frame (the whole image letterboxed), so nothing is dropped.
Pixel-only steps (autocontrast, clahe) may come before `register` or between it and `region`;
nothing that moves pixels may, since the keypoints are in the original image's pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.preprocess import StepContext, register_pipeline_check, register_step
from ..utils.errors import DataError, UserError
from ..utils.io import file_sha256
from .frame import REGIONS, crop_region, fallback_to_frame, warp_to_frame
from .keypoint_io import keypoints_from_row, read_keypoint_table
from .types import KEYPOINT_COLUMNS, HandKeypoints

KEYPOINTS_FILE = Path("registration") / "keypoints.csv"
DEFAULT_FRAME_SCALE = 0.25
DEFAULT_MIN_CONFIDENCE = 0.5
PIXEL_ONLY_STEPS = frozenset({"autocontrast", "clahe"})  # keep every pixel where it is
REGISTER_PARAMS = {"frame_scale", "min_confidence"}
REGION_PARAMS = {"region"}

# per process: keypoint table path -> (sha256, id -> keypoints or None); read once, not per image
_TABLES: dict[str, tuple[str, dict[str, HandKeypoints | None]]] = {}


def keypoint_table_path(work_dir: Path) -> Path:
    return Path(work_dir) / KEYPOINTS_FILE


def _register_inputs(step: dict, work_dir: Path) -> dict:
    """The keypoint table's sha256, for the cache key; a missing table is an error up front."""
    path = keypoint_table_path(work_dir)
    if not path.is_file():
        raise UserError(f"data.preprocess has a 'register' step but {path} does not exist: run "
                        f"`python -m src register --input DIR` on this dataset first")
    return {"keypoints": str(KEYPOINTS_FILE), "sha256": file_sha256(path)}


def load_keypoints(work_dir: Path, sha256: str | None = None) -> dict[str, HandKeypoints | None]:
    """id -> keypoints of the dataset's table (None where a point is missing), read once per process.

    With `sha256`, the table must still be the one the cache key was made from."""
    path = keypoint_table_path(work_dir)
    cached = _TABLES.get(str(path))
    if cached is not None and (sha256 is None or cached[0] == sha256):
        return cached[1]
    actual = file_sha256(path)
    if sha256 is not None and actual != sha256:
        raise DataError(f"{path} changed while the cache was being built (sha256 {actual[:12]}, the cache key "
                        f"has {sha256[:12]}): run the command again")
    table = read_keypoint_table(path)
    missing = [c for c in KEYPOINT_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}: rewrite it with `python -m src register`")
    by_id = {str(row["id"]): keypoints_from_row(row) for row in table.to_dict("records")}
    _TABLES[str(path)] = (actual, by_id)
    return by_id


@register_step("register", inputs=_register_inputs)
def register(image: np.ndarray, ctx: StepContext, frame_scale: float = DEFAULT_FRAME_SCALE,
             min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> np.ndarray:
    """The image in the canonical frame, or the fallback frame when its keypoints are not trusted."""
    if ctx.work_dir is None:
        raise UserError("the 'register' step needs the dataset's working folder (run it through the cache)")
    sha = (ctx.inputs.get("register") or {}).get("sha256")
    by_id = load_keypoints(ctx.work_dir, sha)
    image_id = str(ctx.record.get("id"))
    if image_id not in by_id:
        raise DataError(f"{keypoint_table_path(ctx.work_dir)} has no row for image {image_id}: run "
                        f"`python -m src register --input DIR` (it adds the missing images)")
    kp = by_id[image_id]
    if not trusted(kp, min_confidence):
        return fallback_to_frame(image, frame_scale)
    try:
        return warp_to_frame(image, kp, frame_scale)
    except ValueError:  # the tip and the capitate coincide: no frame to map to
        return fallback_to_frame(image, frame_scale)


def trusted(kp: HandKeypoints | None, min_confidence: float) -> bool:
    """Whether `kp` may register its image (else the image falls back)."""
    return (kp is not None and kp.method != "fallback" and math.isfinite(kp.confidence)
            and kp.confidence >= min_confidence)


@register_step("region")
def region_step(image: np.ndarray, ctx: StepContext, region: str = "A") -> np.ndarray:
    """Region A (whole hand), B (carpals) or C (metacarpals, proximal phalanges) of the frame."""
    return crop_region(image, region)


@register_pipeline_check
def check_registration_steps(steps: list[dict]) -> None:
    """Reject a recipe where registration would read wrong pixels or a parameter is wrong."""
    names = [s["name"] for s in steps]
    if "register" not in names and "region" not in names:
        return
    for name in ("register", "region"):
        if names.count(name) > 1:
            raise UserError(f"data.preprocess has '{name}' {names.count(name)} times; it may appear once")
    if "region" in names and "register" not in names:
        raise UserError("data.preprocess: 'region' crops the registered frame, so 'register' must come before it")
    at = names.index("register")
    moved = [n for n in names[:at] if n not in PIXEL_ONLY_STEPS]
    if moved:
        raise UserError(f"data.preprocess: {moved} come before 'register' but move pixels, while the keypoints are "
                        f"in the original image's pixels; put 'register' first (only {sorted(PIXEL_ONLY_STEPS)} "
                        f"may precede it)")
    if "region" in names:
        crop_at = names.index("region")
        between = [n for n in names[at + 1:crop_at] if n not in PIXEL_ONLY_STEPS]
        if crop_at < at or between:
            raise UserError(f"data.preprocess: 'region' must follow 'register' with only {sorted(PIXEL_ONLY_STEPS)} "
                            f"between them (the order is {names})")
    if "pad_square" not in names[at + 1:]:
        raise UserError("data.preprocess: a registered image is not square; add {name: pad_square} after "
                        "'register'/'region' and before 'resize', or 'resize' squashes the bones")
    _check_params(steps[at], REGISTER_PARAMS)
    scale, threshold = steps[at].get("frame_scale", DEFAULT_FRAME_SCALE), steps[at].get("min_confidence",
                                                                                         DEFAULT_MIN_CONFIDENCE)
    if not _is_number(scale) or not 0 < scale <= 4:
        raise UserError(f"data.preprocess: register.frame_scale must be a number in (0, 4], got {scale!r}")
    if not _is_number(threshold) or not 0 <= threshold <= 1:
        raise UserError(f"data.preprocess: register.min_confidence must be a number in [0, 1], got {threshold!r}")
    if "region" in names:
        step = steps[names.index("region")]
        _check_params(step, REGION_PARAMS)
        if step.get("region", "A") not in REGIONS:
            raise UserError(f"data.preprocess: region.region must be one of {sorted(REGIONS)}, "
                            f"got {step.get('region')!r}")


def _check_params(step: dict, known: set[str]) -> None:
    unknown = sorted(set(step) - known - {"name"})
    if unknown:
        raise UserError(f"data.preprocess: step '{step['name']}' has unknown parameter(s) {unknown} "
                        f"(known: {sorted(known)})")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
