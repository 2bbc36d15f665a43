"""A linear stack of OOF predictions, nested by fold so its OOF MAE is honest.

For each fold k the stacker is fitted on the other folds' OOF rows and predicts fold k, so a row's
stacked prediction never depends on its own fold's labels; the reported stacked OOF MAE scores
only rows the fit did not see. A final fit on every row gives the reported weights and the test
predictions. An intercept (on by default) lets the stack also correct a linear bias.

Sex-specific models (`data.sex: male|female`) predict one sex only. The rule: when every model
covers both sexes there is one joint stack (group "all"); as soon as one model is sex-specific,
there is one stack per sex (groups "male" and "female"), each over the models that cover that sex
(the both-sex models plus that sex's own), with its own weights and intercept. A male-only model's
weight therefore touches male rows only, no feature is ever a made-up zero, and every training
id gets a stacked prediction as long as each sex is covered by at least one model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.errors import DataError, UserError
from ..utils.io import write_csv, write_json
from . import DEFAULT_ALPHA, DEFAULT_METHOD, METHODS
from .inputs import Dataset, Model, mae

log = logging.getLogger(__name__)



@dataclass
class LinearFit:
    weights: np.ndarray
    intercept: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=float) @ self.weights + self.intercept


def fit_linear(X: np.ndarray, y: np.ndarray, method: str = DEFAULT_METHOD, alpha: float = DEFAULT_ALPHA,
               intercept: bool = True) -> LinearFit:
    """scikit-learn's LinearRegression (`linear`), the same with non-negative weights (`nnls`;
    the intercept stays free), or Ridge with `alpha` (`ridge`)."""
    from sklearn.linear_model import LinearRegression, Ridge

    if method == "nnls":
        reg = LinearRegression(fit_intercept=intercept, positive=True)
    elif method == "linear":
        reg = LinearRegression(fit_intercept=intercept)
    elif method == "ridge":
        reg = Ridge(alpha=float(alpha), fit_intercept=intercept)
    else:
        raise UserError(f"stack method {method!r} is not one of {', '.join(METHODS)}")
    X = np.asarray(X, dtype=float)
    reg.fit(X, np.asarray(y, dtype=float))
    return LinearFit(np.asarray(reg.coef_, dtype=float).reshape(-1), float(reg.intercept_) if intercept else 0.0)


def nested_predictions(X: np.ndarray, y: np.ndarray, folds: np.ndarray, **kwargs) -> tuple[np.ndarray, dict]:
    """Each fold's rows predicted by a fit on the other folds' rows only: {fold: LinearFit}."""
    X, y, folds = np.asarray(X, dtype=float), np.asarray(y, dtype=float), np.asarray(folds)
    pred = np.full(len(y), np.nan)
    fits = {}
    for k in np.unique(folds):
        held = folds == k
        if held.all():
            raise DataError(f"fold {k} holds every row: a nested stack needs rows in at least two folds")
        fit = fit_linear(X[~held], y[~held], **kwargs)
        pred[held] = fit.predict(X[held])
        fits[int(k)] = fit
    return pred, fits


@dataclass
class StackResult:
    oof: pd.DataFrame  # id, fold, boneage, male, pred
    test: pd.DataFrame | None  # id, pred (None: the dataset has no test part)
    meta: dict = field(default_factory=dict)  # stack.json


def stack_groups(models: list[Model]) -> dict[str, list[Model]]:
    """{"all": models} when every model covers both sexes, else {"male": [...], "female": [...]}
    with the models that cover each sex (see the module docstring)."""
    if all(m.sex == "both" for m in models):
        return {"all": list(models)}
    groups = {sex: [m for m in models if m.covers(sex == "male")] for sex in ("male", "female")}
    for sex, members in groups.items():
        if not members:
            chosen = ", ".join(f"{m.name} ({m.sex})" for m in models)
            raise UserError(f"no chosen model covers {sex} images ({chosen}): "
                            f"every training id needs a stacked prediction; add a model trained with data.sex "
                            f"both or {sex}")
    return groups


def _group_mask(table: pd.DataFrame, group: str) -> np.ndarray:
    if group == "all":
        return np.ones(len(table), dtype=bool)
    return (table["male"].astype(bool) == (group == "male")).to_numpy()


def _coefs(fit: LinearFit, members: list[Model]) -> dict:
    return {"weights": {m.name: float(w) for m, w in zip(members, fit.weights)}, "intercept": float(fit.intercept)}


def fit_stack(dataset: Dataset, models: list[Model], method: str = DEFAULT_METHOD, alpha: float = DEFAULT_ALPHA,
              intercept: bool = True) -> StackResult:
    """The nested OOF stack over the training ids of `dataset.folds`, then a fit on all rows
    for the test predictions and the reported weights."""
    if method not in METHODS:
        raise UserError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if method == "ridge" and alpha < 0:
        raise UserError(f"--alpha must be >= 0, got {alpha}")
    if not models:
        raise UserError("no model to stack")
    if dataset.has_test:
        lacking = [m.name for m in models if m.test is None]
        if lacking:
            raise UserError(f"the dataset has a test part but experiments {lacking} have no test.csv: test "
                            f"predictions need every stacked model's test.csv (retrain them, or leave them out "
                            f"with --models)")
    kwargs = dict(method=method, alpha=alpha, intercept=intercept)
    folds = dataset.folds.reset_index(drop=True)
    oof_pred = np.full(len(folds), np.nan)
    test_pred = np.full(len(dataset.test), np.nan) if dataset.has_test else None
    groups_meta = {}
    for group, members in stack_groups(models).items():
        mask = _group_mask(folds, group)
        rows = folds[mask]
        X = np.column_stack([m.oof.loc[rows["id"], "pred"].to_numpy(dtype=float) for m in members])
        y = rows["boneage"].to_numpy(dtype=float)
        nested, fits = nested_predictions(X, y, rows["fold"].to_numpy(), **kwargs)
        oof_pred[mask] = nested
        final = fit_linear(X, y, **kwargs)
        fold_fits = []
        for k, fit in sorted(fits.items()):
            held = rows["fold"].to_numpy() == k
            fold_fits.append({"fold": k, "n_fit": int((~held).sum()), "n_predicted": int(held.sum()),
                              "mae": mae(nested[held], y[held]), **_coefs(fit, members)})
        groups_meta[group] = {
            "models": [m.name for m in members], "n": int(mask.sum()), **_coefs(final, members),
            "oof_mae": mae(nested, y), "fold_fits": fold_fits,
        }
        if test_pred is not None:
            tmask = _group_mask(dataset.test, group)
            if tmask.any():
                ids = dataset.test.loc[tmask, "id"]
                Xt = np.column_stack([m.test.loc[ids, "pred"].to_numpy(dtype=float) for m in members])
                test_pred[tmask] = final.predict(Xt)
    if np.isnan(oof_pred).any():  # pragma: no cover - stack_groups covers every row
        raise DataError("some training ids got no stacked prediction")

    oof = folds.assign(pred=oof_pred)[["id", "fold", "boneage", "male", "pred"]]
    err = np.abs(oof["pred"] - oof["boneage"])
    male = oof["male"].astype(bool)
    fold_mae = err.groupby(oof["fold"]).mean()
    test = None
    if test_pred is not None:
        test = pd.DataFrame({"id": dataset.test["id"].to_numpy(), "pred": test_pred})
    meta = {
        "method": method, "alpha": float(alpha) if method == "ridge" else None, "intercept_fitted": bool(intercept),
        "layout": "joint" if list(groups_meta) == ["all"] else "per-sex",
        "models": [m.name for m in models],
        "model_info": {m.name: {"sex": m.sex, "fingerprint": m.fingerprint, "n_oof": int(len(m.oof))} for m in models},
        "weights": {g: info["weights"] for g, info in groups_meta.items()},
        "intercept": {g: info["intercept"] for g, info in groups_meta.items()},
        "n": int(len(oof)), "n_folds": int(dataset.n_folds), "folds_sha256": dataset.folds_sha256,
        "oof_mae": float(err.mean()), "oof_mae_male": mae(err[male], 0), "oof_mae_female": mae(err[~male], 0),
        "fold_mae": [float(fold_mae.get(k, np.nan)) for k in range(dataset.n_folds)],
        "groups": groups_meta,
        "test_written": test is not None,
    }
    return StackResult(oof, test, meta)


def _json_safe(value):
    """NaN (a sex absent from a tiny dataset) as null, so stack.json stays strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_stack(result: StackResult, stack_dir: Path) -> list[Path]:
    """`stack/oof.csv`, `stack/test.csv` (removed when the dataset has no test part, so no stale
    one is left) and `stack/stack.json`. The old json goes first and the new one last, so a
    stack.json never describes CSVs of another fit (an interrupted write leaves no stack.json)."""
    (stack_dir / "stack.json").unlink(missing_ok=True)
    written = [write_csv(result.oof, stack_dir / "oof.csv")]
    if result.test is not None:
        written.append(write_csv(result.test, stack_dir / "test.csv"))
    else:
        (stack_dir / "test.csv").unlink(missing_ok=True)
    written.append(write_json(_json_safe(result.meta), stack_dir / "stack.json"))
    return written


def describe(meta: dict) -> str:
    """One line for the log: the nested MAE and the final weights."""
    parts = []
    for group, weights in meta["weights"].items():
        terms = ", ".join(f"{name} {w:.3f}" for name, w in weights.items())
        label = "" if group == "all" else f"{group}: "
        parts.append(f"{label}{terms}, intercept {meta['intercept'][group]:.2f}")
    return (f"stack ({meta['method']}, {len(meta['models'])} models, {meta['layout']}): nested OOF MAE "
            f"{meta['oof_mae']:.2f} months over {meta['n_folds']} folds, {meta['n']} images; weights "
            + "; ".join(parts))
