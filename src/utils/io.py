"""Atomic artefact writing: a killed run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import yaml


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_csv(df, path: str | os.PathLike, **kwargs) -> Path:
    """Write a pandas DataFrame atomically (index off by default)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(obj, path: str | os.PathLike) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def write_yaml(obj, path: str | os.PathLike) -> Path:
    return write_text(yaml.safe_dump(obj, sort_keys=False), path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_id_csv(path: str | os.PathLike, **kwargs):
    """Read a CSV the project wrote: `id` always as strings (joins never mix 1377 and '1377'),
    and `male`, when present, as bool whether it was stored as True/False or 1/0."""
    import pandas as pd

    dtype = dict(kwargs.pop("dtype", {}) or {})
    dtype.setdefault("id", str)
    table = pd.read_csv(path, dtype=dtype, **kwargs)
    if "male" in table:
        text = table["male"].astype(str).str.strip().str.lower()
        known = text.isin(["true", "1", "1.0", "false", "0", "0.0"])
        if not known.all():
            from .errors import DataError

            rows = (table.index[~known][:10] + 2).tolist()  # 1-based, after the header
            raise DataError(f"{path}: column 'male' has values other than True/False or 1/0 in rows {rows}")
        table["male"] = text.isin(["true", "1", "1.0"])
    return table
