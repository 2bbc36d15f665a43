"""Train one fold: a fixed schedule with per-epoch validation, best/last checkpoints, full-state
resume, then OOF and test predictions with TTA.

The OOF rows are this fold's validation images, so the weights that predict them must not be
chosen on them. By default they come from the end of the fixed schedule (`predict_from: last`,
the EMA weights when EMA is on). `predict_from: best` (the epoch with the lowest validation
MAE) is an explicit, labelled option; `done.json` records both figures so the gap is visible."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..data.cache import PreprocessCache
from ..data.dataset import BoneAgeDataset
from ..data.folds import assert_disjoint
from ..data.transforms import build_train_transform, build_tta_views
from ..models import build_model, build_target
from ..utils.io import read_id_csv, write_csv, write_json, write_yaml
from .checkpoint import ema_weights, load_checkpoint, save_checkpoint, set_rng_state, unwrap
from .distributed import DistInfo, barrier, broadcast_object
from .loops import Precision, predict, train_one_epoch

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict], None]  # (epoch, metrics row); raising stops training


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


@dataclass
class FoldData:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame | None
    cache: PreprocessCache


@dataclass(frozen=True)
class Fingerprints:
    """`train`: everything that changes the trained weights (recipe, folds, audited tables, cache);
    a last.pt is resumed only under the same one. `predictions`: that plus what changes the
    predictions of those weights (TTA views, predict_from); done.json is reused only under it."""

    train: str
    predictions: str


@dataclass
class FoldContext:
    cfg: dict
    fold: int
    fold_dir: Path
    device: torch.device
    fingerprints: Fingerprints
    dist: DistInfo = field(default_factory=DistInfo)
    callbacks: list[EpochCallback] = field(default_factory=list)
    resolved: dict = field(default_factory=dict)  # inputs, checksums, versions: for config.yaml


def optimizer_kwargs(optim_cfg: dict) -> dict:
    """Extra optimizer arguments: torch's fused kernel for Adam/AdamW where `optim.fused` asks for it."""
    if optim_cfg["fused"] and optim_cfg["name"].lower() in ("adam", "adamw"):
        return {"fused": True}
    return {}


def _worker_init(worker_id: int) -> None:
    """Loader workers decode and augment with OpenCV; one thread each avoids oversubscribing cores."""
    cv2.setNumThreads(1)


def _loader(dataset, cfg: dict, ctx: FoldContext, train: bool, generator: torch.Generator | None = None,
            persistent: bool = False, rows_per_batch_divisor: int = 1):
    """A loader; `persistent` keeps its workers between passes (training, and the per-epoch
    validation, which would otherwise fork new workers every epoch). A TTA loader yields every
    view of a row, so it takes eval_batch_size / views rows a batch: the same images a batch."""
    batch = int(cfg["train"]["batch_size"] if train else cfg["train"]["eval_batch_size"])
    batch = max(1, batch // max(1, rows_per_batch_divisor))
    workers = int(cfg["data"]["num_workers"])
    if workers > 0:
        # Workers are forked. If this process has run OpenCV with its thread pool (an in-process
        # audit, cache build or a num_workers=0 loader), a forked worker hangs in its first
        # OpenCV call on the pool's copied lock. One thread here first stops that pool.
        cv2.setNumThreads(1)
    if ctx.dist.enabled:
        sampler = DistributedSampler(dataset, num_replicas=ctx.dist.world_size, rank=ctx.dist.rank,
                                     shuffle=train, seed=int(cfg["seed"]), drop_last=False)
    else:
        sampler = RandomSampler(dataset, generator=generator) if train else None
    return DataLoader(
        dataset, batch_size=batch, sampler=sampler, shuffle=False, num_workers=workers,
        pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0 and persistent,
        worker_init_fn=_worker_init if workers > 0 else None,
        drop_last=train and len(dataset) > batch * max(ctx.dist.world_size, 1),
    )


def _make_dataset(table, data: FoldData, cfg: dict, transform, seed: int, views: list | None = None) -> BoneAgeDataset:
    d = cfg["data"]
    return BoneAgeDataset(table, data.cache, transform=transform, channels=int(d["channels"]),
                          mean=float(d["mean"]), std=float(d["std"]), seed=seed, views=views)


def write_metrics(rows: list[dict], fold_dir: Path) -> None:
    """The fold's metrics.csv, and the experiment's metrics.csv gathering every fold so far."""
    write_csv(pd.DataFrame(rows), fold_dir / "metrics.csv")
    folds = [pd.read_csv(p) for p in sorted(fold_dir.parent.glob("fold*/metrics.csv"))]
    write_csv(pd.concat(folds, ignore_index=True).sort_values(["fold", "epoch"]), fold_dir.parent / "metrics.csv")


def _tensorboard(fold_dir: Path, is_main: bool):
    if not is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(fold_dir / "tensorboard"))


