"""tqdm progress bars that stay readable in logs: a terminal gets live updates, a file or CI
log gets a line every 30 s instead of hundreds per epoch."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    kwargs.setdefault("dynamic_ncols", True)
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    return tqdm(iterable, **kwargs)
