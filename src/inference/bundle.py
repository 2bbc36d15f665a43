"""Which trained models predict, and where their weights are: a dataset's `working/<dataset>/`
(its stack, or one experiment) or a packaged code+weights folder described by `manifest.json`.

Both give the same `Bundle`: per model its resolved config and one weights file per fold, the
stack's weights when the stack predicts, and the registration settings the models were trained
with. A missing weights file or a stack fitted on other predictions is an error naming it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..data.layout import DatasetPaths
from ..utils.errors import DataError, UserError
from ..utils.io import file_sha256, read_json_object

MANIFEST = "manifest.json"
FORMAT = "boneage-workbench-weights/1"
STACK = "stack"  # what `boneage` is when the stack predicts


@dataclass
class FoldWeights:
    """One fold's prediction weights: a training checkpoint (`predict_from` names best.pt or
    last.pt, EMA resolved at load) or a packaged file holding only `model` and `target`."""

    fold: int
    path: Path
    packaged: bool
    sha256: str | None = None

    def load(self, predict_from: str) -> tuple[dict, dict]:
        """(model state_dict, target codec state)."""
        if not self.path.is_file():
            raise UserError(f"fold {self.fold}: weights {self.path} are missing")
        if not self.packaged:
            from ..engine.trainer import prediction_weights

            weights, target, _ = prediction_weights(self.path.parent, predict_from)
            return weights, target
        if self.sha256 and file_sha256(self.path) != self.sha256:
            raise DataError(f"{self.path} does not match the sha256 in its {MANIFEST}: the file is damaged or "
                            f"was replaced; package the weights again (`python -m src kaggle-package`)")
        from ..engine.checkpoint import load_checkpoint

        state = load_checkpoint(self.path)
        return state["model"], state["target"]


@dataclass
class ModelSpec:
    name: str
    cfg: dict  # the resolved config the experiment was trained with
    folds: list[FoldWeights]
    fingerprint: str | None = None

    @property
    def sex(self) -> str:
        return str(self.cfg["data"].get("sex") or "both")

    @property
    def predict_from(self) -> str:
        return str(self.cfg["train"].get("predict_from", "last"))

    @property
    def registered(self) -> bool:
        return any(step.get("name") == "register" for step in _steps(self.cfg))

    def covers(self, male: bool) -> bool:
        return self.sex == "both" or (self.sex == "male") == bool(male)


@dataclass
class Bundle:
    source: str  # for messages: the working folder or the package
    models: list[ModelSpec]
    stack: dict | None = None  # stack.json; None: one model predicts alone
    registration: dict = field(default_factory=dict)  # min_confidence, detector (registered models only)

    @property
    def registered(self) -> bool:
        return any(m.registered for m in self.models)


def _steps(cfg: dict) -> list[dict]:
    return [s if isinstance(s, dict) else {"name": s} for s in cfg["data"].get("preprocess") or []]


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path} is unreadable ({exc})") from exc
    if not isinstance(data, dict) or "data" not in data or "model" not in data:
        raise DataError(f"{path} is not a resolved experiment config")
    return data


def check_weights(spec: ModelSpec) -> None:
    """Every fold's weights file is there, before any prediction starts."""
    missing = [str(f.path) for f in spec.folds if not f.path.is_file()]
    if missing:
        raise UserError(f"model {spec.name!r}: weights missing: {', '.join(missing)}")


def check_stack_models(stack: dict, names: list[str], where: str) -> None:
    weights = stack.get("weights")
    if not isinstance(weights, dict) or not isinstance(stack.get("intercept"), dict) or not stack.get("models"):
        raise DataError(f"{where}: not a stack.json written by `python -m src stack` (no models, weights or intercept)")
    unknown = sorted({m for group in weights.values() for m in group} - set(names))
    if unknown:
        raise DataError(f"{where}: the stack weighs models {unknown} that are not available")


# ----------------------------------------------------------------------------- working/<dataset>/


def _working_model(work: Path, name: str, n_folds: int, input_dir: str) -> ModelSpec:
    folder = work / name
    if not (folder / "config.yaml").is_file():
        there = sorted(p.name for p in work.iterdir() if (p / "config.yaml").is_file()) if work.is_dir() else []
        raise UserError(f"model {name!r}: no finished experiment {folder} (finished ones: {', '.join(there) or 'none'}; "
                        f"train it with `python -m src train --config NAME --input {input_dir}`)")
    cfg = _read_yaml(folder / "config.yaml")
    predict_from = str(cfg["train"].get("predict_from", "last"))
    folds = [FoldWeights(k, folder / f"fold{k}" / f"{predict_from}.pt", packaged=False) for k in range(n_folds)]
    spec = ModelSpec(name, cfg, folds, (cfg.get("_resolved") or {}).get("fingerprint"))
    check_weights(spec)
    return spec


