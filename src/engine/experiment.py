"""Run an experiment over folds: inputs from the audit and folds stages, the cache, one
`train_fold` per fold, then the merged `oof.csv` / `test.csv` and a one-line summary."""

from __future__ import annotations

import logging
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cache import PreprocessCache
from ..data.folds import resolve_folds
from ..data.layout import DatasetPaths
from ..utils.errors import UserError
from ..utils.io import file_sha256, read_id_csv, write_csv, write_json, write_text, write_yaml
from .config import config_fingerprint
from .distributed import DistInfo, barrier, cleanup, init_distributed
from .trainer import EpochCallback, FoldContext, FoldData, fold_is_done, read_fold_outputs, train_fold

log = logging.getLogger(__name__)
PACKAGES = ("torch", "torchvision", "timm", "albumentations", "opencv-python-headless", "numpy", "pandas",
            "scikit-learn")


@dataclass
class ExperimentInputs:
    paths: DatasetPaths
    train: pd.DataFrame  # id, path, male, boneage, fold
    test: pd.DataFrame | None
    folds_path: Path


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def load_inputs(input_dir: str | Path, dist: DistInfo) -> ExperimentInputs:
    """The audited tables (`python -m src audit`) joined with the fold assignment."""
    paths = DatasetPaths(Path(input_dir))
    work = paths.work_dir()
    train_csv = work / "train.csv"
    if not train_csv.is_file():
        raise UserError(f"{train_csv} not found: audit the data first (`python -m src audit --input {input_dir}`)")
    train = read_id_csv(train_csv)
    if dist.is_main:
        resolve_folds(train, work)
    barrier(dist)
    folds_path = work / "folds.csv"
    folds = read_id_csv(folds_path)
    merged = train.merge(folds[["id", "fold"]], on="id", how="left")
    if merged["fold"].isna().any():
        missing = merged.loc[merged["fold"].isna(), "id"].tolist()
        raise UserError(f"{len(missing)} audited ids have no fold in {folds_path} (first {missing[:10]})")
    merged["fold"] = merged["fold"].astype(int)
    test = None
    if (work / "test.csv").is_file():
        test = read_id_csv(work / "test.csv")
    return ExperimentInputs(paths, merged, test, folds_path)


def experiment_dir(cfg: dict, paths: DatasetPaths) -> Path:
    return paths.work_dir() / cfg["experiment"]


def run_experiment(cfg: dict, input_dir: str | Path, folds: list[int] | None = None, resume: bool = False,
                   skip_existing: bool = False, device: str = "auto",
                   callbacks: list[EpochCallback] | None = None) -> Path:
    """Train the requested folds (all by default) and write merged predictions when all are done."""
    dist, dev = init_distributed(device)
    try:
        inputs = load_inputs(input_dir, dist)
        out_dir = experiment_dir(cfg, inputs.paths)
        n_folds = int(inputs.train["fold"].max()) + 1
        todo = list(range(n_folds)) if folds is None else folds
        bad = [k for k in todo if not 0 <= k < n_folds]
        if bad:
            raise UserError(f"--fold {bad}: this dataset has folds 0..{n_folds - 1}")
        cache = PreprocessCache(inputs.paths.name, str(inputs.paths.root), int(cfg["data"]["size"]),
                                cfg["data"]["preprocess"])
        if dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_yaml({**cfg, "_resolved": {
                "input": str(Path(input_dir).resolve()), "dataset": inputs.paths.name,
                "folds_file": str(inputs.folds_path), "folds_sha256": file_sha256(inputs.folds_path),
                "cache_key": cache.key, "packages": package_versions(), "argv": sys.argv, "device": str(dev),
                "world_size": dist.world_size}}, out_dir / "config.yaml")
            tables = [inputs.train] + ([inputs.test] if inputs.test is not None else [])
            cache.build(pd.concat(tables, ignore_index=True), workers=cfg["data"].get("cache_workers"))
        barrier(dist)
        has_test = inputs.test is not None and not inputs.test.empty
        for fold in todo:
            fold_dir = out_dir / f"fold{fold}"
            if skip_existing and fold_is_done(fold_dir, has_test, config_fingerprint(cfg)):
                log.info("fold %d: already done (%s), skipped", fold, fold_dir / "done.json")
                continue
            is_val = inputs.train["fold"] == fold
            data = FoldData(inputs.train[~is_val], inputs.train[is_val], inputs.test if has_test else None, cache)
            ctx = FoldContext(cfg, fold, fold_dir, dev, dist, list(callbacks or []))
            train_fold(ctx, data, resume=resume)
        if dist.is_main:
            merge_predictions(out_dir, inputs, n_folds, has_test)
        barrier(dist)
        return out_dir
    finally:
        cleanup(dist)


