"""The code+weights folder for Kaggle: what an offline kernel needs to predict, and nothing else.

    FOLDER/
      dataset-metadata.json        title, id <user>/boneage-workbench-weights, licenses
      manifest.json                what follows, with sha256 of every weights file (written last)
      stack.json                   the stack's weights per group and intercepts (when the stack predicts)
      models/<experiment>/config.yaml   the resolved config each model was trained with
      models/<experiment>/fold<k>.pt    each fold's prediction weights: {model, target} only
      src/                         the workbench's code (configs included), to put on sys.path
      folds.csv                    the canonical RSNA split src/ expects beside it (for the train kernel)

A fold's file holds the weights `train.predict_from` names (the final weights, EMA resolved, by
default), without the optimiser state, so the folder stays small. No image, cache, OOF table
or log goes in. `check_package` predicts a few of the dataset's test images from the folder
alone and compares them with the stack's test.csv.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..data.layout import CANONICAL_FOLDS, DatasetPaths
from ..utils.errors import DataError, UserError
from ..utils.io import atomic_path, file_sha256, human_bytes, read_id_csv, write_json, write_yaml
from .bundle import FORMAT, MANIFEST, REGISTRATION_WEIGHTS, STACK, Bundle, from_package, from_working

log = logging.getLogger(__name__)

SRC_ROOT = Path(__file__).resolve().parents[1]
SLUG = "boneage-workbench-weights"
TITLE = "boneage-workbench weights"
PLACEHOLDER_USER = "your-kaggle-username"
CHECK_TOLERANCE = 0.01  # months
SKIPPED = ("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", ".DS_Store")


@dataclass
class PackageResult:
    folder: Path
    bytes: int
    parts: dict  # part -> bytes
    manifest: dict


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def dataset_metadata(user: str, bundle: Bundle, license_name: str, dataset: str) -> dict:
    names = ", ".join(m.name for m in bundle.models)
    what = (f"the nested linear stack ({bundle.stack.get('method')}, OOF MAE {bundle.stack.get('oof_mae', float('nan')):.2f} "
            f"months) of {names}" if bundle.stack else f"the model {names}")
    return {
        "title": TITLE,
        "id": f"{user}/{SLUG}",
        "licenses": [{"name": license_name}],
        "subtitle": "Bone age from hand radiographs: workbench code and trained weights",
        "description": (f"Code and weights of boneage-workbench: {what}, trained on {dataset}. "
                        f"Put this folder on sys.path and run `python -m src predict PATH --sex-csv CSV --code FOLDER`; "
                        f"manifest.json lists every file."),
    }


def _write_models(bundle: Bundle, folder: Path) -> dict:
    """Each model's config and stripped fold weights; the manifest's `models` section."""
    entries = {}
    for spec in bundle.models:
        model_dir = folder / "models" / spec.name
        write_yaml(spec.cfg, model_dir / "config.yaml")
        folds = []
        for fold in spec.folds:
            weights, target = fold.load(spec.predict_from)
            path = model_dir / f"fold{fold.fold}.pt"
            with atomic_path(path) as tmp:
                torch.save({"model": weights, "target": target, "fold": fold.fold, "predict_from": spec.predict_from},
                           tmp)
            folds.append({"fold": fold.fold, "file": path.relative_to(folder).as_posix(), "sha256": file_sha256(path),
                          "bytes": path.stat().st_size})
        entries[spec.name] = {"config": (model_dir / "config.yaml").relative_to(folder).as_posix(), "sex": spec.sex,
                              "predict_from": spec.predict_from, "fingerprint": spec.fingerprint, "folds": folds}
    return entries


def _replace(built: Path, out: Path) -> None:
    """Put the finished folder at `out`; an existing `out` is replaced only when it is a package
    (or empty), never some other folder."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out} is a file, not a folder")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise UserError(f"--out {out} is a folder that is not a code+weights package; choose an empty or new folder")
        shutil.rmtree(out)
    os.replace(built, out)


