"""Builds `working/<dataset>/report/`: age_buckets.csv, the PNG figures and index.html.

Which models exist and whether the saved stack is current is decided by `src.ensemble` (the same
checks as `stack` and `leaderboard`); the leaderboard is read from leaderboard.csv when that is
newer than every prediction it scores, and otherwise recomputed by `src.ensemble.leaderboard`, so
the page never shows numbers of its own making beside the leaderboard's.

Without a stack (never fitted, or stale) the report still covers the models: the bucket table
has no `(stack)` rows, and the single-model plots (predicted vs true, Bland-Altman, worst cases)
show the best both-sex model by OOF MAE instead, saying so in their captions.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..ensemble.inputs import Dataset, Model, load_dataset, select_models
from ..ensemble.leaderboard import STACK, build_leaderboard, model_entry, stack_entry
from ..utils.errors import UserError
from ..utils.io import read_id_csv, write_csv, write_text
from . import DEFAULT_BUCKETS, DEFAULT_WORST, REPORT_DIR
from . import html as page_html
from . import plots
from .buckets import assign_buckets, bucket_labels, bucket_table, overall_table, parse_edges

log = logging.getLogger(__name__)

CSV_FILE = "age_buckets.csv"
INDEX_FILE = "index.html"
PNG_FILES = ("mae_by_bucket.png", "pred_vs_true.png", "bland_altman.png", "worst_cases.png")
THUMB_MAX = 192  # pixels, the longer side of a worst-case thumbnail


@dataclass
class Report:
    folder: Path
    index: Path
    csv: Path
    pngs: list[Path]
    table: pd.DataFrame
    stack: bool
    notes: list[str] = field(default_factory=list)


class _Collect(logging.Handler):
    """Keeps the warnings logged while the report is built, to list them on the page."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


@contextlib.contextmanager
def collect_warnings():
    logger = logging.getLogger(__name__.split(".")[0])  # "src": the ensemble's and the report's loggers
    handler = _Collect()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.is_file() else 0.0


def _saved_leaderboard(path: Path, inputs: list[Path], models: list[Model], has_stack: bool) -> tuple:
    """(table, None) when leaderboard.csv can be shown as it is, else (None, why not)."""
    if not path.is_file():
        return None, f"there is no {path}"
    newest = max(inputs, key=_mtime)
    if _mtime(path) < _mtime(newest):
        return None, f"{path} is older than {newest}"
    try:
        table = pd.read_csv(path, dtype={"model": str, "kind": str})
    except (OSError, ValueError) as exc:
        return None, f"{path} is unreadable ({exc})"
    if not {"model", "kind", "oof_mae"} <= set(table.columns):
        return None, f"{path} lacks columns model, kind or oof_mae"
    absent = [m.name for m in models if m.name not in set(table["model"])]
    if absent:
        return None, f"{path} does not list {absent}"
    if has_stack != (table["kind"] == "stack").any():
        state = "lacks a stack row while the stack is current" if has_stack else "has a stack row, but no current stack"
        return None, f"{path} {state}"
    return table, None


def leaderboard_for(dataset: Dataset, models: list[Model], has_stack: bool) -> tuple[pd.DataFrame, str]:
    """leaderboard.csv when it is newer than folds.csv, every model's oof.csv and the stack, lists
    every model and agrees on the stack; otherwise the table `python -m src leaderboard` would
    write, computed now by src.ensemble.leaderboard (and not saved: that file is its command's)."""
    path = dataset.work_dir / "leaderboard.csv"
    inputs = [dataset.work_dir / "folds.csv", dataset.work_dir / "stack" / "stack.json",
              dataset.work_dir / "stack" / "oof.csv"] + [m.dir / "oof.csv" for m in models]
    command = f"`python -m src leaderboard --input {dataset.input_dir}`"
    table, why = _saved_leaderboard(path, inputs, models, has_stack)
    if table is not None:
        written = _dt.datetime.fromtimestamp(_mtime(path)).strftime("%Y-%m-%d %H:%M")
        return table, f"From {path} (written {written} by {command})."
    if path.is_file():
        log.warning("the report recomputes the leaderboard: %s (rerun %s to update the file)", why, command)
    table = build_leaderboard(dataset, models, [])
    return table, (f"Computed for this report ({why}; {command} writes the file, with test MAE columns when "
                   f"given --test-labels).")


