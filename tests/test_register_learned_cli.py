"""`python -m src register` with the learned models: --detector learned from a training table
(the phantom's ground truth), from pseudo-labels (the confident heuristic detections) and from
--detector-weights; --mask learned; reruns that train nothing; and QA that never scores the
detector on an image it trained on. Tiny models (test_resnet, 32 px, a few epochs) on the
35-image tiny phantom: these test the wiring, not the accuracy (test_registration_learned does)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from src.data.layout import DatasetPaths
from src.registration import learned_net
from src.registration.keypoint_io import read_keypoint_table
from src.registration.types import KEYPOINT_COLUMNS
from tests.helpers import audited

TINY = ["--backbone", "test_resnet", "--side", "32", "--epochs", "2", "--folds", "2", "--workers", "1"]


def registration_dir(root):
    return DatasetPaths(root).work_dir() / "registration"


def read_json(path) -> dict:
    return json.loads(path.read_text())


def no_training(monkeypatch) -> None:
    """Any training from here on fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("trained although a finished model was at hand")

    monkeypatch.setattr(learned_net, "fit", refuse)


def register(cli_main, root, *extra: str) -> None:
    assert cli_main(["register", "--input", str(root), *TINY, *extra]) == 0


@pytest.fixture(scope="module")
def working(tmp_path_factory):
    """One working/ for the module, so later tests reuse what earlier ones trained."""
    return tmp_path_factory.mktemp("learned-cli") / "working"


@pytest.fixture
def phantom(tiny_phantom, working, monkeypatch):
    monkeypatch.setenv("BONEAGE_WORKING", str(working))
    return audited(tiny_phantom)


@pytest.fixture(scope="module")
def from_table(tiny_phantom, working):
    """`register --detector learned --keypoints <the phantom's ground truth> --qa`, run once:
    (registration folder, its registration.json)."""
    from src.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BONEAGE_WORKING", str(working))
        audited(tiny_phantom)
        register(main, tiny_phantom, "--detector", "learned", "--keypoints", str(ground_truth(tiny_phantom)),
                 "--min-confidence", "0", "--qa")
        out = registration_dir(tiny_phantom)
    return out, read_json(out / "registration.json")


def ground_truth(root):
    """The phantom's ground-truth keypoint table: the training table here."""
    return root / "ground-truth" / "keypoints.csv"


def test_learned_from_a_table_writes_learned_keypoints_and_cross_validated_qa(from_table):
    out, summary = from_table
    keypoints = read_keypoint_table(out / "keypoints.csv")
    assert list(keypoints.columns) == KEYPOINT_COLUMNS and len(keypoints) == 35  # train and test images
    assert set(keypoints["method"]) == {"learned"} and keypoints["confidence"].between(0, 1).all()
    assert summary["kind"] == "learned" and summary["training"]["source"] == "table"
    assert summary["detector"].startswith(f"learned-{summary['training']['fingerprint']}-")
    assert (out / "detector" / "detector.pt").is_file()
    assert set(pd.read_csv(out / "detections.csv", dtype=str)["detector"]) == {summary["detector"]}
    # every scored image is a training image here: all of them are predicted out of fold
    qa = read_json(out / "qa" / "qa.json")
    assert qa == summary["qa"] and qa["detector"] == "learned" and qa["cross_validated"] is True
    assert qa["scored"] == qa["out_of_fold"] == 35 and qa["folds"] == 2 and qa["never_trained_on"] == 0
    scores = pd.read_csv(out / "qa" / "scores.csv")
    assert set(scores["point"]) == {"middle", "thumb", "capitate"} and (scores["n"] == 35).all()


