"""The bench's rows. Each compares our path with a naive reference on the same images in the
same run: full-resolution phantom hands (`--scale 1`, about 1514 x 2044) unless a row says.

- loader: the training input path (preprocessed cache + augmentation at 500 px, DataLoader with
  2 workers) against decoding and resizing the full PNG on every access (the seed recipe).
- preprocess: decode, hand mask, 3 keypoints and the affine map of one image on one core,
  against decode and resize alone (what an unregistered recipe does).
- inference_tta: Inception-v3 at 500 px with TTA-10: our inference (the engine's autocast,
  channels_last, inference_mode, all views of a batch in one forward) against fp32 contiguous
  under no_grad, view by view.
- train_step: Inception-v3 training steps, bf16 autocast + channels_last against fp32
  (informative: where the CPU has no native bf16 the engine runs fp32, said in the notes).
- demo_end_to_end: the wall time of `bash run_all.sh --demo` from an empty working/, by stage.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.layout import PROJECT_ROOT, dataset_name, working_root
from .measure import Row, time_it

log = logging.getLogger("bench")

DEMO_TARGET_S = 15 * 60


@dataclass
class BenchContext:
    root: Path  # the bench phantom (Kaggle layout)
    table: pd.DataFrame  # id, path, male, boneage
    repeats: int
    quick: bool
    workers: int = 2


def bench_phantom(out_root: Path, n: int, scale: float, workers: int) -> BenchContext:
    """`n` phantom hands at `scale` under `out_root` (made once, reused), audited."""
    from ..data.audit import run_audit
    from ..data.phantom import PhantomParams, generate

    root = out_root / f"phantom-scale{scale:g}-n{n}"
    generate(root, PhantomParams(seed=11, scale=scale, n_train=n, n_test=1), workers=workers)
    table = run_audit(root, quiet=True).train[["id", "path", "male", "boneage"]].reset_index(drop=True)
    return BenchContext(root, table, repeats=3, quick=False, workers=workers)


def _baseline_cfg() -> dict:
    from ..engine.config import load_config

    return load_config("baseline_inception_v3")  # the full profile: 500 px, TTA-10


# ------------------------------------------------------------------------------------ loader


class NaiveDataset(Dataset):
    """The seed recipe's loader: decode the full PNG, pad, resize and augment on every access."""

    def __init__(self, table: pd.DataFrame, size: int, transform, mean: float, std: float):
        self.paths = table["path"].astype(str).tolist()
        self.male = table["male"].astype(float).tolist()
        self.size, self.transform, self.mean, self.std = size, transform, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = cv2.imread(self.paths[index], cv2.IMREAD_GRAYSCALE)
        h, w = image.shape
        side = max(h, w)
        square = np.zeros((side, side), np.uint8)
        square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = image
        image = cv2.resize(square, (self.size, self.size), interpolation=cv2.INTER_AREA)
        image = self.transform(image=image)["image"]
        tensor = torch.from_numpy(image).float().div(255.0).sub(self.mean).div(self.std).unsqueeze(0)
        return {"image": tensor, "male": torch.tensor([self.male[index]])}


def _loader(dataset, batch: int, workers: int) -> DataLoader:
    from ..engine.trainer import _worker_init

    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                      worker_init_fn=_worker_init if workers > 0 else None, drop_last=False)


def _passes(loader: DataLoader, passes: int) -> int:
    """Images through `loader`, made model input by the engine's `to_device` (uint8 batches
    through the dataset's ImageNorm; on this machine the device is the CPU)."""
    from ..engine.loops import Precision

    to_input = Precision(torch.device("cpu"), None, False).to_device
    norm = getattr(loader.dataset, "image_norm", None)
    seen = 0
    for _ in range(passes):
        for batch in loader:
            seen += len(to_input(batch, norm)["image"])
    return seen


