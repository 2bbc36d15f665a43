"""`python -m src predict` on a tiny phantom with tiny models trained by the test (1 epoch): one
image with --sex, a folder with a sex CSV, from the working tree and from a packaged folder, each
matching the trainer's test.csv (stack and every model) within 0.01 months; registration columns;
clear errors for a non-image, an unknown sex and missing weights."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import TINY, audited

TOLERANCE = 0.01  # months
# config, its overrides: a both-sex model and a registered male-only one make a per-sex stack with registration
RECIPES = {"baseline_inception_v3": ("baseline_inception_v3", []),
           "region_a_male": ("m46_regression_region_a", ["data.sex=male", "name=region_a_male"])}
MODELS = tuple(RECIPES)


@dataclass
class Workbench:
    root: Path  # the phantom dataset
    working: Path  # BONEAGE_WORKING of the trained run
    work: Path  # working/<dataset>/
    package: Path  # kaggle-package's folder

    @property
    def test_dir(self) -> Path:
        return self.root / "boneage-test-dataset" / "boneage-test-dataset"

    @property
    def test_csv(self) -> Path:
        return self.root / "boneage-test-dataset.csv"


def build_workbench(base: Path, phantom: Path) -> Workbench:
    """Audit, 3 folds, register, the RECIPES' tiny models, a linear stack and the package; built
    once per session (test_kernels.py shares it through the same folder)."""
    from src.cli import main
    from src.data.layout import DatasetPaths
    from src.engine.config import load_config
    from src.engine.experiment import run_experiment

    working, package = base / "working", base / "package"
    work = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BONEAGE_WORKING", str(working))
        work = DatasetPaths(phantom).work_dir()
        if not (package / "manifest.json").is_file():
            audited(phantom)
            assert main(["folds", "--input", str(phantom), "--n-folds", "3"]) == 0
            assert main(["register", "--input", str(phantom), "--workers", "1"]) == 0
            for config, overrides in RECIPES.values():
                run_experiment(load_config(config, None, TINY + ["train.epochs=1", *overrides]), phantom, device="cpu")
            assert main(["stack", "--input", str(phantom), "--method", "linear"]) == 0
            assert main(["kaggle-package", "--input", str(phantom), "--out", str(package), "--check", "0",
                         "--user", "tester"]) == 0
    return Workbench(phantom, working, work, package)


@pytest.fixture(scope="module")
def workbench(tmp_path_factory, tiny_phantom) -> Workbench:
    return build_workbench(tmp_path_factory.getbasetemp() / "i9-workbench", tiny_phantom)


@pytest.fixture
def on_workbench(workbench, monkeypatch) -> Workbench:
    monkeypatch.setenv("BONEAGE_WORKING", str(workbench.working))
    return workbench


def reference(wb: Workbench) -> pd.DataFrame:
    """The trainer's test predictions: the stack's and each model's, by id."""
    from src.utils.io import read_id_csv

    table = read_id_csv(wb.work / "stack" / "test.csv").set_index("id")[["pred"]].rename(columns={"pred": "boneage"})
    for name in MODELS:
        table[name] = read_id_csv(wb.work / name / "test.csv").set_index("id")["pred"]
    return table


def assert_matches(got: pd.DataFrame, wb: Workbench) -> None:
    expected = reference(wb).loc[got["id"]]
    for column in ("boneage",) + MODELS:
        np.testing.assert_allclose(got[column].to_numpy(dtype=float), expected[column].to_numpy(dtype=float),
                                   atol=TOLERANCE, err_msg=column)  # NaN where a male model meets a female


def read(path: Path) -> pd.DataFrame:
    from src.utils.io import read_id_csv

    return read_id_csv(path)


def test_folder_with_sex_csv_matches_the_stack_test_csv(on_workbench, cli_main, tmp_path):
    wb = on_workbench
    out = tmp_path / "pred.csv"
    assert cli_main(["predict", str(wb.test_dir), "--sex-csv", str(wb.test_csv), "--input", str(wb.root),
                     "--out", str(out)]) == 0
    got = read(out)
    assert list(got.columns) == ["id", "boneage", *MODELS, "registration_confidence", "registration_method"]
    assert list(got["id"]) == list(pd.read_csv(wb.test_csv, dtype=str)["Case ID"])  # the CSV's order
    assert_matches(got, wb)
    stack = json.loads((wb.work / "stack" / "stack.json").read_text())
    assert stack["layout"] == "per-sex" and any(abs(w) > 1e-3 for g in stack["weights"].values() for w in g.values())
    # the registration the registered model used: the detector's confidence and method per image
    keypoints = read(wb.work / "registration" / "keypoints.csv").set_index("id").loc[got["id"]]
    np.testing.assert_allclose(got["registration_confidence"], keypoints["confidence"])
    assert list(got["registration_method"]) == list(keypoints["method"])
    male = pd.read_csv(wb.test_csv, dtype=str).set_index("Case ID")["Sex"].loc[got["id"]] == "M"
    assert got.loc[~male.to_numpy(), "region_a_male"].isna().all()


