"""The cache's pack: every cached image of a build in one memory-mapped uint8 array.

Reading a row of the pack is a 250 kB memcpy at 500 px where decoding the cached PNG takes
~2 ms, which was half of a loader worker's time per image. The per-id PNGs stay the source of
truth (they resume an interrupted build); the pack is made from them once a build is complete,
and is only an index into them:

- `pack-<digest>.npy` (N x size x size uint8) and `pack-<digest>.csv` (id and the source stamp
  each row was made from, in row order); `pack.json` names the current digest. It is written
  last and atomically, so a reader sees a whole pack or none.
- A reader serves a row only while its stamp still equals `sources.csv`'s record for that id:
  an image rebuilt since the pack was made is read from its PNG.
- A pack is an optimisation: when it cannot be written (a full disk), training reads the PNGs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..utils.errors import DataError
from ..utils.io import atomic_path, is_disk_full, write_csv, write_json
from ..utils.progress import progress

log = logging.getLogger(__name__)
POINTER = "pack.json"


def _digest(stamps: pd.DataFrame) -> str:
    return hashlib.sha1(stamps.to_csv(index=False).encode()).hexdigest()[:12]


def current_pack(cache_dir: Path) -> str | None:
    try:
        return str(json.loads((cache_dir / POINTER).read_text())["digest"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_pack(cache_dir: Path, size: int, stamps: pd.DataFrame, png_path) -> str | None:
    """Pack the cached PNGs of the ids of `stamps` (id,path,size,mtime_ns: the source records of
    images all built, sorted by id); returns the digest, or None when the pack could not be
    written. Does nothing when the current pack is this one."""
    ids = stamps["id"].tolist()
    digest = _digest(stamps)
    npy, csv = cache_dir / f"pack-{digest}.npy", cache_dir / f"pack-{digest}.csv"
    if current_pack(cache_dir) == digest and npy.is_file() and csv.is_file():
        return digest
    try:
        with atomic_path(npy, fsync=False) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ids), size, size))
            for row, image_id in enumerate(progress(ids, desc="cache pack", leave=False)):
                image = cv2.imread(str(png_path(image_id)), cv2.IMREAD_GRAYSCALE)
                if image is None or image.shape != (size, size):
                    raise DataError(f"cached image {png_path(image_id)} is unreadable or not {size}x{size}")
                array[row] = image
            array.flush()
            del array
        write_csv(stamps, csv)
        old = current_pack(cache_dir)
        write_json({"digest": digest, "n": len(ids), "size": size}, cache_dir / POINTER)
    except Exception as exc:
        if not is_disk_full(exc) and not isinstance(exc, (DataError, OSError)):
            raise
        log.warning("cache %s: no pack (%s); training reads the cached PNGs", cache_dir.name, exc)
        return None
    if old and old != digest:  # readers that mapped the old pack keep their mapping (POSIX unlink)
        for stale in (cache_dir / f"pack-{old}.npy", cache_dir / f"pack-{old}.csv"):
            stale.unlink(missing_ok=True)
    log.info("cache %s: packed %d images into %s (%.0f MB)", cache_dir.name, len(ids), npy.name,
             npy.stat().st_size / 1e6)
    return digest


class PackReader:
    """Rows of the current pack by id, for the ids whose source stamp still matches. Opened
    lazily in each process (the memory map is never pickled into a spawned worker)."""

    def __init__(self, cache_dir: Path, size: int, sources: dict[str, tuple[str, int, int]]):
        self.rows: dict[str, int] = {}
        self.array = None
        digest = current_pack(cache_dir)
        if digest is None:
            return
        try:
            table = pd.read_csv(cache_dir / f"pack-{digest}.csv", dtype={"id": str, "path": str},
                                keep_default_na=False)
            array = np.load(cache_dir / f"pack-{digest}.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            log.warning("cache %s: pack %s unreadable (%s); reading the cached PNGs", cache_dir.name, digest, exc)
            return
        if array.shape != (len(table), size, size) or array.dtype != np.uint8:
            log.warning("cache %s: pack %s has shape %s, not (%d, %d, %d); reading the cached PNGs",
                        cache_dir.name, digest, array.shape, len(table), size, size)
            return
        self.array = array
        for row, (i, p, s, m) in enumerate(zip(table["id"], table["path"], table["size"], table["mtime_ns"])):
            if sources.get(i) == (p, int(s), int(m)):
                self.rows[i] = row

    def get(self, image_id: str) -> np.ndarray | None:
        row = self.rows.get(image_id)
        return None if row is None else np.array(self.array[row])