def build_ema(model: torch.nn.Module, tcfg: dict, device: torch.device) -> ModelEmaV3 | None:
    """EMA of the weights with warm-up: the decay ramps from 0 towards `ema_decay`, so a short
    run's average is not dominated by the random initialisation (without warm-up, 300 updates at
    0.998 leave 55% of the init in it)."""
    if not tcfg.get("ema"):
        return None
    return ModelEmaV3(unwrap(model), decay=float(tcfg["ema_decay"]), use_warmup=bool(tcfg.get("ema_warmup", True)),
                      device=device)


def _resumable_state(last_path: Path, fingerprint: str, fold: int) -> dict | None:
    if not last_path.is_file():
        return None
    state = load_checkpoint(last_path)
    if state.get("fingerprint") != fingerprint:
        log.warning("fold %d: %s was trained with another recipe, folds or data (fingerprint %s, now %s); "
                    "this fold starts afresh (set a new `name=` to keep both)", fold, last_path,
                    state.get("fingerprint"), fingerprint)
        return None
    return state


def train_fold(ctx: FoldContext, data: FoldData, resume: bool = True) -> dict:
    """Train the fixed schedule (resuming a matching last.pt when `resume`), then predict."""
    cfg, fold, fold_dir, device = ctx.cfg, ctx.fold, ctx.fold_dir, ctx.device
    tcfg = cfg["train"]
    assert_disjoint(data.train["id"], data.val["id"], context=f"fold {fold}")
    fold_seed = int(cfg["seed"]) + 1000 * fold
    seed_everything(fold_seed, bool(cfg.get("deterministic")))
    last_path, best_path = fold_dir / "last.pt", fold_dir / "best.pt"
    state = _resumable_state(last_path, ctx.fingerprints.train, fold) if resume else None
    if ctx.dist.is_main:
        fold_dir.mkdir(parents=True, exist_ok=True)
        (fold_dir / "done.json").unlink(missing_ok=True)  # until this run predicts, the fold is not done
        # What this fold is trained with, written as it starts (a run that failed validation never gets here).
        write_yaml({**cfg, "_resolved": {**ctx.resolved, "fold": fold, "seed": fold_seed,
                                         "fingerprint": ctx.fingerprints.train}}, fold_dir / "config.yaml")
    log.info("fold %d: %d train / %d val images, seed %d", fold, len(data.train), len(data.val), fold_seed)

    codec = build_target(cfg["target"]).fit(data.train["boneage"].to_numpy())
    model_cfg = cfg["model"] if state is None else {**cfg["model"], "pretrained": False, "pretrained_file": None}
    model, weights_source = build_model(model_cfg, in_chans=int(cfg["data"]["channels"]), out_dim=codec.out_dim)
    precision = Precision(device, tcfg.get("amp_dtype"), bool(tcfg.get("channels_last")))
    model.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)

    train_ds = _make_dataset(data.train, data, cfg, build_train_transform(cfg["aug"]), seed=fold_seed)
    val_ds = _make_dataset(data.val, data, cfg, None, seed=fold_seed)
    generator = torch.Generator()
    train_loader = _loader(train_ds, cfg, ctx, train=True, generator=generator, persistent=True)
    val_loader = _loader(val_ds, cfg, ctx, train=False, persistent=True)

    accum = int(tcfg["grad_accum_steps"])
    epochs = int(tcfg["epochs"])
    val_every = int(tcfg.get("val_every", 1))  # validation is only watched (predict_from: last), so it may be sparse
    updates_per_epoch = max(1, (len(train_loader) + accum - 1) // accum)
    optimizer = create_optimizer_v2(model, opt=cfg["optim"]["name"], lr=float(cfg["optim"]["lr"]),
                                    weight_decay=float(cfg["optim"]["weight_decay"]),
                                    **optimizer_kwargs(cfg["optim"]))
    sch = cfg["schedule"]
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sch["name"], num_epochs=epochs, warmup_epochs=int(sch.get("warmup_epochs", 0)),
        warmup_lr=float(sch.get("warmup_lr", 1e-5)), min_lr=float(sch.get("min_lr", 0.0)),
        step_on_epochs=False, updates_per_epoch=updates_per_epoch,
    )
    scaler = precision.make_scaler()
    ema = build_ema(model, tcfg, device)

    start_epoch, best_mae, num_updates, history = 0, float("inf"), 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        codec.load_state_dict(state["target"])
        start_epoch, best_mae = int(state["epoch"]) + 1, float(state["best_mae"])
        num_updates, history = int(state["num_updates"]), list(state["history"])
        set_rng_state(state["rng"])
        weights_source = f"{last_path} (resumed after epoch {start_epoch} of {epochs})"
    elif resume and ctx.dist.is_main and not last_path.is_file():
        log.debug("fold %d: no %s to resume", fold, last_path)

    train_model = model
    if ctx.dist.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if tcfg.get("compile"):
        train_model = torch.compile(train_model)

    if ctx.dist.is_main:
        log.info("fold %d: %s, weights from %s, %d epochs, batch %d x %d accum x %d ranks, %s autocast, device %s",
                 fold, cfg["model"]["backbone"], weights_source, epochs, tcfg["batch_size"], accum,
                 ctx.dist.world_size, precision.label, device)
    writer = _tensorboard(fold_dir, ctx.dist.is_main)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        train_ds.set_epoch(epoch)
        generator.manual_seed(fold_seed * 1009 + epoch)  # shuffle order is a function of (seed, epoch)
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(
            train_model, train_loader, codec, optimizer, scheduler, scaler, precision, epoch, num_updates,
            grad_accum_steps=accum, grad_clip=tcfg.get("grad_clip"), ema=ema, dist_info=ctx.dist,
            desc=f"fold {fold} epoch {epoch + 1}/{epochs}",
        )
        num_updates = stats.updates
        eval_model = ema.module if ema is not None else model
        val_mae = float("nan")  # an epoch without validation (train.val_every) shows none
        if (epoch + 1) % val_every == 0 or epoch + 1 == epochs:
            idx, pred = predict(eval_model, val_loader, codec, precision, ctx.dist, desc="validate")
            val_mae = float(np.mean(np.abs(pred - val_ds.ages[idx])))
        lr = optimizer.param_groups[0]["lr"]
        row = {"fold": fold, "epoch": epoch + 1, "train_loss": float(stats.loss), "val_mae": val_mae, "lr": lr,
               "img_per_s": float(stats.images_per_s), "seconds": time.perf_counter() - t0}
        history.append(row)
        improved = val_mae < best_mae
        best_mae = min(best_mae, val_mae)
        if ctx.dist.is_main:
            log.info("fold %d epoch %d/%d  train_loss %.4f  val_mae %s%s  lr %.2e  %.1f img/s  %.0fs",
                     fold, epoch + 1, epochs, stats.loss, "-" if np.isnan(val_mae) else f"{val_mae:.2f} mo",
                     " *" if improved else "", lr, stats.images_per_s, row["seconds"])
            common = dict(epoch=epoch, best_mae=best_mae, num_updates=num_updates, history=history,
                          target=codec.state_dict(), config=cfg, fingerprint=ctx.fingerprints.train)
            if improved:
                save_checkpoint(best_path, model=eval_model, val_mae=val_mae, **common)
            save_checkpoint(last_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            ema=ema.state_dict() if ema is not None else None, **common)
            write_metrics(history, fold_dir)
            if writer is not None:
                for key in ("train_loss", "val_mae", "lr", "img_per_s"):
                    writer.add_scalar(key, row[key], epoch + 1)
        barrier(ctx.dist)
        for callback in ctx.callbacks:
            callback(epoch, row)
    if writer is not None:
        writer.close()
    barrier(ctx.dist)
    return predict_fold(ctx, data, codec, precision)


