"""Target codecs: how months become network outputs and back.

The engine is generic; a codec owns the target's form (standardised regression, or the paper's
240-bin classification), its loss, and the decode back to months. Its fitted state (mean and SD
of the training folds) is saved in every checkpoint.
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

    @classmethod
    def from_config(cls, target_cfg: dict) -> "RegressionTarget":
        return cls(loss=target_cfg.get("loss", "l1"))

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


class ClassificationTarget:
    """The paper's classification form: `bins` one-month bins (bin k covers months [k, k + 1),
    centre k + 0.5) with a softmax; the prediction is the expectation, probabilities . centres,
    so it always lies in [0.5, bins - 0.5].

    Loss: `loss` (l1, smooth_l1, mse) between the expectation and the age, both divided by
    `scale` (the training folds' SD once fitted, so the loss is on the regression loss's scale),
    plus `ce_weight` x the cross-entropy against a soft label: a Gaussian of SD `ce_sigma`
    months over the bin centres, centred on the true age (clamped into [0, bins]). The soft CE's
    floor is the label's entropy, not 0. Softmax and expectation run in fp32.
    """

    LOSSES = RegressionTarget.LOSSES

    @classmethod
    def from_config(cls, target_cfg: dict) -> "ClassificationTarget":
        return cls(loss=target_cfg.get("loss", "l1"), bins=target_cfg.get("bins", 240),
                   ce_weight=target_cfg.get("ce_weight", 0.0), ce_sigma=target_cfg.get("ce_sigma", 2.0))

    def __init__(self, loss: str = "l1", bins: int = 240, ce_weight: float = 0.0, ce_sigma: float = 2.0,
                 mean: float = 0.0, scale: float = 1.0):
        if loss not in self.LOSSES:
            raise UserError(f"target.loss must be one of {sorted(self.LOSSES)} for classification "
                            f"(on the expected age), not {loss!r}")
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise UserError(f"target.bins={bins!r}: expected an integer >= 2 (one-month bins from 0)")
        if isinstance(ce_weight, bool) or not isinstance(ce_weight, (int, float)) or not 0 <= ce_weight < float("inf"):
            raise UserError(f"target.ce_weight={ce_weight!r}: expected a number >= 0")
        if isinstance(ce_sigma, bool) or not isinstance(ce_sigma, (int, float)) or not 0 < ce_sigma < float("inf"):
            raise UserError(f"target.ce_sigma={ce_sigma!r}: expected a number > 0 (months)")
        self.loss_name = loss
        self.criterion = self.LOSSES[loss]()
        self.bins = int(bins)
        self.out_dim = self.bins
        self.ce_weight, self.ce_sigma = float(ce_weight), float(ce_sigma)
        self.mean, self.scale = float(mean), float(scale)
        self.centres = torch.arange(self.bins, dtype=torch.float32) + 0.5

    def fit(self, ages: np.ndarray) -> "ClassificationTarget":
        ages = np.asarray(ages, dtype=np.float64)
        self.mean, self.scale = float(ages.mean()), float(max(ages.std(), 1e-6))
        return self

    def _centres(self, device: torch.device) -> torch.Tensor:
        if self.centres.device != device:
            self.centres = self.centres.to(device)
        return self.centres

    def _check(self, outputs: torch.Tensor) -> None:
        if outputs.ndim != 2 or outputs.shape[1] != self.bins:
            raise ValueError(f"classification outputs must be (N, {self.bins}), not {tuple(outputs.shape)}")

    def expectation(self, outputs: torch.Tensor) -> torch.Tensor:
        """Expected age in months, (N,) fp32: softmax(logits) . bin centres."""
        self._check(outputs)
        probs = torch.softmax(outputs.float(), dim=1)
        return probs @ self._centres(outputs.device)

    def soft_labels(self, ages: torch.Tensor) -> torch.Tensor:
        """(N, bins) Gaussian label over the bin centres, each row summing to 1 (stable for any sigma)."""
        ages = ages.float().clamp(0.0, float(self.bins)).unsqueeze(1)
        return torch.softmax(-0.5 * ((self._centres(ages.device) - ages) / self.ce_sigma) ** 2, dim=1)

    def encode(self, ages: torch.Tensor) -> torch.Tensor:
        """Ages -> the soft label the CE term trains towards."""
        return self.soft_labels(ages)

    def loss(self, outputs: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        ages = ages.to(outputs.device).float()
        loss = self.criterion(self.expectation(outputs) / self.scale, ages / self.scale)
        if self.ce_weight:
            log_probs = torch.log_softmax(outputs.float(), dim=1)
            ce = -(self.soft_labels(ages) * log_probs).sum(dim=1).mean()
            loss = loss + self.ce_weight * ce
        return loss

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Network outputs -> months (the expectation), fp32."""
        return self.expectation(outputs)

    def state_dict(self) -> dict:
        return {"form": "classification", "loss": self.loss_name, "bins": self.bins, "ce_weight": self.ce_weight,
                "ce_sigma": self.ce_sigma, "mean": self.mean, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("bins", self.bins)) != self.bins:
            raise ValueError(f"target state has {state['bins']} bins, this codec {self.bins}")
        self.mean, self.scale = float(state["mean"]), float(state["scale"])


TARGETS = {"regression": RegressionTarget, "classification": ClassificationTarget}


def build_target(target_cfg: dict):
    form = target_cfg.get("form", "regression")
    if form not in TARGETS:
        raise UserError(f"target.form must be one of {sorted(TARGETS)}, not {form!r}")
    return TARGETS[form].from_config(target_cfg)
