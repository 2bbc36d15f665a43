"""Folds: determinism, stratification checks, the canonical RSNA split, subset reuse, no silent refold
(decided by id overlap), the --extend way forward, and the --canonical option's errors."""

from __future__ import annotations

import re
import shlex

import cv2
import numpy as np
import pandas as pd
import pytest

from src.data.audit import run_audit
from src.data.folds import (
    MALE_SHARE_TOL, MEAN_AGE_TOL, assert_disjoint, build_folds, check_folds, extend_canonical, fold_balance,
    read_folds_meta, resolve_folds,
)
from src.data.layout import CANONICAL_FOLDS, TRAIN_CSV, TRAIN_DIR, DatasetPaths
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


# --------------------------------------------------------------------------- the refold decision (by id overlap)



def rsna_root(root, labels: pd.DataFrame):
    """A Kaggle-layout root whose training CSV holds `labels` (id,boneage,male), with tiny images."""
    rng = np.random.default_rng(0)
    (root / TRAIN_DIR).mkdir(parents=True)
    for image_id in labels["id"]:
        img = np.clip(np.tile(np.linspace(20, 220, 48), (56, 1)) + rng.normal(0, 8, (56, 48)), 0, 255)
        assert cv2.imwrite(str(root / TRAIN_DIR / f"{image_id}.png"), img.astype(np.uint8))
    labels[["id", "boneage", "male"]].to_csv(root / TRAIN_CSV, index=False)
    return root


def test_rsna_subset_with_a_changed_label_is_an_error_naming_the_id(tmp_path):
    canonical = read_id_csv(CANONICAL_FOLDS)
    subset = canonical.sample(200, random_state=1)[["id", "boneage", "male"]].reset_index(drop=True)
    changed = subset.loc[0, "id"]
    old_age = subset.loc[0, "boneage"]
    subset.loc[0, "boneage"] = old_age + 7  # one label disagrees: the old rule (agree.mean() > 0.5) refolded
    with pytest.raises(DataError) as info:
        resolve_folds(subset, tmp_path / "work")
    message = str(info.value)
    assert f"id {changed}: boneage {old_age + 7:g} here vs {old_age:g}" in message
    assert not (tmp_path / "work" / "folds.csv").exists()
    sex = canonical.sample(50, random_state=2)[["id", "boneage", "male"]].reset_index(drop=True)
    sex["male"] = ~sex["male"]  # every label disagrees: still RSNA ids, still an error (never an own split)
    with pytest.raises(DataError, match=f"id {sex.loc[0, 'id']}: male {sex.loc[0, 'male']} here"):
        resolve_folds(sex, tmp_path / "work")


def test_rsna_subset_plus_extra_ids_advises_a_valid_extend_command(tmp_path):
    canonical = read_id_csv(CANONICAL_FOLDS)
    subset = canonical.sample(100, random_state=0)[["id", "boneage", "male"]]
    extra = pd.DataFrame({"id": ["20001", "20002", "20003"], "boneage": [100.0, 50.0, 150.0],
                          "male": [True, False, True]})
    with pytest.raises(DataError) as info:
        resolve_folds(pd.concat([subset, extra]), tmp_path / "work", input_dir=tmp_path / "my data")
    message = str(info.value)
    assert "3 of the 103 training ids are not in the canonical fold file" in message
    assert "['20001', '20002', '20003']" in message
    assert f"python -m src folds --input '{tmp_path / 'my data'}' --extend" in message
    assert "--canonical --input" not in message
    assert not (tmp_path / "work" / "folds.csv").exists()