def loader_row(ctx: BenchContext) -> Row:
    from ..data.cache import PreprocessCache
    from ..data.dataset import BoneAgeDataset
    from ..data.transforms import build_train_transform

    cfg = _baseline_cfg()
    d = cfg["data"]
    size, n = int(d["size"]), len(ctx.table)
    cache = PreprocessCache(dataset_name(ctx.root), str(ctx.root), size, d["preprocess"])
    cache.build(ctx.table, workers=ctx.workers, desc="bench cache")
    transform = build_train_transform(cfg["aug"])
    ours_ds = BoneAgeDataset(ctx.table, cache, transform=transform, channels=1, mean=d["mean"], std=d["std"])
    naive_ds = NaiveDataset(ctx.table, size, transform, d["mean"], d["std"])
    batch = int(cfg["train"]["batch_size"])
    ours_passes = max(1, math.ceil((64 if ctx.quick else 512) / n))  # a repeat of ours lasts long enough to time
    ours_loader, naive_loader = _loader(ours_ds, batch, ctx.workers), _loader(naive_ds, batch, ctx.workers)
    ours = time_it(lambda: _passes(ours_loader, ours_passes), ctx.repeats)
    naive = time_it(lambda: _passes(naive_loader, 1), ctx.repeats)
    return Row("loader", ours.per_s, naive.per_s, "img/s", ">= 10x and >= 1000 img/s",
               ours.per_s >= 1000 and ours.per_s / naive.per_s >= 10, n, ctx.repeats,
               f"cache ({cache.dir.name}: {size}px memory-mapped uint8 pack) + augmentation on uint8, DataLoader "
               f"{ctx.workers} workers, batch {batch}, normalised to float in the main process",
               f"decode full PNG + pad + resize to {size} + augmentation per access, same DataLoader",
               extra={"ours_passes_per_repeat": ours_passes, "ours_s": ours.seconds, "reference_s": naive.seconds})


# ------------------------------------------------------------------------------- preprocess


def _one_core() -> tuple[int, int]:
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    return threads, cv_threads


def preprocess_row(ctx: BenchContext) -> Row:
    from ..data.images import read_gray8
    from ..registration.frame import crop_region, frame_size, warp_to_frame
    from ..registration.heuristic import detect_keypoints

    paths = ctx.table["path"].astype(str).tolist()
    size = int(_baseline_cfg()["data"]["size"])
    scale = size / frame_size(1.0)[0]  # region A of the frame at about the model's input side

    def ours() -> int:
        for path in paths:
            pixels = read_gray8(path).pixels
            keypoints = detect_keypoints(pixels)  # hand mask, contour, the three points
            crop_region(warp_to_frame(pixels, keypoints, scale=scale), "A")
        return len(paths)

    def naive() -> int:
        for path in paths:
            pixels = read_gray8(path).pixels
            cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA)
        return len(paths)

    saved = _one_core()
    try:
        mine, reference = time_it(ours, ctx.repeats), time_it(naive, ctx.repeats)
    finally:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])
    return Row("preprocess", mine.per_s, reference.per_s, "img/s per core", ">= 15 img/s per core",
               mine.per_s >= 15, len(paths), ctx.repeats,
               f"decode + hand mask + 3 keypoints (heuristic) + affine to the frame (scale {scale:.3f}) + crop A, 1 thread",
               f"decode + resize to {size}, 1 thread (no registration)",
               notes="ratio < 1: what registration costs over decoding alone; the cache build runs it on every core")


# ---------------------------------------------------------------------------- inference_tta


def _tta_inputs(ctx: BenchContext, cfg: dict, views: int) -> torch.Tensor:
    """N x V x 1 x S x S: the TTA views of each image, from its preprocessed 500 px image."""
    from ..data.images import read_gray8
    from ..data.preprocess import StepContext, run_pipeline
    from ..data.transforms import build_tta_views

    d = cfg["data"]
    size = int(d["size"])
    tta = build_tta_views(cfg["tta"][:views])
    out = []
    for record in ctx.table.to_dict("records"):
        image = run_pipeline(read_gray8(record["path"]).pixels, d["preprocess"], StepContext(size=size, record=record))
        stack = [torch.from_numpy(view(image=image)["image"]).float().div(255).sub(d["mean"]).div(d["std"])[None]
                 for _, view in tta]
        out.append(torch.stack(stack))
    return torch.stack(out)


