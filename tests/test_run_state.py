"""State that can't go stale or leak: fingerprints over recipe, folds and data; merges that refuse
mixed folds; config.yaml that describes what was trained; resume that survives SIGKILL and
worker processes; weights-only checkpoints; the smoke mode."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import TINY, audited, interrupt_after_first_epoch, tiny_cfg

from src.cli import main as cli_main
from src.data.layout import DatasetPaths, dataset_name
from src.engine.checkpoint import load_checkpoint, save_checkpoint
from src.engine.experiment import run_experiment
from src.utils.errors import UserError
from src.utils.io import read_id_csv

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _train_argv(root: Path, *extra: str) -> list[str]:
    return ["train", "--config", "baseline_inception_v3", "--input", str(root), "--device", "cpu", *TINY, *extra]


def test_merge_refuses_folds_of_another_recipe_and_config_yaml_says_what_was_trained(tiny_phantom, capsys):
    root = audited(tiny_phantom)
    out = run_experiment(tiny_cfg("train.epochs=1"), root, device="cpu")
    assert (out / "oof.csv").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.003
    # one fold with another learning rate: the merged files of the old recipe go, nothing is mixed
    run_experiment(tiny_cfg("train.epochs=1", "optim.lr=0.001"), root, folds=[0], device="cpu")
    assert "folds [1, 2, 3, 4] were made with another recipe" in capsys.readouterr().out
    for name in ("oof.csv", "test.csv", "summary.json", "config.yaml"):
        assert not (out / name).exists(), name
    assert yaml.safe_load((out / "fold0" / "config.yaml").read_text())["optim"]["lr"] == 0.001
    assert yaml.safe_load((out / "fold1" / "config.yaml").read_text())["optim"]["lr"] == 0.003
    # the rest of the folds under the new recipe: merged again, and config.yaml matches
    run_experiment(tiny_cfg("train.epochs=1", "optim.lr=0.001"), root, device="cpu")
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.001
    fingerprints = {json.loads((out / f"fold{k}" / "done.json").read_text())["fingerprint"] for k in range(5)}
    assert fingerprints == {json.loads((out / "summary.json").read_text())["fingerprint"]}


def test_a_folds_change_is_never_resumed_or_reused(tiny_phantom):
    root = audited(tiny_phantom)
    cfg = tiny_cfg("train.epochs=1")
    out = run_experiment(cfg, root, folds=[0], device="cpu")
    before = json.loads((out / "fold0" / "done.json").read_text())
    stamp = (out / "fold0" / "last.pt").stat().st_mtime_ns
    assert cli_main(["folds", "--input", str(root), "--rebuild", "--seed", "7"]) == 0
    run_experiment(cfg, root, folds=[0], device="cpu")
    after = json.loads((out / "fold0" / "done.json").read_text())
    assert (out / "fold0" / "last.pt").stat().st_mtime_ns != stamp
    assert after["train_fingerprint"] != before["train_fingerprint"]
    folds = read_id_csv(DatasetPaths(root).work_dir() / "folds.csv")
    oof = read_id_csv(out / "fold0" / "oof.csv")
    assert set(oof["id"]) == set(folds.loc[folds["fold"] == 0, "id"])


def test_no_config_yaml_from_a_run_that_fails_validation(tiny_phantom, tmp_path):
    root = audited(tiny_phantom)
    assert cli_main(_train_argv(root, "train.epochs=abc")) == 2
    assert cli_main(_train_argv(tmp_path / "never-audited")) == 2
    assert not list(DatasetPaths(root).work_dir().glob("**/config.yaml"))


def test_resume_says_once_where_the_weights_came_from(tiny_phantom, caplog):
    root = audited(tiny_phantom)
    cfg = tiny_cfg("train.epochs=2")
    interrupt_after_first_epoch(cfg, root)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        run_experiment(cfg, root, folds=[0], device="cpu")
    text = caplog.text.lower()
    assert "scratch" not in text and "no pretrained weights" not in text
    assert sum("weights from" in r.getMessage() for r in caplog.records) == 1
    assert "last.pt (resumed after epoch 1 of 2)" in caplog.text


def test_resume_with_two_loader_workers_is_bitwise_equal(tiny_phantom, tmp_path, monkeypatch):
    cfg = tiny_cfg("train.epochs=2", "data.num_workers=2")
    monkeypatch.setenv("BONEAGE_WORKING", str(tmp_path / "straight"))
    straight = run_experiment(cfg, audited(tiny_phantom), folds=[0], device="cpu")

    monkeypatch.setenv("BONEAGE_WORKING", str(tmp_path / "resumed"))
    root = audited(tiny_phantom)
    interrupt_after_first_epoch(cfg, root)
    resumed = run_experiment(cfg, root, folds=[0], device="cpu")
    a, b = load_checkpoint(straight / "fold0" / "last.pt")["model"], load_checkpoint(resumed / "fold0" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = read_id_csv(straight / "fold0" / "oof.csv"), read_id_csv(resumed / "fold0" / "oof.csv")
    pd.testing.assert_frame_equal(pa, pb)


def test_sigkill_mid_epoch_then_resume_gives_the_same_oof(tiny_phantom, tmp_path):
    """A real kill -9 while training, then a rerun: the OOF equals an uninterrupted run's."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "src"] + _train_argv(tiny_phantom, "train.epochs=5",
                                                        "data.cache_workers=1", "--fold", "0")

    def run(work: Path, kill: bool) -> Path:
        env["BONEAGE_WORKING"] = str(work)
        subprocess.run([sys.executable, "-m", "src", "audit", "--input", str(tiny_phantom)], cwd=PROJECT_ROOT,
                       env=env, check=True, capture_output=True, timeout=300)
        fold = work / dataset_name(tiny_phantom) / "baseline_inception_v3" / "fold0"
        if kill:
            proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                metrics = fold / "metrics.csv"
                if metrics.is_file() and len(pd.read_csv(metrics)) >= 2:
                    break
                time.sleep(0.02)
            time.sleep(0.1)  # into the next epoch
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            assert not (fold / "done.json").exists()
            assert load_checkpoint(fold / "last.pt")["epoch"] < 4
        proc = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return fold

    straight = run(tmp_path / "straight", kill=False)
    resumed = run(tmp_path / "killed", kill=True)
    pd.testing.assert_frame_equal(read_id_csv(straight / "oof.csv"), read_id_csv(resumed / "oof.csv"))
    assert not list(resumed.glob(".*.tmp*"))  # a temp file of the killed writer was swept


