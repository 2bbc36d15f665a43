"""Small helpers shared by the engine's tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

# A tiny timm model on a tiny phantom: the engine's tests train in seconds on 2 CPU cores.
TINY = [
    "model.backbone=test_resnet", "model.pretrained=false", "model.head_hidden=[16]", "model.sex_features=8",
    "data.size=64", "data.num_workers=0", "data.cache_workers=1", "train.batch_size=8",
    "train.eval_batch_size=16", "train.epochs=2", "deterministic=true", "optim.lr=0.003",
    "tta=[{name: identity}, {rotate: 5}, {scale: 1.05}]",
]


def audited(root: Path) -> Path:
    from src.data.audit import run_audit

    run_audit(root, quiet=True)
    return root


def tiny_cfg(*extra: str) -> dict:
    from src.engine.config import load_config

    return load_config("baseline_inception_v3", None, TINY + list(extra))


class Interrupted(Exception):
    """Raised by a training callback to stop a run as a crash would."""


def interrupt_after_first_epoch(cfg: dict, root: Path, fold: int = 0) -> None:
    """Train `fold` and stop it after its first epoch (its last.pt is left for a resume)."""
    import pytest

    from src.engine.experiment import run_experiment

    def stop(epoch, row):
        raise Interrupted

    with pytest.raises(Interrupted):
        run_experiment(cfg, root, folds=[fold], device="cpu", callbacks=[stop])
