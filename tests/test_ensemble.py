"""The stack and the leaderboard, on synthetic experiment folders written by the tests (no training):
known weights are recovered, a fold's stacked predictions never depend on its own labels,
sex-specific models join only their own sex, the leaderboard matches a hand computation, and
experiments that cannot be combined are refused by name (or skipped, when discovered)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from src.cli import main as cli_main
from src.data.folds import FOLD_COLUMNS, _write_meta, build_folds
from src.data.layout import DatasetPaths
from src.ensemble.inputs import load_dataset, load_model, select_models
from src.ensemble.leaderboard import MEAN, MEAN_PREDICTOR, STACK, build_leaderboard, load_test_labels
from src.ensemble.stacker import fit_linear, fit_stack, nested_predictions, write_stack
from src.utils.errors import DataError, UserError
from src.utils.io import read_id_csv, write_csv

N_FOLDS = 3


# ----------------------------------------------------------------------------- fixtures


def make_dataset(root: Path, n: int = 60, n_test: int = 0, labelled_test: bool = False, seed: int = 0) -> Path:
    """folds.csv/folds.json (via build_folds + _write_meta) and the audited test.csv of a fake
    dataset; returns its work dir."""
    rng = np.random.default_rng(seed)
    work = DatasetPaths(root).work_dir()
    work.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"id": [str(1000 + i) for i in range(n)],
                          "boneage": rng.uniform(20, 200, n).round(1), "male": np.arange(n) % 2 == 0})
    folds = build_folds(table, n_folds=N_FOLDS, seed=seed)
    write_csv(folds[FOLD_COLUMNS], work / "folds.csv")
    _write_meta(work / "folds.csv", "own", None, seed=seed, n_folds=N_FOLDS)
    if n_test:
        test = pd.DataFrame({"id": [str(5000 + i) for i in range(n_test)], "path": "x.png",
                             "male": np.arange(n_test) % 2 == 0,
                             "boneage": rng.uniform(20, 200, n_test).round(1) if labelled_test else np.nan,
                             "converted": ""})
        write_csv(test, work / "test.csv")
    return work


def write_model(work: Path, name: str, oof_pred: pd.Series, test_pred: pd.Series | None = None, *,
                sex: str = "both", fingerprint: str = "fp-1", folds_sha: str | None = None,
                fold_prints: dict | None = None, no_tta: pd.Series | None = None) -> Path:
    """An experiment folder as the engine leaves it: oof.csv/test.csv/summary.json/config.yaml and
    fold<k>/done.json. `oof_pred` is indexed by id and holds the ids the model predicts."""
    folder = work / name
    folds = read_id_csv(work / "folds.csv").set_index("id")
    meta = json.loads((work / "folds.json").read_text())
    n_folds = meta["n_folds"]
    rows = folds.loc[oof_pred.index]
    oof = pd.DataFrame({"id": rows.index, "fold": rows["fold"].to_numpy(), "boneage": rows["boneage"].to_numpy(),
                        "male": rows["male"].to_numpy(), "pred": oof_pred.to_numpy(dtype=float),
                        "pred_no_tta": (no_tta.loc[oof_pred.index] if no_tta is not None else oof_pred).to_numpy(),
                        "tta_identity": oof_pred.to_numpy(dtype=float)})
    write_csv(oof, folder / "oof.csv")
    if test_pred is not None:
        values = test_pred.to_numpy(dtype=float)
        write_csv(pd.DataFrame({"id": test_pred.index, "pred": values, "pred_no_tta": values}), folder / "test.csv")
    (folder / "summary.json").write_text(json.dumps({"n": len(oof), "n_folds": n_folds, "fingerprint": fingerprint}))
    cfg = {"experiment": name, "data": {"sex": sex},
           "_resolved": {"folds_sha256": folds_sha or meta["sha256"], "fingerprint": fingerprint, "dataset": work.name}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    for k in range(n_folds):
        (folder / f"fold{k}").mkdir(parents=True, exist_ok=True)
        fp = (fold_prints or {}).get(k, fingerprint)
        (folder / f"fold{k}" / "done.json").write_text(json.dumps({"fold": k, "fingerprint": fp}))
    return folder


def truth(work: Path) -> pd.DataFrame:
    return read_id_csv(work / "folds.csv").set_index("id")


def audited_test(work: Path) -> pd.DataFrame:
    return read_id_csv(work / "test.csv").set_index("id")


# ----------------------------------------------------------------------------- the stacker


@pytest.mark.parametrize("method", ["nnls", "linear", "lad"])
def test_fit_recovers_known_weights(method):
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 200, size=(200, 2))
    y = 0.7 * X[:, 0] + 0.3 * X[:, 1] + 5.0
    fit = fit_linear(X, y, method=method)
    assert np.allclose(fit.weights, [0.7, 0.3], atol=1e-6) and fit.intercept == pytest.approx(5.0, abs=1e-4)
    no_b = fit_linear(X, 0.7 * X[:, 0] + 0.3 * X[:, 1], method=method, intercept=False)
    assert np.allclose(no_b.weights, [0.7, 0.3], atol=1e-6) and no_b.intercept == 0.0


def test_lad_keeps_weights_non_negative_and_shrugs_off_outliers():
    """Least absolute deviations: a tenth of wildly wrong labels barely moves the weights,
    where least squares is dragged; and no weight goes negative."""
    rng = np.random.default_rng(3)
    X = rng.uniform(0, 200, size=(400, 2))
    y = 0.7 * X[:, 0] + 0.3 * X[:, 1] + 5.0 + rng.laplace(0, 2, 400)
    y[:40] += rng.uniform(100, 200, 40)
    lad, nnls = fit_linear(X, y, method="lad"), fit_linear(X, y, method="nnls")
    assert np.allclose(lad.weights, [0.7, 0.3], atol=0.03)
    assert np.abs(nnls.weights - [0.7, 0.3]).max() > np.abs(lad.weights - [0.7, 0.3]).max()
    assert np.abs(lad.predict(X) - y).mean() < np.abs(nnls.predict(X) - y).mean()
    assert (fit_linear(X, 1.2 * X[:, 0] - 0.2 * X[:, 1], method="lad").weights >= 0).all()


def test_nnls_keeps_weights_non_negative_where_linear_does_not():
    rng = np.random.default_rng(2)
    X = rng.uniform(0, 200, size=(200, 2))
    y = 1.2 * X[:, 0] - 0.2 * X[:, 1]
    assert fit_linear(X, y, method="linear").weights[1] == pytest.approx(-0.2, abs=1e-6)
    assert (fit_linear(X, y, method="nnls").weights >= 0).all()
    ridge = fit_linear(X, y, method="ridge", alpha=0.0)
    assert np.allclose(ridge.weights, [1.2, -0.2], atol=1e-6)


def test_stack_on_experiment_folders_recovers_weights_and_writes_files(tmp_path):
    root = tmp_path / "data"
    work = make_dataset(root, n=90, n_test=8)
    rng = np.random.default_rng(3)
    labels = truth(work)
    m1 = pd.Series(rng.uniform(20, 200, len(labels)), index=labels.index)
    m2 = pd.Series(rng.uniform(20, 200, len(labels)), index=labels.index)
    # the truth is set to 0.7 m1 + 0.3 m2 + 4: rewrite folds.csv's labels, then its checksum
    folds = read_id_csv(work / "folds.csv")
    folds["boneage"] = (0.7 * m1 + 0.3 * m2 + 4.0).loc[folds["id"]].to_numpy()
    write_csv(folds, work / "folds.csv")
    _write_meta(work / "folds.csv", "own", None, seed=0, n_folds=N_FOLDS)
    tests = audited_test(work).index
    t1, t2 = pd.Series(100.0, index=tests), pd.Series(50.0, index=tests)
    write_model(work, "m1", m1, t1)
    write_model(work, "m2", m2, t2)

    assert cli_main(["stack", "--input", str(root)]) == 0
    meta = json.loads((work / "stack" / "stack.json").read_text())
    assert meta["method"] == "nnls" and meta["layout"] == "joint" and meta["models"] == ["m1", "m2"]
    assert meta["weights"]["all"] == pytest.approx({"m1": 0.7, "m2": 0.3}, abs=1e-6)
    assert meta["intercept"]["all"] == pytest.approx(4.0, abs=1e-4)
    assert meta["oof_mae"] == pytest.approx(0.0, abs=1e-6) and meta["n"] == 90 and len(meta["fold_mae"]) == N_FOLDS
    oof = read_id_csv(work / "stack" / "oof.csv")
    assert list(oof.columns) == ["id", "fold", "boneage", "male", "pred"] and set(oof["id"]) == set(labels.index)
    test = read_id_csv(work / "stack" / "test.csv")
    assert list(test.columns) == ["id", "pred"] and list(test["id"]) == list(tests)
    assert np.allclose(test["pred"], 0.7 * 100 + 0.3 * 50 + 4.0, atol=1e-4)


def test_stacked_oof_mae_scores_only_rows_the_fit_did_not_see(tmp_path):
    root = tmp_path / "data"
    work = make_dataset(root)
    labels = truth(work)
    rng = np.random.default_rng(4)
    write_model(work, "a", labels["boneage"] + rng.normal(0, 8, len(labels)))
    write_model(work, "b", labels["boneage"] + rng.normal(3, 12, len(labels)))
    dataset = load_dataset(root)
    result = fit_stack(dataset, select_models(dataset), method="linear")
    err = (result.oof["pred"] - result.oof["boneage"]).abs()
    assert result.meta["oof_mae"] == pytest.approx(err.mean())
    per_fold = err.groupby(result.oof["fold"]).mean()
    assert result.meta["fold_mae"] == pytest.approx(list(per_fold))
    for fit in result.meta["fold_fits"]:
        n_fold = int((result.oof["fold"] == fit["fold"]).sum())
        assert fit["n_predicted"] == n_fold and fit["n_fit"] == len(labels) - n_fold


def test_a_folds_stacked_predictions_do_not_depend_on_its_own_labels():
    """Nested by fold: fold k is predicted by a fit on the other folds only, so changing fold k's
    labels leaves fold k's stacked predictions exactly as they were. (The other folds' predictions
    do change: their fits include fold k's rows.)"""
    rng = np.random.default_rng(5)
    n = 120
    y = rng.uniform(20, 200, n)
    X = np.column_stack([y + rng.normal(0, 10, n), y + rng.normal(5, 20, n)])
    folds = np.arange(n) % N_FOLDS
    for method in ("nnls", "linear", "ridge"):
        before, _ = nested_predictions(X, y, folds, method=method, alpha=10.0, intercept=True)
        for k in range(N_FOLDS):
            held = folds == k
            y2 = y.copy()
            y2[held] = rng.permutation(y[held]) + rng.normal(0, 30, held.sum())  # shuffled and corrupted
            after, _ = nested_predictions(X, y2, folds, method=method, alpha=10.0, intercept=True)
            assert np.array_equal(after[held], before[held]), (method, k)
            assert not np.allclose(after[~held], before[~held]), (method, k)  # the test can see a change


