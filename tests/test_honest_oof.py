"""Honest OOF: predictions come from the fixed schedule's final weights, not from the epoch that
scored best on the very fold they predict; fp32 decoding; isotropic augmentation; EMA warm-up;
TTA views that really change the image; the target codec fitted on the training folds only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from helpers import audited, tiny_cfg

from src.data.layout import DatasetPaths
from src.data.transforms import build_train_transform, build_tta_views
from src.engine.checkpoint import load_checkpoint
from src.engine.config import load_config
from src.engine.experiment import run_experiment
from src.engine.trainer import build_ema
from src.models import build_model
from src.utils.io import read_id_csv


def _bf16_grid_share(z: np.ndarray) -> float:
    """Share of values that sit exactly (to fp32 rounding) on the bfloat16 grid."""
    on_grid = torch.from_numpy(z.astype(np.float32)).bfloat16().float().numpy()
    return float(np.mean(np.abs(on_grid - z) <= 1e-6 * np.maximum(1.0, np.abs(z))))


def test_oof_comes_from_the_final_weights_and_best_on_val_is_labelled(tiny_phantom):
    root = audited(tiny_phantom)
    cfg = tiny_cfg("train.epochs=4", "optim.lr=0.01")
    out = run_experiment(cfg, root, folds=[0], device="cpu")
    fold = out / "fold0"
    done = json.loads((fold / "done.json").read_text())
    metrics = pd.read_csv(fold / "metrics.csv")
    assert done["predict_from"] == "last" and done["predicted_with_epoch"] == 4
    # the OOF without TTA is the last epoch's validation MAE, not the minimum over epochs
    assert abs(done["oof_mae_no_tta"] - metrics["val_mae"].iloc[-1]) < 1e-3
    assert done["last_epoch_val_mae"] == metrics["val_mae"].iloc[-1]
    assert done["best_val_mae"] == metrics["val_mae"].min()
    assert done["best_epoch"] == int(metrics.loc[metrics["val_mae"].idxmin(), "epoch"])
    # the stored target mean is the training folds' mean, not train + validation
    folds = read_id_csv(DatasetPaths(root).work_dir() / "folds.csv")
    target = load_checkpoint(fold / "last.pt")["target"]
    assert np.isclose(target["mean"], folds.loc[folds["fold"] != 0, "boneage"].mean())
    assert not np.isclose(target["mean"], folds["boneage"].mean())

    # "best" is an explicit option: it re-predicts from best.pt without retraining
    stamp = (fold / "last.pt").stat().st_mtime_ns
    best = tiny_cfg("train.epochs=4", "optim.lr=0.01", "train.predict_from=best")
    run_experiment(best, root, folds=[0], device="cpu")
    assert (fold / "last.pt").stat().st_mtime_ns == stamp
    done_best = json.loads((fold / "done.json").read_text())
    assert done_best["predict_from"] == "best" and done_best["predicted_with_epoch"] == done["best_epoch"]
    assert abs(done_best["oof_mae_no_tta"] - done["best_val_mae"]) < 1e-3


def test_all_folds_summary_reports_honest_and_best_on_val(tiny_phantom):
    root = audited(tiny_phantom)
    out = run_experiment(tiny_cfg(), root, device="cpu")
    summary = json.loads((out / "summary.json").read_text())
    dones = [json.loads((out / f"fold{k}" / "done.json").read_text()) for k in range(5)]
    n = np.array([d["n_val"] for d in dones])
    assert summary["predict_from"] == "last"
    assert np.isclose(summary["oof_mae_best_on_val_no_tta"], np.sum(n * [d["best_val_mae"] for d in dones]) / n.sum())
    assert np.isclose(summary["oof_mae_no_tta"], summary["oof_mae_last_epoch_no_tta"], atol=1e-3)
    assert summary["oof_mae_best_on_val_no_tta"] <= summary["oof_mae_no_tta"] + 1e-6
    assert "best-on-val" in (out / "summary.txt").read_text() and "honest" in (out / "summary.txt").read_text()
    # predictions decoded in fp32: not on the bf16 grid although the run used bf16 autocast
    assert load_checkpoint(out / "fold0" / "last.pt")["config"]["train"]["amp_dtype"] == "bfloat16"
    oof = read_id_csv(out / "oof.csv")
    target = load_checkpoint(out / "fold0" / "last.pt")["target"]
    z = ((oof.loc[oof["fold"] == 0, "pred_no_tta"] - target["mean"]) / target["std"]).to_numpy()
    assert _bf16_grid_share(z) < 0.5


def test_head_output_is_fp32_under_bf16_autocast():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model, _ = build_model(cfg["model"], in_chans=1, out_dim=1)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(64, 1, 64, 64), torch.randint(0, 2, (64, 1)).float())
    assert out.dtype == torch.float32
    assert _bf16_grid_share(out[:, 0].numpy()) < 0.5


def _extent(image: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(image > 127)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def test_training_augmentation_scales_x_and_y_together():
    aug = {**load_config("baseline_inception_v3")["aug"], "rotate": 0, "shift": 0, "p_affine": 1.0,
           "scale": [0.7, 1.3], "p_color": 0, "p_blur": 0, "p_noise": 0}
    transform = build_train_transform(aug)
    image = np.zeros((200, 200), dtype=np.uint8)
    image[60:140, 60:140] = 255
    ratios = []
    for seed in range(40):
        transform.set_random_seed(seed)
        w, h = _extent(transform(image=image)["image"])
        ratios.append(w / h)
    assert max(abs(r - 1.0) for r in ratios) < 0.04, (min(ratios), max(ratios))


def test_every_non_identity_tta_view_changes_the_pixels():
    rng = np.random.default_rng(0)
    image = np.zeros((96, 96), dtype=np.uint8)
    image[20:80, 30:60] = rng.integers(100, 255, (60, 30))
    for cfg in (load_config("baseline_inception_v3"), load_config("baseline_inception_v3", "demo")):
        for name, view in build_tta_views(cfg["tta"]):
            out = view(image=image)["image"]
            if name == "identity":
                assert np.array_equal(out, image)
            else:
                assert np.abs(out.astype(int) - image).sum() > 0.01 * image.sum(), name


def test_ema_warmup_forgets_the_random_init():
    """With warm-up, after 300 updates the EMA holds almost nothing of the first weights
    (without it, 0.998 ** 299 = 55% of them would remain)."""
    model = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = build_ema(model, {"ema": True, "ema_decay": 0.998, "ema_warmup": True}, torch.device("cpu"))
    ema.update(model, step=1)  # the first update copies the init
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(2, 301):
        ema.update(model, step=step)
    init_share = 1.0 - float(ema.module.weight.detach().mean())
    assert init_share < 0.05, init_share
    assert build_ema(model, {"ema": False}, torch.device("cpu")) is None


def test_a_demo_sized_run_beats_the_mean_predictor(tmp_path_factory):
    """The demo's pipeline, shrunk to test size (240 hands at 64 px, a tiny timm model, 5 folds,
    the fixed schedule's final weights): the honest OOF must clearly beat predicting each fold's
    training mean."""
    from src.data.phantom import PhantomParams, generate

    root = tmp_path_factory.mktemp("demo-sized") / "phantom"
    generate(root, PhantomParams(seed=11, scale=0.1, n_train=240, n_test=10), workers=2, progress=False)
    audited(root)
    cfg = tiny_cfg("train.epochs=16", "train.batch_size=16", "train.eval_batch_size=64", "model.head_hidden=[64]",
                   "aug.p_affine=0.5", "aug.rotate=10", "aug.scale=[0.95, 1.05]", "aug.shift=0.04",
                   "deterministic=false")
    out = run_experiment(cfg, root, device="cpu")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predict_from"] == "last" and summary["n"] == 240
    assert summary["oof_mae"] < 0.75 * summary["mean_predictor_mae"], summary
