"""Full-state checkpoints: model, optimiser, scheduler, AMP scaler, EMA, epoch and RNG states."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..utils.io import atomic_path


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **state) -> None:
    """Atomically save; `model`, `optimizer`, ... objects are stored as their state_dicts."""
    payload = {}
    for key, value in state.items():
        if isinstance(value, torch.nn.Module):
            value = unwrap(value).state_dict()
        elif value is not None and hasattr(value, "state_dict") and not isinstance(value, dict):
            value = value.state_dict()
        payload[key] = value
    payload["rng"] = rng_state()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=False)