# ----------------------------------------------------------------------------- sex-specific models


def sex_biased_dataset(tmp_path: Path, n: int = 300):
    """Model a reads boys 15 months old and girls 15 months young; model b is unbiased but
    noisier: a joint stack cannot undo a's bias, one stack per sex can."""
    root = tmp_path / "data"
    work = make_dataset(root, n=n)
    labels = truth(work)
    rng = np.random.default_rng(6)
    sign = np.where(labels["male"].astype(bool), 1.0, -1.0)
    write_model(work, "a", labels["boneage"] + 15 * sign + rng.normal(0, 3, n))
    write_model(work, "b", labels["boneage"] + rng.normal(0, 12, n))
    return root


def test_auto_layout_chooses_per_sex_stacks_by_inner_cv_when_the_bias_depends_on_sex(tmp_path):
    dataset = load_dataset(sex_biased_dataset(tmp_path))
    models = select_models(dataset)
    auto = fit_stack(dataset, models)
    joint = fit_stack(dataset, models, layout="joint")
    assert joint.meta["layout"] == "joint" and joint.meta["candidates_nested_mae"] == {}
    assert auto.meta["layout"] == "per-sex" and set(auto.meta["weights"]) == {"male", "female"}
    assert [f["layout"] for f in auto.meta["fold_fits"]] == ["per-sex"] * N_FOLDS
    for fit in auto.meta["fold_fits"]:  # each choice was scored on the fitting folds only
        assert set(fit["inner_mae"]) == {"nnls/joint", "nnls/per-sex"}
        assert fit["inner_mae"]["nnls/per-sex"] < fit["inner_mae"]["nnls/joint"]
    assert auto.meta["oof_mae"] < joint.meta["oof_mae"] - 5
    assert auto.meta["candidates_nested_mae"]["nnls/joint"] == pytest.approx(joint.meta["oof_mae"])
    both = fit_stack(dataset, models, method="auto")  # method and layout chosen together
    assert set(both.meta["candidates_nested_mae"]) == {"nnls/joint", "nnls/per-sex", "lad/joint", "lad/per-sex"}
    assert both.meta["method"] in ("nnls", "lad") and both.meta["layout"] == "per-sex"
    with pytest.raises(UserError, match="not one of"):
        fit_stack(dataset, models, layout="by-age")
    with pytest.raises(UserError, match="not one of"):
        fit_stack(dataset, models, method="huber")


