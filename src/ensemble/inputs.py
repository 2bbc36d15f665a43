"""Which experiments may be combined, read and checked in one place.

Combining OOF predictions is honest only when every model was trained on the same folds file (each
row was predicted by a model that never saw it, under *this* split), covers every training id it
claims (all ids, or all ids of its sex), and was made under one recipe (one fingerprint across its
folds). A model that fails is refused by name when chosen with --models, and skipped with a
warning when found by discovery, so one stale folder never blocks the others.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..data.folds import read_folds_meta
from ..data.layout import DatasetPaths
from ..utils.errors import DataError, UserError
from ..utils.io import read_id_csv

log = logging.getLogger(__name__)

# Folders under working/<dataset>/ that are never models.
NOT_MODELS = frozenset({"cache", "stack", "report"})
SMOKE_RE = re.compile(r"-limit\d+$")  # `train --limit N` smoke runs
SEXES = ("both", "male", "female")
MERGED = ("oof.csv", "summary.json", "config.yaml")
MAX_LISTED = 10


class ModelRefused(UserError):
    """An experiment folder that cannot be combined; the message names it and says why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"experiment {name!r}: {reason}")
        self.name, self.reason = name, reason


@dataclass
class Dataset:
    """What the engine wrote for one dataset root: the folds (the labels and split every model
    must share) and the audited test table, if the dataset has a test part."""

    input_dir: str
    work_dir: Path
    folds: pd.DataFrame  # id, boneage, male, fold
    folds_meta: dict
    test: pd.DataFrame | None  # id, male, boneage (NaN when unlabelled); None without a test part

    @property
    def n_folds(self) -> int:
        return int(self.folds_meta["n_folds"])

    @property
    def folds_sha256(self) -> str:
        return str(self.folds_meta["sha256"])

    @property
    def has_test(self) -> bool:
        return self.test is not None


@dataclass
class Model:
    """One finished experiment: its OOF and test predictions indexed by id."""

    name: str
    dir: Path
    sex: str  # both | male | female: the rows it was trained on and predicts
    fingerprint: str
    oof: pd.DataFrame  # index id; fold, boneage, male, pred, pred_no_tta
    test: pd.DataFrame | None  # index id; pred, pred_no_tta (None: no test part, or no test.csv)
    summary: dict

    def covers(self, male: bool) -> bool:
        return self.sex == "both" or (self.sex == "male") == bool(male)


def load_dataset(input_dir: str | Path) -> Dataset:
    """The folds (checked against folds.json) and the audited test table of `input_dir`."""
    work = DatasetPaths(Path(input_dir)).work_dir()
    if not work.is_dir():
        raise UserError(f"{work} does not exist: nothing was audited or trained for --input {input_dir} "
                        f"(run `python -m src audit`, `folds` and `train` first)")
    meta = read_folds_meta(work)  # folds.csv present and still matching its checksum
    folds = read_id_csv(work / "folds.csv")
    missing = [c for c in ("id", "boneage", "male", "fold") if c not in folds.columns]
    if missing:
        raise DataError(f"{work / 'folds.csv'} lacks columns {missing}")
    folds = folds[["id", "boneage", "male", "fold"]].copy()
    folds["fold"] = folds["fold"].astype(int)
    folds["boneage"] = folds["boneage"].astype(float)
    test = None
    test_path = work / "test.csv"
    if test_path.is_file():
        table = read_id_csv(test_path)
        if len(table):
            if "male" not in table.columns:
                raise DataError(f"{test_path} lacks column 'male'")
            boneage = pd.to_numeric(table["boneage"], errors="coerce") if "boneage" in table else np.nan
            test = pd.DataFrame({"id": table["id"], "male": table["male"].astype(bool), "boneage": boneage})
    return Dataset(str(input_dir), work, folds, meta, test)


