"""The training engine on a tiny phantom with a tiny timm model: training, OOF/test files,
resume equivalence, --skip-existing, DDP with gloo, offline pretrained weights, the baseline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml

from src.cli import main as cli_main
from src.data.cache import PreprocessCache
from src.data.layout import DatasetPaths
from src.data.transforms import build_tta_views
from src.engine.config import load_config
from src.engine.experiment import run_experiment
from src.engine.checkpoint import load_checkpoint
from src.models import build_model
from src.models.boneage_net import create_backbone
from src.utils.errors import UserError
from src.utils.io import read_id_csv

from helpers import TINY, audited, interrupt_after_first_epoch, tiny_cfg

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def model_state(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_tiny_model_trains_and_writes_oof_and_test(tiny_phantom):
    root = audited(tiny_phantom)
    cfg = tiny_cfg()
    out = run_experiment(cfg, root, device="cpu")
    work = DatasetPaths(root).work_dir()
    folds = read_id_csv(work / "folds.csv")
    oof = read_id_csv(out / "oof.csv")
    # every training id exactly once, predicted by the fold that held it out
    assert oof["id"].is_unique and set(oof["id"]) == set(folds["id"])
    merged = oof.merge(folds[["id", "fold"]], on="id", suffixes=("", "_folds"))
    assert (merged["fold"] == merged["fold_folds"]).all()
    assert {"id", "fold", "pred", "pred_no_tta"} <= set(oof.columns)
    assert np.isfinite(oof["pred"]).all() and np.isfinite(oof["pred_no_tta"]).all()
    # TTA mean is the mean of the views
    views = oof[["tta_identity", "tta_rotate5", "tta_scale1.05"]].to_numpy()
    assert np.allclose(oof["pred"], views.mean(axis=1), atol=1e-3)
    test = read_id_csv(out / "test.csv")
    test_ids = read_id_csv(work / "test.csv")["id"]
    assert list(test.columns[:2]) == ["id", "pred"] and set(test["id"]) == set(test_ids)
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == 5 * 2 and np.isfinite(metrics["train_loss"]).all()
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["_resolved"]["folds_sha256"] and resolved["_resolved"]["packages"]["torch"]
    assert (out / "summary.json").is_file() and "OOF MAE" in (out / "summary.txt").read_text()
    for k in range(5):
        assert (out / f"fold{k}" / "best.pt").is_file() and (out / f"fold{k}" / "last.pt").is_file()
        state = load_checkpoint(out / f"fold{k}" / "best.pt")
        assert state["target"]["form"] == "regression" and state["target"]["std"] > 0  # stored mean/SD


def test_tiny_model_learns(tiny_phantom):
    """A few steps reduce the training loss (the optimiser, loss and targets are wired up)."""
    root = audited(tiny_phantom)
    cfg = tiny_cfg("train.epochs=6", "aug.p_affine=0.0", "aug.p_color=0.0", "aug.p_noise=0.0",
                   "schedule.warmup_epochs=0")
    out = run_experiment(cfg, root, folds=[0], device="cpu")
    metrics = pd.read_csv(out / "fold0" / "metrics.csv")
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]


def test_resume_after_a_stop_matches_an_uninterrupted_run(tiny_phantom, tmp_path, monkeypatch):
    root = tiny_phantom
    cfg = tiny_cfg("train.epochs=3")
    monkeypatch.setenv("BONEAGE_WORKING", str(tmp_path / "straight"))
    audited(root)
    straight = run_experiment(cfg, root, folds=[0], device="cpu")

    monkeypatch.setenv("BONEAGE_WORKING", str(tmp_path / "resumed"))
    audited(root)
    interrupt_after_first_epoch(cfg, root)
    fold_dir = DatasetPaths(root).work_dir() / cfg["experiment"] / "fold0"
    assert load_checkpoint(fold_dir / "last.pt")["epoch"] == 0 and not (fold_dir / "done.json").exists()
    resumed = run_experiment(cfg, root, folds=[0], device="cpu", resume=True)

    a, b = model_state(straight / "fold0" / "last.pt"), model_state(resumed / "fold0" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ma = pd.read_csv(straight / "fold0" / "metrics.csv")
    mb = pd.read_csv(resumed / "fold0" / "metrics.csv")
    assert np.allclose(ma["val_mae"], mb["val_mae"]) and len(mb) == 3


def test_finished_folds_are_skipped_by_default_and_force_retrains(tiny_phantom):
    """`python -m src train` and run_experiment behave alike: a finished fold under the same
    recipe is skipped (it never silently retrains); --force retrains it."""
    root = audited(tiny_phantom)
    cfg = tiny_cfg("train.epochs=1")
    out = run_experiment(cfg, root, folds=[1], device="cpu")
    stamp = (out / "fold1" / "last.pt").stat().st_mtime_ns
    run_experiment(cfg, root, folds=[1], device="cpu")
    assert (out / "fold1" / "last.pt").stat().st_mtime_ns == stamp
    assert not (out / "oof.csv").exists()  # four folds still missing: no partial merge
    argv = ["train", "--config", "baseline_inception_v3", "--input", str(root), "--fold", "1", "--device", "cpu",
            *TINY, "train.epochs=1"]
    assert cli_main(argv) == 0
    assert (out / "fold1" / "last.pt").stat().st_mtime_ns == stamp
    assert cli_main(argv + ["--force"]) == 0
    assert (out / "fold1" / "last.pt").stat().st_mtime_ns != stamp
    # a changed recipe is not "existing": the fold is retrained, and resume does not mix recipes
    stamp = (out / "fold1" / "last.pt").stat().st_mtime_ns
    changed = tiny_cfg("train.epochs=1", "optim.lr=0.001")
    run_experiment(changed, root, folds=[1], device="cpu")
    assert (out / "fold1" / "last.pt").stat().st_mtime_ns != stamp
    assert load_checkpoint(out / "fold1" / "last.pt")["config"]["optim"]["lr"] == 0.001


def test_jobs_train_folds_in_parallel_processes_like_one_process(tiny_phantom, tmp_path, monkeypatch, cli_main):
    """`--jobs 2` trains every fold of several experiments from one queue, each fold in its own
    process (1 thread each on 2 cores), and merges each experiment: the predictions of a serial
    run with 1 thread, a log per fold, and a rerun retrains nothing."""
    root = tiny_phantom
    argv = ["train", "--input", str(root), "--device", "cpu", *TINY, "train.epochs=1"]
    monkeypatch.setenv("BONEAGE_WORKING", str(tmp_path / "serial"))
    audited(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(argv + ["--config", "baseline_inception_v3"]) == 0
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("BONEAGE_WORKING", str(tmp_path / "jobs"))
    audited(root)
    both = argv + ["--config", "baseline_inception_v3", "--config", "resnet_classification", "--jobs", "2"]
    assert cli_main(both) == 0
    serial_dir = next((tmp_path / "serial").glob("*/baseline_inception_v3"))
    jobs_dir = next((tmp_path / "jobs").glob("*/baseline_inception_v3"))
    serial, parallel = read_id_csv(serial_dir / "oof.csv"), read_id_csv(jobs_dir / "oof.csv")
    assert list(serial["id"]) == list(parallel["id"]) and len(parallel) == 30
    assert list(serial["fold"]) == list(parallel["fold"])
    np.testing.assert_allclose(parallel["pred"], serial["pred"], atol=1e-4)
    for exp_dir in (jobs_dir, jobs_dir.parent / "resnet_classification"):
        assert len(read_id_csv(exp_dir / "oof.csv")) == 30
        assert (exp_dir / "test.csv").is_file() and (exp_dir / "summary.json").is_file()
        for fold in range(5):
            assert "epoch 1/1" in (exp_dir / f"fold{fold}" / "train.log").read_text()
    # 2 persistent workers trained the 10 folds, each fold's log naming the worker that trained it
    pids = [worker_pids(exp_dir / f"fold{fold}" / "train.log")
            for exp_dir in (jobs_dir, jobs_dir.parent / "resnet_classification") for fold in range(5)]
    assert all(len(p) == 1 for p in pids) and len(set().union(*pids)) <= 2
    stamp = (jobs_dir / "fold0" / "last.pt").stat().st_mtime_ns
    assert cli_main(both) == 0  # all done: nothing retrains
    assert (jobs_dir / "fold0" / "last.pt").stat().st_mtime_ns == stamp


def worker_pids(log_path: Path) -> set[int]:
    """The PIDs of the fold workers that ran jobs logging to `log_path`."""
    return {int(pid) for pid in re.findall(r"^fold worker pid (\d+): job \d+$", log_path.read_text(), re.M)}


def test_jobs_a_failing_experiment_does_not_stop_the_others(tiny_phantom, tmp_path, cli_main, capsys):
    """An experiment whose folds fail at train time (a bad optimizer name passes the config
    checks) is reported with its logs' tails and left unmerged; the other trains and merges."""
    root = audited(tiny_phantom)
    broken = tmp_path / "broken_optimizer.yaml"
    broken.write_text("base: baseline_inception_v3\nname: broken_optimizer\noptim: {name: nosuchopt}\n")
    argv = ["train", "--input", str(root), "--device", "cpu", *TINY, "train.epochs=1",
            "--config", str(broken), "--config", "baseline_inception_v3", "--jobs", "2"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "5 fold(s) failed" in err
    for fold in range(5):
        assert f"broken_optimizer fold {fold} (exit 1)" in err
    assert "Optimizer nosuchopt not found" in err  # the traceback's last line, from the log's tail
    work = DatasetPaths(root).work_dir()
    assert len(read_id_csv(work / "baseline_inception_v3" / "oof.csv")) == 30
    assert not (work / "broken_optimizer" / "oof.csv").exists()
    assert "Traceback" in (work / "broken_optimizer" / "fold3" / "train.log").read_text()


def test_jobs_a_dead_worker_fails_its_fold_and_a_fresh_one_goes_on(tiny_phantom, cli_main, capsys, monkeypatch):
    """Both first workers die at the start of their fold (the test hook in fold_worker.py): those
    two folds fail with the exit code, fresh workers train the other three, and a rerun trains
    only the two and merges."""
    root = audited(tiny_phantom)
    argv = ["train", "--config", "baseline_inception_v3", "--input", str(root), "--device", "cpu", *TINY,
            "train.epochs=1", "--jobs", "2"]
    monkeypatch.setenv("BONEAGE_TEST_WORKER_EXIT_ON_FOLD", "0,1")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "2 fold(s) failed" in err and "fold 0 (exit 3)" in err and "fold 1 (exit 3)" in err
    out = DatasetPaths(root).work_dir() / "baseline_inception_v3"
    assert not (out / "oof.csv").exists() and not (out / "fold0" / "done.json").exists()
    dead = worker_pids(out / "fold0" / "train.log") | worker_pids(out / "fold1" / "train.log")
    fresh = set().union(*(worker_pids(out / f"fold{fold}" / "train.log") for fold in (2, 3, 4)))
    assert len(dead) == 2 and fresh and not dead & fresh
    for fold in (2, 3, 4):
        assert (out / f"fold{fold}" / "done.json").is_file()
    stamp = (out / "fold2" / "last.pt").stat().st_mtime_ns
    monkeypatch.delenv("BONEAGE_TEST_WORKER_EXIT_ON_FOLD")
    assert cli_main(argv) == 0
    assert (out / "fold2" / "last.pt").stat().st_mtime_ns == stamp
    assert len(read_id_csv(out / "oof.csv")) == 30


def test_ddp_with_two_gloo_processes(tiny_phantom, tmp_path):
    root = audited(tiny_phantom)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "src", "train", "--config", "baseline_inception_v3", "--input", str(root), "--device", "cpu",
           "--fold", "0", *TINY, "train.epochs=1"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DDP: rank 0/2" in proc.stderr and "DDP: rank 1/2" in proc.stderr
    fold_dir = DatasetPaths(root).work_dir() / "baseline_inception_v3" / "fold0"
    oof = read_id_csv(fold_dir / "oof.csv")
    folds = read_id_csv(DatasetPaths(root).work_dir() / "folds.csv")
    assert set(oof["id"]) == set(folds.loc[folds["fold"] == 0, "id"]) and oof["id"].is_unique
    resolved = yaml.safe_load((fold_dir / "config.yaml").read_text())
    assert resolved["_resolved"]["world_size"] == 2
    # the same weights predicted by one process give the same predictions (DDP pads and gathers)
    (fold_dir / "done.json").unlink()
    run_experiment(tiny_cfg("train.epochs=1"), root, folds=[0], device="cpu")
    single = read_id_csv(fold_dir / "oof.csv")
    assert list(single["id"]) == list(oof["id"])
    assert np.allclose(single["pred"], oof["pred"], atol=1e-4) and np.allclose(single["tta_rotate5"], oof["tta_rotate5"], atol=1e-4)


def test_offline_pretrained_file_loads(tmp_path):
    source = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    weights = tmp_path / "test_resnet_imagenet.pth"
    torch.save(source.state_dict(), weights)
    model, origin = create_backbone("test_resnet", in_chans=1, pretrained=False, pretrained_file=str(weights))
    assert origin == f"file:{weights}"
    loaded, saved = model.state_dict(), source.state_dict()
    stem = [k for k in saved if saved[k].ndim == 4 and saved[k].shape[1] == 3][0]
    assert torch.allclose(loaded[stem], saved[stem].sum(dim=1, keepdim=True))  # timm's in_chans=1 adaptation
    others = [k for k in saved if k != stem]
    assert others and all(torch.equal(loaded[k], saved[k]) for k in others)
    with pytest.raises(UserError, match="does not exist"):
        create_backbone("test_resnet", 1, False, str(tmp_path / "missing.pth"))


def test_pretrained_file_flag_reaches_the_config(tmp_path):
    import argparse

    from src.commands import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--config", "baseline_inception_v3", "--pretrained-file", str(tmp_path / "w.pth"),
                              "--amp-dtype", "float16", "--grad-accum-steps", "4", "--no-channels-last"])
    assert args.config == ["baseline_inception_v3"]  # --config is repeatable
    cfg = load_config(args.config[0], None, list(args.overrides) + train.flag_overrides(args))
    assert cfg["model"]["pretrained_file"] == str(tmp_path / "w.pth")
    assert cfg["train"]["amp_dtype"] == "float16" and cfg["train"]["grad_accum_steps"] == 4
    assert cfg["train"]["channels_last"] is False