def test_auto_layout_keeps_a_folds_predictions_independent_of_its_own_labels(tmp_path):
    """The layout choice is nested too: changing fold k's labels changes neither the layout
    chosen for fold k nor its stacked predictions."""
    dataset = load_dataset(sex_biased_dataset(tmp_path))
    models = select_models(dataset)
    before = fit_stack(dataset, models, method="auto")
    rng = np.random.default_rng(7)
    for k in range(N_FOLDS):
        folds = dataset.folds.copy()
        held = (folds["fold"] == k).to_numpy()
        folds.loc[held, "boneage"] = rng.permutation(folds.loc[held, "boneage"].to_numpy()) + 40
        after = fit_stack(replace(dataset, folds=folds), models, method="auto")
        np.testing.assert_allclose(after.oof["pred"].to_numpy()[held], before.oof["pred"].to_numpy()[held])
        for key in ("method", "layout"):
            assert after.meta["fold_fits"][k][key] == before.meta["fold_fits"][k][key]
        assert not np.allclose(after.oof["pred"].to_numpy()[~held], before.oof["pred"].to_numpy()[~held])


def test_sex_specific_models_get_one_stack_per_sex(tmp_path):
    root = tmp_path / "data"
    work = make_dataset(root, n=90, n_test=6)
    labels = truth(work)
    male = labels["male"].astype(bool)
    rng = np.random.default_rng(6)
    both = pd.Series(rng.uniform(20, 200, len(labels)), index=labels.index)
    male_only = pd.Series(rng.uniform(20, 200, int(male.sum())), index=labels.index[male])
    # males: 0.5 both + 0.5 male_only; females: both + 2
    folds = read_id_csv(work / "folds.csv").set_index("id")
    folds["boneage"] = np.where(folds["male"], 0.5 * both + 0.5 * male_only.reindex(folds.index), both + 2.0)
    write_csv(folds.reset_index(), work / "folds.csv")
    _write_meta(work / "folds.csv", "own", None, seed=0, n_folds=N_FOLDS)
    tests = audited_test(work)
    test_male = tests.index[tests["male"].astype(bool)]
    write_model(work, "both", both, pd.Series(100.0, index=tests.index))
    write_model(work, "male_only", male_only, pd.Series(60.0, index=test_male), sex="male")

    dataset = load_dataset(root)
    result = fit_stack(dataset, select_models(dataset))
    meta = result.meta
    assert meta["layout"] == "per-sex" and set(meta["weights"]) == {"male", "female"}
    assert meta["weights"]["male"] == pytest.approx({"both": 0.5, "male_only": 0.5}, abs=1e-6)
    assert meta["weights"]["female"] == pytest.approx({"both": 1.0}, abs=1e-6)  # the male model is not there
    assert meta["intercept"]["female"] == pytest.approx(2.0, abs=1e-4)
    assert meta["groups"]["male"]["n"] == int(male.sum()) and meta["groups"]["female"]["n"] == int((~male).sum())
    # every training and test id gets a prediction
    assert set(result.oof["id"]) == set(labels.index) and result.oof["pred"].notna().all()
    assert list(result.test["id"]) == list(tests.index) and result.test["pred"].notna().all()
    assert meta["oof_mae"] == pytest.approx(0.0, abs=1e-6)
    t = result.test.set_index("id")["pred"]
    assert np.allclose(t.loc[test_male], 0.5 * 100 + 0.5 * 60, atol=1e-4)
    assert np.allclose(t.drop(test_male), 100 + 2.0, atol=1e-4)

    # the male-only model's predictions reach male rows only
    write_model(work, "male_only", male_only + rng.normal(0, 15, len(male_only)), pd.Series(0.0, index=test_male),
                sex="male")
    again = fit_stack(dataset, select_models(dataset))
    a, b = result.oof.set_index("id")["pred"], again.oof.set_index("id")["pred"]
    females = labels.index[~male]
    assert np.array_equal(a.loc[females], b.loc[females])
    assert not np.allclose(a.loc[labels.index[male]], b.loc[labels.index[male]])
    ta, tb = result.test.set_index("id")["pred"], again.test.set_index("id")["pred"]
    assert np.array_equal(ta.drop(test_male), tb.drop(test_male))


