"""Epochs sized by this machine's measured speed, so a CPU profile keeps its wall-clock budget.

Two-core machines of the same make differ by 1.5x in training speed (the same AVX2 EPYC type
ran the cpu profile's folds at 85-89 images/s one day and 55-68 the next), so a fixed epoch
count either overruns its budget on a slow machine or wastes a fast one. A profile that sets
`train.sized_for_images_per_s` states the probe speed its epochs were sized on; the probe
measures this machine once per dataset (about 10 s, in as many processes at once as the run
trains folds at once, since they share the cores' bandwidth), and every experiment of the run trains
`floor(epochs x scale)` epochs, with scale = measured / sized-for, clamped to
`train.epoch_scale_range`. The scale is saved in `<working>/<dataset>/speed_probe-<profile>.json`
and reused, so a resumed run keeps the recipe it started with (delete the file to measure again).
It is passed on as the `train.epoch_scale` override, so the resolved config beside the outputs
says what was trained; give `train.epoch_scale=1` (or `--epochs N`) to train the epochs as written.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_BACKBONE, PROBE_SIZE, PROBE_BATCH = "resnet10t", 64, 32


def probe_images_per_s(amp_dtype: str | None, seconds: float = 2.0, rounds: int = 3) -> float:
    """Training images/s of a fixed reference step on one thread: resnet10t at 64 px, batch 32,
    channels-last, forward + L1 backward + fused AdamW, under `amp_dtype` autocast where the CPU
    runs it natively. The median of `rounds` timed rounds of about `seconds` each."""
    import timm
    import torch

    from .loops import Precision

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        precision = Precision(torch.device("cpu"), amp_dtype, channels_last=True)
        model = timm.create_model(PROBE_BACKBONE, num_classes=1).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        images = torch.randn(PROBE_BATCH, 3, PROBE_SIZE, PROBE_SIZE).contiguous(memory_format=torch.channels_last)
        target = torch.randn(PROBE_BATCH, 1)

        def step() -> None:
            with precision.autocast():
                loss = (model(images).float() - target).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(2):  # warm-up: allocator, oneDNN primitives
            step()
        speeds = []
        for _ in range(rounds):
            steps, start = 0, time.perf_counter()
            while steps < 3 or time.perf_counter() - start < seconds:
                step()
                steps += 1
            speeds.append(steps * PROBE_BATCH / (time.perf_counter() - start))
        return sorted(speeds)[len(speeds) // 2]
    finally:
        torch.set_num_threads(threads)


def probe_in_parallel(amp_dtype: str | None, jobs: int, seconds: float = 2.0) -> float:
    """Images/s per process with `jobs` probes running at once, as the folds will train: the
    processes share the cores' caches and memory bandwidth, and the mean of `jobs` probes is
    steadier (on a 2-core EPYC one probe alone read 60 to 82 within a minute, two at once 72-74)."""
    if jobs <= 1:
        return probe_images_per_s(amp_dtype, seconds)
    from ..utils.parallel import process_pool

    with process_pool(jobs) as pool:
        speeds = list(pool.map(functools.partial(probe_images_per_s, seconds=seconds), [amp_dtype] * jobs))
    return sum(speeds) / len(speeds)


def epoch_scale(measured: float, sized_for: float, scale_range: list[float]) -> float:
    """measured / sized_for, clamped to [low, high] and rounded down to 2 decimals (a slower
    machine never gets more epochs than its speed pays for)."""
    low, high = scale_range
    return round(min(max(math.floor(100 * measured / sized_for) / 100, low), high), 2)


def probed_epoch_scale(cfg: dict, work_dir: Path, device: str, jobs: int = 1) -> float | None:
    """The epoch scale for `cfg`'s profile on this machine, from the saved probe of this dataset
    or a new one (`jobs` probes at once, one per fold process); None where the profile is not
    sized by speed or the run is not on a CPU."""
    from .distributed import resolve_device
    from ..utils.io import write_json

    tcfg = cfg["train"]
    sized_for = tcfg.get("sized_for_images_per_s")
    if not sized_for or resolve_device(device).type != "cpu":
        return None
    path = Path(work_dir) / f"speed_probe-{cfg['profile']}.json"
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
        float(saved.get("epoch_scale", 1.0))
    except (OSError, ValueError, TypeError, AttributeError):
        log.warning("%s is unreadable: measuring again", path)
        saved = {}
    if ("epoch_scale" in saved and saved.get("sized_for_images_per_s") == sized_for
            and saved.get("amp_dtype") == tcfg.get("amp_dtype") and saved.get("jobs") == jobs):
        log.info("epochs x %.2f: this dataset's saved speed probe (%s images/s against %.0f sized for; %s)",
                 float(saved["epoch_scale"]), saved.get("images_per_s"), sized_for, path)
        return float(saved["epoch_scale"])
    import torch

    from .loops import Precision

    measured = probe_in_parallel(tcfg.get("amp_dtype"), jobs)
    scale = epoch_scale(measured, sized_for, tcfg["epoch_scale_range"])
    write_json({"images_per_s": round(measured, 1), "sized_for_images_per_s": sized_for,
                "amp_dtype": tcfg.get("amp_dtype"),
                "runs_as": Precision(torch.device("cpu"), tcfg.get("amp_dtype"), channels_last=True).label,
                "epoch_scale": scale,
                "epoch_scale_range": tcfg["epoch_scale_range"],
                "jobs": jobs,
                "probe": f"{PROBE_BACKBONE} {PROBE_SIZE} px batch {PROBE_BATCH}, 1 thread, fwd+bwd+AdamW, "
                         f"{jobs} at once",
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, path)
    raw = measured / sized_for
    log.info("speed probe: %.0f training images/s a process, %d at once, the %s profile was sized for %.0f: epochs x %.2f%s "
             "(saved in %s; delete it to measure again)", measured, jobs, cfg["profile"], sized_for, scale,
             "" if abs(raw - scale) < 0.01 else f" (clamped from {raw:.2f}: expect the run to take "
             f"{'longer' if raw < scale else 'less'} than its budget)", path)
    return scale
