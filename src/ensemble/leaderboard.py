"""The leaderboard: every model, their simple mean, the stack and the mean predictor, scored on
the same OOF rows (and on test labels where there are any), sorted by OOF MAE.

Every figure is recomputed here from the prediction files, so the rows are comparable whatever
each experiment's summary.json says. The stack is read from `stack/`, never refitted: its row
is left out, with a warning, when its models or folds changed since `python -m src stack`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.errors import DataError, UserError
from ..utils.io import read_id_csv, write_csv, write_text
from .inputs import Dataset, Model, ModelRefused, load_model, mae

log = logging.getLogger(__name__)

RSNA_ID, RSNA_AGE = "Case ID", "Bone Age (months)"  # the RSNA test label files' spelling
LABELLED = "labelled"  # column test_mae_labelled: the dataset's own labelled test part (the phantom)
MEAN, STACK, MEAN_PREDICTOR = "(mean)", "(stack)", "(mean predictor)"
OOF_COLUMNS = ["oof_mae", "oof_mae_male", "oof_mae_female", "fold_mae_mean", "fold_mae_sd", "oof_mae_no_tta"]


@dataclass
class Entry:
    """One leaderboard row's predictions: OOF indexed by id (fold, boneage, male, pred,
    pred_no_tta) and test predictions indexed by id (None where it has none)."""

    model: str
    kind: str  # model | mean | stack | mean_predictor
    oof: pd.DataFrame
    test: pd.Series | None


def model_entry(model: Model) -> Entry:
    return Entry(model.name, "model", model.oof, None if model.test is None else model.test["pred"])


def mean_entry(dataset: Dataset, models: list[Model]) -> Entry:
    """The simple mean: each row averaged over the models that cover it (all of them for both-sex
    models; a sex-specific model joins its own sex's rows only). No-TTA is the mean of the
    covering models' no-TTA predictions, NaN for a row where one of them has none."""
    ids = dataset.folds["id"]
    pred = pd.concat([m.oof["pred"].rename(m.name) for m in models], axis=1).reindex(ids)
    no_tta = pd.concat([m.oof["pred_no_tta"].rename(m.name) for m in models], axis=1).reindex(ids)
    covered = pred.notna()
    keep = covered.any(axis=1).to_numpy()
    no_tta_mean = no_tta.where(covered).sum(axis=1, min_count=1) / covered.sum(axis=1)
    no_tta_mean[(covered & no_tta.isna()).any(axis=1)] = np.nan
    oof = dataset.folds.set_index("id").assign(pred=pred.mean(axis=1), pred_no_tta=no_tta_mean)[keep]
    test = None
    if dataset.has_test:
        if all(m.test is not None for m in models):
            test = pd.concat([m.test["pred"].rename(m.name) for m in models], axis=1).mean(axis=1)
        else:
            log.warning("%s: no test predictions, since %s have no test.csv", MEAN,
                        [m.name for m in models if m.test is None])
    return Entry(MEAN, "mean", oof, test)


def mean_predictor_entry(dataset: Dataset) -> Entry:
    """Each fold predicted by its training folds' mean age; the test part by the mean age of all
    training ids."""
    folds = dataset.folds.set_index("id")
    fold_means = {k: folds.loc[folds["fold"] != k, "boneage"].mean() for k in folds["fold"].unique()}
    oof = folds.assign(pred=folds["fold"].map(fold_means).astype(float))
    oof["pred_no_tta"] = oof["pred"]
    test = None
    if dataset.has_test:
        test = pd.Series(float(folds["boneage"].mean()), index=pd.Index(dataset.test["id"], name="id"))
    return Entry(MEAN_PREDICTOR, "mean_predictor", oof, test)


def stack_entry(dataset: Dataset, models: list[Model]) -> tuple[Entry, dict] | None:
    """The saved stack, if `stack/stack.json` exists and still matches the folds and its models'
    fingerprints; None (with a warning naming the reason) otherwise."""
    import json

    stack_dir = dataset.work_dir / "stack"
    meta_path = stack_dir / "stack.json"
    if not meta_path.is_file():
        return None

    def stale(reason: str) -> None:
        log.warning("the stack in %s is left out of the leaderboard: %s; rerun `python -m src stack --input %s`",
                    stack_dir, reason, dataset.input_dir)

    try:
        meta = json.loads(meta_path.read_text())
        recorded = {name: info["fingerprint"] for name, info in meta["model_info"].items()}
        weights, n_folds = meta["weights"], meta["n_folds"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return stale(f"{meta_path} is unreadable ({exc})")
    if meta.get("folds_sha256") != dataset.folds_sha256:
        return stale("it was fitted on another folds file")
    known = {m.name: m for m in models}
    for name, fingerprint in recorded.items():
        try:
            current = known[name] if name in known else load_model(dataset, name)
        except ModelRefused as exc:
            return stale(f"its model cannot be used now ({exc})")
        if current.fingerprint != fingerprint:
            return stale(f"model {name!r} was retrained since (fingerprint {fingerprint}, now {current.fingerprint})")
    try:
        oof = read_id_csv(stack_dir / "oof.csv")
    except (OSError, ValueError, UserError) as exc:
        return stale(f"{stack_dir / 'oof.csv'} is unreadable ({exc})")
    if not oof["id"].is_unique or set(oof["id"]) != set(dataset.folds["id"]) or n_folds != dataset.n_folds:
        return stale(f"{stack_dir / 'oof.csv'} does not cover the training ids of folds.csv exactly once")
    folds = dataset.folds.set_index("id")
    oof = folds.assign(pred=oof.set_index("id")["pred"].astype(float).reindex(folds.index), pred_no_tta=np.nan)
    test = None
    if dataset.has_test and (stack_dir / "test.csv").is_file():
        test = read_id_csv(stack_dir / "test.csv").set_index("id")["pred"].astype(float)
    return Entry(STACK, "stack", oof, test), {"weights": weights, "groups": meta.get("groups", {}),
                                              "layout": meta.get("layout", "joint")}


def load_test_labels(path: str | Path) -> pd.Series:
    """Test labels as a Series id -> boneage, from `id,boneage[,male]` or the RSNA spelling
    `Case ID,Bone Age (months)`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--test-labels {path}: no such file")
    try:
        table = pd.read_csv(path, dtype={"id": str, RSNA_ID: str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable ({exc})") from exc
    if {"id", "boneage"} <= set(table.columns):
        ids, ages = table["id"], table["boneage"]
    elif {RSNA_ID, RSNA_AGE} <= set(table.columns):
        ids, ages = table[RSNA_ID], table[RSNA_AGE]
    else:
        raise DataError(f"{path}: a test label file needs columns id,boneage (or '{RSNA_ID}','{RSNA_AGE}'); "
                        f"found {list(table.columns)}")
    ids = ids.astype(str).str.strip()
    ages = pd.to_numeric(ages, errors="coerce")
    if ages.isna().any() or ids.duplicated().any():
        bad = (table.index[ages.isna() | ids.duplicated()][:10] + 2).tolist()
        raise DataError(f"{path}: missing or non-numeric ages, or repeated ids, in rows {bad}")
    return pd.Series(ages.to_numpy(dtype=float), index=pd.Index(ids, name="id"), name=path.stem)


def oof_scores(oof: pd.DataFrame) -> dict:
    """OOF MAE overall, by sex, per fold (mean and sample SD over folds, ddof=1) and without TTA
    (NaN unless every row has a no-TTA prediction)."""
    err = (oof["pred"] - oof["boneage"]).abs()
    male = oof["male"].astype(bool)
    per_fold = err.groupby(oof["fold"]).mean()
    no_tta = oof["pred_no_tta"].astype(float)
    return {
        "n": int(len(oof)), "oof_mae": mae(err, 0), "oof_mae_male": mae(err[male], 0),
        "oof_mae_female": mae(err[~male], 0), "fold_mae_mean": float(per_fold.mean()),
        "fold_mae_sd": float(per_fold.std(ddof=1)) if len(per_fold) > 1 else math.nan,
        "oof_mae_no_tta": mae(no_tta, oof["boneage"]) if no_tta.notna().all() and len(no_tta) else math.nan,
    }


def _stack_weights(stack: dict | None, name: str) -> dict:
    """stack_weight: the model's weight in a joint stack; in per-sex stacks, its row-weighted mean
    weight over both (0 in a sex it does not cover), with stack_weight_male/_female beside it.
    NaN for a model outside the stack."""
    if stack is None:
        return {"stack_weight": math.nan}
    weights, groups = stack["weights"], stack["groups"]
    if stack["layout"] == "joint":
        return {"stack_weight": float(weights.get("all", {}).get(name, math.nan))}
    out = {f"stack_weight_{g}": float(weights.get(g, {}).get(name, math.nan)) for g in ("male", "female")}
    if not any(name in weights.get(g, {}) for g in ("male", "female")):
        return {"stack_weight": math.nan, **out}
    n = {g: float(groups.get(g, {}).get("n", 0)) for g in ("male", "female")}
    total = sum(n.values())
    mean_w = sum(n[g] * weights.get(g, {}).get(name, 0.0) for g in n) / total if total else math.nan
    return {"stack_weight": float(mean_w), **out}


def _score_test(entries: list[Entry], labels: pd.Series, column: str, source: str) -> dict[str, float]:
    """Each entry's test MAE on the labelled ids it predicts; a warning with counts where that is
    not every labelled id, an error where no entry predicts any."""
    scores, partial = {}, []
    predicted = pd.Index([], name="id")
    for entry in entries:
        if entry.test is None:
            scores[entry.model] = math.nan
            continue
        predicted = predicted.union(entry.test.index)
        shared = labels.index.intersection(entry.test.index)
        scores[entry.model] = mae(entry.test.loc[shared], labels.loc[shared]) if len(shared) else math.nan
        if len(shared) < len(labels):
            partial.append(f"{entry.model} {len(shared)} of {len(labels)}")
    unpredicted = labels.index.difference(predicted)
    if len(unpredicted) == len(labels):
        raise DataError(f"{source}: none of its {len(labels)} ids (first {sorted(labels.index)[:5]}) has a test "
                        f"prediction in this run ({len(predicted)} test ids predicted"
                        f"{', first ' + str(sorted(predicted)[:5]) if len(predicted) else ''}): nothing to score "
                        f"{column} on")
    if len(unpredicted):
        log.warning("%s: %d labelled ids, %d without a test prediction in this run (first %s); %s scored on the "
                    "labelled ids each row predicts: %s", source, len(labels), len(unpredicted),
                    sorted(unpredicted)[:5], column, ", ".join(partial))
    elif partial:  # sex-specific models: their own sex only
        log.info("%s: %s scored on the labelled ids each row predicts: %s", source, column, ", ".join(partial))
    return scores


def build_leaderboard(dataset: Dataset, models: list[Model], label_files: list[str | Path] = ()) -> pd.DataFrame:
    """One row per model, the mean (with two or more models), the saved stack and the mean
    predictor; OOF columns, stack weights and one test_mae_<stem> column per label file."""
    entries = [model_entry(m) for m in models]
    if len(models) > 1:
        entries.append(mean_entry(dataset, models))
    stack = stack_entry(dataset, models)
    if stack is not None:
        entries.append(stack[0])
    entries.append(mean_predictor_entry(dataset))
    stack_meta = stack[1] if stack is not None else None

    rows = []
    for entry in entries:
        row = {"model": entry.model, "kind": entry.kind, **oof_scores(entry.oof)}
        row.update(_stack_weights(stack_meta, entry.model) if entry.kind == "model" else {"stack_weight": math.nan})
        rows.append(row)
    table = pd.DataFrame(rows)
    if stack_meta is not None and stack_meta["layout"] != "joint":
        for g in ("male", "female"):
            if f"stack_weight_{g}" not in table:
                table[f"stack_weight_{g}"] = math.nan

    tests: list[tuple[str, pd.Series, str]] = []
    if dataset.has_test and dataset.test["boneage"].notna().any():
        labelled = dataset.test.dropna(subset=["boneage"])
        if len(labelled) < len(dataset.test):
            log.warning("%s: %d of %d test ids are labelled; test_mae_%s scores those", dataset.work_dir / "test.csv",
                        len(labelled), len(dataset.test), LABELLED)
        tests.append((f"test_mae_{LABELLED}", labelled.set_index("id")["boneage"].astype(float),
                      str(dataset.work_dir / "test.csv")))
    for path in label_files:
        tests.append((f"test_mae_{Path(path).stem}", load_test_labels(path), str(path)))
    names = [c for c, _, _ in tests]
    clash = sorted({c for c in names if names.count(c) > 1})
    if clash:
        raise UserError(f"--test-labels: two label sources give the same column {clash}; rename one file")
    for column, labels, source in tests:
        scores = _score_test(entries, labels, column, source)
        table[column] = table["model"].map(scores)

    table = table.sort_values(["oof_mae", "model"], na_position="last", kind="stable").reset_index(drop=True)
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table: MAEs to 2 decimals, weights to 3, blanks for NaN."""
    def cell(column: str, value) -> str:
        if isinstance(value, (float, np.floating)):
            if not np.isfinite(value):
                return ""
            return f"{value:.3f}" if column.startswith("stack_weight") else f"{value:.2f}"
        return str(value)

    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(table: pd.DataFrame, work_dir: Path) -> tuple[Path, Path]:
    return (write_csv(table, work_dir / "leaderboard.csv"),
            write_text(to_markdown(table), work_dir / "leaderboard.md"))