def test_one_sex_models_only_and_an_uncovered_sex(tmp_path):
    root = tmp_path / "data"
    work = make_dataset(root)
    labels = truth(work)
    male = labels["male"].astype(bool)
    write_model(work, "boys", labels["boneage"][male] + 1.0, sex="male")
    dataset = load_dataset(root)
    with pytest.raises(UserError, match="no chosen model covers female"):
        fit_stack(dataset, select_models(dataset))
    write_model(work, "girls", labels["boneage"][~male] - 1.0, sex="female")
    result = fit_stack(dataset, select_models(dataset))
    assert result.meta["groups"]["male"]["models"] == ["boys"]
    assert result.meta["groups"]["female"]["models"] == ["girls"]
    assert set(result.oof["id"]) == set(labels.index)


# ----------------------------------------------------------------------------- refusals


def _bad_models(work: Path) -> dict[str, str]:
    labels = truth(work)
    good = labels["boneage"] + 1.0
    write_model(work, "good", good)
    write_model(work, "other_folds", good, folds_sha="0" * 64)
    write_model(work, "missing_ids", good.iloc[:-3])
    write_model(work, "mixed", good, fold_prints={1: "fp-2"})
    return {"other_folds": "another folds file", "missing_ids": "incomplete OOF coverage",
            "mixed": "different fingerprints"}


