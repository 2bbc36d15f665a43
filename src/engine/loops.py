"""Generic train and inference loops.

A batch is a dict; the model takes `batch[k] for k in INPUT_KEYS`. The target codec owns the
loss and the decode to the prediction unit, so these loops serve every model of the project.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..utils.cpu_features import BF16_ENV, cpu_has_native_bf16
from ..utils.progress import progress

from .checkpoint import unwrap
from .distributed import DistInfo, all_gather_objects, all_reduce_mean

INPUT_KEYS = ("image", "male")
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


_warned: set[str] = set()


@dataclass
class Precision:
    """Autocast settings: bf16 on GPU and on a CPU with native bf16 (else fp32, said once);
    fp16 (GPU) goes with a GradScaler. `requested` keeps the configured dtype."""

    device: torch.device
    amp_dtype: str | None
    channels_last: bool

    def __post_init__(self) -> None:
        self.requested = self.amp_dtype
        if self.device.type == "cpu" and self.amp_dtype == "bfloat16" and not cpu_has_native_bf16():
            self.amp_dtype = None
            if "bf16" not in _warned:
                _warned.add("bf16")
                logging.getLogger(__name__).warning(
                    "bfloat16 autocast asked, but this CPU has no native bf16 (no avx512_bf16/amx_bf16 in "
                    "/proc/cpuinfo): running in float32, which is ~10x faster here (set %s=1 to force bf16)", BF16_ENV)

    @property
    def label(self) -> str:
        """What autocast actually runs, for the logs."""
        if self.amp_dtype == self.requested:
            return str(self.amp_dtype or "none")
        return f"float32 ({self.requested} asked; this CPU has no native bf16)"

    def autocast(self):
        dtype = AMP_DTYPES.get(self.amp_dtype or "none")
        if dtype is None or (dtype == torch.float16 and self.device.type != "cuda"):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def make_scaler(self) -> torch.amp.GradScaler:
        enabled = self.amp_dtype == "float16" and self.device.type == "cuda"
        return torch.amp.GradScaler(self.device.type, enabled=enabled)

    def to_device(self, batch: dict, image_norm=None) -> dict:
        """The batch on the device; uint8 images become the model input there, by `image_norm`
        (the dataset's `ImageNorm`)."""
        out = {}
        non_blocking = self.device.type == "cuda"
        for key, value in batch.items():
            if torch.is_tensor(value):
                value = value.to(self.device, non_blocking=non_blocking)
                if key == "image":
                    if value.dtype == torch.uint8:
                        if image_norm is None:
                            raise TypeError("uint8 images need the dataset's image_norm to become model input")
                        value = image_norm(value, channels_last=self.channels_last)
                    elif self.channels_last:
                        value = value.contiguous(memory_format=torch.channels_last)
            out[key] = value
        return out


@dataclass
class EpochStats:
    loss: float
    images_per_s: float
    updates: int


def train_one_epoch(model, loader: DataLoader, codec, optimizer, scheduler, scaler, precision: Precision,
                    epoch: int, num_updates: int, grad_accum_steps: int = 1, grad_clip: float | None = None,
                    ema=None, dist_info: DistInfo = DistInfo(), desc: str = "train") -> EpochStats:
    """One pass over `loader` with gradient accumulation; the scheduler steps per optimiser update."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    n_batches = len(loader)
    image_norm = getattr(loader.dataset, "image_norm", None)
    bar = progress(loader, desc=desc, leave=False, disable=not dist_info.is_main)
    for step, batch in enumerate(bar):
        batch = precision.to_device(batch, image_norm)
        last_of_group = (step + 1) % grad_accum_steps == 0 or step + 1 == n_batches
        sync = contextlib.nullcontext() if last_of_group or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast():
                outputs = model(*(batch[k] for k in INPUT_KEYS))
            loss = codec.loss(outputs, batch["age"])
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch} step {step}")
            scaler.scale(loss / grad_accum_steps).backward()
        if last_of_group:
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=num_updates)
            if ema is not None:
                ema.update(unwrap(model), step=num_updates)
        batch_n = batch["image"].shape[0]
        total_loss += loss.item() * batch_n
        seen += batch_n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
    elapsed = time.perf_counter() - start
    mean_loss = all_reduce_mean(total_loss / max(seen, 1), dist_info)
    images_per_s = all_reduce_mean(seen / max(elapsed, 1e-9), dist_info) * dist_info.world_size
    return EpochStats(mean_loss, images_per_s, num_updates)


@torch.no_grad()
def predict(model, loader: DataLoader, codec, precision: Precision, dist_info: DistInfo = DistInfo(),
            desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Decoded predictions for every row of the loader's dataset, as (row indices, predictions).

    A batch of multi-view images (N x V x C x H x W, TTA) runs as one N*V batch and gives
    predictions of shape (rows, V); single images give shape (rows,).

    Under DDP each rank predicts its shard; shards are gathered and de-duplicated (the
    distributed sampler pads with repeats), so every rank returns the whole set.
    """
    net = unwrap(model)
    net.eval()
    indices, preds = [], []
    image_norm = getattr(loader.dataset, "image_norm", None)
    for batch in progress(loader, desc=desc, leave=False, disable=not dist_info.is_main):
        image, male = batch["image"], batch["male"]
        n_views = image.shape[1] if image.dim() == 5 else 0
        if n_views:
            image = image.flatten(0, 1)
            male = male.repeat_interleave(n_views, dim=0)
        batch = precision.to_device({**batch, "image": image, "male": male}, image_norm)
        with precision.autocast():
            outputs = net(*(batch[k] for k in INPUT_KEYS))
        decoded = codec.decode(outputs).float().cpu().numpy()
        preds.append(decoded.reshape(-1, n_views) if n_views else decoded)
        indices.append(batch["index"].cpu().numpy())
    idx = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    out = np.concatenate(preds) if preds else np.zeros(0, dtype=np.float32)
    if dist_info.enabled:
        parts = all_gather_objects((idx, out), dist_info)
        idx = np.concatenate([p[0] for p in parts])
        out = np.concatenate([p[1] for p in parts])
    order = np.argsort(idx, kind="stable")
    idx, out = idx[order], out[order]
    keep = np.ones(len(idx), dtype=bool)
    keep[1:] = idx[1:] != idx[:-1]
    return idx[keep], out[keep]