def _best_single(models: list[Model]) -> Model:
    """The both-sex model with the lowest OOF MAE (a sex-specific one only when there is no other)."""
    pool = [m for m in models if m.sex == "both"] or models
    return min(pool, key=lambda m: (float((m.oof["pred"] - m.oof["boneage"]).abs().mean()), m.name))


def _thumbnail(path: str, input_dir: str) -> np.ndarray | None:
    import cv2

    candidates = [Path(path)]
    if not Path(path).is_absolute():
        candidates.append(Path(input_dir) / path)
    for candidate in candidates:
        if candidate.is_file():
            image = cv2.imread(str(candidate), cv2.IMREAD_GRAYSCALE)
            if image is None:
                return None
            h, w = image.shape[:2]
            scale = THUMB_MAX / max(h, w)
            if scale < 1:
                image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                   interpolation=cv2.INTER_AREA)
            return image
    return None


def worst_cases(dataset: Dataset, oof: pd.DataFrame, n: int) -> list[dict]:
    """The `n` largest absolute OOF errors (ties by id), each with its thumbnail (None when the
    image cannot be found or read; a warning says how many)."""
    err = (oof["pred"] - oof["boneage"]).abs()
    order = pd.DataFrame({"err": err.to_numpy(), "key": oof.index.astype(str)}, index=oof.index)
    chosen = order.sort_values(["err", "key"], ascending=[False, True]).index[:n]
    train_csv = dataset.work_dir / "train.csv"
    paths: dict[str, str] = {}
    table = None
    if train_csv.is_file():
        try:
            table = read_id_csv(train_csv)
        except (OSError, ValueError, UserError) as exc:  # thumbnails are a nicety: never a reason to fail
            log.warning("%s is unreadable (%s); the worst-cases grid shows no images", train_csv, exc)
    if table is not None:
        if "path" in table.columns:
            paths = dict(zip(table["id"], table["path"].astype(str)))
        else:
            log.warning("%s has no column 'path'; the worst-cases grid shows no images", train_csv)
    elif not train_csv.is_file():
        log.warning("%s is missing (run `python -m src audit --input %s`); the worst-cases grid shows no images",
                    train_csv, dataset.input_dir)
    cases, missing = [], []
    for image_id in chosen:
        row = oof.loc[image_id]
        image = _thumbnail(paths[image_id], dataset.input_dir) if image_id in paths else None
        if image is None and paths:
            missing.append(str(image_id))
        cases.append({"id": str(image_id), "male": bool(row["male"]), "true": float(row["boneage"]),
                      "pred": float(row["pred"]), "image": image})
    if missing:
        log.warning("worst cases: no readable image for ids %s (paths from %s)", missing[:10], train_csv)
    return cases