@pytest.mark.parametrize("name", ["other_folds", "missing_ids", "mixed"])
def test_a_chosen_model_that_cannot_be_combined_is_refused_by_name(tmp_path, capsys, name):
    root = tmp_path / "data"
    work = make_dataset(root)
    why = _bad_models(work)[name]
    with pytest.raises(UserError, match=why) as info:
        select_models(load_dataset(root), ["good", name])
    assert f"'{name}'" in str(info.value)
    assert cli_main(["stack", "--input", str(root), "--models", f"good,{name}"]) == 2
    err = capsys.readouterr().err
    assert name in err and why in err
    assert not (work / "stack" / "stack.json").exists()


def test_discovery_skips_what_cannot_be_combined_with_a_warning(tmp_path, caplog):
    root = tmp_path / "data"
    work = make_dataset(root)
    reasons = _bad_models(work)
    labels = truth(work)
    write_model(work, "good-limit100", labels["boneage"])  # a smoke run: never a model
    (work / "cache").mkdir()
    unfinished = write_model(work, "unfinished", labels["boneage"])
    (unfinished / "oof.csv").unlink()
    with caplog.at_level(logging.WARNING):
        assert cli_main(["stack", "--input", str(root)]) == 0
    warned = caplog.text
    for name in [*reasons, "unfinished"]:
        assert f"'{name}'" in warned
    assert "good-limit100" not in warned
    assert json.loads((work / "stack" / "stack.json").read_text())["models"] == ["good"]
    with pytest.raises(UserError, match="is not a model"):
        load_model(load_dataset(root), "good-limit100")


