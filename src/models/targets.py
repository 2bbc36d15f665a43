"""Target codecs: how months become network outputs and back.

The engine is generic; a codec owns the target's form (standardised regression now, the
paper's 240-bin classification later), its loss, and the decode back to months. Its fitted
state (mean and SD of the training folds) is saved in every checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..utils.errors import UserError


class RegressionTarget:
    """Months standardised by the training folds' mean and SD; L1 (or smooth-L1/MSE) loss."""

    out_dim = 1
    LOSSES = {"l1": nn.L1Loss, "smooth_l1": nn.SmoothL1Loss, "mse": nn.MSELoss}

    def __init__(self, loss: str = "l1", mean: float = 0.0, std: float = 1.0):
        if loss not in self.LOSSES:
            raise UserError(f"target.loss must be one of {sorted(self.LOSSES)} for regression, not {loss!r}")
        self.loss_name = loss
        self.criterion = self.LOSSES[loss]()
        self.mean, self.std = float(mean), float(std)

    def fit(self, ages: np.ndarray) -> "RegressionTarget":
        ages = np.asarray(ages, dtype=np.float64)
        self.mean, self.std = float(ages.mean()), float(max(ages.std(), 1e-6))
        return self

    def encode(self, ages: torch.Tensor) -> torch.Tensor:
        return ((ages.float() - self.mean) / self.std).unsqueeze(1)

    def loss(self, outputs: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        return self.criterion(outputs.float(), self.encode(ages).to(outputs.device))

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Network outputs -> months."""
        return outputs.float()[:, 0] * self.std + self.mean

    def state_dict(self) -> dict:
        return {"form": "regression", "loss": self.loss_name, "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std = float(state["mean"]), float(state["std"])


TARGETS = {"regression": RegressionTarget}


def build_target(target_cfg: dict):
    form = target_cfg.get("form", "regression")
    if form not in TARGETS:
        raise UserError(f"target.form must be one of {sorted(TARGETS)}, not {form!r}")
    return TARGETS[form](loss=target_cfg.get("loss", "l1"))
