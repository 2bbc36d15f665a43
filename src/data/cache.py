"""The preprocessing cache: decode each PNG once, run the named steps, store the result.

Training reads `working/cache/<key>/<id>.png` every epoch instead of a 2000x1500 original.
The key hashes everything that changes pixels (dataset root, size, the steps and their
parameters, and the fingerprint of any file a step reads, such as the sha256 of the keypoint
table that registration warps by), so a changed recipe gets a fresh cache and an unchanged one
is reused. Each file
is written atomically, so an interrupted build resumes where it stopped.

The key cannot see the source files themselves, so `sources.csv` in the cache folder records,
per cached id, the source file it was made from (id,path,size,mtime_ns). An id whose source
path, size or mtime differs from the record (a regenerated or replaced image), or that has no
record, counts as missing and is rebuilt. The record is saved as results come back (and when
a build stops), so an interrupted build still resumes.

A complete build is also packed into one memory-mapped array (`cache_pack`), which `load`
reads instead of decoding a PNG per image per epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from ..utils.progress import progress

from ..utils.errors import DataError, UserError
from ..utils.io import atomic_path, human_bytes, is_disk_full, write_csv, write_json
from ..utils.parallel import process_pool
from .cache_pack import PackReader, write_pack
from .images import read_gray8
from .layout import working_root
from .preprocess import StepContext, run_pipeline, step_inputs, validate_steps

log = logging.getLogger(__name__)
CACHE_VERSION = 1
SOURCES_CSV = "sources.csv"
SOURCE_COLUMNS = ["id", "path", "size", "mtime_ns"]
SAVE_EVERY_S = 30.0  # how often a running build saves sources.csv

Stamp = tuple[str, int, int]  # (source path, size, mtime_ns)


def cache_key(dataset: str, source_root: str, size: int, steps: list[dict], inputs: dict | None = None) -> str:
    """`inputs` (the files steps read, by fingerprint) enters the key only when there are any, so
    recipes without such steps keep the keys they always had."""
    spec = {"version": CACHE_VERSION, "source": str(Path(source_root).resolve()), "size": int(size), "steps": steps}
    if inputs:
        spec["inputs"] = inputs
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"{dataset}-{size}px-{digest}"


def source_stamp(path: str) -> Stamp | None:
    """(path, size, mtime_ns) of a source image, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(path), int(st.st_size), int(st.st_mtime_ns)


def _process_one(args: tuple[dict, list[dict], StepContext, str]) -> tuple[str, str | None, Stamp | None, bool]:
    """Preprocess one image; returns (id, error or None, source stamp, disk full).

    The stamp is taken before the source is read, so a source replaced while it is being read
    no longer matches its stamp and is rebuilt by the next build.
    """
    record, steps, ctx, out_path = args
    stamp = source_stamp(record["path"])
    try:
        image = read_gray8(record["path"]).pixels
        image = run_pipeline(image, steps, ctx)
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise DataError(f"could not encode cached image for id {record['id']}")
        with atomic_path(out_path, fsync=False) as tmp:  # a rebuildable file: no fsync per image
            tmp.write_bytes(buf.tobytes())
        return record["id"], None, stamp, False
    except Exception as exc:  # reported per image below, never swallowed
        if is_disk_full(exc):
            return record["id"], f"writing {out_path}: {exc}", None, True
        return record["id"], f"{record['path']}: {exc}", None, False


