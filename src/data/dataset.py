"""The bone-age Dataset: cached 8-bit images + sex + age in months, keyed by row index."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .cache import PreprocessCache


@dataclass(frozen=True)
class ImageNorm:
    """uint8 images (N x 1 x H x W) to the model's input: float, (x/255 - mean)/std, `channels`
    copies of the grey channel. It runs on the model's device (the engine's `to_device`), as
    timm's prefetcher does: loader workers move 1 byte a pixel, not 4 (12 for 3 channels)."""

    mean: float = 0.5
    std: float = 0.25
    channels: int = 1

    def __call__(self, image: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        if image.dtype != torch.uint8:
            raise TypeError(f"ImageNorm takes uint8 images, not {image.dtype}")
        out = image.float().div_(255.0).sub_(self.mean).div_(self.std)
        if self.channels != out.shape[1]:
            out = out.expand(-1, self.channels, -1, -1)
        return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class BoneAgeDataset(Dataset):
    """Rows of (id, male, boneage) read from the preprocessing cache.

    Returns a dict with `image` (1 x H x W uint8: `image_norm` makes the model input on the
    device), `male` (1-element float), `age` (months, NaN when unlabelled) and `index` (row in
    `table`, so predictions map back to ids).

    With `views` (deterministic TTA transforms) instead of `transform`, `image` is V x C x H x W:
    every view of a row from one cache read, so all of TTA is one pass through one loader.
    """

    def __init__(self, table: pd.DataFrame, cache: PreprocessCache, transform=None, channels: int = 1,
                 mean: float = 0.5, std: float = 0.25, seed: int = 0, views: list | None = None):
        if transform is not None and views:
            raise ValueError("give a training transform or TTA views, not both")
        self.table = table.reset_index(drop=True)
        self.ids = self.table["id"].astype(str).tolist()
        self.male = self.table["male"].astype(bool).to_numpy(dtype=np.float32)
        ages = self.table["boneage"] if "boneage" in self.table else pd.Series(np.nan, index=self.table.index)
        self.ages = pd.to_numeric(ages, errors="coerce").to_numpy(dtype=np.float32)
        self.cache = cache
        self.transform = transform
        self.views = list(views or [])
        self.image_norm = ImageNorm(float(mean), float(std), int(channels))
        self.seed = int(seed)
        # Shared memory, so loader workers (persistent ones too) see the epoch the trainer sets.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def sample_seed(self, index: int) -> int:
        """Augmentation is a pure function of (seed, epoch, row): the same for any worker count,
        any number of DDP ranks, and after a resume."""
        return int(np.random.SeedSequence([self.seed, int(self._epoch.item()), index]).generate_state(1)[0])

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def _to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8)).unsqueeze(0)

    def __getitem__(self, index: int) -> dict:
        image = self.cache.load(self.ids[index])
        if self.views:
            tensor = torch.stack([self._to_tensor(view(image=image)["image"]) for view in self.views])
        else:
            if self.transform is not None:
                # One generator pair shared by every transform: Compose.set_random_seed makes a
                # pair per transform, a fifth of a worker's time per image at 500 px (profiled).
                seed = self.sample_seed(index)
                self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
                image = self.transform(image=image)["image"]
            tensor = self._to_tensor(image)
        return {
            "image": tensor,
            "male": torch.tensor([self.male[index]]),
            "age": torch.tensor(self.ages[index]),
            "index": torch.tensor(index),
        }