@torch.no_grad()
def _calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor, male: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics from these images (one pass, cumulative), so a
    random-init Inception-v3 in eval mode gives outputs on the scale of ages. With the default
    running stats (mean 0, var 1) its activations grow ~100x a block and its outputs reach 1e5
    months, where float rounding alone moves a prediction by months."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the pass
    model.train()
    for start in range(0, len(images), 8):
        model(images[start:start + 8], male[start:start + 8])
    model.eval()


def inference_row(ctx: BenchContext) -> Row:
    from ..engine.loops import Precision
    from ..models.boneage_net import build_model
    from ..models.targets import build_target

    cfg = _baseline_cfg()
    if ctx.quick:
        cfg["data"]["size"] = 299
    n_views = 2 if ctx.quick else len(cfg["tta"])
    images = _tta_inputs(ctx, cfg, n_views)
    male = torch.tensor(ctx.table["male"].astype(float).to_numpy(), dtype=torch.float32)[:, None]  # a copy: pandas arrays are read-only
    codec = build_target(cfg["target"]).fit(ctx.table["boneage"].to_numpy())
    torch.manual_seed(0)
    model, _ = build_model({**cfg["model"], "pretrained": False, "pretrained_file": None}, in_chans=1,
                           out_dim=codec.out_dim)
    _calibrate_batchnorm(model, images[:, 0], male)  # the identity view of every image
    per_batch = 2  # images per forward: ours sends their views together (2 x V), the reference 2 at a time
    n = len(images)
    precision = Precision(torch.device("cpu"), cfg["train"]["amp_dtype"], True)  # the engine's choice here

    def ours_predict() -> np.ndarray:
        out = []
        with torch.inference_mode(), precision.autocast():
            for start in range(0, n, per_batch):
                x = images[start:start + per_batch]
                views = x.shape[1]
                flat = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
                sex = male[start:start + per_batch].repeat_interleave(views, 0)
                out.append(codec.decode(model(flat, sex)).float().reshape(-1, views).mean(1))
        return torch.cat(out).numpy()

    def naive_predict() -> np.ndarray:
        per_view = []
        with torch.no_grad():
            for view in range(images.shape[1]):
                column = []
                for start in range(0, n, per_batch):
                    x = images[start:start + per_batch, view].contiguous()
                    column.append(codec.decode(model(x, male[start:start + per_batch])).float())
                per_view.append(torch.cat(column))
        return torch.stack(per_view, 1).mean(1).numpy()

    # one set of weights; each path puts them in its memory format first
    def ours_call() -> int:
        model.to(memory_format=torch.channels_last)
        ours_predict()
        return n * n_views

    def naive_call() -> int:
        model.to(memory_format=torch.contiguous_format)
        naive_predict()
        return n * n_views

    mine, reference = time_it(ours_call, ctx.repeats), time_it(naive_call, ctx.repeats)
    model.to(memory_format=torch.channels_last)
    a = ours_predict()
    model.to(memory_format=torch.contiguous_format)
    b = naive_predict()
    agreement = float(np.mean(np.abs(a - b)))
    ratio = mine.per_s / reference.per_s
    notes = (f"predictions agree within {agreement:.3f} months on average (random-init weights, "
             f"BatchNorm statistics set on these images; predictions {np.mean(a):.1f} +- {np.std(a):.1f} months); "
             f"autocast here: {precision.label}")
    return Row("inference_tta", mine.per_s, reference.per_s, "views/s", ">= 2.5x, agreeing within 0.5 months",
               ratio >= 2.5 and agreement <= 0.5, n, ctx.repeats,
               f"Inception-v3 {cfg['data']['size']}px TTA-{n_views}: {precision.label} autocast, channels_last, "
               f"inference_mode, {per_batch} images x {n_views} views a forward",
               f"fp32 contiguous, no_grad, view by view ({per_batch} images a forward)", notes=notes,
               extra={"mean_abs_diff_months": agreement, "views": n_views})


# ------------------------------------------------------------------------------- train_step


