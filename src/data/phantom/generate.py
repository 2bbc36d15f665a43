"""Write a phantom data set in the Kaggle layout: parallel, deterministic and resumable.

Each image depends only on (seed, id, scale), so the work can be split over any number of
processes, an interrupted run can skip what is already on disk, and a resumed run writes the
same bytes a fresh one would. `phantom.json` is written last: with matching parameters it
means "complete".
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import pandas as pd

from ...utils.errors import UserError
from ...utils.io import atomic_path, read_id_csv, write_csv, write_json
from ..layout import PHANTOM_MARKER, DatasetPaths
from .render import render
from .scene import KEYPOINTS, plan_scene

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
FIRST_ID = 100001  # above every real RSNA id (1377..15610)
PROGRESS_FILE = ".phantom-progress.json"  # parameters of a run in progress (hidden, removed when complete)
_PNG_NAME = re.compile(r"^\d+\.png$")
_TMP_NAME = re.compile(r"^\..+\.tmp\.png$")


@dataclass(frozen=True)
class PhantomParams:
    seed: int = 0
    scale: float = 1.0
    n_train: int = 1000
    n_test: int = 200

    def validate(self) -> None:
        if self.n_train < 0 or self.n_test < 0 or self.n_train + self.n_test < 1:
            raise UserError(f"need at least one image (got --n-train {self.n_train}, --n-test {self.n_test})")
        if not 0.05 <= self.scale <= 4.0:
            raise UserError(f"--scale must be between 0.05 and 4 (got {self.scale})")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0 (got {self.seed})")

    @property
    def train_ids(self) -> list[int]:
        return list(range(FIRST_ID, FIRST_ID + self.n_train))

    @property
    def test_ids(self) -> list[int]:
        return list(range(FIRST_ID + self.n_train, FIRST_ID + self.n_train + self.n_test))

    def marker(self, status: str) -> dict:
        return {"generator": "boneage-workbench phantom", "version": GENERATOR_VERSION, **asdict(self),
                "first_id": FIRST_ID, "status": status}


@dataclass
class GenerateResult:
    root: Path
    status: str  # "complete" or "already complete"
    rendered: int = 0
    reused: int = 0
    seconds: float = 0.0


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG header, without decoding; None if absent or not a PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _write_png(path: Path, img) -> None:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _work(task: tuple) -> dict:
    """Plan one image (always: its keypoint row), render and write it unless it is already on disk."""
    root, seed, scale, image_id, part, reuse = task
    paths = DatasetPaths(Path(root))
    scene = plan_scene(seed, image_id, scale)
    img_path = (paths.train_dir if part == "train" else paths.test_dir) / f"{image_id}.png"
    mask_path = paths.masks_dir / f"{image_id}.png"
    size = (scene.width, scene.height)
    rendered = not (reuse and _png_size(img_path) == size and _png_size(mask_path) == size)
    if rendered:
        img, mask = render(scene)
        _write_png(img_path, img)
        _write_png(mask_path, mask)
    row = {"id": image_id, "part": part, "width": scene.width, "height": scene.height, "mirrored": scene.mirrored}
    for name, (x, y) in scene.keypoints_px().items():
        row[f"{name}_x"], row[f"{name}_y"] = round(x, 2), round(y, 2)
    row.update(true_age=round(scene.subject.true_age, 2), boneage=scene.subject.label,
               male=scene.subject.male, _rendered=rendered)
    return row


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one image per process; OpenCV threads would only fight over the cores


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_not_real(paths: DatasetPaths) -> None:
    """Refuse to write the phantom over a real data set (its CSV has RSNA ids below FIRST_ID)."""
    if not paths.train_csv.is_file():
        return
    try:
        ids = pd.to_numeric(read_id_csv(paths.train_csv)["id"], errors="coerce")
    except (KeyError, ValueError, OSError, pd.errors.ParserError):
        ids = pd.Series([0])
    if ids.isna().any() or (ids < FIRST_ID).any():
        raise UserError(f"{paths.root} holds a data set that is not a phantom ({paths.train_csv.name} has ids "
                        f"below {FIRST_ID}); choose another --out")


def _remove_stale(paths: DatasetPaths, params: PhantomParams) -> None:
    """Drop images of ids no longer in the set (or in the other part) and temp files of a killed run."""
    expected = {paths.train_dir: set(params.train_ids), paths.test_dir: set(params.test_ids),
                paths.masks_dir: set(params.train_ids) | set(params.test_ids)}
    for folder, ids in expected.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            stale = _PNG_NAME.match(entry.name) and int(entry.name[:-4]) not in ids
            if stale or _TMP_NAME.match(entry.name):
                os.unlink(entry.path)


def is_complete(root: str | os.PathLike, params: PhantomParams) -> bool:
    paths = DatasetPaths(Path(root))
    marker = _read_json(paths.root / PHANTOM_MARKER)
    files = (paths.train_csv, paths.test_csv, paths.test_labels_csv, paths.keypoints_csv)
    return marker == params.marker("complete") and all(f.is_file() for f in files)


def generate(root: str | os.PathLike, params: PhantomParams, workers: int | None = None, force: bool = False,
             progress: bool = True) -> GenerateResult:
    """Generate (or finish, or confirm) the phantom data set under `root`."""
    params.validate()
    workers = int(workers or os.cpu_count() or 1)
    if workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    paths = DatasetPaths(Path(root))
    if not force and is_complete(paths.root, params):
        return GenerateResult(paths.root, "already complete")
    _check_not_real(paths)
    started = time.perf_counter()
    # Images on disk are reusable only if they came from the same generator, seed and scale.
    prior = _read_json(paths.root / PHANTOM_MARKER) or _read_json(paths.root / PROGRESS_FILE)
    same = prior is None or all(prior.get(k) == v for k, v in
                                (("version", GENERATOR_VERSION), ("seed", params.seed), ("scale", params.scale)))
    reuse = same and not force
    if not reuse:
        log.info("regenerating every image (%s)", "--force" if force else "parameters changed")
    (paths.root / PHANTOM_MARKER).unlink(missing_ok=True)
    write_json(params.marker("in progress"), paths.root / PROGRESS_FILE)
    if not reuse:
        _remove_stale(paths, PhantomParams(params.seed, params.scale, 0, 0))
    _remove_stale(paths, params)
    for folder in (paths.train_dir, paths.test_dir, paths.masks_dir):
        folder.mkdir(parents=True, exist_ok=True)

    tasks = [(str(paths.root), params.seed, params.scale, i, "train", reuse) for i in params.train_ids]
    tasks += [(str(paths.root), params.seed, params.scale, i, "test", reuse) for i in params.test_ids]
    rows = _run_tasks(tasks, workers, progress)
    rows.sort(key=lambda r: r["id"])
    rendered = sum(r.pop("_rendered") for r in rows)
    _write_tables(paths, pd.DataFrame(rows))
    write_json(params.marker("complete"), paths.root / PHANTOM_MARKER)
    (paths.root / PROGRESS_FILE).unlink(missing_ok=True)
    return GenerateResult(paths.root, "complete", rendered, len(rows) - rendered, time.perf_counter() - started)


def _run_tasks(tasks: list[tuple], workers: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="phantom", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 1 or len(tasks) < 4:
            rows = []
            for task in tasks:
                rows.append(_work(task))
                bar.update()
            return rows
        from ...utils.parallel import safe_context

        workers = min(workers, len(tasks))
        chunk = max(1, min(16, len(tasks) // (workers * 8)))
        with safe_context().Pool(workers, initializer=_init_worker) as pool:
            rows = []
            for row in pool.imap_unordered(_work, tasks, chunksize=chunk):
                rows.append(row)
                bar.update()
            return rows
    finally:
        bar.close()


def _write_tables(paths: DatasetPaths, df: pd.DataFrame) -> None:
    train, test = df[df["part"] == "train"], df[df["part"] == "test"]
    write_csv(train[["id", "boneage", "male"]], paths.train_csv)
    if test.empty:  # no test part at all: an empty test CSV would read as a test part that lost every row
        paths.test_csv.unlink(missing_ok=True)
        paths.test_labels_csv.unlink(missing_ok=True)
        test_root = paths.test_dir.parent  # boneage-test-dataset/, emptied of images when the part moved
        if test_root.is_dir() and not any(test_root.rglob("*.png")):
            shutil.rmtree(test_root)
    else:
        write_csv(pd.DataFrame({"Case ID": test["id"], "Sex": test["male"].map({True: "M", False: "F"})}),
                  paths.test_csv)
        write_csv(test[["id", "boneage", "male"]], paths.test_labels_csv)
    cols = ["id", "part", "width", "height", "mirrored"]
    cols += [f"{k}_{axis}" for k in KEYPOINTS for axis in "xy"] + ["true_age"]
    write_csv(df[cols], paths.keypoints_csv)
