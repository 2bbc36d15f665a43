"""Many small jobs whose results are kept as they come: a progress bar over them, run in a process
pool or in this process, with what is done saved every SAVE_EVERY_S seconds, at the end, and (best
effort) when the run is interrupted, so a rerun resumes where it stopped.

`python -m src register` runs its detectors through it (the heuristic in a pool, the learned one
in batches here). src/data/cache.py's build has the same epilogue written out; it could use
`pooled` and `collect` too (they belong in src/utils then).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable, Iterator, Sequence

SAVE_EVERY_S = 30.0


@contextlib.contextmanager
def tracked(results: Iterable, total: int, desc: str) -> Iterator[Iterable]:
    """`results` under a progress bar of `total` steps, closed on leaving the block."""
    from ..utils.progress import progress

    bar = progress(results, total=total, desc=desc)
    try:
        yield bar
    finally:
        bar.close()


@contextlib.contextmanager
def pooled(function: Callable, jobs: Sequence, workers: int, desc: str) -> Iterator[Iterable]:
    """`function` over `jobs` under a progress bar: in a process pool of `workers` (a clean
    forkserver, see utils.parallel), or in this process with one worker or one job. `function`
    must be an importable module-level function. The pool is shut down on leaving the block."""
    from ..utils.parallel import process_pool

    pool = process_pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.map(function, jobs, chunksize=max(1, len(jobs) // (workers * 16))) if pool \
            else map(function, jobs)
        with tracked(results, len(jobs), desc) as bar:
            yield bar
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def collect(results: Iterable, keep: Callable[[object], None], save: Callable[[], None],
            every_s: float | None = None) -> None:
    """keep(result) for each result; save() every `every_s` seconds (SAVE_EVERY_S), once at the
    end, and once more, best effort, when anything (an error, Ctrl-C) stops the loop."""
    every_s = SAVE_EVERY_S if every_s is None else every_s
    last_save = time.monotonic()
    try:
        for result in results:
            keep(result)
            if time.monotonic() - last_save > every_s:
                save()
                last_save = time.monotonic()
    except BaseException:
        with contextlib.suppress(Exception):
            save()  # an interrupted run resumes from here
        raise
    save()
