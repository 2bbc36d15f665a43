"""A linear stack of OOF predictions, nested by fold so its OOF MAE is honest.

For each fold k the stacker is fitted on the other folds' OOF rows and predicts fold k, so a row's
stacked prediction never depends on its own fold's labels; the reported stacked OOF MAE scores
only rows the fit did not see. A final fit on every row gives the reported weights and the test
predictions. An intercept (on by default) lets the stack also correct a linear bias.

Layouts: one joint stack (group "all"), or one stack per sex (groups "male" and "female"), each
over the models that cover that sex (the both-sex models plus that sex's own), with its own
weights and intercept. Sex-specific models (`data.sex: male|female`) predict one sex only, so as
soon as one is chosen the stack is per sex: a male-only model's weight touches male rows only, no
feature is ever a made-up zero, and every training id gets a stacked prediction as long as each
sex is covered by at least one model. With only both-sex models, `--layout auto` (the default)
lets cross-validation inside the fitting folds choose joint or per-sex for each outer fold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.errors import DataError, UserError
from ..utils.io import write_csv, write_json
from . import AUTO_METHODS, DEFAULT_ALPHA, DEFAULT_LAYOUT, DEFAULT_METHOD, FIT_METHODS, LAYOUTS, METHODS
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
    the intercept stays free), Ridge with `alpha` (`ridge`), or least absolute deviations with
    non-negative weights (`lad`: the fit minimises the MAE it is scored by)."""
    from sklearn.linear_model import LinearRegression, Ridge

    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    if method == "lad":
        return fit_lad(X, y, intercept)
    if method == "nnls":
        reg = LinearRegression(fit_intercept=intercept, positive=True)
    elif method == "linear":
        reg = LinearRegression(fit_intercept=intercept)
    elif method == "ridge":
        reg = Ridge(alpha=float(alpha), fit_intercept=intercept)
    else:
        raise UserError(f"stack method {method!r} is not one of {', '.join(FIT_METHODS)}")
    reg.fit(X, y)
    return LinearFit(np.asarray(reg.coef_, dtype=float).reshape(-1), float(reg.intercept_) if intercept else 0.0)


def fit_lad(X: np.ndarray, y: np.ndarray, intercept: bool = True) -> LinearFit:
    """min sum |y - Xw - b| with w >= 0, as the linear program min 1'(u + v) subject to
    Xw + b + u - v = y, u, v >= 0 (HiGHS). scikit-learn's QuantileRegressor solves the same
    program but cannot keep the weights non-negative."""
    from scipy import sparse
    from scipy.optimize import linprog

    n, p = X.shape
    eye = sparse.identity(n, format="csr")
    columns = [sparse.csr_matrix(X)] + ([sparse.csr_matrix(np.ones((n, 1)))] if intercept else []) + [eye, -eye]
    k = p + int(intercept)
    cost = np.concatenate([np.zeros(k), np.ones(2 * n)])
    bounds = [(0, None)] * p + ([(None, None)] if intercept else []) + [(0, None)] * (2 * n)
    res = linprog(cost, A_eq=sparse.hstack(columns, format="csr"), b_eq=y, bounds=bounds, method="highs")
    if not res.success:
        raise DataError(f"the least-absolute-deviations stack did not solve: {res.message}")
    return LinearFit(np.asarray(res.x[:p], dtype=float), float(res.x[p]) if intercept else 0.0)


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