def _read_json(path: Path, name: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelRefused(name, f"{path} is unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelRefused(name, f"{path} is not a JSON object")
    return data


def _first(ids) -> list:
    return sorted(ids)[:MAX_LISTED]


def load_model(dataset: Dataset, name: str) -> Model:
    """Read experiment `name` and check it can be combined; raises ModelRefused naming it."""
    folder = dataset.work_dir / name
    if not folder.is_dir():
        there = sorted(p.name for p in dataset.work_dir.iterdir()
                       if p.is_dir() and p.name not in NOT_MODELS and not p.name.startswith("."))
        raise ModelRefused(name, f"no folder {folder} (folders there: {', '.join(there) or 'none'})")
    if name in NOT_MODELS or SMOKE_RE.search(name):
        raise ModelRefused(name, "is not a model (cache, stack, report or a `--limit` smoke run)")

    # The same folds file, byte for byte (checked first: another split can also mean other fold numbers).
    cfg = {}
    if (folder / "config.yaml").is_file():
        try:
            cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ModelRefused(name, f"{folder / 'config.yaml'} is unreadable ({exc})") from exc
    resolved = cfg.get("_resolved") or {}
    folds_sha = resolved.get("folds_sha256")
    if folds_sha and folds_sha != dataset.folds_sha256:
        raise ModelRefused(name, f"trained on another folds file (sha256 {folds_sha[:12]}..., while "
                                 f"{dataset.work_dir / 'folds.csv'} is {dataset.folds_sha256[:12]}...); retrain "
                                 f"it on the current folds")

    # One fingerprint over every fold, and the merged files made under it.
    prints = {}
    for k in range(dataset.n_folds):
        done = folder / f"fold{k}" / "done.json"
        if done.is_file():
            prints[k] = _read_json(done, name).get("fingerprint")
    if len(set(prints.values())) > 1:
        shown = ", ".join(f"fold{k} {fp}" for k, fp in sorted(prints.items()))
        raise ModelRefused(name, f"its folds were made under different fingerprints ({shown}): mixed recipes, "
                                 f"folds or data; retrain the odd folds (`python -m src train ... --fold K`)")
    absent = [k for k in range(dataset.n_folds) if k not in prints]
    if absent:
        raise ModelRefused(name, f"not finished: folds {absent} have no done.json")
    missing = [f for f in MERGED if not (folder / f).is_file()]
    if missing:
        raise ModelRefused(name, f"not finished: no merged {', '.join(missing)} (written once every fold is done "
                                 f"under one fingerprint)")
    if not folds_sha:
        raise ModelRefused(name, f"{folder / 'config.yaml'} records no _resolved.folds_sha256, so its folds file "
                                 f"is unknown")
    fingerprint = next(iter(prints.values()))
    summary = _read_json(folder / "summary.json", name)
    for where, value in (("summary.json", summary.get("fingerprint")), ("config.yaml", resolved.get("fingerprint"))):
        if value is not None and value != fingerprint:
            raise ModelRefused(name, f"its {where} was made under fingerprint {value} but its folds under "
                                     f"{fingerprint}: mixed recipes; retrain it")
    sex = str((cfg.get("data") or {}).get("sex") or "both")
    if sex not in SEXES:
        raise ModelRefused(name, f"data.sex is {sex!r}, not one of {SEXES}")

    oof = _check_oof(dataset, name, folder / "oof.csv", sex)
    test = _check_test(dataset, name, folder / "test.csv", sex)
    return Model(name, folder, sex, str(fingerprint), oof, test, summary)


def _expected(table: pd.DataFrame, sex: str) -> pd.DataFrame:
    return table if sex == "both" else table[table["male"] == (sex == "male")]


def _check_oof(dataset: Dataset, name: str, path: Path, sex: str) -> pd.DataFrame:
    """Every training id of the model's sex exactly once, in its fold, with the folds' label."""
    try:
        oof = read_id_csv(path)
    except (OSError, ValueError, UserError) as exc:
        raise ModelRefused(name, f"{path} is unreadable ({exc})") from exc
    lacking = [c for c in ("id", "fold", "pred") if c not in oof.columns]
    if lacking:
        raise ModelRefused(name, f"{path} lacks columns {lacking}")
    dup = oof["id"][oof["id"].duplicated()]
    if len(dup):
        raise ModelRefused(name, f"{path} lists ids more than once: {_first(set(dup))}")
    expected = _expected(dataset.folds, sex).set_index("id")
    have = set(oof["id"])
    absent = set(expected.index) - have
    if absent:
        raise ModelRefused(name, f"{path} lacks OOF predictions for {len(absent)} of the {len(expected)} "
                                 f"{'' if sex == 'both' else sex + ' '}training ids (first: {_first(absent)}): "
                                 f"incomplete OOF coverage")
    extra = have - set(expected.index)
    if extra:
        raise ModelRefused(name, f"{path} has {len(extra)} ids that are not {'' if sex == 'both' else sex + ' '}"
                                 f"training ids of {dataset.work_dir / 'folds.csv'} (first: {_first(extra)})")
    oof = oof.set_index("id").loc[expected.index]
    moved = oof.index[oof["fold"].astype(int).to_numpy() != expected["fold"].to_numpy()]
    if len(moved):
        raise ModelRefused(name, f"{path} puts {len(moved)} ids in other folds than folds.csv (first: "
                                 f"{_first(moved)})")
    pred = pd.to_numeric(oof["pred"], errors="coerce")
    if not np.isfinite(pred.to_numpy(dtype=float)).all():
        raise ModelRefused(name, f"{path} has missing or non-finite predictions")
    if "boneage" in oof:
        relabelled = ~np.isclose(oof["boneage"].astype(float).to_numpy(), expected["boneage"].to_numpy())
        if relabelled.any():
            raise ModelRefused(name, f"{path} has other labels than folds.csv for {int(relabelled.sum())} ids "
                                     f"(first: {_first(oof.index[relabelled])})")
    no_tta = pd.to_numeric(oof["pred_no_tta"], errors="coerce") if "pred_no_tta" in oof else np.nan
    return pd.DataFrame({"fold": expected["fold"], "boneage": expected["boneage"], "male": expected["male"],
                         "pred": pred.astype(float), "pred_no_tta": no_tta}, index=expected.index)


def _check_test(dataset: Dataset, name: str, path: Path, sex: str) -> pd.DataFrame | None:
    """The model's test predictions for every test id of its sex, or None where it has none."""
    if not dataset.has_test or not path.is_file():
        return None
    try:
        test = read_id_csv(path)
    except (OSError, ValueError, UserError) as exc:
        raise ModelRefused(name, f"{path} is unreadable ({exc})") from exc
    if "id" not in test.columns or "pred" not in test.columns:
        raise ModelRefused(name, f"{path} lacks columns id,pred")
    expected = list(_expected(dataset.test, sex)["id"])
    if not test["id"].is_unique or set(test["id"]) != set(expected):
        raise ModelRefused(name, f"{path} does not cover the {len(expected)} "
                                 f"{'' if sex == 'both' else sex + ' '}test ids of "
                                 f"{dataset.work_dir / 'test.csv'} exactly once")
    test = test.set_index("id").loc[expected]
    pred = pd.to_numeric(test["pred"], errors="coerce").astype(float)
    if not np.isfinite(pred.to_numpy()).all():
        raise ModelRefused(name, f"{path} has missing or non-finite predictions")
    no_tta = pd.to_numeric(test["pred_no_tta"], errors="coerce") if "pred_no_tta" in test else np.nan
    return pd.DataFrame({"pred": pred, "pred_no_tta": no_tta}, index=test.index)


def parse_names(text: str | None) -> list[str] | None:
    """`--models a,b` -> ['a', 'b'] (order kept, duplicates dropped); None when not given."""
    if text is None:
        return None
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise UserError("--models names no experiment; give NAME[,NAME...]")
    return names


def _looks_like_experiment(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() or (folder / "oof.csv").is_file() or any(folder.glob("fold*/"))


def select_models(dataset: Dataset, names: list[str] | None = None) -> list[Model]:
    """The chosen experiments (every refusal an error naming it), or, with `names` None, every
    experiment folder of the dataset that can be combined (refusals logged as warnings, skipped)."""
    if names is not None:
        models, refused = [], []
        for name in names:
            try:
                models.append(load_model(dataset, name))
            except ModelRefused as exc:
                refused.append(str(exc))
        if refused:
            raise UserError("cannot combine the chosen models:\n  " + "\n  ".join(refused))
        return models
    models, skipped = [], []
    for folder in sorted(p for p in dataset.work_dir.iterdir() if p.is_dir()):
        name = folder.name
        if name.startswith(".") or name in NOT_MODELS or SMOKE_RE.search(name) or not _looks_like_experiment(folder):
            continue
        try:
            models.append(load_model(dataset, name))
        except ModelRefused as exc:
            skipped.append(name)
            log.warning("skipped %s", exc)
    if not models:
        why = f" (skipped: {', '.join(skipped)})" if skipped else ""
        raise UserError(f"no finished experiment to combine under {dataset.work_dir}{why}; train one with "
                        f"`python -m src train --config NAME --input {dataset.input_dir}`")
    log.info("models: %s%s", ", ".join(m.name for m in models),
             f" (skipped {len(skipped)}: {', '.join(skipped)})" if skipped else "")
    return models


def mae(pred, truth) -> float:
    """Mean absolute error, NaN for no rows (a sex a model does not cover)."""
    err = np.abs(np.asarray(pred, dtype=float) - np.asarray(truth, dtype=float))
    return float(err.mean()) if len(err) else math.nan
