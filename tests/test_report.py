"""`python -m src report` on a small synthetic working/<dataset> written by the tests (no training):
the bucket table matches a hand computation, bucket edges follow the documented rule, the page
references PNGs that exist and holds the leaderboard and bucket tables, a missing stack still
gives a report of the models, and no finished model is a clear error."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from src.cli import main as cli_main
from src.data.folds import FOLD_COLUMNS, _write_meta
from src.data.layout import DatasetPaths
from src.ensemble.leaderboard import STACK
from src.reports.buckets import assign_buckets, bucket_table, parse_edges
from src.utils.errors import DataError, UserError
from src.utils.io import read_id_csv, write_csv

N_FOLDS = 3
EDGES = [0, 2, 5, 8, 11, 14, 17, 20]
# (age in months, male): 2-5 holds males 30, 40, 50, 59 (the hand-computed cell) and females 24, 50;
# 24 months (female) sits on the 2-5 lower edge, 240 (male) on the last bucket's upper edge.
ROWS = [(6, True), (30, True), (40, True), (50, True), (59, True), (100, True), (150, True), (200, True),
        (240, True), (12, True), (170, True), (130, True),
        (24, False), (10, False), (70, False), (90, False), (110, False), (140, False), (160, False),
        (180, False), (200, False), (220, False), (50, False), (80, False)]
# model a's signed errors on the four 2-5 males; +5 everywhere else
HAND = {30: 3.0, 40: -2.0, 50: 10.0, 59: 0.0}


# ----------------------------------------------------------------------------- fixtures


def make_work(root: Path) -> Path:
    """folds.csv + folds.json of a 24-id dataset (fold = row % 3); returns its work dir."""
    work = DatasetPaths(root).work_dir()
    work.mkdir(parents=True, exist_ok=True)
    folds = pd.DataFrame({"id": [str(1000 + i) for i in range(len(ROWS))],
                          "boneage": [float(a) for a, _ in ROWS], "male": [m for _, m in ROWS],
                          "fold": [i % N_FOLDS for i in range(len(ROWS))]})
    write_csv(folds[FOLD_COLUMNS], work / "folds.csv")
    _write_meta(work / "folds.csv", "own", None, seed=0, n_folds=N_FOLDS)
    return work


def write_model(work: Path, name: str, pred: pd.Series, sex: str = "both", fingerprint: str = "fp-1") -> None:
    """An experiment folder as the engine leaves it (as tests/test_ensemble.py builds them)."""
    folder = work / name
    folds = read_id_csv(work / "folds.csv").set_index("id")
    meta = json.loads((work / "folds.json").read_text())
    rows = folds.loc[pred.index]
    write_csv(pd.DataFrame({"id": rows.index, "fold": rows["fold"].to_numpy(), "boneage": rows["boneage"].to_numpy(),
                            "male": rows["male"].to_numpy(), "pred": pred.to_numpy(dtype=float),
                            "pred_no_tta": pred.to_numpy(dtype=float)}), folder / "oof.csv")
    (folder / "summary.json").write_text(json.dumps({"n": len(pred), "fingerprint": fingerprint}))
    cfg = {"experiment": name, "data": {"sex": sex},
           "_resolved": {"folds_sha256": meta["sha256"], "fingerprint": fingerprint}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    for k in range(N_FOLDS):
        (folder / f"fold{k}").mkdir(parents=True, exist_ok=True)
        (folder / f"fold{k}" / "done.json").write_text(json.dumps({"fold": k, "fingerprint": fingerprint}))


def write_stack(work: Path, pred: pd.Series, models=("a", "b")) -> None:
    folds = read_id_csv(work / "folds.csv").set_index("id")
    meta = json.loads((work / "folds.json").read_text())
    stack = work / "stack"
    write_csv(folds.assign(pred=pred.loc[folds.index]).reset_index()[["id", "fold", "boneage", "male", "pred"]],
              stack / "oof.csv")
    (stack / "stack.json").write_text(json.dumps({
        "folds_sha256": meta["sha256"], "n_folds": N_FOLDS, "layout": "joint", "method": "nnls",
        "model_info": {m: {"sex": "both", "fingerprint": "fp-1"} for m in models},
        "weights": {"all": {m: 1.0 / len(models) for m in models}}, "groups": {"all": {"n": len(folds)}}}))


def write_train_csv(work: Path, images: Path) -> None:
    """The audited train.csv, its paths pointing at tiny grey PNGs (one per id)."""
    folds = read_id_csv(work / "folds.csv")
    images.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image_id in enumerate(folds["id"]):
        path = images / f"{image_id}.png"
        cv2.imwrite(str(path), np.full((20, 16), 40 + 8 * i, dtype=np.uint8))
        paths.append(str(path))
    write_csv(pd.DataFrame({"id": folds["id"], "path": paths, "male": folds["male"], "boneage": folds["boneage"],
                            "converted": ""}), work / "train.csv")


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path]:
    """Models a (both sexes, hand-set errors), b (both, -4 months) and m (male only, +1), a stack
    (+0.5) and train.csv with images; returns (input root, work dir)."""
    root = tmp_path / "data"
    work = make_work(root)
    truth = read_id_csv(work / "folds.csv").set_index("id")
    y = truth["boneage"]
    offsets = y.map(lambda age: HAND.get(age, 5.0)).where(truth["male"], 5.0)
    write_model(work, "a", y + offsets)
    write_model(work, "b", y - 4.0)
    male = truth.index[truth["male"]]
    write_model(work, "m", (y + 1.0).loc[male], sex="male")
    write_stack(work, y + 0.5)
    write_train_csv(work, tmp_path / "images")
    return root, work


class ImgSources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def img_sources(page: str) -> list[str]:
    parser = ImgSources()
    parser.feed(page)
    return parser.sources


# ----------------------------------------------------------------------------- buckets


def test_bucket_edges_follow_the_documented_rule():
    ages = pd.Series([0.0, 23.99, 24.0, 59.9, 60.0, 239.9, 240.0], index=list("abcdefg"))
    assert list(assign_buckets(ages, EDGES)) == ["0-2", "0-2", "2-5", "2-5", "5-8", "17-20", "17-20"]
    with pytest.raises(DataError, match=r"'?x'? \(240.5 months\)"):
        assign_buckets(pd.Series([100.0, 240.5], index=["ok", "x"]), EDGES, "folds.csv")
    with pytest.raises(DataError, match="folds.csv"):
        assign_buckets(pd.Series([-1.0], index=["neg"]), EDGES, "folds.csv")
    assert parse_edges("0, 1.5,3") == [0.0, 1.5, 3.0]
    for bad in ("5", "0,2,2", "0,x", "-1,2"):
        with pytest.raises(UserError, match="--buckets"):
            parse_edges(bad)


def test_bucket_table_matches_a_hand_computation():
    ages = [30.0, 40.0, 50.0, 59.0, 24.0, 100.0]
    oof = pd.DataFrame({"boneage": ages, "male": [True, True, True, True, False, False],
                        "pred": [33.0, 38.0, 60.0, 59.0, 20.0, 100.0]}, index=[f"i{k}" for k in range(6)])
    table = bucket_table({"a": oof}, EDGES).set_index(["model", "sex", "bucket"])
    male = table.loc[("a", "male", "2-5")]
    # errors +3, -2, +10, 0: |e| sorted 0, 2, 3, 10; p90 by linear interpolation at 0.9 * 3 = 2.7 -> 3 + 0.7 * 7
    assert male["n"] == 4 and male["mae"] == pytest.approx(15 / 4) and male["bias"] == pytest.approx(11 / 4)
    assert male["p90"] == pytest.approx(7.9)
    both = table.loc[("a", "both", "2-5")]  # the five 2-5 ids, 24 months (female, error -4) included
    assert both["n"] == 5 and both["mae"] == pytest.approx(19 / 5) and both["bias"] == pytest.approx(7 / 5)
    empty = table.loc[("a", "male", "0-2")]
    assert empty["n"] == 0 and np.isnan(empty["mae"]) and np.isnan(empty["bias"]) and np.isnan(empty["p90"])
    assert len(table) == 3 * 7  # every sex x bucket, empty ones included


# ----------------------------------------------------------------------------- the command


def test_report_writes_page_csv_and_plots(dataset):
    root, work = dataset
    assert cli_main(["leaderboard", "--input", str(root)]) == 0
    assert cli_main(["report", "--input", str(root)]) == 0
    report = work / "report"

    table = pd.read_csv(report / "age_buckets.csv")
    assert list(table.columns) == ["model", "sex", "bucket", "n", "mae", "bias", "p90"]
    assert set(table["model"]) == {"a", "b", "m", STACK}
    assert set(table.loc[table["model"] == "m", "sex"]) == {"male"}  # a sex-specific model: its own sex only
    assert set(table.loc[table["model"] == STACK, "sex"]) == {"both", "male", "female"}
    cell = table.set_index(["model", "sex", "bucket"]).loc[("a", "male", "2-5")]
    assert (cell["n"], cell["mae"], cell["bias"], cell["p90"]) == (4, pytest.approx(3.75), pytest.approx(2.75),
                                                                    pytest.approx(7.9))
    by_id = table.set_index(["model", "sex", "bucket"])
    assert by_id.loc[("b", "female", "2-5"), "n"] == 2  # 24 months is in 2-5 (and 50)
    assert by_id.loc[("b", "male", "17-20"), "n"] == 1  # 240 months is in the last bucket
    assert by_id.loc[("b", "both", "17-20"), "mae"] == pytest.approx(4.0)
    assert by_id.loc[(STACK, "both", "5-8"), "bias"] == pytest.approx(0.5)

    page = (report / "index.html").read_text()
    sources = img_sources(page)
    assert {"mae_by_bucket.png", "pred_vs_true.png", "bland_altman.png", "worst_cases.png"} <= set(sources)
    for src in sources:
        assert "/" not in src and ":" not in src, src  # relative, in the report folder
        data = (report / src).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, src
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # the leaderboard (read from the file the leaderboard command wrote) and the bucket pivots
    assert f"From {work / 'leaderboard.csv'}" in page and "(mean predictor)" in page and "oof_mae" in page
    assert "both sexes: OOF MAE (months)" in page and "male: OOF MAE (months)" in page
    assert '<a href="age_buckets.csv">' in page and "3.75" in page and "out-of-fold" in page


def test_missing_stack_still_reports_the_models(dataset, caplog):
    root, work = dataset
    for f in ("oof.csv", "stack.json"):
        (work / "stack" / f).unlink()
    assert cli_main(["report", "--input", str(root), "--worst", "4", "--buckets", "0,5,10,20"]) == 0
    table = pd.read_csv(work / "report" / "age_buckets.csv")
    assert set(table["model"]) == {"a", "b", "m"} and set(table["bucket"]) == {"0-5", "5-10", "10-20"}
    page = (work / "report" / "index.html").read_text()
    assert "stack.json does not exist" in page and "best single model" in page
    assert "Computed for this report (there is no" in page and "(mean predictor)" in page  # built, not read
    for src in img_sources(page):
        assert (work / "report" / src).stat().st_size > 0


def test_a_stale_stack_is_left_out_and_said_so(dataset):
    root, work = dataset
    meta = json.loads((work / "stack" / "stack.json").read_text())
    meta["model_info"]["a"]["fingerprint"] = "fp-old"  # model a was retrained since the stack was fitted
    (work / "stack" / "stack.json").write_text(json.dumps(meta))
    assert cli_main(["report", "--input", str(root), "--worst", "0"]) == 0
    table = pd.read_csv(work / "report" / "age_buckets.csv")
    assert STACK not in set(table["model"])
    page = (work / "report" / "index.html").read_text()
    assert "left out" in page and "Warnings while building this report" in page and "fp-old" in page
    assert "worst_cases.png" not in page and not (work / "report" / "worst_cases.png").exists()


def test_no_finished_model_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "data"
    work = make_work(root)
    (work / "half").mkdir()
    (work / "half" / "config.yaml").write_text("data: {sex: both}\n")  # an unfinished experiment
    assert cli_main(["report", "--input", str(root)]) == 2
    err = capsys.readouterr().err
    assert "no finished experiment" in err and str(work) in err
    assert not (work / "report" / "index.html").exists()


def test_an_age_outside_every_bucket_is_an_error_naming_the_id(dataset, capsys):
    root, work = dataset
    assert cli_main(["report", "--input", str(root), "--buckets", "0,10"]) == 2
    err = capsys.readouterr().err
    assert "1008 (240 months)" in err and "folds.csv" in err and "--buckets" in err


def test_worst_cases_are_the_largest_errors_with_their_thumbnails(dataset):
    from src.ensemble.inputs import load_dataset
    from src.reports.build import worst_cases

    root, work = dataset
    oof = read_id_csv(work / "a" / "oof.csv").set_index("id")
    cases = worst_cases(load_dataset(root), oof, 3)
    # a's largest |error| is +10 (50 months, male: id 1003), then the +5s in id order
    assert [c["id"] for c in cases] == ["1003", "1000", "1005"]
    assert cases[0]["true"] == 50.0 and cases[0]["pred"] == 60.0 and cases[0]["male"] is True
    assert all(c["image"] is not None and c["image"].shape == (20, 16) for c in cases)
    (work / "train.csv").unlink()
    assert all(c["image"] is None for c in worst_cases(load_dataset(root), oof, 2))  # a warning, no error