def test_extend_command_keeps_canonical_folds_and_adds_the_extras(tmp_path, cli_main, capsys):
    canonical = read_id_csv(CANONICAL_FOLDS)
    subset = canonical.sample(30, random_state=3)[["id", "boneage", "male"]]
    extra = pd.DataFrame({"id": ["20001", "20002", "20003"], "boneage": [100.0, 50.0, 150.0],
                          "male": [True, False, True]})
    root = rsna_root(tmp_path / "rsna-plus", pd.concat([subset, extra], ignore_index=True))
    run_audit(root, quiet=True)

    assert cli_main(["folds", "--input", str(root)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [command] = re.findall(r"python -m src folds --input \S+ --extend", err)
    assert command == f"python -m src folds --input {shlex.quote(str(root))} --extend"

    argv = shlex.split(command)[3:]  # what follows `python -m src`
    assert cli_main(argv) == 0
    work = DatasetPaths(root).work_dir()
    folds = read_id_csv(work / "folds.csv")
    meta = read_folds_meta(work)
    assert (meta["mode"], meta["n_folds"], meta["seed"], meta["n_added"]) == ("canonical-extended", 5, 42, 3)
    merged = folds.merge(canonical[["id", "fold"]], on="id", suffixes=("", "_canonical"))
    assert len(merged) == 30 and (merged["fold"] == merged["fold_canonical"]).all()
    added = folds[folds["id"].isin(extra["id"])]
    assert len(added) == 3 and added["fold"].between(0, 4).all() and folds["id"].is_unique

    # the engine's call (no --extend) reuses the saved extended split instead of failing again
    table = read_id_csv(work / "train.csv")
    again = resolve_folds(table, work)
    assert again.mode == "canonical-extended"
    assert again.folds.set_index("id")["fold"].equals(folds.set_index("id")["fold"])
    assert cli_main(["folds", "--input", str(root)]) == 0
    assert read_id_csv(work / "folds.csv").equals(folds)


def test_extend_canonical_is_deterministic_and_stratified():
    canonical = read_id_csv(CANONICAL_FOLDS)
    extra = synthetic_labels(40, seed=5, start_id=20001)
    a = extend_canonical(extra, canonical, seed=42)
    b = extend_canonical(extra.sample(frac=1.0, random_state=0), canonical, seed=42)
    assert a.set_index("id")["fold"].equals(b.set_index("id")["fold"].loc[a["id"]])
    assert set(a["id"]) == set(extra["id"]) and a["fold"].between(0, 4).all()
    for sex, group in a.groupby("male"):  # each run of 5 consecutive ages of one sex spreads over the 5 folds
        ordered = group.sort_values(["boneage"], kind="stable")["fold"].to_numpy()
        for start in range(0, len(ordered) - len(ordered) % 5, 5):
            assert sorted(ordered[start:start + 5]) == [0, 1, 2, 3, 4]


def test_phantom_without_rsna_ids_still_gets_its_own_split(tmp_path, cli_main):
    from src.data.phantom import PhantomParams, generate

    root = tmp_path / "phantom"
    generate(root, PhantomParams(seed=3, scale=0.08, n_train=30, n_test=5), workers=1)
    run_audit(root, quiet=True)
    assert cli_main(["folds", "--input", str(root)]) == 0
    meta = read_folds_meta(DatasetPaths(root).work_dir())
    assert meta["mode"] == "own" and meta["n_folds"] == 5 and meta["seed"] == 42
    with pytest.raises(DataError, match="drop --extend"):
        resolve_folds(read_id_csv(DatasetPaths(root).work_dir() / "train.csv"), DatasetPaths(root).work_dir(),
                      extend=True)


def test_canonical_option_errors_are_correct(tmp_path, cli_main, capsys):
    before = CANONICAL_FOLDS.read_bytes()
    assert cli_main(["folds", "--canonical", str(tmp_path / "labels.csv"), "--input", str(tmp_path)]) == 2
    assert "takes no --input" in capsys.readouterr().err
    assert cli_main(["folds", "--canonical", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "labels.csv").write_text("id,male\n1,True\n")
    assert cli_main(["folds", "--canonical", str(tmp_path / "labels.csv")]) == 2
    assert "missing ['boneage']" in capsys.readouterr().err
    assert CANONICAL_FOLDS.read_bytes() == before
