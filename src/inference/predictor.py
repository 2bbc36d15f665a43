"""Predict bone age for new images the way the trainer predicts its test rows.

Per model and fold: the model built from the resolved config, the weights `train.predict_from`
names, the config's TTA views of every row in one pass (`loops.predict`, the same autocast and
channels-last settings, `eval_batch_size / views` rows a batch), the views' mean; then the mean
over folds, as `experiment.merge_predictions` averages `test.csv`. The stack applies its
weights and intercept per group (one joint group, or one per sex), as `stacker.fit_stack` does
for `stack/test.csv`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..data.dataset import BoneAgeDataset
from ..data.transforms import build_tta_views
from ..engine.distributed import resolve_device
from ..engine.loops import Precision, predict
from ..models import build_model, build_target
from ..utils.errors import UserError
from .bundle import Bundle, ModelSpec
from .images import MemoryImages, detect_keypoints, recipe_key

log = logging.getLogger(__name__)


def _fold_model(spec: ModelSpec, fold, device: torch.device, precision: Precision):
    cfg = spec.cfg
    weights, target_state = fold.load(spec.predict_from)
    codec = build_target(cfg["target"])
    codec.load_state_dict(target_state)
    model, _ = build_model({**cfg["model"], "pretrained": False, "pretrained_file": None},
                           in_chans=int(cfg["data"]["channels"]), out_dim=codec.out_dim)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"model {spec.name!r}: {fold.path} does not fit its config ({exc})") from exc
    model.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, codec


def predict_model(spec: ModelSpec, table: pd.DataFrame, images: MemoryImages, device: torch.device) -> np.ndarray:
    """The model's prediction (months) for each row of `table` (id, male): TTA mean per fold,
    then the mean over folds."""
    cfg = spec.cfg
    views = build_tta_views(cfg["tta"])
    precision = Precision(device, cfg["train"].get("amp_dtype"), bool(cfg["train"].get("channels_last")))
    d = cfg["data"]
    dataset = BoneAgeDataset(table, images, transform=None, channels=int(d["channels"]), mean=float(d["mean"]),
                             std=float(d["std"]), seed=0, views=[view for _, view in views])
    rows = max(1, int(cfg["train"]["eval_batch_size"]) // len(views))
    loader = DataLoader(dataset, batch_size=rows, shuffle=False, num_workers=0, pin_memory=device.type == "cuda")
    per_fold = []
    for fold in spec.folds:
        model, codec = _fold_model(spec, fold, device, precision)
        _, stacked = predict(model, loader, codec, precision, desc=f"{spec.name} fold {fold.fold} TTA-{len(views)}")
        per_fold.append(stacked.mean(axis=1))  # float32, as the trainer writes each fold's test.csv
        del model
    return np.mean(np.stack(per_fold).astype(np.float64), axis=0)


def apply_stack(stack: dict, preds: pd.DataFrame, male: pd.Series) -> np.ndarray:
    """Each row by its group's weights and intercept: group "all" takes every row, "male" and
    "female" that sex's rows (the groups of stack.json, as `stacker` predicts its test rows)."""
    out = np.full(len(preds), np.nan)
    is_male = male.to_numpy(dtype=bool)
    for group, weights in stack["weights"].items():
        mask = np.ones(len(preds), dtype=bool) if group == "all" else is_male == (group == "male")
        if not mask.any():
            continue
        X = np.column_stack([preds.loc[mask, name].to_numpy(dtype=float) for name in weights])
        w = np.array([float(v) for v in weights.values()])
        out[mask] = X @ w + float(stack["intercept"][group])
    return out


CHUNK_ROWS = 1024  # images preprocessed and held in memory at a time


def _predict_chunk(bundle: Bundle, table: pd.DataFrame, dev: torch.device) -> pd.DataFrame:
    out = pd.DataFrame({"id": table["id"].astype(str).to_numpy()})
    with tempfile.TemporaryDirectory(prefix="boneage-predict-") as tmp:
        work_dir = Path(tmp)  # the keypoint table the `register` step reads, for these images only
        registration = detect_keypoints(table, work_dir, bundle.registration) if bundle.registered else None
        recipes: dict[str, MemoryImages] = {}
        for spec in bundle.models:
            rows = table["male"].map(spec.covers).to_numpy(dtype=bool)
            key = recipe_key(spec.cfg)
            if key not in recipes:
                recipes[key] = MemoryImages(table, spec.cfg["data"]["size"], spec.cfg["data"]["preprocess"],
                                            work_dir if spec.registered else None)
            log.info("%s: %d images x %d folds x %d TTA views on %s", spec.name, int(rows.sum()), len(spec.folds),
                     len(spec.cfg["tta"]), dev)
            column = np.full(len(table), np.nan)
            if rows.any():
                column[rows] = predict_model(spec, table[rows], recipes[key], dev)
            out[spec.name] = column
    if registration is not None:
        out = out.merge(registration, on="id", how="left")
    return out


def predict_table(bundle: Bundle, table: pd.DataFrame, device: str = "auto") -> pd.DataFrame:
    """`id, boneage, <one column per model>[, registration_confidence, registration_method]` for
    every row of `table` (id, path, male), in its order. A model of one sex predicts only that
    sex's rows (NaN in its column for the others). Images are taken CHUNK_ROWS at a time, so a
    large folder never sits in memory whole."""
    dev = resolve_device(device)
    table = table.reset_index(drop=True)
    single = bundle.models[0] if bundle.stack is None else None
    if single is not None and single.sex != "both":
        other = table.loc[~table["male"].map(single.covers), "id"].tolist()
        if other:
            raise UserError(f"model {single.name!r} predicts {single.sex} images only; these are not: {other[:10]}")
    if bundle.registered:
        log.info("registration: detecting keypoints on each image (the models were trained on registered crops)")
    parts = [_predict_chunk(bundle, table.iloc[start:start + CHUNK_ROWS].reset_index(drop=True), dev)
             for start in range(0, len(table), CHUNK_ROWS)]
    out = pd.concat(parts, ignore_index=True)
    names = [m.name for m in bundle.models]
    boneage = out[single.name].to_numpy() if single is not None else apply_stack(bundle.stack, out[names], table["male"])
    out.insert(1, "boneage", boneage)
    return out
