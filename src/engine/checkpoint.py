"""Full-state checkpoints: model, optimiser, scheduler, AMP scaler, EMA, epoch and RNG states.

Everything is stored as tensors and plain Python values, so checkpoints load with
`torch.load(weights_only=True)`: opening a checkpoint never runs pickled code.
"""

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
    """Python, NumPy, torch (and CUDA) generator states as tensors, lists and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of ints, None): plain values
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value):
    """NumPy scalars -> Python numbers, recursively, so the weights-only loader accepts them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: Path, **state) -> None:
    """Atomically save; `model`, `optimizer`, ... objects are stored as their state_dicts."""
    payload = {}
    for key, value in state.items():
        if isinstance(value, torch.nn.Module):
            value = unwrap(value).state_dict()
        elif value is not None and hasattr(value, "state_dict") and not isinstance(value, dict):
            value = value.state_dict()
        payload[key] = _plain(value)
    payload["rng"] = rng_state()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load with the weights-only unpickler: tensors and plain values, never arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


def ema_weights(ema_state: dict) -> dict:
    """A ModelEmaV3 state_dict (keys `module.<name>`) as the plain model's state_dict."""
    return {k.removeprefix("module."): v for k, v in ema_state.items()}
