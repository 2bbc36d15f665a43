"""Cross-validation folds: one saved split that every model reads.

The full RSNA training set has one canonical split, `folds.csv` at the project root, so
results stay comparable across machines and resolutions. A subset of RSNA ids (the 100 px
set in ../shared, a user's partial download) reuses the canonical fold of each id; an RSNA set
plus a few extra ids is extended explicitly (`python -m src folds --input DIR --extend`). Any
other dataset (the phantom) gets its own split. Every dataset's assignment is written to
`working/<dataset>/folds.csv` with `folds.json` beside it (mode, canonical, seed, n_folds and
the sha256 of folds.csv); `read_folds_meta(work_dir)` checks the pair before training.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from ..utils.errors import DataError, UserError
from ..utils.io import file_sha256, read_id_csv, read_json_object, write_csv, write_json
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
    if np.bincount(strata).max() < n_folds:  # too few images of either sex to stratify (StratifiedKFold refuses)
        log.warning("%d images are too few to stratify %d folds by sex and age; split unstratified", len(table),
                    n_folds)
        strata = np.zeros(len(table), dtype=np.int64)
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


MAX_LISTED = 10  # ids named in an error message


def _label_mismatches(table: pd.DataFrame, canonical: pd.DataFrame) -> pd.DataFrame:
    """Rows of the ids in both tables whose boneage or sex differ (columns id, boneage, male, *_c)."""
    merged = table[["id", "boneage", "male"]].merge(canonical[["id", "boneage", "male"]], on="id", how="inner",
                                                    suffixes=("", "_c"))
    same = np.isclose(merged["boneage"].astype(float), merged["boneage_c"].astype(float)) & (
        merged["male"].astype(bool) == merged["male_c"].astype(bool))
    return merged[~same]


def _describe_mismatch(row) -> str:
    parts = []
    if not np.isclose(float(row.boneage), float(row.boneage_c)):
        parts.append(f"boneage {row.boneage:g} here vs {row.boneage_c:g}")
    if bool(row.male) != bool(row.male_c):
        parts.append(f"male {bool(row.male)} here vs {bool(row.male_c)}")
    return f"id {row.id}: " + ", ".join(parts)


def extend_command(input_dir: str | os.PathLike | None) -> str:
    """The command that extends the canonical split with a dataset's extra ids."""
    where = shlex.quote(str(input_dir)) if input_dir is not None else "DIR"
    return f"python -m src folds --input {where} --extend"


def _audited_input(work_dir: Path) -> str | None:
    """The dataset root recorded by the audit in `work_dir/audit.json`, if any (for advice messages)."""
    try:
        return json.loads((Path(work_dir) / "audit.json").read_text()).get("input")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class FoldAssignment:
    folds: pd.DataFrame
    mode: str  # "canonical-subset", "canonical-extended" or "own"
    path: Path