def test_no_test_part_writes_no_stack_test_csv(tmp_path):
    root = tmp_path / "data"
    work = make_dataset(root)
    write_model(work, "a", truth(work)["boneage"] + 2.0)
    (work / "stack").mkdir()
    (work / "stack" / "test.csv").write_text("id,pred\n1,2\n")  # stale, from some earlier fit
    assert cli_main(["stack", "--input", str(root), "--method", "ridge", "--alpha", "0.5"]) == 0
    assert (work / "stack" / "oof.csv").is_file() and not (work / "stack" / "test.csv").exists()
    meta = json.loads((work / "stack" / "stack.json").read_text())
    assert meta["method"] == "ridge" and meta["alpha"] == 0.5 and meta["test_written"] is False


def test_a_model_without_test_csv_cannot_be_stacked_when_the_dataset_has_a_test_part(tmp_path):
    root = tmp_path / "data"
    work = make_dataset(root, n_test=4)
    write_model(work, "a", truth(work)["boneage"] + 2.0)  # no test.csv
    dataset = load_dataset(root)
    with pytest.raises(UserError, match=r"\['a'\] have no test.csv"):
        fit_stack(dataset, select_models(dataset))


# ----------------------------------------------------------------------------- leaderboard


def _hand_fixture(root: Path, labelled_test: bool = False) -> Path:
    """6 ids in 2 folds, written by hand (folds.json carries folds.csv's sha256), 3 test ids."""
    work = DatasetPaths(root).work_dir()
    work.mkdir(parents=True)
    folds = "id,boneage,male,fold\n1,10,True,0\n2,20,False,0\n3,30,True,0\n4,40,False,1\n5,50,True,1\n6,60,False,1\n"
    (work / "folds.csv").write_text(folds)
    sha = hashlib.sha256(folds.encode()).hexdigest()
    (work / "folds.json").write_text(json.dumps({"mode": "own", "seed": 0, "n_folds": 2, "sha256": sha}))
    test_ages = "101,112,90" if labelled_test else ",,"
    rows = [f"{i},x.png,{m},{a}," for i, m, a in zip((7, 8, 9), ("True", "False", "True"), test_ages.split(","))]
    (work / "test.csv").write_text("id,path,male,boneage,converted\n" + "\n".join(rows) + "\n")
    return work


def _hand_models(work: Path) -> None:
    ids = [str(i) for i in range(1, 7)]
    ages = pd.Series([10.0, 20, 30, 40, 50, 60], index=ids)
    tests = ["7", "8", "9"]
    write_model(work, "A", ages + [1, -2, 3, -4, 5, -6], pd.Series([100.0, 110, 120], index=tests), no_tta=ages + 2)
    write_model(work, "B", ages + 2, pd.Series([104.0, 110, 116], index=tests), no_tta=ages * np.nan)