def test_inception_v3_baseline_at_500px_with_sex_input():
    cfg = load_config("baseline_inception_v3")
    assert cfg["data"]["size"] == 500 and cfg["model"]["backbone"] == "inception_v3"
    model, _ = build_model({**cfg["model"], "pretrained": False}, in_chans=1, out_dim=1)
    assert model.sex_branch[0].in_features == 1 and model.sex_branch[0].out_features == 32
    assert model.head[0].in_features == 2048 + 32
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 500, 500), torch.tensor([[1.0], [0.0]]))
    assert out.shape == (2, 1) and torch.isfinite(out).all()


def test_config_overrides_and_profiles():
    cfg = load_config("baseline_inception_v3", "demo", ["train.epochs=3"])
    assert cfg["experiment"] == "baseline_inception_v3-demo" and cfg["train"]["epochs"] == 3
    assert cfg["data"]["size"] < 500  # the profile overlay applied
    with pytest.raises(UserError, match="unknown key"):
        load_config("baseline_inception_v3", None, ["train.epoch=3"])
    with pytest.raises(UserError, match="not found"):
        load_config("no_such_experiment")


def test_tta_views_are_deterministic():
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    for name, view in build_tta_views(load_config("baseline_inception_v3")["tta"]):
        a, b = view(image=image)["image"], view(image=image)["image"]
        assert np.array_equal(a, b), name
        if name == "identity":
            assert np.array_equal(a, image)
    assert len(load_config("baseline_inception_v3")["tta"]) == 10