def extend_canonical(extra: pd.DataFrame, canonical: pd.DataFrame, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Folds for ids that are not in the canonical file, by a deterministic stratified rule.

    Within each sex, the extra ids are ordered by age (then id) and cut into bins of K
    consecutive ages (K = the canonical number of folds; the last bin may be short). Each bin
    deals its ids to the folds in an order drawn from `np.random.default_rng(seed)`, with the
    folds that hold the fewest images so far (canonical plus extra) first, so the extra ids
    spread over sex x age like the canonical split and fold sizes stay level. The result
    depends only on the canonical file, the extra ids with their labels, and the seed.
    """
    n_folds = int(canonical["fold"].max()) + 1
    extra = extra[["id", "boneage", "male"]].copy()
    extra["male"] = extra["male"].astype(bool)
    extra = extra.assign(_k=_id_sort_key(extra["id"])).sort_values(["male", "boneage", "_k"], kind="stable")
    sizes = np.bincount(canonical["fold"].to_numpy(dtype=int), minlength=n_folds).astype(np.int64)
    rng = np.random.default_rng(seed)
    folds = np.full(len(extra), -1, dtype=int)
    for value in (False, True):
        members = np.flatnonzero(extra["male"].to_numpy() == value)
        for start in range(0, len(members), n_folds):
            chunk = members[start:start + n_folds]
            tie_break = rng.permutation(n_folds)
            order = sorted(range(n_folds), key=lambda k: (sizes[k], tie_break[k]))
            for slot, idx in enumerate(chunk):
                folds[idx] = order[slot]
                sizes[order[slot]] += 1
    out = extra.drop(columns="_k").copy()
    out["fold"] = folds
    return out.reset_index(drop=True)


def resolve_folds(
    table: pd.DataFrame,
    work_dir: Path,
    canonical_path: Path = CANONICAL_FOLDS,
    n_folds: int | None = None,
    seed: int = DEFAULT_SEED,
    rebuild: bool = False,
    extend: bool = False,
    input_dir: str | os.PathLike | None = None,
) -> FoldAssignment:
    """Fold assignment for a dataset's labelled training table; writes `work_dir/folds.csv` and
    `work_dir/folds.json` (mode, canonical, seed, n_folds, sha256 of folds.csv).

    The rule: a dataset is RSNA data when at least one of its ids is in the canonical file
    (any overlap counts: ids are the RSNA image numbers, and the phantom's ids start above
    every RSNA id). RSNA data never gets a silent split of its own:

    * every shared id must carry the canonical labels, else a DataError names the ids and
      both values (the data or the canonical file is wrong, and results would not compare);
    * every id takes its canonical fold ("canonical-subset");
    * ids missing from the canonical file are a DataError that prints the way forward,
      `python -m src folds --input DIR --extend`. With `extend=True` the canonical ids keep
      their canonical folds and the extra ids are dealt to folds by `extend_canonical`
      (mode "canonical-extended", seed saved). A saved extended split is reused as long as it
      covers exactly these ids, matches its checksum, and keeps the canonical folds.

    A dataset with no id in the canonical file (the phantom) gets, or reuses, its own
    stratified split ("own") of `n_folds` folds (default 5; None reuses a saved split whatever its
    number of folds); `rebuild=True` replaces it. `input_dir` only improves messages
    (it defaults to the root recorded by the audit in `work_dir/audit.json`).
    """
    table = table[["id", "boneage", "male"]].copy()
    table["id"] = table["id"].astype(str)
    table["male"] = table["male"].astype(bool)
    work_dir = Path(work_dir)
    out_path = work_dir / "folds.csv"
    if Path(canonical_path).is_file():
        canonical = read_id_csv(canonical_path)
        shared = table["id"].isin(set(canonical["id"]))
        if shared.any():
            return _resolve_rsna(table, canonical, Path(canonical_path), work_dir, seed, extend,
                                 input_dir if input_dir is not None else _audited_input(work_dir))
    if extend:
        raise DataError(f"--extend adds ids to the canonical split, but none of the {len(table)} ids of this "
                        f"dataset are in {canonical_path}: it gets its own split, so drop --extend")

    if out_path.is_file() and not rebuild:
        rebuild_command = (f"python -m src folds --input "
                           f"{shlex.quote(str(input_dir or _audited_input(work_dir) or 'DIR'))} --rebuild")
        existing = read_id_csv(out_path)
        if set(existing["id"]) != set(table["id"]):
            raise DataError(
                f"{out_path} was built for other ids ({len(set(table['id']) - set(existing['id']))} ids of the "
                f"data are missing from it); rerun `{rebuild_command}` to make a new split"
            )
        try:
            meta = read_folds_meta(work_dir)  # folds.json present, and folds.csv still matches its checksum
        except UserError as exc:
            raise DataError(f"the saved split cannot be trusted: {exc}. To replace it with a new split run "
                            f"`{rebuild_command}`") from exc
        if meta.get("mode") != "own":
            raise DataError(f"{out_path} was written as a {meta.get('mode')!r} split, but none of the ids are in "
                            f"{canonical_path} now; rerun `{rebuild_command}` to give the dataset its own split")
        if n_folds is not None and meta["n_folds"] != n_folds:
            raise DataError(f"{out_path} is a saved {meta['n_folds']}-fold split, not {n_folds} folds; rerun "
                            f"`{rebuild_command} --n-folds {n_folds}` to replace it")
        check_folds(existing, n_folds=meta["n_folds"])
        return FoldAssignment(existing, "own", out_path)
    n_folds = DEFAULT_N_FOLDS if n_folds is None else n_folds
    folds = build_folds(table, n_folds=n_folds, seed=seed)
    check_folds(folds, n_folds=n_folds)
    _log_balance(folds, f"own split, seed {seed}")
    write_csv(folds[FOLD_COLUMNS], out_path)
    _write_meta(out_path, "own", None, seed=seed, n_folds=n_folds)
    return FoldAssignment(folds, "own", out_path)


def _resolve_rsna(table: pd.DataFrame, canonical: pd.DataFrame, canonical_path: Path, work_dir: Path, seed: int,
                  extend: bool, input_dir) -> FoldAssignment:
    out_path = work_dir / "folds.csv"
    n_shared = int(table["id"].isin(set(canonical["id"])).sum())
    bad = _label_mismatches(table, canonical)
    if len(bad):
        shown = "; ".join(_describe_mismatch(r) for r in bad.head(MAX_LISTED).itertuples(index=False))
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise DataError(
            f"{len(bad)} of the {n_shared} RSNA ids of this dataset have labels that differ from the canonical "
            f"fold file {canonical_path} (the value here vs the canonical one): {shown}{more}. Either the data "
            f"or its label CSV is not the RSNA release the canonical split was built from; fix the labels "
            f"(folds are never rebuilt silently for RSNA ids)"
        )
    canonical_folds = canonical[["id", "fold"]]
    missing = sorted(set(table["id"]) - set(canonical["id"]), key=_sort_key_scalar)
    if not missing:
        folds = table.merge(canonical_folds, on="id", how="left")
        check_folds(folds, stratified=False)
        _log_balance(folds, "canonical subset")
        write_csv(folds[FOLD_COLUMNS], out_path)
        _write_meta(out_path, "canonical-subset", canonical_path, seed=None, n_folds=int(canonical["fold"].max()) + 1)
        return FoldAssignment(folds[FOLD_COLUMNS], "canonical-subset", out_path)

    if not extend:
        reused = _reuse_extended(table, canonical, work_dir)
        if reused is not None:
            return reused
        raise DataError(
            f"{len(missing)} of the {len(table)} training ids are not in the canonical fold file {canonical_path} "
            f"(first: {missing[:MAX_LISTED]}), while {n_shared} are RSNA ids; refusing to refold silently. "
            f"To keep every RSNA id in its canonical fold and deal the {len(missing)} extra id(s) to folds by a "
            f"seeded stratified rule, run:\n  {extend_command(input_dir)}\n"
            f"(If instead your data is a new full RSNA release, rebuild the committed canonical split from its "
            f"label file with `python -m src folds --canonical LABELS_CSV`.)"
        )

    in_canonical = table[~table["id"].isin(set(missing))]
    base = in_canonical.merge(canonical_folds, on="id", how="left")
    extra = extend_canonical(table[table["id"].isin(set(missing))], canonical, seed=seed)
    folds = pd.concat([base[FOLD_COLUMNS], extra[FOLD_COLUMNS]], ignore_index=True)
    folds = folds.sort_values("id", key=_id_sort_key, kind="stable").reset_index(drop=True)
    n_folds = int(canonical["fold"].max()) + 1
    check_folds(folds, n_folds=n_folds, stratified=False)
    log.info("folds: added %d id(s) that are not in %s to the canonical split (seed %d); the %d canonical id(s) "
             "keep their folds", len(extra), canonical_path, seed, len(base))
    _log_balance(folds, "canonical extended")
    write_csv(folds[FOLD_COLUMNS], out_path)
    _write_meta(out_path, "canonical-extended", canonical_path, seed=seed, n_folds=n_folds,
                extra={"n_canonical": len(base), "n_added": len(extra)})
    return FoldAssignment(folds[FOLD_COLUMNS], "canonical-extended", out_path)


def _reuse_extended(table: pd.DataFrame, canonical: pd.DataFrame, work_dir: Path) -> FoldAssignment | None:
    """A saved canonical-extended split that still fits this table exactly, else None."""
    out_path = work_dir / "folds.csv"
    meta = _read_meta_quietly(work_dir)
    if meta is None or meta.get("mode") != "canonical-extended" or not out_path.is_file():
        return None
    try:
        read_folds_meta(work_dir)
        existing = read_id_csv(out_path)
    except UserError as exc:
        log.warning("saved extended split not reused: %s", exc)
        return None
    if set(existing["id"]) != set(table["id"]) or not existing["id"].is_unique:
        return None
    kept = existing.merge(canonical[["id", "fold"]], on="id", suffixes=("", "_c"))
    if not (kept["fold"] == kept["fold_c"]).all():
        return None
    labels = existing.merge(table, on="id", suffixes=("", "_t"))
    if not (np.isclose(labels["boneage"], labels["boneage_t"]) & (labels["male"] == labels["male_t"])).all():
        return None
    log.info("folds: reusing the extended canonical split in %s (%d id(s) added, seed %s)", out_path,
             len(existing) - len(kept), meta.get("seed"))
    return FoldAssignment(existing[FOLD_COLUMNS], "canonical-extended", out_path)


def _sort_key_scalar(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _write_meta(path: Path, mode: str, canonical: Path | None, seed: int | None, n_folds: int,
                extra: dict | None = None) -> None:
    write_json(
        {
            "mode": mode,
            "canonical": str(canonical) if canonical else None,
            "seed": seed,
            "n_folds": n_folds,
            "sha256": file_sha256(path),
            **(extra or {}),
        },
        path.with_suffix(".json"),
    )


def _read_meta_quietly(work_dir: Path) -> dict | None:
    try:
        meta = json.loads((Path(work_dir) / "folds.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def read_folds_meta(work_dir: str | os.PathLike) -> dict:
    """`work_dir/folds.json` (mode, canonical, seed, n_folds, sha256), checked against folds.csv.

    Raises UserError when folds.json or folds.csv is missing or unreadable, when n_folds is not
    a positive integer, or when folds.csv no longer has the sha256 recorded at build time (edited
    by hand, or written by something else). The engine reads `n_folds` from here.
    """
    work_dir = Path(work_dir)
    meta_path, csv_path = work_dir / "folds.json", work_dir / "folds.csv"
    where = _audited_input(work_dir)
    command = f"python -m src folds --input {shlex.quote(str(where)) if where else 'DIR'}"
    meta = read_json_object(meta_path, f"build the folds with `{command}`")
    if not csv_path.is_file():
        raise UserError(f"{csv_path} not found (its {meta_path.name} is there): rebuild the folds with `{command}`")
    n_folds = meta.get("n_folds")
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise UserError(f"{meta_path}: n_folds is {n_folds!r}, not an integer >= 2; rebuild the folds with `{command}`")
    digest = file_sha256(csv_path)
    if meta.get("sha256") != digest:
        raise UserError(
            f"{csv_path} does not match the checksum in {meta_path} (edited by hand, or written by something "
            f"else): rebuild it with `{command}`" + (" --rebuild" if meta.get("mode") == "own" else "")
        )
    return meta


def _log_balance(folds: pd.DataFrame, what: str) -> None:
    log.info(
        "folds (%s): %d ids, male share %.3f, mean age %.1f", what, len(folds), folds["male"].mean(),
        folds["boneage"].mean(),
    )
    for b in fold_balance(folds):
        log.info("  fold %d: n=%d male=%.3f mean_age=%.1f", b.fold, b.n, b.male_share, b.mean_age)
