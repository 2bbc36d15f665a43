"""Run an experiment over folds: inputs from the audit and folds stages, the cache, one
`train_fold` per fold, then the merged `oof.csv` / `test.csv` and a one-line summary.

A fold is reused only when its predictions were made under the same fingerprint: the recipe,
the folds file, the audited tables and the cache key. The merge refuses folds made under
different fingerprints, so an OOF file never mixes recipes, folds or data."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.audit import require_audit
from ..data.cache import PreprocessCache
from ..data.folds import read_folds_meta, resolve_folds
from ..data.layout import DatasetPaths
from ..utils.errors import UserError
from ..utils.io import file_sha256, read_id_csv, write_csv, write_json, write_text, write_yaml
from .config import config_fingerprint
from .distributed import DistInfo, barrier, cleanup, init_distributed
from .trainer import (EpochCallback, Fingerprints, FoldContext, FoldData, fold_status, read_fold_outputs,
                      train_fold)

log = logging.getLogger(__name__)
PACKAGES = ("torch", "torchvision", "timm", "albumentations", "opencv-python-headless", "numpy", "pandas",
            "scikit-learn")


@dataclass
class ExperimentInputs:
    paths: DatasetPaths
    train: pd.DataFrame  # id, path, male, boneage, fold
    test: pd.DataFrame | None
    folds_path: Path
    n_folds: int
    checksums: dict  # sha256 of the audited tables and of the folds file


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def load_inputs(input_dir: str | Path, dist: DistInfo, limit: int | None = None, seed: int = 0,
                sex: str = "both") -> ExperimentInputs:
    """The audited tables (`python -m src audit`, which must be ok and current) joined with the
    fold assignment. `sex` (male|female) keeps that sex's rows only, train and test: a
    sex-specific model. `limit` keeps a seeded random sample of that many training images (and
    at most as many test images): a smoke run."""
    paths = DatasetPaths(Path(input_dir))
    require_audit(input_dir)
    work = paths.work_dir()
    train_csv = work / "train.csv"
    train = read_id_csv(train_csv)
    if dist.is_main:
        resolve_folds(train, work)
    barrier(dist)
    folds_path = work / "folds.csv"
    n_folds = int(read_folds_meta(work)["n_folds"])
    folds = read_id_csv(folds_path)
    merged = train.merge(folds[["id", "fold"]], on="id", how="left")
    if merged["fold"].isna().any():
        missing = merged.loc[merged["fold"].isna(), "id"].tolist()
        raise UserError(f"{len(missing)} audited ids have no fold in {folds_path} (first {missing[:10]})")
    merged["fold"] = merged["fold"].astype(int)
    checksums = {"train_csv": file_sha256(train_csv), "folds_sha256": file_sha256(folds_path)}
    test = None
    if (work / "test.csv").is_file():
        test = read_id_csv(work / "test.csv")
        checksums["test_csv"] = file_sha256(work / "test.csv")
    if sex != "both":
        merged = merged[merged["male"] == (sex == "male")]
        test = test[test["male"] == (sex == "male")] if test is not None else None
        if merged.empty:
            raise UserError(f"data.sex={sex}: {train_csv} has no {sex} training images")
        checksums["sex"] = sex
    if limit:
        merged = merged.sample(n=min(int(limit), len(merged)), random_state=seed).sort_index()
        empty = sorted(set(range(n_folds)) - set(merged["fold"]))
        if empty:
            raise UserError(f"data.limit={limit} leaves folds {empty} without images; use a larger limit")
        if test is not None:
            test = test.head(int(limit))
        checksums["limit"] = int(limit)
    return ExperimentInputs(paths, merged.reset_index(drop=True), test, folds_path, n_folds, checksums)


def experiment_dir(cfg: dict, paths: DatasetPaths) -> Path:
    """`working/<dataset>/<name>-<profile>`; a smoke run (`data.limit`) gets its own `-limitN` folder."""
    limit = cfg["data"].get("limit")
    return paths.work_dir() / (cfg["experiment"] + (f"-limit{int(limit)}" if limit else ""))


PREDICTION_ONLY_KEYS = ("predict_from",)  # train.* keys that change predictions, not weights


def fingerprints(cfg: dict, checksums: dict, cache_key: str) -> Fingerprints:
    """The train fingerprint covers the recipe, the folds, the audited tables and the cache key;
    the predictions fingerprint adds what changes predictions of the same weights (TTA views,
    predict_from), so changing those re-predicts without retraining."""
    recipe = {k: v for k, v in cfg.items() if k != "tta"}
    recipe["train"] = {k: v for k, v in cfg["train"].items() if k not in PREDICTION_ONLY_KEYS}
    train = _digest([config_fingerprint(recipe), checksums, cache_key])
    predictions = _digest([train, cfg["tta"], cfg["train"].get("predict_from", "last")])
    return Fingerprints(train, predictions)


def _digest(parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


MERGED_OUTPUTS = ("oof.csv", "test.csv", "summary.json", "summary.txt", "config.yaml")


@dataclass
class ExperimentPlan:
    """What a run of an experiment will do: the folds to train now, with the resolved inputs."""

    inputs: ExperimentInputs
    out_dir: Path
    cache: PreprocessCache
    prints: Fingerprints
    resolved: dict
    has_test: bool
    train_now: list[int]


def plan_experiment(cfg: dict, input_dir: str | Path, folds: list[int] | None, skip_existing: bool,
                    dist: DistInfo, device: torch.device, log_skips: bool = True) -> ExperimentPlan:
    """Resolve the inputs, pick the folds to train (finished ones are skipped unless forced) and,
    when any fold will change, remove the stale merged files and build the cache once."""
    inputs = load_inputs(input_dir, dist, limit=cfg["data"].get("limit"), seed=int(cfg["seed"]),
                         sex=cfg["data"].get("sex", "both"))
    out_dir = experiment_dir(cfg, inputs.paths)
    todo = list(range(inputs.n_folds)) if folds is None else sorted(set(folds))
    bad = [k for k in todo if not 0 <= k < inputs.n_folds]
    if bad:
        raise UserError(f"--fold {bad}: this dataset has folds 0..{inputs.n_folds - 1} ({inputs.folds_path})")
    cache = PreprocessCache(inputs.paths.name, str(inputs.paths.root), int(cfg["data"]["size"]),
                            cfg["data"]["preprocess"])
    prints = fingerprints(cfg, inputs.checksums, cache.key)
    resolved = {
        "input": str(Path(input_dir).resolve()), "dataset": inputs.paths.name,
        "folds_file": str(inputs.folds_path), **inputs.checksums, "cache_key": cache.key,
        "fingerprint": prints.predictions, "train_fingerprint": prints.train,
        "packages": package_versions(), "argv": sys.argv, "device": str(device), "world_size": dist.world_size}
    has_test = inputs.test is not None and not inputs.test.empty
    train_now = []
    for fold in todo:
        status = fold_status(out_dir / f"fold{fold}", has_test, prints.predictions)
        if skip_existing and status == "done":
            log.log(logging.INFO if log_skips else logging.DEBUG, "fold %d: already done under this recipe (%s), skipped (--force retrains it)",
                     fold, out_dir / f"fold{fold}" / "done.json")
        else:
            train_now.append(fold)
    if dist.is_main and train_now:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in MERGED_OUTPUTS:  # about to change a fold: the merged files would be stale
            (out_dir / name).unlink(missing_ok=True)
        tables = [inputs.train] + ([inputs.test] if inputs.test is not None else [])
        cache.build(pd.concat(tables, ignore_index=True), workers=cfg["data"].get("cache_workers"))
    return ExperimentPlan(inputs, out_dir, cache, prints, resolved, has_test, train_now)


def run_experiment(cfg: dict, input_dir: str | Path, folds: list[int] | None = None, resume: bool = True,
                   skip_existing: bool = True, device: str = "auto",
                   callbacks: list[EpochCallback] | None = None, log_skips: bool = True) -> Path:
    """Train the requested folds (all by default) and write merged predictions when all are done.

    By default a fold whose predictions are complete under the same fingerprint is skipped, and
    an interrupted one resumes from its last.pt; `skip_existing=False, resume=False` (`--force`)
    retrains from scratch.
    """
    dist, dev = init_distributed(device)
    try:
        plan = plan_experiment(cfg, input_dir, folds, skip_existing, dist, dev, log_skips=log_skips)
        inputs, out_dir = plan.inputs, plan.out_dir
        barrier(dist)
        for fold in plan.train_now:
            is_val = inputs.train["fold"] == fold
            data = FoldData(inputs.train[~is_val], inputs.train[is_val], inputs.test if plan.has_test else None,
                            plan.cache)
            ctx = FoldContext(cfg, fold, out_dir / f"fold{fold}", dev, plan.prints, dist, list(callbacks or []),
                              plan.resolved)
            train_fold(ctx, data, resume=resume)
        if dist.is_main:
            merge_predictions(out_dir, inputs, plan.has_test, plan.prints.predictions,
                              {**cfg, "_resolved": plan.resolved})
        barrier(dist)
        return out_dir
    finally:
        cleanup(dist)


def merge_predictions(out_dir: Path, inputs: ExperimentInputs, has_test: bool, fingerprint: str,
                      resolved_cfg: dict) -> dict | None:
    """Once every fold is done under `fingerprint`: `oof.csv` (every training id once, by the model
    that did not see it), `test.csv` (mean over fold models), the summary and `config.yaml`.
    Folds made under another fingerprint are refused, never mixed in."""
    fold_dirs = [out_dir / f"fold{k}" for k in range(inputs.n_folds)]
    status = {k: fold_status(d, has_test, fingerprint) for k, d in enumerate(fold_dirs)}
    other = [k for k, s in status.items() if s == "other"]
    pending = [k for k, s in status.items() if s == "pending"]
    if other or pending:
        for name in MERGED_OUTPUTS:
            (out_dir / name).unlink(missing_ok=True)
    if other:
        folds_flag = " ".join(f"--fold {k}" for k in other)
        message = (f"{out_dir.name}: folds {other} were made with another recipe, folds file or data; the merged "
                   f"oof.csv is not written (train them again: `python -m src train ... {folds_flag}`, or run "
                   f"without --fold)")
        log.warning(message)
        print(f"warning: {message}", flush=True)
        return None
    if pending:
        log.info("folds %s not finished yet; merged oof.csv waits for them", pending)
        return None
    oof = pd.concat([read_fold_outputs(d, "oof") for d in fold_dirs], ignore_index=True)
    expected = inputs.train.set_index("id")["fold"]
    if not oof["id"].is_unique or set(oof["id"]) != set(expected.index):
        raise UserError(f"{out_dir}: fold predictions do not cover the training ids exactly once; rerun with --force")
    if (oof.set_index("id")["fold"] != expected.loc[oof["id"]]).any():
        raise UserError(f"{out_dir}: fold predictions disagree with {inputs.folds_path}; rerun with --force")
    oof = oof.sort_values("id", key=lambda s: pd.to_numeric(s, errors="coerce")).reset_index(drop=True)
    write_csv(oof, out_dir / "oof.csv")
    test = None
    if has_test:
        parts = [read_fold_outputs(d, "test").set_index("id")[["pred", "pred_no_tta"]] for d in fold_dirs]
        test = pd.concat(parts).groupby(level=0).mean().loc[inputs.test["id"]].reset_index()
        write_csv(test[["id", "pred", "pred_no_tta"]], out_dir / "test.csv")
    done = [json.loads((d / "done.json").read_text()) for d in fold_dirs]
    summary = summarise(oof, inputs.train, done)
    summary["fingerprint"] = fingerprint
    if test is not None and "boneage" in inputs.test and inputs.test["boneage"].notna().all():
        scored = test.merge(inputs.test[["id", "boneage"]], on="id")
        summary["test_mae"] = float(np.mean(np.abs(scored["pred"] - scored["boneage"])))
    write_json(summary, out_dir / "summary.json")
    write_yaml(resolved_cfg, out_dir / "config.yaml")
    line = format_summary(out_dir.name, summary)
    write_text(line + "\n", out_dir / "summary.txt")
    print(line, flush=True)
    return summary


def summarise(oof: pd.DataFrame, train: pd.DataFrame, done: list[dict]) -> dict:
    """OOF MAE overall and by sex, with and without TTA, from the weights `predict_from` names;
    beside it the best-on-val figure (each fold's lowest per-epoch validation MAE, selected on
    the very rows it scores) so the selection gap is visible; and the mean predictor."""
    err = (oof["pred"] - oof["boneage"]).abs()
    err_no_tta = (oof["pred_no_tta"] - oof["boneage"]).abs()
    # The mean predictor on the same folds: each fold predicted by its training folds' mean age.
    fold_means = {k: train.loc[train["fold"] != k, "boneage"].mean() for k in train["fold"].unique()}
    mean_pred = oof["fold"].map(fold_means)
    male = oof["male"].astype(bool)
    n_val = np.array([d["n_val"] for d in done], dtype=float)
    weighted = lambda key: float(np.sum(n_val * np.array([d[key] for d in done])) / n_val.sum())  # noqa: E731
    fold_mae = oof.assign(err=err).groupby("fold")["err"].mean()
    return {
        "n": int(len(oof)), "n_folds": int(oof["fold"].nunique()),
        "predict_from": done[0].get("predict_from", "last"),
        "oof_mae": float(err.mean()), "oof_mae_no_tta": float(err_no_tta.mean()),
        "oof_mae_male": float(err[male].mean()), "oof_mae_female": float(err[~male].mean()),
        "fold_mae": [float(v) for v in fold_mae.to_numpy()],
        "oof_mae_last_epoch_no_tta": weighted("last_epoch_val_mae"),
        "oof_mae_best_on_val_no_tta": weighted("best_val_mae"),
        "best_epochs": [int(d["best_epoch"]) for d in done],
        "mean_predictor_mae": float((mean_pred - oof["boneage"]).abs().mean()),
    }


def format_summary(name: str, s: dict) -> str:
    label = "honest, final weights" if s["predict_from"] == "last" else "best-on-val weights, selected on these rows"
    text = (f"{name}: OOF MAE {s['oof_mae']:.2f} months ({label}; male {s['oof_mae_male']:.2f}, female "
            f"{s['oof_mae_female']:.2f}; no TTA {s['oof_mae_no_tta']:.2f}; best-on-val no TTA "
            f"{s['oof_mae_best_on_val_no_tta']:.2f}; mean predictor {s['mean_predictor_mae']:.2f}) over "
            f"{s['n_folds']} folds, {s['n']} images")
    if "test_mae" in s:
        text += f"; test MAE {s['test_mae']:.2f}"
    return text