def _package_registration(bundle, built: Path) -> dict | None:
    """The registration settings, with a learned detector's or mask's weights copied into
    `registration/` of the package and named relative to it."""
    if not bundle.registered:
        return None
    settings = dict(bundle.registration)
    for key in REGISTRATION_WEIGHTS:
        if settings.get(key):
            source = Path(settings[key])
            if not source.is_file():
                raise UserError(f"the registration's {key.replace('_', ' ')} {source} are missing: run "
                                f"`python -m src register` again before packaging")
            target = built / "registration" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            settings[key] = target.relative_to(built).as_posix()
    return settings


def build_package(input_dir: str | Path, out: str | Path, user: str, model: str | None = None,
                  license_name: str = "other") -> PackageResult:
    bundle = from_working(input_dir, model)
    out = Path(out).resolve()
    if SRC_ROOT == out or SRC_ROOT in out.parents:
        raise UserError(f"--out {out} lies inside the code it packages ({SRC_ROOT})")
    work = DatasetPaths(Path(input_dir)).work_dir()
    built = out.parent / f".{out.name}.{os.getpid()}.building"
    if built.exists():
        shutil.rmtree(built)
    built.mkdir(parents=True)
    try:
        shutil.copytree(SRC_ROOT, built / "src", ignore=shutil.ignore_patterns(*SKIPPED))
        if CANONICAL_FOLDS.is_file():
            shutil.copy2(CANONICAL_FOLDS, built / "folds.csv")
        entries = _write_models(bundle, built)
        if bundle.stack is not None:
            write_json(bundle.stack, built / "stack.json")
        write_json(dataset_metadata(user, bundle, license_name, work.name), built / "dataset-metadata.json")
        from ..engine.experiment import package_versions

        manifest = {
            "format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dataset": work.name, "boneage": STACK if bundle.stack is not None else bundle.models[0].name,
            "stack": "stack.json" if bundle.stack is not None else None, "models": entries,
            "registration": _package_registration(bundle, built), "packages": package_versions(),
        }
        write_json(manifest, built / MANIFEST)  # last: a folder without it is no package
        _replace(built, out)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    parts = {name: folder_bytes(out / name) for name in ("src", "models", "registration", "folds.csv") if (out / name).exists()}
    return PackageResult(out, folder_bytes(out), parts, manifest)


def check_package(folder: str | Path, input_dir: str | Path, n: int, device: str = "cpu") -> tuple[int, float] | None:
    """Predict up to `n` of the dataset's test images from the package alone: (images, largest
    difference in months from the stack's, or the model's, test.csv); None when the dataset has
    no test part. A difference over CHECK_TOLERANCE is an error."""
    from .predictor import predict_table

    work = DatasetPaths(Path(input_dir)).work_dir()
    bundle = from_package(folder)
    reference = work / "stack" / "test.csv" if bundle.stack is not None else work / bundle.models[0].name / "test.csv"
    if n <= 0 or not (work / "test.csv").is_file() or not reference.is_file():
        return None
    test = read_id_csv(work / "test.csv")
    if bundle.stack is None and bundle.models[0].sex != "both":
        test = test[test["male"] == (bundle.models[0].sex == "male")]
    table = test[["id", "path", "male"]].head(n)
    if table.empty:
        return None
    expected = read_id_csv(reference).set_index("id").loc[table["id"], "pred"].to_numpy(dtype=float)
    got = predict_table(bundle, table, device=device)["boneage"].to_numpy(dtype=float)
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= CHECK_TOLERANCE:
        raise DataError(f"{folder}: predictions from the package differ from {reference} by up to {diff:.4f} months "
                        f"on {len(table)} test images (tolerance {CHECK_TOLERANCE}); the package does not reproduce "
                        f"the trained models")
    return len(table), diff


def size_report(result: PackageResult) -> str:
    parts = ", ".join(f"{name} {human_bytes(size)}" for name, size in result.parts.items())
    n = sum(len(m["folds"]) for m in result.manifest["models"].values())
    return (f"{result.folder}: {human_bytes(result.bytes)} ({parts}; {len(result.manifest['models'])} models, "
            f"{n} weights files)")