def registration_settings(work: Path) -> dict:
    """What predict needs to register new images as the training images were: the flag
    threshold, the detector's version, its kind and, for learned models, their weights."""
    info_path = work / "registration" / "registration.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    settings = {k: info[k] for k in ("min_confidence", "detector", "kind", "mask") if k in info}
    if info.get("kind") == "learned":
        settings["detector_weights"] = (info.get("training") or {}).get("weights")
    if info.get("mask") == "learned":
        settings["mask_weights"] = (info.get("mask_model") or {}).get("weights")
    return settings


REGISTRATION_WEIGHTS = ("detector_weights", "mask_weights")  # paths; relative ones are inside a package


def from_working(input_dir: str | Path, model: str | None = None) -> Bundle:
    """The stack of `working/<dataset>/stack/stack.json` over its models, or `model` alone."""
    from ..data.folds import read_folds_meta

    work = DatasetPaths(Path(input_dir)).work_dir()
    if not work.is_dir():
        raise UserError(f"{work} does not exist: no model was trained on --input {input_dir}")
    n_folds = int(read_folds_meta(work)["n_folds"])
    stack = None
    if model is None:
        stack_path = work / "stack" / "stack.json"
        stack = read_json_object(stack_path, f"fit the stack with `python -m src stack --input {input_dir}`, or "
                                              f"choose one model with --model NAME")
        names = list(stack.get("models") or [])
        check_stack_models(stack, names, str(stack_path))
    else:
        names = [model]
    models = [_working_model(work, name, n_folds, str(input_dir)) for name in names]
    if stack is not None:
        for spec in models:
            fitted_on = (stack.get("model_info") or {}).get(spec.name, {}).get("fingerprint")
            if fitted_on and spec.fingerprint and fitted_on != spec.fingerprint:
                raise UserError(f"{work / 'stack' / 'stack.json'} was fitted on other predictions of {spec.name!r} "
                                f"(retrained since): fit it again with `python -m src stack --input {input_dir}`")
    registration = registration_settings(work) if any(m.registered for m in models) else {}
    return Bundle(str(work), models, stack, registration)


# ----------------------------------------------------------------------------- a packaged folder


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    manifest = read_json_object(folder / MANIFEST, f"{folder} is not a code+weights folder made by "
                                                   f"`python -m src kaggle-package`")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{folder / MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def from_package(folder: str | Path, model: str | None = None) -> Bundle:
    """The packaged stack over its models (or `model` alone), from `manifest.json` only."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    entries = manifest.get("models") or {}
    if model is not None and model not in entries:
        raise UserError(f"model {model!r} is not in {folder / MANIFEST} (packaged: {', '.join(entries) or 'none'})")
    stack = None
    if model is None:
        if not manifest.get("stack"):
            if len(entries) != 1:
                raise UserError(f"{folder} has no stack; choose a model with --model ({', '.join(entries)})")
            model = next(iter(entries))
        else:
            stack = read_json_object(folder / manifest["stack"], "package the weights again")
            check_stack_models(stack, list(entries), str(folder / manifest["stack"]))
    names = [model] if model is not None else list(stack["models"])
    models = []
    for name in names:
        entry = entries.get(name)
        if entry is None:
            raise DataError(f"{folder / MANIFEST}: the stack needs model {name!r}, which is not packaged")
        folds = [FoldWeights(int(f["fold"]), folder / f["file"], packaged=True, sha256=f.get("sha256"))
                 for f in entry["folds"]]
        spec = ModelSpec(name, _read_yaml(folder / entry["config"]), folds, entry.get("fingerprint"))
        check_weights(spec)
        models.append(spec)
    registration = dict(manifest.get("registration") or {})
    for key in REGISTRATION_WEIGHTS:
        if registration.get(key):
            registration[key] = str(folder / registration[key])
    return Bundle(str(folder), models, stack, registration)


def load_bundle(input_dir: str | Path | None = None, code: str | Path | None = None,
                model: str | None = None) -> Bundle:
    """`--code FOLDER` (a package) wins over `--input DIR` (a working tree)."""
    if code is not None:
        return from_package(code, model)
    return from_working(input_dir if input_dir is not None else "input", model)