def train_step_row(ctx: BenchContext) -> Row:
    from ..engine.loops import Precision
    from ..utils.cpu_features import cpu_has_native_bf16
    from ..models.boneage_net import build_model

    cfg = _baseline_cfg()
    size = 96 if ctx.quick else 128  # Inception-v3 needs >= 75 px; the demo's 64 px is its resnet10t stand-in's
    batch = 8 if ctx.quick else 16
    steps = 1 if ctx.quick else 3
    torch.manual_seed(0)
    x = torch.randn(batch, 1, size, size)
    sex = torch.ones(batch, 1)

    def runner(dtype: torch.dtype | None, channels_last: bool):
        model, _ = build_model({**cfg["model"], "pretrained": False, "pretrained_file": None}, in_chans=1, out_dim=1)
        model.train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        inputs = x.contiguous(memory_format=fmt)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def call() -> int:
            for _ in range(steps):
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    loss = model(inputs, sex).float().abs().mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return batch * steps

        return call

    bf16 = time_it(runner(torch.bfloat16, True), ctx.repeats)
    fp32 = time_it(runner(None, False), ctx.repeats)
    engine = Precision(torch.device("cpu"), "bfloat16", True)
    fp32_cl = time_it(runner(None, True), ctx.repeats) if engine.amp_dtype is None else None
    notes = ("this CPU has native bf16" if cpu_has_native_bf16() else
             "this CPU has no native bf16 (emulated: slower than fp32), so the engine trains in fp32 + "
             f"channels_last here: {fp32_cl.per_s:.1f} img/s, {fp32_cl.per_s / fp32.per_s:.2f}x fp32 contiguous")
    return Row("train_step", bf16.per_s, fp32.per_s, "img/s", "informative (no target on CPU)", None, batch * steps,
               ctx.repeats, f"Inception-v3 {size}px batch {batch}: bf16 autocast + channels_last",
               "fp32, contiguous", notes=notes,
               extra={"engine_fp32_channels_last_img_s": fp32_cl.per_s if fp32_cl else None})


# -------------------------------------------------------------------------- demo_end_to_end


def demo_timings_path(work_root: Path | None = None) -> Path:
    root = PROJECT_ROOT / "input" / "phantom"
    return (work_root or working_root()) / dataset_name(root) / "run_all_timings.json"


def run_demo(out_dir: Path) -> Path:
    """`bash run_all.sh --demo` from an empty working/ (a fresh folder), its log in out_dir."""
    import time as _time

    work = Path(tempfile.mkdtemp(prefix="demo-working-", dir=out_dir))
    env = {**os.environ, "BONEAGE_WORKING": str(work)}
    log_path = out_dir / "demo_end_to_end.log"
    log.info("demo_end_to_end: bash run_all.sh --demo with an empty working/ (%s); log %s", work, log_path)
    start = _time.time()
    with open(log_path, "w") as sink:
        code = subprocess.call(["bash", str(PROJECT_ROOT / "run_all.sh"), "--demo"], cwd=PROJECT_ROOT, env=env,
                               stdout=sink, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"run_all.sh --demo failed with exit code {code} after {_time.time() - start:.0f} s; "
                           f"see {log_path}")
    return demo_timings_path(work)


def demo_row(timings_path: Path | None) -> Row | None:
    """From a demo run's run_all_timings.json (None: no demo run to read)."""
    import json

    if timings_path is None or not timings_path.is_file():
        return None
    record = json.loads(timings_path.read_text())
    total = float(record["total_s"])
    stages = {row["stage"]: row["seconds"] for row in record.get("stages", [])}
    split = ", ".join(f"{k} {v:.0f}s" for k, v in stages.items())
    return Row("demo_end_to_end", total, DEMO_TARGET_S, "s", "<= 900 s (15 min) on 2 cores", total <= DEMO_TARGET_S,
               0, 1, f"bash run_all.sh --demo from an empty working/ ({record.get('started')}, jobs "
               f"{record.get('jobs')})", "the 15-minute budget", notes=f"by stage: {split}",
               extra={"stages": stages, "timings": str(timings_path)}, lower_is_better=True)
