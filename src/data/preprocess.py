"""Preprocessing as a pipeline of named steps, run once per image before the cache.

A step is `fn(image, ctx, **params) -> image`. `ctx` carries the target size and the image's
table row, so later steps (hand mask, keypoints, affine registration, crops A/B/C) plug in
here by name without touching the cache or the training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ..utils.errors import UserError


@dataclass
class StepContext:
    size: int
    record: dict[str, Any] = field(default_factory=dict)  # the image's row: id, path, male, ...
    work_dir: Path | None = None  # working/<dataset>/: where a step finds its dataset's tables
    inputs: dict[str, Any] = field(default_factory=dict)  # step name -> fingerprint of the files it reads


StepFn = Callable[..., np.ndarray]
InputsFn = Callable[[dict, Path], dict]
STEPS: dict[str, StepFn] = {}
STEP_INPUTS: dict[str, InputsFn] = {}
PIPELINE_CHECKS: list[Callable[[list[dict]], None]] = []


def register_step(name: str, inputs: InputsFn | None = None):
    """Register a step by name. A step that reads files besides the image (registration reads
    the dataset's keypoint table) gives `inputs(step, work_dir) -> dict`, a fingerprint of those
    files (e.g. their sha256): the cache key hashes it, so a changed file gets a fresh cache."""

    def wrap(fn: StepFn) -> StepFn:
        STEPS[name] = fn
        if inputs is not None:
            STEP_INPUTS[name] = inputs
        return fn

    return wrap


def register_pipeline_check(check: Callable[[list[dict]], None]):
    """Register `check(steps)`, run by validate_steps on the normalised list: a family of steps
    that must come in some order (register before region) rejects a bad list before any work."""
    PIPELINE_CHECKS.append(check)
    return check


def step_inputs(steps: list[dict], work_dir: Path) -> dict[str, Any]:
    """The fingerprints of the files the steps read besides the images (empty for most recipes)."""
    return {step["name"]: STEP_INPUTS[step["name"]](step, work_dir)
            for step in steps if step["name"] in STEP_INPUTS}


@register_step("pad_square")
def pad_square(image: np.ndarray, ctx: StepContext, value: int = 0) -> np.ndarray:
    """Pad the short side (centred) so resizing keeps the hand's proportions."""
    h, w = image.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return cv2.copyMakeBorder(image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=value)


@register_step("resize")
def resize(image: np.ndarray, ctx: StepContext, interpolation: str = "area") -> np.ndarray:
    """Resize to the experiment's square working size (area for shrinking keeps thin cortex visible)."""
    flags = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
    if interpolation not in flags:
        raise UserError(f"resize: interpolation must be one of {sorted(flags)}")
    h, w = image.shape[:2]
    flag = flags[interpolation] if max(h, w) > ctx.size else cv2.INTER_CUBIC
    return cv2.resize(image, (ctx.size, ctx.size), interpolation=flag)


@register_step("autocontrast")
def autocontrast(image: np.ndarray, ctx: StepContext, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Stretch the [low, high] percentile range to 0..255 (evens out exposure between scanners)."""
    lo, hi = np.percentile(image, (low, high))
    if hi <= lo:
        return image
    return np.clip((image.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


@register_step("clahe")
def clahe(image: np.ndarray, ctx: StepContext, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Local contrast equalisation, a common radiograph normalisation."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(image)


def validate_steps(steps: list[dict]) -> list[dict]:
    """Normalise the config's step list and reject unknown names early."""
    normalised = []
    for i, step in enumerate(steps or []):
        if isinstance(step, str):
            step = {"name": step}
        if not isinstance(step, dict) or "name" not in step:
            raise UserError(f"data.preprocess[{i}] must be a name or a mapping with 'name', got {step!r}")
        if step["name"] not in STEPS:
            raise UserError(f"data.preprocess[{i}]: unknown step '{step['name']}' (known: {sorted(STEPS)})")
        normalised.append(dict(step))
    if not normalised or normalised[-1]["name"] != "resize":
        raise UserError("data.preprocess must end with the 'resize' step")
    for check in PIPELINE_CHECKS:
        check(normalised)
    return normalised


def run_pipeline(image: np.ndarray, steps: list[dict], ctx: StepContext) -> np.ndarray:
    for step in steps:
        params = {k: v for k, v in step.items() if k != "name"}
        image = STEPS[step["name"]](image, ctx, **params)
    return image


# Steps defined elsewhere register themselves on import; importing them here makes them known
# wherever a pipeline is validated or run (the cache's worker processes included).
from ..registration import steps as _registration_steps  # noqa: E402,F401  (register, region)