class PreprocessCache:
    """One cache directory for one (dataset, size, steps, step inputs) recipe."""

    def __init__(self, dataset: str, source_root: str, size: int, steps: list[dict]):
        self.steps = validate_steps(steps)
        self.size = int(size)
        self.work_dir = working_root() / dataset  # the dataset's tables that steps read (registration/)
        self.inputs = step_inputs(self.steps, self.work_dir)
        self.key = cache_key(dataset, source_root, self.size, self.steps, self.inputs)
        self.dir = working_root() / "cache" / self.key
        self._reader: PackReader | None = None  # opened on the first load, in each process

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = None  # a spawned worker maps the pack itself; a memmap would pickle its bytes
        return state

    def context(self, record: dict) -> StepContext:
        """What the steps see for one image: the size, its row, and the dataset's tables."""
        return StepContext(size=self.size, record=record, work_dir=self.work_dir, inputs=self.inputs)

    def path(self, image_id: str) -> Path:
        return self.dir / f"{image_id}.png"

    @property
    def sources_path(self) -> Path:
        return self.dir / SOURCES_CSV

    # ----------------------------------------------------------------- source records

    def read_sources(self) -> dict[str, Stamp]:
        """The recorded source stamp of each cached id (empty when there is no usable record)."""
        path = self.sources_path
        if not path.is_file():
            return {}
        try:
            frame = pd.read_csv(path, dtype={"id": str, "path": str}, keep_default_na=False)
            return {i: (p, int(s), int(m)) for i, p, s, m in
                    zip(frame["id"], frame["path"], frame["size"], frame["mtime_ns"])}
        except (OSError, ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            log.warning("cache %s: %s is unreadable (%s); every image will be rebuilt", self.key, path, exc)
            return {}

    @staticmethod
    def sources_frame(sources: dict[str, Stamp], ids: list[str] | None = None) -> pd.DataFrame:
        """`sources` as the table sources.csv holds (id,path,size,mtime_ns), for `ids` (default: all), sorted by id."""
        ids = sorted(sources if ids is None else set(ids))
        return pd.DataFrame({"id": ids, "path": [sources[i][0] for i in ids],
                             "size": [sources[i][1] for i in ids], "mtime_ns": [sources[i][2] for i in ids]},
                            columns=SOURCE_COLUMNS)

    def _write_sources(self, sources: dict[str, Stamp]) -> None:
        frame = self.sources_frame(sources)
        try:
            write_csv(frame, self.sources_path)
        except Exception as exc:
            if is_disk_full(exc):
                raise self._disk_full_error(f"cannot write {self.sources_path}: {exc}") from exc
            raise

    def _stale_mask(self, table: pd.DataFrame, sources: dict[str, Stamp]) -> list[bool]:
        """True for each row whose cached image is absent, unrecorded, or made from another source file."""
        mask = []
        for image_id, src in zip(table["id"], table["path"]):
            recorded = sources.get(str(image_id))
            mask.append(recorded is None or recorded != source_stamp(str(src)) or not self.path(image_id).is_file())
        return mask

    def missing(self, table: pd.DataFrame) -> pd.DataFrame:
        """Rows of `table` (id, path, ...) whose cached image must be (re)built: absent, without a
        source record, or made from a source whose path, size or mtime has changed since."""
        return table[self._stale_mask(table, self.read_sources())]

    # ----------------------------------------------------------------- building

    def _disk_full_error(self, detail: str) -> UserError:
        probe = self.dir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            usage = shutil.disk_usage(probe)
            space = f"{human_bytes(usage.free)} free of {human_bytes(usage.total)}"
        except OSError:
            space = "free space unknown"
        return UserError(
            f"the disk holding the cache folder {self.dir} is full or over quota ({space}): {detail}. "
            f"Free some space on it (old cache folders under {self.dir.parent} can be deleted) or set "
            f"BONEAGE_WORKING to a folder on a bigger disk, then rerun: the cache resumes where it stopped."
        )

    def build(self, table: pd.DataFrame, workers: int | None = None, desc: str = "cache") -> None:
        """Fill the cache for every row of `table` (id, path, ...), in parallel, resumably.

        Images whose source file changed since they were cached are rebuilt; the others are
        left untouched. A full disk raises a UserError that names the cache folder.
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            manifest = self.dir / "manifest.json"
            if not manifest.is_file():
                write_json({"key": self.key, "size": self.size, "steps": self.steps, "version": CACHE_VERSION,
                            **({"inputs": self.inputs} if self.inputs else {})}, manifest)
        except Exception as exc:
            if is_disk_full(exc):
                raise self._disk_full_error(str(exc)) from exc
            raise
        sources = self.read_sources()
        stale = self._stale_mask(table, sources)
        todo = table[stale]
        if todo.empty:
            log.info("cache %s: all %d images present", self.key, len(table))
            self._pack(table, sources)
            return
        changed = [str(i) for i in todo["id"] if str(i) in sources]
        if changed:
            log.info("cache %s: %d cached images have a changed source file and are rebuilt (first: %s)",
                     self.key, len(changed), changed[:5])
        for image_id in changed:
            del sources[image_id]  # no longer describes the cached file
        workers = workers or os.cpu_count() or 1
        jobs = [(rec, self.steps, self.context(rec), str(self.path(rec["id"]))) for rec in todo.to_dict("records")]
        log.info("cache %s: preprocessing %d of %d images with %d workers", self.key, len(jobs), len(table), workers)
        failures: list[str] = []
        disk_full: str | None = None
        pool = process_pool(workers) if workers > 1 else None
        bar = None
        try:
            results = pool.map(_process_one, jobs, chunksize=max(1, len(jobs) // (workers * 16))) if pool \
                else map(_process_one, jobs)
            bar = progress(results, total=len(jobs), desc=desc)
            last_save = time.monotonic()
            for image_id, err, stamp, full in bar:
                if full:
                    disk_full = err
                    break
                if err:
                    failures.append(err)
                    continue
                if stamp is not None:
                    sources[str(image_id)] = stamp
                if time.monotonic() - last_save > SAVE_EVERY_S:
                    self._write_sources(sources)
                    last_save = time.monotonic()
        except BaseException:
            with contextlib.suppress(Exception):
                self._write_sources(sources)  # keep what was built (best effort: the disk may be full)
            raise
        finally:
            if bar is not None:
                bar.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if disk_full is not None:
            with contextlib.suppress(Exception):
                self._write_sources(sources)
            raise self._disk_full_error(disk_full)
        self._write_sources(sources)
        if not failures:
            self._pack(table, sources)
        if failures:
            shown = "\n  ".join(failures[:20])
            raise DataError(
                f"{len(failures)} images could not be preprocessed (run `python -m src audit` on the input):\n  {shown}"
            )

    def _pack(self, table: pd.DataFrame, sources: dict[str, Stamp]) -> None:
        write_pack(self.dir, self.size, self.sources_frame(sources, [str(i) for i in table["id"]]), self.path)
        self._reader = None  # the next load maps the current pack

    def load(self, image_id: str) -> np.ndarray:
        if self._reader is None:
            self._reader = PackReader(self.dir, self.size, self.read_sources())
        packed = self._reader.get(str(image_id))
        if packed is not None:
            return packed
        path = self.path(image_id)
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise DataError(f"cached image {path} is missing or unreadable; rebuild with `python -m src train` (it refills the cache)")
        return image
