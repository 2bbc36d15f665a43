"""Process pools that are safe to start from a process that already runs threads.

Forking a process whose torch/OpenMP/OpenCV thread pools are running can leave the children
deadlocked on a lock copied mid-use (seen here: the phantom's pool hung in the full test suite
after the engine tests). Workers therefore start from a clean forkserver (spawn where the
platform has none); the work functions must be importable module-level functions.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor


def safe_context():
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


def process_pool(workers: int, initializer=None) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=safe_context(), initializer=initializer)
