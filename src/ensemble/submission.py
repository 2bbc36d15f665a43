"""The submission: the stack's test predictions as `id,boneage` (months), one row per test id.

A submission that silently lacks ids or carries NaNs scores badly or is rejected after the
upload; it is refused here instead, naming what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.errors import DataError
from ..utils.io import read_id_csv, write_csv


def build_submission(test_table: Path, predictions: Path) -> pd.DataFrame:
    """`id,boneage` for every id of the audited test table, from a predictions CSV (`id,pred`)."""
    if not test_table.is_file():
        raise DataError(f"{test_table} not found: this dataset has no test part, so there is nothing to submit")
    if not predictions.is_file():
        raise DataError(f"{predictions} not found: run `python -m src stack --input DIR` first")
    ids = read_id_csv(test_table)["id"]
    pred = read_id_csv(predictions)
    if "pred" not in pred:
        raise DataError(f"{predictions} has no 'pred' column (columns: {list(pred.columns)})")
    if pred["id"].duplicated().any():
        raise DataError(f"{predictions}: ids predicted more than once: {pred.loc[pred['id'].duplicated(), 'id'].tolist()[:10]}")
    merged = pd.DataFrame({"id": ids}).merge(pred[["id", "pred"]], on="id", how="left")
    missing = merged.loc[merged["pred"].isna() & ~merged["id"].isin(pred["id"]), "id"].tolist()
    if missing:
        raise DataError(f"{predictions} lacks {len(missing)} of the {len(ids)} test ids in {test_table} "
                        f"(first: {missing[:10]}); refusing to write a submission without them")
    bad = merged.loc[~np.isfinite(merged["pred"].astype(float)), "id"].tolist()
    if bad:
        raise DataError(f"{predictions} has NaN or infinite predictions for {len(bad)} test ids (first: {bad[:10]})")
    return pd.DataFrame({"id": merged["id"], "boneage": merged["pred"].astype(float)})


def write_submission(test_table: Path, predictions: Path, out: Path) -> pd.DataFrame:
    submission = build_submission(test_table, predictions)
    write_csv(submission, out)
    return submission
