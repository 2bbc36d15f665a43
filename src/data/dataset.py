"""The bone-age Dataset: cached 8-bit images + sex + age in months, keyed by row index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .cache import PreprocessCache


class BoneAgeDataset(Dataset):
    """Rows of (id, male, boneage) read from the preprocessing cache.

    Returns a dict with `image` (C x H x W float), `male` (1-element float), `age` (months,
    NaN when unlabelled) and `index` (row in `table`, so predictions map back to ids).

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
        self.channels = channels
        self.mean, self.std = float(mean), float(std)
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

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0).sub_(self.mean).div_(self.std)
        tensor = tensor.unsqueeze(0)
        if self.channels == 3:
            tensor = tensor.expand(3, -1, -1).contiguous()
        return tensor

    def __getitem__(self, index: int) -> dict:
        image = self.cache.load(self.ids[index])
        if self.views:
            tensor = torch.stack([self._to_tensor(view(image=image)["image"]) for view in self.views])
        else:
            if self.transform is not None:
                self.transform.set_random_seed(self.sample_seed(index))
                image = self.transform(image=image)["image"]
            tensor = self._to_tensor(image)
        return {
            "image": tensor,
            "male": torch.tensor([self.male[index]]),
            "age": torch.tensor(self.ages[index]),
            "index": torch.tensor(index),
        }