def candidate_layouts(models: list[Model], layout: str = DEFAULT_LAYOUT) -> list[str]:
    """The layouts the stack may use: a sex-specific model needs per-sex stacks; with only
    both-sex models, `auto` lets inner cross-validation choose between one joint stack and one
    stack per sex (boys and girls mature on different clocks, so the models' biases may differ)."""
    if layout not in LAYOUTS:
        raise UserError(f"stack layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    sex_specific = [m.name for m in models if m.sex != "both"]
    if layout == "joint" and sex_specific:
        raise UserError(f"a joint stack needs models that cover both sexes; {sex_specific} are sex-specific "
                        f"(use --layout per-sex or auto)")
    if layout != "auto":
        return [layout]
    return ["per-sex"] if sex_specific else ["joint", "per-sex"]


def layout_groups(models: list[Model], layout: str) -> dict[str, list[Model]]:
    """{"all": models} for a joint stack; {"male": [...], "female": [...]} per sex, each with the
    models that cover that sex (see the module docstring)."""
    if layout == "joint":
        return {"all": list(models)}
    groups = {sex: [m for m in models if m.covers(sex == "male")] for sex in ("male", "female")}
    for sex, members in groups.items():
        if not members:
            chosen = ", ".join(f"{m.name} ({m.sex})" for m in models)
            raise UserError(f"no chosen model covers {sex} images ({chosen}): "
                            f"every training id needs a stacked prediction; add a model trained with data.sex "
                            f"both or {sex}")
    return groups


def stack_groups(models: list[Model]) -> dict[str, list[Model]]:
    """The groups of the simplest layout the models allow (joint unless one is sex-specific)."""
    return layout_groups(models, candidate_layouts(models)[0])


def _group_mask(table: pd.DataFrame, group: str) -> np.ndarray:
    if group == "all":
        return np.ones(len(table), dtype=bool)
    return (table["male"].astype(bool) == (group == "male")).to_numpy()


def _coefs(fit: LinearFit, members: list[Model]) -> dict:
    return {"weights": {m.name: float(w) for m, w in zip(members, fit.weights)}, "intercept": float(fit.intercept)}


def _features(members: list[Model], ids: pd.Series, source: str) -> np.ndarray:
    return np.column_stack([getattr(m, source).loc[ids, "pred"].to_numpy(dtype=float) for m in members])


def _fit_groups(groups: dict[str, list[Model]], rows: pd.DataFrame, kwargs: dict) -> dict[str, LinearFit]:
    fits = {}
    for group, members in groups.items():
        part = rows[_group_mask(rows, group)]
        if part.empty:
            raise DataError(f"the stack's {group!r} group has no rows to fit on (too few images of that sex)")
        fits[group] = fit_linear(_features(members, part["id"], "oof"), part["boneage"].to_numpy(dtype=float), **kwargs)
    return fits


def _predict_groups(groups: dict[str, list[Model]], fits: dict[str, LinearFit], table: pd.DataFrame,
                    source: str) -> np.ndarray:
    pred = np.full(len(table), np.nan)
    for group, members in groups.items():
        mask = _group_mask(table, group)
        if mask.any():
            pred[mask] = fits[group].predict(_features(members, table.loc[mask, "id"], source))
    return pred


def _nested(groups: dict[str, list[Model]], rows: pd.DataFrame, kwargs: dict) -> tuple[np.ndarray, dict]:
    """Each fold of `rows` predicted by fits on its other folds only: (pred, {fold: {group: fit}})."""
    pred = np.full(len(rows), np.nan)
    fits = {}
    fold = rows["fold"].to_numpy()
    for k in np.unique(fold):
        held = fold == k
        if held.all():
            raise DataError(f"fold {k} holds every row: a nested stack needs rows in at least two folds")
        fits[int(k)] = _fit_groups(groups, rows[~held], kwargs)
        pred[held] = _predict_groups(groups, fits[int(k)], rows[held], "oof")
    return pred, fits


def candidate_methods(method: str = DEFAULT_METHOD) -> list[str]:
    if method not in METHODS:
        raise UserError(f"stack method {method!r} is not one of {', '.join(METHODS)}")
    return list(AUTO_METHODS) if method == "auto" else [method]


def recipe_name(recipe: tuple[str, str]) -> str:
    return f"{recipe[0]}/{recipe[1]}"


def choose_recipe(models: list[Model], recipes: list[tuple[str, str]], rows: pd.DataFrame,
                  kwargs: dict) -> tuple[tuple[str, str], dict]:
    """The (method, layout) with the lowest nested MAE over `rows` (cross-validated over their
    folds), with each candidate's MAE; ties go to the first, the simplest. Rows from a single
    fold cannot be cross-validated: the first candidate, then (a run with 2 folds)."""
    if len(recipes) == 1 or rows["fold"].nunique() < 2:
        return recipes[0], {}
    y = rows["boneage"].to_numpy(dtype=float)
    scores = {recipe_name(r): mae(_nested(layout_groups(models, r[1]), rows, {**kwargs, "method": r[0]})[0], y)
              for r in recipes}
    return min(recipes, key=lambda r: scores[recipe_name(r)]), scores


def fit_stack(dataset: Dataset, models: list[Model], method: str = DEFAULT_METHOD, alpha: float = DEFAULT_ALPHA,
              intercept: bool = True, layout: str = DEFAULT_LAYOUT) -> StackResult:
    """The nested OOF stack over the training ids of `dataset.folds`, then a fit on all rows
    for the test predictions and the reported weights.

    With a choice to make (`method: auto`, `layout: auto`), each outer fold's recipe is chosen by
    cross-validation on the other folds only (nested model selection), so the choice never sees
    the rows it is scored on; the final recipe is chosen the same way on every row."""
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
    recipes = [(m, lay) for m in candidate_methods(method) for lay in candidate_layouts(models, layout)]
    kwargs = dict(alpha=alpha, intercept=intercept)
    rows = dataset.folds.reset_index(drop=True)
    y = rows["boneage"].to_numpy(dtype=float)
    fold = rows["fold"].to_numpy()
    oof_pred = np.full(len(rows), np.nan)
    fold_fits = []
    for k in np.unique(fold):
        held = fold == k
        if held.all():
            raise DataError(f"fold {k} holds every row: a nested stack needs rows in at least two folds")
        chosen, inner = choose_recipe(models, recipes, rows[~held], kwargs)
        groups = layout_groups(models, chosen[1])
        fits = _fit_groups(groups, rows[~held], {**kwargs, "method": chosen[0]})
        oof_pred[held] = _predict_groups(groups, fits, rows[held], "oof")
        fold_fits.append({"fold": int(k), "method": chosen[0], "layout": chosen[1], "inner_mae": inner,
                          "n_fit": int((~held).sum()), "n_predicted": int(held.sum()),
                          "mae": mae(oof_pred[held], y[held]),
                          "groups": {g: _coefs(fit, groups[g]) for g, fit in fits.items()}})
    if np.isnan(oof_pred).any():  # pragma: no cover - layout_groups covers every row
        raise DataError("some training ids got no stacked prediction")
    (final_method, final_layout), final_scores = choose_recipe(models, recipes, rows, kwargs)
    groups = layout_groups(models, final_layout)
    final = _fit_groups(groups, rows, {**kwargs, "method": final_method})
    groups_meta = {}
    for group, members in groups.items():
        mask = _group_mask(rows, group)
        groups_meta[group] = {"models": [m.name for m in members], "n": int(mask.sum()),
                              **_coefs(final[group], members), "oof_mae": mae(oof_pred[mask], y[mask])}

    oof = rows.assign(pred=oof_pred)[["id", "fold", "boneage", "male", "pred"]]
    err = np.abs(oof["pred"] - oof["boneage"])
    male = oof["male"].astype(bool)
    fold_mae = err.groupby(oof["fold"]).mean()
    test = None
    if dataset.has_test:
        test = pd.DataFrame({"id": dataset.test["id"].to_numpy(),
                             "pred": _predict_groups(groups, final, dataset.test, "test")})
    meta = {
        "method": final_method, "alpha": float(alpha) if final_method == "ridge" else None,
        "intercept_fitted": bool(intercept), "layout": final_layout,
        "requested": {"method": method, "layout": layout}, "candidates": [recipe_name(r) for r in recipes],
        "candidates_nested_mae": final_scores,
        "models": [m.name for m in models],
        "model_info": {m.name: {"sex": m.sex, "fingerprint": m.fingerprint, "n_oof": int(len(m.oof))} for m in models},
        "weights": {g: info["weights"] for g, info in groups_meta.items()},
        "intercept": {g: info["intercept"] for g, info in groups_meta.items()},
        "n": int(len(oof)), "n_folds": int(dataset.n_folds), "folds_sha256": dataset.folds_sha256,
        "oof_mae": float(err.mean()), "oof_mae_male": mae(err[male], 0), "oof_mae_female": mae(err[~male], 0),
        "fold_mae": [float(fold_mae.get(k, np.nan)) for k in range(dataset.n_folds)],
        "fold_fits": fold_fits,
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
    recipe = f"{meta['method']}, {len(meta['models'])} models, {meta['layout']}"
    if meta.get("candidates_nested_mae"):
        recipe += "; chosen by CV among " + ", ".join(f"{k} {v:.2f}" for k, v in meta["candidates_nested_mae"].items())
    return (f"stack ({recipe}): nested OOF MAE "
            f"{meta['oof_mae']:.2f} months over {meta['n_folds']} folds, {meta['n']} images; weights "
            + "; ".join(parts))