def predict_registers_alike(root, tmp_path, n: int = 4) -> str:
    """predict's registration of new images (the detector named by registration.json, see
    inference/images.py) gives the keypoints `register` wrote for the same images: its version."""
    import numpy as np

    from src.inference.bundle import registration_settings
    from src.inference.images import detect_keypoints, registration_detector

    work = DatasetPaths(root).work_dir()
    settings = registration_settings(work)
    paths = sorted(DatasetPaths(root).train_dir.glob("*.png"))[:n]
    table = pd.DataFrame({"id": [p.stem for p in paths], "path": [str(p) for p in paths]})
    got = detect_keypoints(table, tmp_path, settings)
    mine = read_keypoint_table(tmp_path / "registration" / "keypoints.csv").set_index("id")
    theirs = read_keypoint_table(work / "registration" / "keypoints.csv").set_index("id").loc[mine.index]
    coords = [c for c in KEYPOINT_COLUMNS if c.endswith(("_x", "_y"))]
    np.testing.assert_allclose(mine[coords].to_numpy(float), theirs[coords].to_numpy(float), atol=0.05)
    assert list(mine["method"]) == list(theirs["method"]) and list(got["registration_method"]) == list(mine["method"])
    return registration_detector(settings).version


def test_predict_registers_new_images_with_the_learned_detector(from_table, tiny_phantom, working, monkeypatch,
                                                                 tmp_path):
    out, summary = from_table
    monkeypatch.setenv("BONEAGE_WORKING", str(working))
    assert predict_registers_alike(tiny_phantom, tmp_path) == summary["detector"]
    assert summary["detector"].startswith("learned-")


def test_a_rerun_trains_nothing_and_a_changed_model_detects_again(from_table, phantom, cli_main, monkeypatch):
    out, summary = from_table
    stamps = {p: p.stat().st_mtime_ns for p in out.joinpath("detector").rglob("*.pt")}
    with monkeypatch.context() as patch:
        no_training(patch)
        register(cli_main, phantom, "--detector", "learned", "--keypoints", str(ground_truth(phantom)),
                 "--min-confidence", "0.999", "--qa")
    assert {p: p.stat().st_mtime_ns for p in out.joinpath("detector").rglob("*.pt")} == stamps
    assert read_json(out / "registration.json")["detector"] == summary["detector"]
    # low confidence is flagged and falls back, as the heuristic's does
    keypoints = read_keypoint_table(out / "keypoints.csv").set_index("id")
    flagged = pd.read_csv(out / "flagged.csv", dtype={"id": str}).set_index("id")
    assert len(flagged) > 0 and set(flagged["reason"]) == {"low_confidence"}
    assert (keypoints.loc[flagged.index, "method"] == "fallback").all()
    assert (keypoints.drop(flagged.index)["method"] == "learned").all()

    register(cli_main, phantom, "--detector", "learned", "--keypoints", str(ground_truth(phantom)), "--epochs", "1")
    changed = read_json(out / "registration.json")["detector"]
    assert changed != summary["detector"] and changed.startswith("learned-")
    assert set(pd.read_csv(out / "detections.csv", dtype=str)["detector"]) == {changed}


def test_detector_weights_are_used_without_training(from_table, phantom, cli_main, monkeypatch, tmp_path):
    out, _ = from_table
    weights = shutil.copy(out / "detector" / "detector.pt", tmp_path / "phantom-detector.pt")
    from src.data.phantom import PhantomParams, generate

    other = tmp_path / "other-phantom"
    generate(other, PhantomParams(seed=4, scale=0.1, n_train=6, n_test=0), workers=1)
    audited(other)
    no_training(monkeypatch)
    register(cli_main, other, "--detector", "learned", "--detector-weights", str(weights), "--min-confidence", "0",
             "--qa")
    other_out = registration_dir(other)
    keypoints = read_keypoint_table(other_out / "keypoints.csv")
    assert len(keypoints) == 6 and set(keypoints["method"]) == {"learned"}
    summary = read_json(other_out / "registration.json")
    assert summary["training"]["source"] == "weights" and not (other_out / "detector").exists()
    # trained on the first phantom's images: the same ids here are other images, scored as they are
    assert summary["training"]["trained_on_dataset"] == DatasetPaths(phantom).name
    assert summary["qa"]["cross_validated"] is False and summary["qa"]["never_trained_on"] == 6

    # on its own dataset, the images it trained on are left out of the scores
    own = tmp_path / "working-own"
    monkeypatch.setenv("BONEAGE_WORKING", str(own))
    audited(phantom)
    register(cli_main, phantom, "--detector", "learned", "--detector-weights", str(weights), "--qa")
    qa = read_json(registration_dir(phantom) / "qa" / "qa.json")
    assert qa["left_out"] == 35 and qa["cross_validated"] is False
    assert (pd.read_csv(registration_dir(phantom) / "qa" / "scores.csv")["n"] == 0).all()