def prediction_weights(fold_dir: Path, predict_from: str) -> tuple[dict, dict, int]:
    """(model state_dict, target state, epoch) of the weights that predict OOF and test rows.

    `last`: the final epoch of the fixed schedule, EMA weights when EMA is on: nothing about them
    was chosen on the validation fold. `best`: the epoch with the lowest validation MAE.
    """
    if predict_from not in ("last", "best"):
        raise ValueError(f"train.predict_from must be 'last' or 'best', not {predict_from!r}")
    state = load_checkpoint(fold_dir / f"{predict_from}.pt")
    weights = state["model"]
    if predict_from == "last" and state.get("ema") is not None:
        weights = ema_weights(state["ema"])
    return weights, state["target"], int(state["epoch"])


def predict_fold(ctx: FoldContext, data: FoldData, codec, precision: Precision) -> dict:
    """OOF (validation fold) and test predictions, with and without TTA, from the weights that
    `train.predict_from` names; done.json records the honest and the best-on-val figures."""
    cfg, fold_dir = ctx.cfg, ctx.fold_dir
    predict_from = cfg["train"].get("predict_from", "last")
    weights, target_state, epoch = prediction_weights(fold_dir, predict_from)
    model, _ = build_model({**cfg["model"], "pretrained": False, "pretrained_file": None},
                           in_chans=int(cfg["data"]["channels"]), out_dim=codec.out_dim)
    model.load_state_dict(weights)
    codec.load_state_dict(target_state)
    model.to(ctx.device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    views = build_tta_views(cfg["tta"])
    outputs = {}
    for part, table in (("oof", data.val), ("test", data.test)):
        if table is None or table.empty:
            continue
        # Every view of a row in one pass: one loader and one cache read per row, not one per view.
        ds = _make_dataset(table, data, cfg, None, seed=0, views=[view for _, view in views])
        _, stacked = predict(model, _loader(ds, cfg, ctx, train=False, rows_per_batch_divisor=len(views)), codec,
                             precision, ctx.dist, desc=f"{part} TTA-{len(views)}")
        per_view = list(stacked.T)
        frame = pd.DataFrame({"id": table["id"].astype(str).to_numpy()})
        if part == "oof":
            frame["fold"] = ctx.fold
            frame["boneage"] = table["boneage"].to_numpy()
            frame["male"] = table["male"].astype(bool).to_numpy()
        frame["pred"] = stacked.mean(axis=1)
        frame["pred_no_tta"] = per_view[0] if views[0][0] == "identity" else np.nan
        for (name, _), column in zip(views, per_view):
            frame[f"tta_{name}"] = column
        outputs[part] = frame
        if ctx.dist.is_main:
            write_csv(frame, fold_dir / f"{part}.csv")
    if ctx.dist.is_main:
        oof = outputs["oof"]
        mae = float(np.mean(np.abs(oof["pred"] - oof["boneage"])))
        mae_no_tta = float(np.mean(np.abs(oof["pred_no_tta"] - oof["boneage"])))
        history = pd.read_csv(fold_dir / "metrics.csv")
        best_row = history.loc[history["val_mae"].idxmin()]
        write_json({
            "fold": ctx.fold, "fingerprint": ctx.fingerprints.predictions, "train_fingerprint": ctx.fingerprints.train,
            "predict_from": predict_from, "predicted_with_epoch": epoch + 1, "epochs": int(cfg["train"]["epochs"]),
            "oof_mae": mae, "oof_mae_no_tta": mae_no_tta, "n_val": len(oof),
            # the same fold's figures per epoch (no TTA): the last one is honest, the minimum is selected on it
            "last_epoch_val_mae": float(history["val_mae"].iloc[-1]),
            "best_epoch": int(best_row["epoch"]), "best_val_mae": float(best_row["val_mae"]),
        }, fold_dir / "done.json")
        log.info("fold %d: OOF MAE %.2f mo with TTA-%d, %.2f without (weights: %s epoch %d; best-on-val epoch "
                 "%d would show %.2f, selected on these rows)", ctx.fold, mae, len(views), mae_no_tta, predict_from,
                 epoch + 1, int(best_row["epoch"]), float(best_row["val_mae"]))
    barrier(ctx.dist)
    return broadcast_object({"fold": ctx.fold}, ctx.dist)


def fold_status(fold_dir: Path, has_test: bool, fingerprint: str) -> str:
    """`done` (predictions complete, made under `fingerprint`), `other` (complete, but made with
    another recipe, folds or data) or `pending`."""
    done = fold_dir / "done.json"
    if not done.is_file() or not (fold_dir / "oof.csv").is_file():
        return "pending"
    if has_test and not (fold_dir / "test.csv").is_file():
        return "pending"
    made_with = json.loads(done.read_text()).get("fingerprint")
    return "done" if made_with == fingerprint else "other"


def read_fold_outputs(fold_dir: Path, part: str) -> pd.DataFrame:
    return read_id_csv(fold_dir / f"{part}.csv")