def test_one_image_with_sex_to_stdout(on_workbench, cli_main, capsys):
    wb = on_workbench
    table = pd.read_csv(wb.test_csv, dtype=str)
    female = table.loc[table["Sex"] == "F", "Case ID"].iloc[0]
    assert cli_main(["predict", str(wb.test_dir / f"{female}.png"), "--sex", "F", "--input", str(wb.root)]) == 0
    got = pd.read_csv(io.StringIO(capsys.readouterr().out), dtype={"id": str})
    assert list(got["id"]) == [female]
    assert_matches(got, wb)


def test_packaged_folder_predicts_the_same_without_a_working_tree(workbench, cli_main, tmp_path, monkeypatch):
    wb = workbench
    monkeypatch.setenv("BONEAGE_WORKING", str(tmp_path / "empty"))  # nothing trained here
    out, submission = tmp_path / "pred.csv", tmp_path / "submission.csv"
    assert cli_main(["predict", str(wb.test_dir), "--sex-csv", str(wb.test_csv), "--code", str(wb.package),
                     "--out", str(out), "--submission", str(submission)]) == 0
    assert_matches(read(out), wb)
    sub = read(submission)
    assert list(sub.columns) == ["id", "boneage"] and set(sub["id"]) == set(pd.read_csv(wb.test_csv, dtype=str)["Case ID"])
    assert not (tmp_path / "empty").exists()


def test_one_model_and_a_workbench_style_sex_csv(on_workbench, cli_main, tmp_path):
    wb = on_workbench
    sexes = pd.read_csv(wb.test_csv, dtype=str)
    csv = tmp_path / "sex.csv"
    pd.DataFrame({"id": sexes["Case ID"], "male": sexes["Sex"] == "M"}).to_csv(csv, index=False)
    out = tmp_path / "pred.csv"
    assert cli_main(["predict", str(wb.test_dir), "--sex-csv", str(csv), "--input", str(wb.root),
                     "--model", "baseline_inception_v3", "--out", str(out)]) == 0
    got = read(out)
    assert list(got.columns) == ["id", "boneage", "baseline_inception_v3"]
    expected = reference(wb).loc[got["id"], "baseline_inception_v3"].to_numpy()
    np.testing.assert_allclose(got["boneage"], expected, atol=TOLERANCE)


def test_clear_errors(on_workbench, cli_main, tmp_path, capsys):
    wb = on_workbench
    image = next(wb.test_dir.glob("*.png"))
    base = ["--input", str(wb.root)]

    text = tmp_path / "notes.png"
    text.write_text("not a radiograph\n")
    assert cli_main(["predict", str(text), "--sex", "M", *base]) == 2
    assert "notes.png" in capsys.readouterr().err

    assert cli_main(["predict", str(image), "--sex", "X", *base]) == 2
    assert "--sex 'X' is not a sex" in capsys.readouterr().err

    bad = tmp_path / "sex.csv"
    bad.write_text(f"Case ID,Sex\n{image.stem},Q\n")
    assert cli_main(["predict", str(image), "--sex-csv", str(bad), *base]) == 2
    err = capsys.readouterr().err
    assert "unknown sex" in err and "row 2" in err and str(bad) in err

    assert cli_main(["predict", str(image), *base]) == 2
    assert "--sex" in capsys.readouterr().err

    female = pd.read_csv(wb.test_csv, dtype=str).query("Sex == 'F'")["Case ID"].iloc[0]
    assert cli_main(["predict", str(wb.test_dir / f"{female}.png"), "--sex", "F", *base,
                     "--model", "region_a_male"]) == 2
    assert "male images only" in capsys.readouterr().err

    assert cli_main(["predict", str(image), "--sex", "M", *base, "--model", "no_such_model"]) == 2
    assert "no_such_model" in capsys.readouterr().err


def test_missing_weights_are_named(workbench, cli_main, tmp_path, capsys, monkeypatch):
    package = tmp_path / "package"
    shutil.copytree(workbench.package, package)
    (package / "models" / "baseline_inception_v3" / "fold2.pt").unlink()  # folds 0..2
    image = next(workbench.test_dir.glob("*.png"))
    assert cli_main(["predict", str(image), "--sex", "M", "--code", str(package)]) == 2
    err = capsys.readouterr().err
    assert "weights missing" in err and "fold2.pt" in err

    working = tmp_path / "working"
    shutil.copytree(workbench.working, working, ignore=shutil.ignore_patterns("cache"))
    (working / workbench.work.name / "region_a_male" / "fold1" / "last.pt").unlink()
    monkeypatch.setenv("BONEAGE_WORKING", str(working))
    assert cli_main(["predict", str(image), "--sex", "M", "--input", str(workbench.root)]) == 2
    err = capsys.readouterr().err
    assert "weights missing" in err and "fold1" in err and "last.pt" in err
