"""Cross-validation folds: one saved split that every model reads.

The full RSNA training set has one canonical split, `folds.csv` at the project root, so
results stay comparable across machines and resolutions. A subset of RSNA ids (the 100 px
set in ../shared, a user's partial download) reuses the canonical fold of each id. Any other
dataset (the phantom) gets its own split under `working/<dataset>/folds.csv`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from ..utils.errors import DataError
from ..utils.io import file_sha256, read_id_csv, write_csv, write_json
from .layout import CANONICAL_FOLDS

log = logging.getLogger(__name__)

DEFAULT_N_FOLDS = 5
DEFAULT_SEED = 42
FOLD_COLUMNS = ["id", "boneage", "male", "fold"]
MALE_SHARE_TOL = 0.01  # each fold's male share within 1 percentage point of the whole
MEAN_AGE_TOL = 2.0  # each fold's mean age within 2 months of the whole
MIN_FOLD_FOR_BALANCE = 50  # below this a fold's mean age is too noisy for a 2-month check


def stratum_labels(boneage: pd.Series, male: pd.Series, n_folds: int) -> np.ndarray:
    """Joint sex x age-bin label for stratification.

    Within each sex, images are ranked by age and cut into bins of `n_folds` consecutive ages
    (the last short bin joins its neighbour), the finest bins StratifiedKFold accepts. Each
    fold then takes one image of every bin, so folds match in sex ratio and age at any size.
    """
    ages = boneage.to_numpy(dtype=float)
    sex = male.astype(bool).to_numpy()
    strata = np.zeros(len(ages), dtype=np.int64)
    offset = 0
    for value in (False, True):
        members = np.flatnonzero(sex == value)
        if len(members) == 0:
            continue
        order = members[np.argsort(ages[members], kind="stable")]
        n_bins = max(1, len(order) // n_folds)
        bins = np.minimum(np.arange(len(order)) // n_folds, n_bins - 1)
        strata[order] = offset + bins
        offset += n_bins
    return strata


def build_folds(table: pd.DataFrame, n_folds: int = DEFAULT_N_FOLDS, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Assign folds stratified jointly on sex and age bin (scikit-learn's StratifiedKFold)."""
    if len(table) < n_folds:
        raise DataError(f"{len(table)} labelled images cannot be split into {n_folds} folds")
    table = table.sort_values("id", key=_id_sort_key).reset_index(drop=True)
    strata = stratum_labels(table["boneage"], table["male"], n_folds)
    folds = np.full(len(table), -1, dtype=int)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(len(table)), strata)):
        folds[val_idx] = fold
    out = table[["id", "boneage", "male"]].copy()
    out["male"] = out["male"].astype(bool)
    out["fold"] = folds
    return out


def _id_sort_key(ids: pd.Series) -> pd.Series:
    """Numeric ids sort numerically, names after them alphabetically."""
    numeric = pd.to_numeric(ids, errors="coerce")
    return numeric.fillna(np.inf).astype(float) if numeric.notna().all() else ids.astype(str)


@dataclass
class FoldBalance:
    fold: int
    n: int
    male_share: float
    mean_age: float


def fold_balance(folds: pd.DataFrame) -> list[FoldBalance]:
    return [
        FoldBalance(int(k), len(g), float(g["male"].mean()), float(g["boneage"].mean()))
        for k, g in folds.groupby("fold")
    ]


def check_folds(folds: pd.DataFrame, n_folds: int | None = None, stratified: bool = True) -> None:
    """Raise DataError unless every id appears once, folds are 0..K-1, and (if `stratified`)
    each fold's male share and mean age match the whole within the stated tolerances.

    The male-share tolerance widens only by one image's share of a small fold, so the full RSNA
    split is held to exactly 1 pp and 2 months. Folds under MIN_FOLD_FOR_BALANCE images (toy
    sets in tests) skip the balance checks, with a warning.
    """
    missing = [c for c in FOLD_COLUMNS if c not in folds.columns]
    if missing:
        raise DataError(f"fold table lacks columns {missing}; it has {list(folds.columns)}")
    dup = folds["id"][folds["id"].duplicated()]
    if len(dup):
        raise DataError(f"fold table lists ids more than once: {sorted(dup.unique())[:10]}")
    ks = sorted(folds["fold"].unique())
    expected = list(range(n_folds if n_folds else len(ks)))
    if ks != expected:
        raise DataError(f"fold numbers are {ks}, expected {expected}")
    if not stratified:
        return
    male_all, age_all = folds["male"].mean(), folds["boneage"].mean()
    balance = fold_balance(folds)
    if min(b.n for b in balance) < MIN_FOLD_FOR_BALANCE:
        log.warning("folds of %d images are too small for the balance checks; skipped", min(b.n for b in balance))
        return
    for b in balance:
        tol_male = max(MALE_SHARE_TOL, 1.0 / b.n)
        if abs(b.male_share - male_all) > tol_male:
            raise DataError(
                f"fold {b.fold}: male share {b.male_share:.3f} differs from the whole ({male_all:.3f}) "
                f"by more than {tol_male:.3f}"
            )
        if abs(b.mean_age - age_all) > MEAN_AGE_TOL:
            raise DataError(
                f"fold {b.fold}: mean age {b.mean_age:.2f} differs from the whole ({age_all:.2f}) "
                f"by more than {MEAN_AGE_TOL} months"
            )


