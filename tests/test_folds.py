"""Folds: determinism, stratification checks, the canonical RSNA split, subset reuse, no silent refold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.data.folds import (
    MALE_SHARE_TOL, MEAN_AGE_TOL, assert_disjoint, build_folds, check_folds, fold_balance, resolve_folds,
)
from src.data.layout import CANONICAL_FOLDS
from src.utils.errors import DataError
from src.utils.io import read_id_csv


def synthetic_labels(n: int, seed: int = 0, start_id: int = 100001) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": [str(start_id + i) for i in range(n)],
        "boneage": np.clip(rng.normal(127, 41, n), 1, 228).round(),
        "male": rng.random(n) < 0.54,
    })


def test_folds_are_deterministic_and_seeded():
    labels = synthetic_labels(1500)
    a = build_folds(labels, n_folds=5, seed=42)
    b = build_folds(labels.sample(frac=1.0, random_state=3), n_folds=5, seed=42)  # row order must not matter
    c = build_folds(labels, n_folds=5, seed=7)
    assert a.set_index("id")["fold"].equals(b.set_index("id")["fold"].loc[a["id"]])
    assert not a["fold"].equals(c["fold"])
    assert sorted(a["fold"].unique()) == [0, 1, 2, 3, 4]


def test_stratification_holds_within_stated_tolerances():
    labels = synthetic_labels(3000, seed=1)
    folds = build_folds(labels, n_folds=5, seed=42)
    check_folds(folds, n_folds=5)
    for b in fold_balance(folds):
        assert abs(b.male_share - folds["male"].mean()) <= max(MALE_SHARE_TOL, 1 / b.n)
        assert abs(b.mean_age - folds["boneage"].mean()) <= MEAN_AGE_TOL
    assert folds["id"].is_unique and len(folds) == 3000


def test_check_folds_rejects_duplicates_gaps_and_imbalance():
    folds = build_folds(synthetic_labels(1000), n_folds=5, seed=42)
    with pytest.raises(DataError, match="more than once"):
        check_folds(pd.concat([folds, folds.head(1)]))
    with pytest.raises(DataError, match="fold numbers"):
        check_folds(folds[folds["fold"] != 2], n_folds=5)
    skewed = folds.copy()
    skewed.loc[skewed["fold"] == 0, "male"] = True
    with pytest.raises(DataError, match="male share"):
        check_folds(skewed)
    old = folds.copy()
    old.loc[old["fold"] == 1, "boneage"] += 30
    with pytest.raises(DataError, match="mean age"):
        check_folds(old)


def test_project_csvs_read_sex_strictly(tmp_path):
    (tmp_path / "ok.csv").write_text("id,male\n1,True\n2,0\n")
    assert read_id_csv(tmp_path / "ok.csv")["male"].tolist() == [True, False]
    (tmp_path / "bad.csv").write_text("id,male\n1,True\n2,X\n")
    with pytest.raises(DataError, match="bad.csv.*rows \\[3\\]"):
        read_id_csv(tmp_path / "bad.csv")


def test_assert_disjoint_catches_a_leak():
    assert_disjoint(["1", "2"], ["3"])
    with pytest.raises(AssertionError, match="leak"):
        assert_disjoint(["1", "2"], ["2", "3"], context="fold 0")


def test_canonical_folds_file_matches_the_real_rsna_labels(shared_dir):
    labels = read_id_csv(shared_dir / "rsna-labels" / "train.csv")
    folds = read_id_csv(CANONICAL_FOLDS)
    assert len(folds) == 12611 == len(labels)
    assert set(folds["id"]) == set(labels["id"])
    merged = folds.merge(labels, on="id", suffixes=("", "_label"))
    assert (merged["boneage"] == merged["boneage_label"]).all()
    assert (merged["male"] == merged["male_label"]).all()
    check_folds(folds, n_folds=5)  # 12,611 rows: held to exactly 1 pp and 2 months
    for b in fold_balance(folds):
        assert abs(b.male_share - folds["male"].mean()) <= 0.01
        assert abs(b.mean_age - folds["boneage"].mean()) <= 2.0
    rebuilt = build_folds(labels, n_folds=5, seed=42)  # the committed file is reproducible from its seed
    assert rebuilt.set_index("id")["fold"].equals(folds.set_index("id")["fold"].loc[rebuilt["id"]])


def test_canonical_file_alone_is_well_formed():
    folds = read_id_csv(CANONICAL_FOLDS)
    assert list(folds.columns) == ["id", "boneage", "male", "fold"]
    assert folds["id"].is_unique and len(folds) == 12611
    assert folds["id"].astype(int).between(1377, 15610).all()
    check_folds(folds, n_folds=5)


def test_rsna_subset_reuses_canonical_folds(tmp_path):
    canonical = read_id_csv(CANONICAL_FOLDS)
    subset = canonical.sample(400, random_state=0)[["id", "boneage", "male"]]
    got = resolve_folds(subset, tmp_path / "work")
    assert got.mode == "canonical-subset"
    merged = got.folds.merge(canonical, on="id", suffixes=("", "_canonical"))
    assert len(merged) == 400 and (merged["fold"] == merged["fold_canonical"]).all()
    assert (tmp_path / "work" / "folds.csv").is_file()


def test_rsna_ids_missing_from_canonical_are_an_error_not_a_refold(tmp_path):
    canonical = read_id_csv(CANONICAL_FOLDS)
    subset = canonical.sample(100, random_state=0)[["id", "boneage", "male"]]
    extra = pd.DataFrame({"id": ["999999"], "boneage": [100.0], "male": [True]})
    with pytest.raises(DataError, match="not in the canonical fold file"):
        resolve_folds(pd.concat([subset, extra]), tmp_path / "work")
    assert not (tmp_path / "work" / "folds.csv").exists()


def test_other_datasets_get_their_own_split_and_reuse_it(tmp_path):
    labels = synthetic_labels(300)
    first = resolve_folds(labels, tmp_path / "work", n_folds=5, seed=42)
    assert first.mode == "own" and first.path == tmp_path / "work" / "folds.csv"
    again = resolve_folds(labels, tmp_path / "work", n_folds=5, seed=999)  # reused, not rebuilt
    assert again.folds.set_index("id")["fold"].equals(first.folds.set_index("id")["fold"])
    grown = pd.concat([labels, synthetic_labels(5, start_id=900001)])
    with pytest.raises(DataError, match="missing from it"):
        resolve_folds(grown, tmp_path / "work")