def test_checkpoints_load_weights_only(tmp_path):
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=optimizer, epoch=np.int64(3),
                    history=[{"val_mae": np.float64(1.5)}], config={"a": [1, 2]})
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["epoch"] == 3 and state["history"][0]["val_mae"] == 1.5
    from src.engine.checkpoint import set_rng_state

    np.random.seed(5)
    expected = np.random.rand(3)
    np.random.seed(5)
    save_checkpoint(tmp_path / "r.pt", epoch=0)
    np.random.rand(7)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert np.array_equal(np.random.rand(3), expected)

    import argparse

    torch.save({"arbitrary object": argparse.Namespace(a=1)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(tmp_path / "evil.pt")


def test_smoke_mode_limits_images_and_writes_its_own_folder(tiny_phantom):
    root = audited(tiny_phantom)
    assert cli_main(_train_argv(root, "--limit", "15", "--epochs", "1")) == 0
    work = DatasetPaths(root).work_dir()
    out = work / "baseline_inception_v3-limit15"
    oof = read_id_csv(out / "oof.csv")
    assert len(oof) == 15 and not (work / "baseline_inception_v3").exists()
    assert len(read_id_csv(out / "test.csv")) == 5
    with pytest.raises(UserError, match="limit"):
        run_experiment(tiny_cfg("data.limit=2"), root, device="cpu")


def test_the_number_of_folds_comes_from_folds_json(tiny_phantom):
    root = audited(tiny_phantom)
    assert cli_main(["folds", "--input", str(root), "--rebuild", "--n-folds", "3"]) == 0
    out = run_experiment(tiny_cfg("train.epochs=1"), root, device="cpu")
    oof = read_id_csv(out / "oof.csv")
    assert sorted(oof["fold"].unique()) == [0, 1, 2] and len(oof) == 30
    assert not (out / "fold3").exists()
    with pytest.raises(UserError, match="folds 0..2"):
        run_experiment(tiny_cfg("train.epochs=1"), root, folds=[4], device="cpu")


def test_a_sex_specific_model_trains_and_predicts_its_own_sex_only(tiny_phantom):
    root = audited(tiny_phantom)
    out = run_experiment(tiny_cfg("train.epochs=1", "data.sex=female", "name=tiny_female"), root, device="cpu")
    work = DatasetPaths(root).work_dir()
    train, test = read_id_csv(work / "train.csv"), read_id_csv(work / "test.csv")
    oof, pred = read_id_csv(out / "oof.csv"), read_id_csv(out / "test.csv")
    assert set(oof["id"]) == set(train.loc[~train["male"], "id"]) and not oof["male"].any()
    assert set(pred["id"]) == set(test.loc[~test["male"], "id"])
    target = load_checkpoint(out / "fold0" / "last.pt")["target"]
    folds = read_id_csv(work / "folds.csv")
    assert np.isclose(target["mean"], folds.loc[(folds["fold"] != 0) & ~folds["male"], "boneage"].mean())