def test_one_pass_tta_equals_each_view_predicted_on_its_own():
    """All views of a row go through one loader as one N*V batch; each column must be what that
    view alone predicts, for the right row."""
    from torch.utils.data import DataLoader

    from src.data.dataset import BoneAgeDataset
    from src.engine.loops import Precision, predict
    from src.models.targets import RegressionTarget

    rng = np.random.default_rng(0)
    images = {str(i): (rng.random((32, 32)) * 255).astype(np.uint8) for i in range(7)}

    class Cache:
        def load(self, image_id):
            return images[image_id]

    table = pd.DataFrame({"id": list(images), "male": [i % 2 for i in range(7)], "boneage": np.arange(7.0)})
    model, _ = build_model(tiny_cfg()["model"], 1, 1)
    codec = RegressionTarget("l1")
    codec.mean, codec.std = 100.0, 40.0
    precision = Precision(torch.device("cpu"), None, False)
    views = build_tta_views(load_config("baseline_inception_v3")["tta"])
    multi = BoneAgeDataset(table, Cache(), views=[v for _, v in views])
    idx, together = predict(model, DataLoader(multi, batch_size=3), codec, precision)
    assert together.shape == (7, len(views)) and list(idx) == list(range(7))
    for column, (name, view) in enumerate(views):
        single = BoneAgeDataset(table, Cache(), transform=view)
        _, alone = predict(model, DataLoader(single, batch_size=2), codec, precision)
        np.testing.assert_allclose(together[:, column], alone, rtol=1e-5, atol=1e-4, err_msg=name)
    assert np.ptp(together, axis=1).max() > 0  # the views differ


