"""Augmentation for training and deterministic views for test-time augmentation (TTA).

All geometry goes through albumentations' Affine, so training augmentation and TTA views
share one implementation. No horizontal flip by default: the hands are left hands.
"""

from __future__ import annotations

import albumentations as A
import cv2

from ..utils.errors import UserError


def _pair(value, centre: float = 0.0) -> tuple[float, float]:
    if isinstance(value, (list, tuple)):
        return float(value[0]), float(value[1])
    return centre - float(value), centre + float(value)


def build_train_transform(aug: dict) -> A.Compose:
    """Random affine, brightness/contrast/gamma, mild blur and noise (config section `aug`)."""
    ops = [
        A.Affine(
            rotate=_pair(aug.get("rotate", 0)),
            scale=_pair(aug.get("scale", 1.0), 1.0) if not isinstance(aug.get("scale"), (list, tuple)) else tuple(aug["scale"]),
            translate_percent=_pair(aug.get("shift", 0)),
            keep_ratio=True,  # isotropic: bone proportions carry age, so x and y scale together
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=float(aug.get("p_affine", 0.0)),
        ),
        A.OneOf(
            [
                A.RandomBrightnessContrast(
                    brightness_limit=aug.get("brightness", 0.0), contrast_limit=aug.get("contrast", 0.0), p=1.0
                ),
                A.RandomGamma(gamma_limit=tuple(aug.get("gamma", (100, 100))), p=1.0),
            ],
            p=float(aug.get("p_color", 0.0)),
        ),
        A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.2), p=float(aug.get("p_blur", 0.0))),
        A.GaussNoise(std_range=(0.01, 0.04), p=float(aug.get("p_noise", 0.0))),
    ]
    if float(aug.get("hflip", 0.0)) > 0:
        ops.append(A.HorizontalFlip(p=float(aug["hflip"])))
    return A.Compose(ops)


def tta_view_name(view: dict) -> str:
    """A column-friendly name: `rotate-6`, `scale0.94`, `shift0.03_0`."""
    if view.get("name"):
        return str(view["name"])
    parts = []
    for key, value in sorted(view.items()):
        values = value if isinstance(value, (list, tuple)) else [value]
        parts.append(key + "_".join(f"{float(v):g}" for v in values))
    return "_".join(parts)


def build_tta_view(view: dict) -> A.Compose:
    """One deterministic view: fixed rotation (deg), scale and shift (fraction of side)."""
    unknown = set(view) - {"name", "rotate", "scale", "shift", "hflip"}
    if unknown:
        raise UserError(f"TTA view {view}: unknown keys {sorted(unknown)} (use rotate, scale, shift, hflip)")
    rotate = float(view.get("rotate", 0.0))
    scale = float(view.get("scale", 1.0))
    shift = view.get("shift", (0.0, 0.0))
    if not isinstance(shift, (list, tuple)):
        shift = (float(shift), float(shift))
    ops = []
    if rotate or scale != 1.0 or any(shift):
        ops.append(
            A.Affine(
                rotate=(rotate, rotate),
                scale=(scale, scale),
                translate_percent={"x": (float(shift[0]),) * 2, "y": (float(shift[1]),) * 2},
                keep_ratio=True,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=1.0,
            )
        )
    if view.get("hflip"):
        ops.append(A.HorizontalFlip(p=1.0))
    return A.Compose(ops)


def build_tta_views(tta: list[dict]) -> list[tuple[str, A.Compose]]:
    views = [(tta_view_name(v), build_tta_view(v)) for v in tta]
    names = [n for n, _ in views]
    if len(set(names)) != len(names):
        raise UserError(f"TTA views must be distinct, got {names}")
    return views