def merge_predictions(out_dir: Path, inputs: ExperimentInputs, n_folds: int, has_test: bool) -> dict | None:
    """Once every fold is done: `oof.csv` (every training id once, by the model that did not see
    it), `test.csv` (mean over fold models) and the summary."""
    fold_dirs = [out_dir / f"fold{k}" for k in range(n_folds)]
    pending = [k for k, d in enumerate(fold_dirs) if not fold_is_done(d, has_test)]
    if pending:
        log.info("folds %s not finished yet; merged oof.csv waits for them", pending)
        return None
    oof = pd.concat([read_fold_outputs(d, "oof") for d in fold_dirs], ignore_index=True)
    expected = inputs.train.set_index("id")["fold"]
    if not oof["id"].is_unique or set(oof["id"]) != set(expected.index):
        raise UserError(f"{out_dir}: fold predictions do not cover the training ids exactly once; rerun without --skip-existing")
    if (oof.set_index("id")["fold"] != expected.loc[oof["id"]]).any():
        raise UserError(f"{out_dir}: fold predictions disagree with {inputs.folds_path}; rerun the experiment")
    oof = oof.sort_values("id", key=lambda s: pd.to_numeric(s, errors="coerce")).reset_index(drop=True)
    write_csv(oof, out_dir / "oof.csv")
    if has_test:
        parts = [read_fold_outputs(d, "test").set_index("id")[["pred", "pred_no_tta"]] for d in fold_dirs]
        test = pd.concat(parts).groupby(level=0).mean().loc[inputs.test["id"]].reset_index()
        write_csv(test[["id", "pred", "pred_no_tta"]], out_dir / "test.csv")
    summary = summarise(oof, inputs.train)
    test_labelled = has_test and "boneage" in inputs.test and inputs.test["boneage"].notna().all()
    if test_labelled:
        scored = test.merge(inputs.test[["id", "boneage"]], on="id")
        summary["test_mae"] = float(np.mean(np.abs(scored["pred"] - scored["boneage"])))
    write_json(summary, out_dir / "summary.json")
    line = format_summary(out_dir.name, summary)
    write_text(line + "\n", out_dir / "summary.txt")
    print(line, flush=True)
    return summary


def summarise(oof: pd.DataFrame, train: pd.DataFrame) -> dict:
    err = (oof["pred"] - oof["boneage"]).abs()
    err_no_tta = (oof["pred_no_tta"] - oof["boneage"]).abs()
    # The mean predictor on the same folds: each fold predicted by its training folds' mean age.
    fold_means = {k: train.loc[train["fold"] != k, "boneage"].mean() for k in train["fold"].unique()}
    mean_pred = oof["fold"].map(fold_means)
    male = oof["male"].astype(bool)
    return {
        "n": int(len(oof)), "n_folds": int(oof["fold"].nunique()),
        "oof_mae": float(err.mean()), "oof_mae_no_tta": float(err_no_tta.mean()),
        "oof_mae_male": float(err[male].mean()), "oof_mae_female": float(err[~male].mean()),
        "mean_predictor_mae": float((mean_pred - oof["boneage"]).abs().mean()),
    }


def format_summary(name: str, s: dict) -> str:
    text = (f"{name}: OOF MAE {s['oof_mae']:.2f} months (male {s['oof_mae_male']:.2f}, female "
            f"{s['oof_mae_female']:.2f}; no TTA {s['oof_mae_no_tta']:.2f}; mean predictor "
            f"{s['mean_predictor_mae']:.2f}) over {s['n_folds']} folds, {s['n']} images")
    if "test_mae" in s:
        text += f"; test MAE {s['test_mae']:.2f}"
    return text

