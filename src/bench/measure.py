"""Timing and the machine's description: a row's figure is the median of >= 3 repeats after a
warm-up, so one slow repeat (a page-cache miss, a neighbour's burst) does not set it."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class Timing:
    """`items` processed per call; seconds of each timed repeat."""

    items: int
    seconds: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def per_s(self) -> float:
        return self.items / self.median_s if self.median_s > 0 else float("inf")


def time_it(fn: Callable[[], int], repeats: int = 3, warmup: int = 1) -> Timing:
    """Call `fn` (it returns how many items it processed) `warmup` times untimed, then `repeats`
    times timed."""
    for _ in range(warmup):
        fn()
    seconds, items = [], 0
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        items = int(fn())
        seconds.append(time.perf_counter() - start)
    return Timing(items, seconds)


@dataclass
class Row:
    """One bench row: ours against the reference, in `unit`; ratio is ours/reference for a
    rate (higher is better) and reference/ours for a time (`lower_is_better`)."""

    name: str
    ours: float
    reference: float
    unit: str
    target: str
    met: bool | None
    images: int
    repeats: int
    ours_what: str
    reference_what: str
    notes: str = ""
    extra: dict = field(default_factory=dict)
    lower_is_better: bool = False

    @property
    def ratio(self) -> float:
        if self.lower_is_better:
            return self.reference / self.ours if self.ours else float("nan")
        return self.ours / self.reference if self.reference else float("nan")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ratio"] = round(self.ratio, 3)
        for key in ("ours", "reference"):
            out[key] = round(out[key], 3)
        return out


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    from ..utils.cpu_features import cpu_has_native_bf16

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_native_bf16(), "cuda": torch.cuda.is_available(),
            "python": platform.python_version()}
