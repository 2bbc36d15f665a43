"""Keypoint tables in, keypoint tables out.

Keypoints arrive in several spellings: the phantom's ground truth (`middle_finger_tip_x`, ...),
the real 100 px set's hand annotations (`middle_finger4_x` for the tip, `middle_finger1_x` for
the MCP joint, `wrist_x`), COCO keypoint JSON, and this project's own
`registration/keypoints.csv`. `read_keypoint_table` turns each into one canonical table, so the
detector, the registration step and QA compare like with like:

    id (str), middle_x, middle_y, thumb_x, thumb_y, capitate_x, capitate_y, wrist_x, wrist_y,
    mcp_x, mcp_y  (each point only when the source has it; NaN = not annotated),

followed by the source's other columns unchanged (`mirrored` parsed as bool, `confidence` as a
number). Coordinates are never rescaled: they stay in the pixels of the images they were made on.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.errors import DataError
from ..utils.io import write_csv
from .types import KEYPOINT_COLUMNS, METHODS, HandKeypoints

TABLE_POINTS = ("middle", "thumb", "capitate", "wrist", "mcp")
POINT_ALIASES: dict[str, tuple[str, ...]] = {
    "middle": ("middle", "middle_tip", "middle_finger_tip", "middle_finger4"),
    "thumb": ("thumb", "thumb_tip", "thumb4"),
    "capitate": ("capitate",),
    "wrist": ("wrist",),
    "mcp": ("mcp", "middle_mcp", "middle_finger1"),
}
_CANONICAL = {alias: point for point, aliases in POINT_ALIASES.items() for alias in aliases}
_TRUE, _FALSE = {"true", "1", "1.0", "yes"}, {"false", "0", "0.0", "no"}


def canonical_point(name: str) -> str | None:
    """The canonical point a source name stands for (`Middle Finger4` -> middle), None if unknown."""
    return _CANONICAL.get(str(name).strip().lower().replace(" ", "_").replace("-", "_"))


def read_keypoint_table(path: str | os.PathLike) -> pd.DataFrame:
    """A keypoint CSV or COCO JSON as the canonical table (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: keypoint file not found")
    table = _read_coco(path) if path.suffix.lower() == ".json" else _read_csv(path)
    _check_ids(table, path)
    return table.reset_index(drop=True)


# ------------------------------------------------------------------------------ CSV


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    if "id" not in raw.columns:
        raise DataError(f"{path}: no 'id' column (found {list(raw.columns)})")
    sources: dict[str, str] = {}  # canonical column -> source column
    for column in raw.columns:
        stem, _, axis = column.rpartition("_")
        point = canonical_point(stem) if axis.lower() in ("x", "y") else None
        if point is None:
            continue
        target = f"{point}_{axis.lower()}"
        if target in sources:
            raise DataError(f"{path}: columns '{sources[target]}' and '{column}' both give {target}")
        sources[target] = column
    points = [p for p in TABLE_POINTS if f"{p}_x" in sources or f"{p}_y" in sources]
    for point in points:
        if f"{point}_x" not in sources or f"{point}_y" not in sources:
            have = sources.get(f"{point}_x") or sources.get(f"{point}_y")
            raise DataError(f"{path}: column '{have}' has no matching {'y' if f'{point}_x' in sources else 'x'} column")
    if not points:
        raise DataError(f"{path}: no keypoint columns (<point>_x, <point>_y for any of "
                        f"{sorted(_CANONICAL)}); found {list(raw.columns)}")
    out = pd.DataFrame({"id": raw["id"].str.strip()})
    for point in points:
        for axis in "xy":
            out[f"{point}_{axis}"] = _numbers(raw[sources[f"{point}_{axis}"]], path, sources[f"{point}_{axis}"])
    used = set(sources.values()) | {"id"}
    for column in raw.columns:
        if column not in used:
            out[column] = _parse_extra(raw[column], path, column)
    return out


def _numbers(values: pd.Series, path: Path, column: str) -> pd.Series:
    """Numbers, with empty cells and NaN as missing; anything else that is not a number is an error."""
    text = values.astype(str).str.strip()
    numbers = pd.to_numeric(text.where(~text.str.lower().isin(["", "nan", "none", "null"])), errors="coerce")
    bad = numbers.isna() & ~text.str.lower().isin(["", "nan", "none", "null"])
    if bad.any():
        rows = (np.flatnonzero(bad.to_numpy())[:10] + 2).tolist()  # 1-based, after the header
        raise DataError(f"{path}: column '{column}' is not a number in rows {rows} "
                        f"(e.g. {text[bad].iloc[0]!r})")
    return numbers.astype(float)


def _parse_extra(values: pd.Series, path: Path, column: str) -> pd.Series:
    if column == "mirrored":
        text = values.astype(str).str.strip().str.lower()
        bad = ~text.isin(_TRUE | _FALSE)
        if bad.any():
            rows = (np.flatnonzero(bad.to_numpy())[:10] + 2).tolist()
            raise DataError(f"{path}: column 'mirrored' has values other than True/False or 1/0 in rows {rows}")
        return text.isin(_TRUE)
    if column in ("confidence", "width", "height", "orig_width", "orig_height"):
        return _numbers(values, path, column)
    return values


def _check_ids(table: pd.DataFrame, path: Path) -> None:
    ids = table["id"].astype(str)
    empty = ids.str.strip() == ""
    if empty.any():
        raise DataError(f"{path}: empty id in rows {(np.flatnonzero(empty.to_numpy())[:10] + 2).tolist()}")
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise DataError(f"{path}: duplicate ids {dup[:10]}")


# ------------------------------------------------------------------------------ COCO


def _read_coco(path: Path) -> pd.DataFrame:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations",
                                                                                    "categories")):
        raise DataError(f"{path}: not COCO keypoints (needs lists 'images', 'annotations', 'categories')")
    names: dict = {}
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("keypoints"), list):
            raise DataError(f"{path}: categories[{i}] needs 'id' and a 'keypoints' list of names")
        names[cat["id"]] = [canonical_point(n) for n in cat["keypoints"]]
    image_ids: dict = {}
    for i, image in enumerate(doc["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise DataError(f"{path}: images[{i}] has no 'id'")
        stem = Path(str(image.get("file_name", ""))).stem
        image_ids[image["id"]] = stem if stem.isdigit() else str(image["id"])
    points = [p for p in TABLE_POINTS if any(p in n for n in names.values())]
    if not points:
        raise DataError(f"{path}: no category names a known keypoint ({sorted(_CANONICAL)})")
    rows: dict[str, dict] = {}
    for i, ann in enumerate(doc["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in image_ids:
            raise DataError(f"{where}: image_id {ann.get('image_id') if isinstance(ann, dict) else ann!r} "
                            f"is not in 'images'")
        cat_names = names.get(ann.get("category_id", next(iter(names), None)))
        if cat_names is None:
            raise DataError(f"{where}: unknown category_id {ann.get('category_id')!r}")
        flat = ann.get("keypoints")
        if not isinstance(flat, list) or len(flat) != 3 * len(cat_names):
            raise DataError(f"{where}: 'keypoints' must be {3 * len(cat_names)} numbers [x, y, v, ...]")
        image_id = image_ids[ann["image_id"]]
        if image_id in rows:
            raise DataError(f"{where}: a second annotation for image {image_id}")
        row = {"id": image_id, **{f"{p}_{a}": math.nan for p in points for a in "xy"}}
        for k, point in enumerate(cat_names):
            x, y, visible = flat[3 * k: 3 * k + 3]
            if point is not None and visible:
                row[f"{point}_x"], row[f"{point}_y"] = float(x), float(y)
        rows[image_id] = row
    return pd.DataFrame(list(rows.values()), columns=["id"] + [f"{p}_{a}" for p in points for a in "xy"])


# ------------------------------------------------------------------------------ records


def keypoints_from_row(row: dict) -> HandKeypoints | None:
    """A canonical row as HandKeypoints, None when a point the frame needs is missing.

    Tables without the detector's columns (ground truth) count as certain and not mirrored."""
    values = [row.get(f"{p}_{a}") for p in ("middle", "thumb", "capitate") for a in "xy"]
    if any(v is None or not np.isfinite(float(v)) for v in values):
        return None
    confidence = row.get("confidence", 1.0)
    method = row.get("method", "learned")
    return HandKeypoints(middle=(float(values[0]), float(values[1])), thumb=(float(values[2]), float(values[3])),
                         capitate=(float(values[4]), float(values[5])),
                         confidence=float(confidence) if confidence is not None else 0.0,
                         mirrored=bool(row.get("mirrored", False)),
                         method=method if method in METHODS else "fallback")


def write_keypoint_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write `table` atomically with exactly KEYPOINT_COLUMNS, sorted by id."""
    missing = [c for c in KEYPOINT_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"keypoint table for {path} lacks columns {missing}")
    bad = sorted(set(table["method"]) - set(METHODS))
    if bad:
        raise DataError(f"keypoint table for {path}: unknown method(s) {bad} (known: {list(METHODS)})")
    out = table[KEYPOINT_COLUMNS].copy()
    out["id"] = out["id"].astype(str)
    out["mirrored"] = out["mirrored"].astype(bool)
    return write_csv(out.sort_values("id", kind="stable"), path)