def test_leaderboard_matches_a_hand_computation(tmp_path, caplog):
    root = tmp_path / "data"
    work = _hand_fixture(root)
    _hand_models(work)
    labels = tmp_path / "rsna_test.csv"
    labels.write_text("Case ID,Bone Age (months)\n7,101\n8,112\n10,50\n")  # id 10: no prediction
    with caplog.at_level(logging.WARNING):
        table = build_leaderboard(load_dataset(root), select_models(load_dataset(root)), [labels])
    rows = table.set_index("model")
    assert list(table["model"]) == [MEAN, "B", "A", MEAN_PREDICTOR]  # sorted by OOF MAE
    # A: errors 1 2 3 | 4 5 6
    a = rows.loc["A"]
    assert (a["oof_mae"], a["oof_mae_male"], a["oof_mae_female"]) == pytest.approx((3.5, 3.0, 4.0))
    assert (a["fold_mae_mean"], a["fold_mae_sd"], a["oof_mae_no_tta"]) == pytest.approx((3.5, 3 / np.sqrt(2), 2.0))
    # B: every error 2; no no-TTA predictions
    b = rows.loc["B"]
    assert (b["oof_mae"], b["fold_mae_mean"], b["fold_mae_sd"]) == pytest.approx((2.0, 2.0, 0.0))
    assert np.isnan(b["oof_mae_no_tta"])
    # the mean: errors 1.5 0 2.5 | 1 3.5 2
    m = rows.loc[MEAN]
    assert (m["oof_mae"], m["oof_mae_male"], m["oof_mae_female"]) == pytest.approx((1.75, 2.5, 1.0))
    assert m["fold_mae_mean"] == pytest.approx(1.75)
    assert m["fold_mae_sd"] == pytest.approx((6.5 / 3 - 4 / 3) / np.sqrt(2))
    assert np.isnan(m["oof_mae_no_tta"])
    # the mean predictor: fold 0 predicted by 50, fold 1 by 20
    assert rows.loc[MEAN_PREDICTOR, "oof_mae"] == pytest.approx(30.0)
    # test labels in the RSNA spelling, scored on ids 7 and 8
    column = "test_mae_rsna_test"
    assert rows.loc["A", column] == pytest.approx(1.5) and rows.loc["B", column] == pytest.approx(2.5)
    assert rows.loc[MEAN, column] == pytest.approx(1.5)
    assert rows.loc[MEAN_PREDICTOR, column] == pytest.approx((66 + 77) / 2)  # the training mean age, 35
    assert "rsna_test.csv" in caplog.text and "1 without a test prediction" in caplog.text and "A 2 of 3" in caplog.text
    assert np.isnan(rows.loc["A", "stack_weight"]) and STACK not in rows.index  # no stack fitted