def test_cache_is_built_once_and_keyed_by_pixels(tiny_phantom):
    root = audited(tiny_phantom)
    table = read_id_csv(DatasetPaths(root).work_dir() / "train.csv")
    steps = [{"name": "pad_square"}, {"name": "resize"}]
    cache = PreprocessCache("tiny", str(root), 48, steps)
    cache.build(table, workers=1)
    assert cache.missing(table).empty and cache.load(table["id"].iloc[0]).shape == (48, 48)
    stamp = cache.path(table["id"].iloc[0]).stat().st_mtime_ns
    cache.build(table, workers=1)
    assert cache.path(table["id"].iloc[0]).stat().st_mtime_ns == stamp
    assert PreprocessCache("tiny", str(root), 64, steps).key != cache.key
    assert PreprocessCache("tiny", str(root), 48, steps + [{"name": "resize"}]).key != cache.key


def test_train_cli_without_audit_is_a_clear_error(tmp_path, capsys):
    code = cli_main(["train", "--config", "baseline_inception_v3", "--input", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert code == 2 and "audit" in err and "Traceback" not in err


def test_fold_workers_are_pinned_one_gpu_each(monkeypatch):
    """`--jobs N` on a GPU machine: worker k gets CUDA_VISIBLE_DEVICES = the k-th visible GPU."""
    from src.engine.fold_jobs import visible_gpus, worker_environment

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    gpus = visible_gpus("auto")
    assert gpus == ["2", "3"]
    assert [worker_environment({}, slot, gpus)["CUDA_VISIBLE_DEVICES"] for slot in range(3)] == ["2", "3", "2"]
    assert visible_gpus("cpu") == [] and worker_environment({"A": "1"}, 0, []) == {"A": "1"}


def test_fold_progress_shows_the_latest_validation_between_validated_epochs(tmp_path):
    """With train.val_every 2, odd epochs have no val_mae: the status line still shows the epoch
    reached and the latest measured figure, not 'starting'."""
    from types import SimpleNamespace

    from src.engine.fold_jobs import ExperimentJob, _fold_progress

    job = ExperimentJob(cfg={"train": {"epochs": 16}}, train_argv=[],
                        plan=SimpleNamespace(out_dir=tmp_path / "exp"))
    assert _fold_progress(job, 0) == "exp fold 0 starting"
    (tmp_path / "exp" / "fold0").mkdir(parents=True)
    metrics = tmp_path / "exp" / "fold0" / "metrics.csv"
    metrics.write_text("fold,epoch,train_loss,val_mae,lr\n0,1,0.8,,1e-3\n0,2,0.7,28.8,1e-3\n")
    assert _fold_progress(job, 0) == "exp fold 0 epoch 2/16 val_mae 28.80"
    metrics.write_text(metrics.read_text() + "0,3,0.6,,1e-3\n")
    assert _fold_progress(job, 0) == "exp fold 0 epoch 3/16 val_mae 28.80 (epoch 2)"


def test_cache_pack_serves_built_images_and_never_a_stale_one(tiny_phantom):
    """`load` reads the memory-mapped pack, pixel for pixel what the PNGs hold; an image rebuilt
    after the pack was made (its source changed) is read from its new PNG, not the pack."""
    import cv2

    from src.data.cache_pack import current_pack

    root = audited(tiny_phantom)
    table = read_id_csv(DatasetPaths(root).work_dir() / "train.csv")
    cache = PreprocessCache("tiny", str(root), 48, [{"name": "pad_square"}, {"name": "resize"}])
    cache.build(table, workers=1)
    digest = current_pack(cache.dir)
    assert digest and (cache.dir / f"pack-{digest}.npy").is_file()
    first = str(table["id"].iloc[0])
    for image_id in table["id"].astype(str):
        png = cv2.imread(str(cache.path(image_id)), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(cache.load(image_id), png)
    assert cache._reader is not None and len(cache._reader.rows) == len(table)
    # the source of one image changes: the next build rebuilds it and packs anew
    source = Path(table["path"].iloc[0])
    flipped = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)[::-1].copy()
    cv2.imwrite(str(source), flipped)
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    stale_reader = PreprocessCache("tiny", str(root), 48, cache.steps)
    stale_reader.load(first)  # maps the old pack, before the rebuild
    cache.build(table, workers=1)
    assert current_pack(cache.dir) != digest and not (cache.dir / f"pack-{digest}.npy").exists()
    new_png = cv2.imread(str(cache.path(first)), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(cache.load(first), new_png)
    stale_reader._reader = None  # a process that reopens sees the new pack
    assert np.array_equal(stale_reader.load(first), new_png)


def test_dataset_yields_uint8_and_the_device_norm_matches_the_float_recipe():
    """Loader workers move uint8; `ImageNorm` on the device gives (x/255 - mean)/std, grey copied
    to 3 channels when asked, in channels_last when the engine asks."""
    from src.data.dataset import BoneAgeDataset, ImageNorm
    from src.engine.loops import Precision

    image = (np.random.default_rng(1).random((20, 20)) * 255).astype(np.uint8)

    class Cache:
        def load(self, image_id):
            return image

    table = pd.DataFrame({"id": ["1"], "male": [1], "boneage": [100.0]})
    item = BoneAgeDataset(table, Cache(), channels=3, mean=0.4, std=0.3)[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (1, 20, 20)
    batch = {"image": item["image"][None], "male": item["male"][None]}
    out = Precision(torch.device("cpu"), None, True).to_device(batch, ImageNorm(0.4, 0.3, 3))["image"]
    want = (torch.from_numpy(image).float() / 255.0 - 0.4) / 0.3
    assert out.shape == (1, 3, 20, 20) and out.is_contiguous(memory_format=torch.channels_last)
    for c in range(3):
        torch.testing.assert_close(out[0, c], want)
    with pytest.raises(TypeError, match="image_norm"):
        Precision(torch.device("cpu"), None, False).to_device(batch)


def test_training_augmentation_is_a_pure_function_of_seed_epoch_and_row():
    """Any worker, any worker count, after a resume: the same (seed, epoch, row), the same image."""
    from src.data.dataset import BoneAgeDataset
    from src.data.transforms import build_train_transform

    image = (np.random.default_rng(2).random((40, 40)) * 255).astype(np.uint8)

    class Cache:
        def load(self, image_id):
            return image

    table = pd.DataFrame({"id": ["1", "2"], "male": [1, 0], "boneage": [10.0, 20.0]})
    aug = load_config("baseline_inception_v3")["aug"]
    first, second = (BoneAgeDataset(table, Cache(), transform=build_train_transform(aug), seed=5) for _ in range(2))
    for ds in (first, second):
        ds.set_epoch(3)
    second[1]  # another row drawn first changes nothing
    assert torch.equal(first[0]["image"], second[0]["image"])
    first.set_epoch(4)
    assert not torch.equal(first[0]["image"], second[0]["image"])


def test_fused_optimizer_follows_config():
    """`optim.fused` reaches timm's optimizer factory for Adam/AdamW only (SGD has no such kernel here)."""
    from timm.optim import create_optimizer_v2
    from src.engine.trainer import optimizer_kwargs

    model = torch.nn.Linear(4, 1)
    fused = create_optimizer_v2(model, opt="adamw", lr=1e-3, **optimizer_kwargs({"name": "adamw", "fused": True}))
    assert fused.defaults["fused"] is True
    assert optimizer_kwargs({"name": "adamw", "fused": False}) == {}
    assert optimizer_kwargs({"name": "sgd", "fused": True}) == {}