def test_pseudo_labels_start_from_the_confident_heuristic_detections(phantom, cli_main, monkeypatch):
    register(cli_main, phantom, "--detector", "learned", "--rounds", "2", "--min-confidence", "0.3", "--qa")
    out = registration_dir(phantom)
    summary = read_json(out / "registration.json")
    training = summary["training"]
    assert training["source"] == "pseudo-labels" and [h["round"] for h in training["history"]] == [0, 1]
    detections = pd.read_csv(out / "detections.csv", dtype={"id": str})
    kinds = detections["detector"].str.split("-").str[0]
    assert kinds.value_counts().to_dict() == {"heuristic": 35, "learned": 35}  # each kind keeps its rows
    heuristic = detections[kinds == "heuristic"]
    confident = set(heuristic.loc[heuristic["confidence"] >= 0.3, "id"])
    assert set(pd.read_csv(out / "detector" / "round0" / "labels.csv", dtype={"id": str})["id"]) == confident
    assert summary["heuristic"]["confident"] == len(confident)
    assert set(read_keypoint_table(out / "keypoints.csv")["method"]) <= {"learned", "fallback"}
    qa = summary["qa"]
    assert qa["cross_validated"] is True and qa["out_of_fold"] == training["trained_on"] >= len(confident)
    assert qa["heuristic"]["detected"] == 35 and "middle" in qa["heuristic"]["scores"]
    assert (out / "qa" / "scores_heuristic.csv").is_file()

    no_training(monkeypatch)  # the rerun: the heuristic's detections and every model are reused
    register(cli_main, phantom, "--detector", "learned", "--rounds", "2", "--min-confidence", "0.3")
    assert read_json(out / "registration.json")["detector"] == summary["detector"]


def test_learned_mask_feeds_the_heuristic_and_is_scored_against_the_truth_masks(phantom, cli_main, monkeypatch,
                                                                                 tmp_path):
    register(cli_main, phantom, "--mask", "learned", "--rounds", "1", "--workers", "2", "--qa")
    out = registration_dir(phantom)
    summary = read_json(out / "registration.json")
    assert summary["kind"] == "heuristic" and summary["mask"] == "learned"
    assert "+mask-" in summary["detector"] and (out / "mask" / "mask.pt").is_file()
    detections = pd.read_csv(out / "detections.csv", dtype={"id": str})
    ours = detections[detections["detector"] == summary["detector"]]
    assert len(ours) == 35 and set(ours["mask"]) <= {"learned", "classical"}
    masks = pd.read_csv(out / "qa" / "mask_scores.csv", dtype={"id": str})
    assert len(masks) == 35 and masks[["iou_learned", "iou_classical"]].stack().between(0, 1).all()
    assert summary["qa"]["mask"]["all"]["n"] == 35
    no_training(monkeypatch)
    register(cli_main, phantom, "--mask", "learned", "--rounds", "1")
    assert read_json(out / "registration.json")["detector"] == summary["detector"]
    assert predict_registers_alike(phantom, tmp_path) == summary["detector"]  # predict uses the learned mask too


@pytest.mark.parametrize("extra, message", [
    (["--keypoints", "k.csv"], "only apply to --detector learned"),
    (["--detector", "learned", "--keypoints", "k.csv", "--detector-weights", "d.pt"], "not both"),
    (["--detector", "learned", "--keypoints", "absent.csv"], "no such file"),
    (["--detector", "learned", "--side", "48"], "multiple of 32"),
    (["--detector", "learned", "--keypoints", "k.csv", "--mask", "learned"], "no heuristic runs"),
])
def test_bad_learned_arguments_are_refused(phantom, cli_main, capsys, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "k.csv").write_text("id,middle_x,middle_y\n")
    (tmp_path / "d.pt").write_bytes(b"")
    assert cli_main(["register", "--input", str(phantom), *extra]) == 2
    assert message in capsys.readouterr().err
