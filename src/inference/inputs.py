"""The images to predict and each one's sex: one file with `--sex M|F`, or a folder with a CSV
(`id,male` as the workbench writes it, or Kaggle's `Case ID,Sex`).

A bad request fails here, before any model loads, with a message naming the file or row."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..data.images import read_gray8
from ..data.intake import ROLE_KEYS, SEX_SPELLINGS, header_key, normalise_sex
from ..utils.errors import DataError, UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_LISTED = 10


def parse_sex(text: str) -> bool:
    """`M`/`F` (or male/female, True/False, 1/0) -> True for male; anything else is an error."""
    male = normalise_sex(text)
    if male is None:
        raise UserError(f"--sex {text!r} is not a sex: give M or F (accepted: {SEX_SPELLINGS})")
    return male


def image_id(path: Path) -> str:
    """An image's id is its file name without the suffix, as in the Kaggle layout (`1377.png`)."""
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def list_images(path: str | Path) -> pd.DataFrame:
    """`id, path` of one image file, or of every image file in a folder (not recursive).

    A single file must decode as an image (else a DataError naming it); in a folder, files with
    other suffixes are skipped with a warning, and two files with one id are an error."""
    path = Path(path)
    if path.is_file():
        read_gray8(path)  # a non-image, truncated or empty file: DataError naming it
        return pd.DataFrame({"id": [image_id(path)], "path": [str(path.resolve())]})
    if not path.is_dir():
        raise UserError(f"{path}: no such image file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.warning("%s: skipped %d files that are not images by their suffix (first: %s)", path, len(others),
                    others[:MAX_LISTED])
    if not images:
        raise UserError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    table = pd.DataFrame({"id": [image_id(p) for p in images], "path": [str(p.resolve()) for p in images]})
    dup = table.loc[table["id"].duplicated(keep=False)]
    if len(dup):
        raise DataError(f"{path}: several files share an id: {sorted(dup['path'].map(lambda p: Path(p).name))[:MAX_LISTED]}")
    return table


def _column(columns: list[str], role: str) -> str | None:
    keys = {header_key(c): c for c in columns}
    for key in ROLE_KEYS[role]:
        if key in keys:
            return keys[key]
    return None


def read_sex_csv(path: str | Path) -> pd.Series:
    """id -> male (bool) from a CSV with an id column (`id`, `Case ID`, ...) and a sex column
    (`male`, `Sex`, ...), in the file's order. Ids may carry an image suffix (`1377.png`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--sex-csv {path}: no such file")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    id_col, sex_col = _column(list(table.columns), "id"), _column(list(table.columns), "male")
    if id_col is None or sex_col is None:
        raise DataError(f"{path}: needs an id column (id or 'Case ID') and a sex column (male or Sex); "
                        f"found {list(table.columns)}")
    ids = table[id_col].str.strip().map(lambda s: image_id(Path(s)) if Path(s).suffix.lower() in IMAGE_SUFFIXES else s)
    male = table[sex_col].map(normalise_sex)
    bad = male.isna()
    if bad.any():
        rows = [f"row {i + 2} (id {ids[i]!r}: {table[sex_col][i]!r})" for i in table.index[bad][:MAX_LISTED]]
        raise DataError(f"{path}: unknown sex in column {sex_col!r} at {', '.join(rows)}; expected {SEX_SPELLINGS}")
    empty = ids == ""
    if empty.any():
        raise DataError(f"{path}: empty id in column {id_col!r} at rows {(table.index[empty][:MAX_LISTED] + 2).tolist()}")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{path}: ids listed more than once: {sorted(set(dup))[:MAX_LISTED]}")
    return pd.Series(male.astype(bool).to_numpy(), index=ids.to_numpy(), name="male")


def with_sex(images: pd.DataFrame, sex: str | None = None, sex_csv: str | Path | None = None) -> pd.DataFrame:
    """`id, path, male` for every image: from `--sex` (one image) or from the CSV, in the CSV's
    order. An image the CSV does not list is an error; CSV rows without an image are logged."""
    if (sex is None) == (sex_csv is None):
        raise UserError("give the sex with --sex M|F (one image) or --sex-csv FILE (id,male or Case ID,Sex), "
                        "not both and not neither")
    if sex is not None:
        if len(images) != 1:
            raise UserError(f"--sex gives the sex of one image, but {len(images)} were found; "
                            f"give a CSV with --sex-csv FILE")
        return images.assign(male=parse_sex(sex))
    table = read_sex_csv(sex_csv)
    missing = sorted(set(images["id"]) - set(table.index))
    if missing:
        raise DataError(f"{sex_csv} gives no sex for {len(missing)} of the {len(images)} images "
                        f"(first: {missing[:MAX_LISTED]})")
    unused = [i for i in table.index if i not in set(images["id"])]
    if unused:
        log.warning("%s lists %d ids without an image (first: %s)", sex_csv, len(unused), unused[:MAX_LISTED])
    order = {image: k for k, image in enumerate(table.index)}
    out = images.assign(male=images["id"].map(table).astype(bool), _order=images["id"].map(order))
    return out.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
