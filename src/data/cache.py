"""The preprocessing cache: decode each PNG once, run the named steps, store the result.

Training reads `working/cache/<key>/<id>.png` every epoch instead of a 2000x1500 original.
The key hashes everything that changes pixels (dataset root, size, the steps and their
parameters), so a changed recipe gets a fresh cache and an unchanged one is reused. Each file
is written atomically, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from ..utils.progress import progress

from ..utils.errors import DataError
from ..utils.io import atomic_path, write_json
from ..utils.parallel import process_pool
from .images import read_gray8
from .layout import working_root
from .preprocess import StepContext, run_pipeline, validate_steps

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def cache_key(dataset: str, source_root: str, size: int, steps: list[dict]) -> str:
    spec = {"version": CACHE_VERSION, "source": str(Path(source_root).resolve()), "size": int(size), "steps": steps}
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"{dataset}-{size}px-{digest}"


def _process_one(args: tuple[dict, list[dict], int, str]) -> tuple[str, str | None]:
    record, steps, size, out_path = args
    try:
        image = read_gray8(record["path"]).pixels
        image = run_pipeline(image, steps, StepContext(size=size, record=record))
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise DataError(f"could not encode cached image for id {record['id']}")
        with atomic_path(out_path) as tmp:
            tmp.write_bytes(buf.tobytes())
        return record["id"], None
    except Exception as exc:  # reported per image below, never swallowed
        return record["id"], f"{record['path']}: {exc}"


class PreprocessCache:
    """One cache directory for one (dataset, size, steps) recipe."""

    def __init__(self, dataset: str, source_root: str, size: int, steps: list[dict]):
        self.steps = validate_steps(steps)
        self.size = int(size)
        self.key = cache_key(dataset, source_root, self.size, self.steps)
        self.dir = working_root() / "cache" / self.key

    def path(self, image_id: str) -> Path:
        return self.dir / f"{image_id}.png"

    def missing(self, table: pd.DataFrame) -> pd.DataFrame:
        return table[[not self.path(i).is_file() for i in table["id"]]]

    def build(self, table: pd.DataFrame, workers: int | None = None, desc: str = "cache") -> None:
        """Fill the cache for every row of `table` (id, path, ...), in parallel, resumably."""
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "manifest.json"
        if not manifest.is_file():
            write_json({"key": self.key, "size": self.size, "steps": self.steps, "version": CACHE_VERSION}, manifest)
        todo = self.missing(table)
        if todo.empty:
            log.info("cache %s: all %d images present", self.key, len(table))
            return
        workers = workers or os.cpu_count() or 1
        jobs = [(rec, self.steps, self.size, str(self.path(rec["id"]))) for rec in todo.to_dict("records")]
        log.info("cache %s: preprocessing %d of %d images with %d workers", self.key, len(jobs), len(table), workers)
        pool = process_pool(workers) if workers > 1 else None
        with pool or contextlib.nullcontext():
            results = pool.map(_process_one, jobs, chunksize=max(1, len(jobs) // (workers * 16))) if pool \
                else map(_process_one, jobs)
            failures = [err for _, err in progress(results, total=len(jobs), desc=desc) if err]
        if failures:
            shown = "\n  ".join(failures[:20])
            raise DataError(
                f"{len(failures)} images could not be preprocessed (run `python -m src audit` on the input):\n  {shown}"
            )

    def load(self, image_id: str) -> np.ndarray:
        path = self.path(image_id)
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise DataError(f"cached image {path} is missing or unreadable; rebuild with `python -m src train` (it refills the cache)")
        return image