def assert_disjoint(train_ids, val_ids, context: str = "") -> None:
    """Nothing leaks across folds: no id is both trained on and validated."""
    leaked = set(map(str, train_ids)) & set(map(str, val_ids))
    if leaked:
        raise AssertionError(f"fold leak{(' in ' + context) if context else ''}: {sorted(leaked)[:10]}")


def _labels_agree(table: pd.DataFrame, canonical: pd.DataFrame) -> pd.Series:
    merged = table[["id", "boneage", "male"]].merge(canonical, on="id", how="inner", suffixes=("", "_c"))
    return (np.isclose(merged["boneage"], merged["boneage_c"]) & (merged["male"] == merged["male_c"])).set_axis(
        merged["id"]
    )


@dataclass
class FoldAssignment:
    folds: pd.DataFrame
    mode: str  # "canonical-subset" or "own"
    path: Path


def resolve_folds(
    table: pd.DataFrame,
    work_dir: Path,
    canonical_path: Path = CANONICAL_FOLDS,
    n_folds: int = DEFAULT_N_FOLDS,
    seed: int = DEFAULT_SEED,
    rebuild: bool = False,
) -> FoldAssignment:
    """Fold assignment for a dataset's labelled training table.

    If its ids are RSNA ids (found in the canonical file with the same labels), every id takes
    its canonical fold, and an id missing there is an error, never a silent refold. Otherwise
    the dataset gets (or reuses) its own stratified split in `work_dir/folds.csv`.
    """
    table = table[["id", "boneage", "male"]].copy()
    table["id"] = table["id"].astype(str)
    out_path = Path(work_dir) / "folds.csv"
    if Path(canonical_path).is_file():
        canonical = read_id_csv(canonical_path)
        agree = _labels_agree(table, canonical)
        if len(agree) and agree.mean() > 0.5:
            missing = sorted(set(table["id"]) - set(canonical["id"]), key=str)
            if missing:
                raise DataError(
                    f"{len(missing)} training ids are not in the canonical fold file {canonical_path} "
                    f"(first: {missing[:10]}); refusing to refold silently. Rebuild the canonical file "
                    f"with `python -m src folds --canonical --input <full RSNA>` if your data is a new release."
                )
            disagree = agree[~agree].index.tolist()
            if disagree:
                raise DataError(
                    f"{len(disagree)} ids have labels that differ from {canonical_path} (first: {disagree[:10]})"
                )
            folds = table.merge(canonical[["id", "fold"]], on="id", how="left")
            check_folds(folds, stratified=False)
            _log_balance(folds, "canonical subset")
            write_csv(folds[FOLD_COLUMNS], out_path)
            _write_meta(out_path, "canonical-subset", canonical_path, seed=None, n_folds=folds["fold"].nunique())
            return FoldAssignment(folds[FOLD_COLUMNS], "canonical-subset", out_path)

    if out_path.is_file() and not rebuild:
        existing = read_id_csv(out_path)
        if set(existing["id"]) == set(table["id"]):
            check_folds(existing, n_folds=n_folds)
            return FoldAssignment(existing, "own", out_path)
        raise DataError(
            f"{out_path} was built for other ids ({len(set(table['id']) - set(existing['id']))} ids of the data "
            f"are missing from it); rerun `python -m src folds --rebuild` to make a new split"
        )
    folds = build_folds(table, n_folds=n_folds, seed=seed)
    check_folds(folds, n_folds=n_folds)
    _log_balance(folds, f"own split, seed {seed}")
    write_csv(folds[FOLD_COLUMNS], out_path)
    _write_meta(out_path, "own", None, seed=seed, n_folds=n_folds)
    return FoldAssignment(folds, "own", out_path)


def _write_meta(path: Path, mode: str, canonical: Path | None, seed: int | None, n_folds: int) -> None:
    write_json(
        {
            "mode": mode,
            "canonical": str(canonical) if canonical else None,
            "seed": seed,
            "n_folds": n_folds,
            "sha256": file_sha256(path),
        },
        path.with_suffix(".json"),
    )


def _log_balance(folds: pd.DataFrame, what: str) -> None:
    log.info(
        "folds (%s): %d ids, male share %.3f, mean age %.1f", what, len(folds), folds["male"].mean(),
        folds["boneage"].mean(),
    )
    for b in fold_balance(folds):
        log.info("  fold %d: n=%d male=%.3f mean_age=%.1f", b.fold, b.n, b.male_share, b.mean_age)