def build_report(input_dir: str | Path, model_names: list[str] | None = None, buckets: str = DEFAULT_BUCKETS,
                 worst: int = DEFAULT_WORST) -> Report:
    edges = parse_edges(buckets)
    if worst < 0:
        raise UserError(f"--worst {worst}: give a number of cases >= 0 (0 leaves the grid out)")
    with collect_warnings() as notes:
        dataset = load_dataset(input_dir)
        folds_csv = dataset.work_dir / "folds.csv"
        assign_buckets(dataset.folds.set_index("id")["boneage"], edges, str(folds_csv))  # every id has a bucket
        models = select_models(dataset, model_names)
        stack_path = dataset.work_dir / "stack" / "stack.json"
        stack = stack_entry(dataset, models)
        leaderboard, leaderboard_note = leaderboard_for(dataset, models, stack is not None)

        predictions = {m.name: model_entry(m).oof for m in models}
        sexes = {m.name: (["both", "male", "female"] if m.sex == "both" else [m.sex]) for m in models}
        if stack is not None:
            entry, meta = stack
            predictions[STACK] = entry.oof
            sexes[STACK] = ["both", "male", "female"]
            stack_note = (f"{STACK}, read from {stack_path} ({meta.get('layout', 'joint')} layout, nested by fold, "
                          f"so its OOF figures are honest).")
        elif stack_path.is_file():
            stack_note = (f"left out: {stack_path} no longer matches the models or folds (see the warnings); "
                          f"rerun `python -m src stack --input {dataset.input_dir}`.")
        else:
            stack_note = (f"none ({stack_path} does not exist; `python -m src stack --input {dataset.input_dir}` "
                          f"fits one). The bucket tables list the models only.")
        table = bucket_table(predictions, edges, sexes, str(folds_csv))
        overall = overall_table(predictions, sexes)

        best = _best_single(models)
        primary_name, primary = ((STACK, predictions[STACK]) if stack is not None
                                 else (f"best single model {best.name}", best.oof))
        subject = ("the stack" if stack is not None
                   else f"the best single model by OOF MAE, {best.name} (there is no current stack)")
        cases = worst_cases(dataset, primary, worst) if worst else []

    folder = dataset.work_dir / REPORT_DIR
    csv_path = write_csv(table, folder / CSV_FILE)
    labels = bucket_labels(edges)
    written: list[Path] = []
    figures: list[page_html.Figure] = []

    order = [m.name for m in models] + ([STACK] if stack is not None else [])
    highlight = STACK if stack is not None else None
    written.append(plots.save_png(plots.mae_by_bucket(table, order, highlight, labels), folder / PNG_FILES[0]))
    figures.append(page_html.Figure(
        PNG_FILES[0], "MAE by age bucket",
        "OOF MAE (months) per bone-age bucket (years), one line per model"
        + ("; the stack is the thick black line" if stack is not None else "")
        + ". Panels: both sexes, male, female; under each bucket, the number of ids in it. A sex-specific model "
          "appears in its own sex's panel only. Buckets with few ids give noisy figures.", "fig-mae"))

    panels = [(primary_name, primary)]
    if stack is not None and best.sex == "both":
        panels.append((f"best single model {best.name}", best.oof))
    written.append(plots.save_png(plots.pred_vs_true(panels), folder / PNG_FILES[1]))
    figures.append(page_html.Figure(
        PNG_FILES[1], "Predicted vs true",
        f"OOF prediction against true bone age (months; grid every 24 months = 2 years) for {subject}"
        + (f" and the best single model by OOF MAE, {best.name}" if len(panels) > 1 else "")
        + ". Dashed: identity (a perfect prediction). Points above it are predicted too old. Blue male, orange "
          "female.", "fig-scatter"))

    written.append(plots.save_png(plots.bland_altman(primary_name, primary), folder / PNG_FILES[2]))
    figures.append(page_html.Figure(
        PNG_FILES[2], "Bland-Altman",
        f"Bland-Altman plot of {subject}, OOF: the mean of prediction and truth (months) against "
        f"their difference, prediction - true (months). Solid line: the bias (mean difference); dashed: the 95% "
        f"limits of agreement, bias ± 1.96 SD. A cloud sloping down from left to right means the "
        f"predictions shrink toward the mean age (too old for young hands, too young for old ones).",
        "fig-bland-altman"))

    if cases:
        written.append(plots.save_png(plots.worst_cases(cases), folder / PNG_FILES[3]))
        figures.append(page_html.Figure(
            PNG_FILES[3], "Worst OOF cases",
            f"The {len(cases)} training images with the largest absolute OOF error of {subject}, "
            f"largest first. Each title: image id (sex), true bone age in months (and years), predicted bone age "
            f"in months and, in brackets, the error (prediction - true, months). Images from the paths in "
            f"{dataset.work_dir / 'train.csv'}.", "fig-worst"))
    else:
        (folder / PNG_FILES[3]).unlink(missing_ok=True)  # no stale grid from an earlier run

    page = page_html.Page(
        dataset=dataset.work_dir.name, input_dir=str(dataset.input_dir),
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        models=[(m.name, m.sex) for m in models], stack_name=STACK if stack is not None else None,
        stack_note=stack_note, leaderboard=leaderboard, leaderboard_note=leaderboard_note, buckets=table,
        overall=overall, bucket_labels=labels, edges=edges, csv_file=CSV_FILE, figures=figures, notes=list(notes))
    index = write_text(page_html.render(page), folder / INDEX_FILE)
    return Report(folder, index, csv_path, written, table, stack is not None, list(notes))