def test_leaderboard_labelled_test_part_stack_row_and_cli(tmp_path, capsys):
    root = tmp_path / "data"
    work = _hand_fixture(root, labelled_test=True)
    _hand_models(work)
    other = tmp_path / "test_6rater.csv"
    other.write_text("id,boneage,male\n7,100,True\n8,113,False\n9,120,True\n")
    assert cli_main(["stack", "--input", str(root), "--method", "linear"]) == 0
    capsys.readouterr()
    assert cli_main(["leaderboard", "--input", str(root), "--test-labels", str(other)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| model |") and STACK in out
    table = read_id_csv(work / "leaderboard.csv", dtype={"model": str}).set_index("model")
    assert (work / "leaderboard.md").read_text() == out
    # the dataset's own labelled test part: A predicts 100 110 120 for 101 112 90
    assert table.loc["A", "test_mae_labelled"] == pytest.approx((1 + 2 + 30) / 3)
    assert table.loc["A", "test_mae_test_6rater"] == pytest.approx((0 + 3 + 0) / 3)
    meta = json.loads((work / "stack" / "stack.json").read_text())
    stack_oof = read_id_csv(work / "stack" / "oof.csv")
    assert table.loc[STACK, "oof_mae"] == pytest.approx(meta["oof_mae"])
    assert meta["oof_mae"] == pytest.approx((stack_oof["pred"] - stack_oof["boneage"]).abs().mean())
    assert table.loc["A", "stack_weight"] == pytest.approx(meta["weights"]["all"]["A"])
    assert table.loc["B", "stack_weight"] == pytest.approx(meta["weights"]["all"]["B"])
    stack_test = read_id_csv(work / "stack" / "test.csv").set_index("id")["pred"]
    assert table.loc[STACK, "test_mae_labelled"] == pytest.approx(
        np.mean(np.abs(stack_test.loc[["7", "8", "9"]].to_numpy() - [101, 112, 90])))


def test_leaderboard_leaves_out_a_stale_stack_and_rejects_labels_without_overlap(tmp_path, caplog):
    root = tmp_path / "data"
    work = _hand_fixture(root)
    _hand_models(work)
    dataset = load_dataset(root)
    write_stack(fit_stack(dataset, select_models(dataset)), work / "stack")
    assert STACK in set(build_leaderboard(dataset, select_models(dataset))["model"])
    for k in (0, 1):  # B retrained since the stack was fitted
        (work / "B" / f"fold{k}" / "done.json").write_text(json.dumps({"fold": k, "fingerprint": "fp-new"}))
    summary = json.loads((work / "B" / "summary.json").read_text())
    (work / "B" / "summary.json").write_text(json.dumps({**summary, "fingerprint": "fp-new"}))
    cfg = yaml.safe_load((work / "B" / "config.yaml").read_text())
    cfg["_resolved"]["fingerprint"] = "fp-new"
    (work / "B" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with caplog.at_level(logging.WARNING):
        table = build_leaderboard(dataset, select_models(dataset))
    assert STACK not in set(table["model"]) and "retrained since" in caplog.text
    nowhere = tmp_path / "elsewhere.csv"
    nowhere.write_text("id,boneage\n99,10\n98,20\n")
    with pytest.raises(DataError, match="elsewhere.csv: none of its 2 ids"):
        build_leaderboard(dataset, select_models(dataset), [nowhere])


def test_load_test_labels_spellings(tmp_path):
    rsna = tmp_path / "a.csv"
    rsna.write_text("Case ID,Sex,Bone Age (months)\n4360,M,168.93\n4361,F,169.65\n")
    labels = load_test_labels(rsna)
    assert list(labels.index) == ["4360", "4361"] and labels.loc["4360"] == pytest.approx(168.93)
    bad = tmp_path / "b.csv"
    bad.write_text("ident,age\n1,2\n")
    with pytest.raises(DataError, match="needs columns id,boneage"):
        load_test_labels(bad)


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("command", ["stack", "leaderboard"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "usage: python -m src " + command in text
    assert "default: None" not in text and "default: False" not in text and "default: True" not in text


def test_cli_on_a_root_with_nothing_trained(tmp_path, capsys):
    assert cli_main(["stack", "--input", str(tmp_path / "never")]) == 2
    assert "does not exist" in capsys.readouterr().err
    work = make_dataset(tmp_path / "empty")
    assert work.is_dir()
    assert cli_main(["leaderboard", "--input", str(tmp_path / "empty")]) == 2
    assert "no finished experiment" in capsys.readouterr().err


def test_a_mistyped_model_name_lists_the_folders_there(tmp_path):
    root = tmp_path / "data"
    work = make_dataset(root)
    write_model(work, "resnet", truth(work)["boneage"])
    with pytest.raises(UserError, match=r"'resnt': no folder .*folders there: resnet"):
        select_models(load_dataset(root), ["resnt"])
