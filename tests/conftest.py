"""Shared fixtures: the real data in ../shared (skipped with a reason when absent) and an
isolated working/ so tests never touch the user's artefacts."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"real data not available: {SHARED}/data is absent (it sits beside the checkout on dev and CI machines)")
    return SHARED / "data"


@pytest.fixture
def rsna100(shared_dir) -> Path:
    root = shared_dir / "rsna-100px"
    if not (root / "boneage-training-dataset.csv").is_file():
        pytest.skip(f"{root} has no boneage-training-dataset.csv")
    return root


@pytest.fixture(autouse=True)
def isolated_working(tmp_path, monkeypatch) -> Path:
    """Every test writes its artefacts under a private working/ root."""
    work = tmp_path / "working"
    monkeypatch.setenv("BONEAGE_WORKING", str(work))
    return work


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """30 train / 5 test phantom hands at 0.1 scale (generated once per session)."""
    from src.data.phantom import PhantomParams, generate

    root = tmp_path_factory.mktemp("phantom") / "tiny-phantom"
    generate(root, PhantomParams(seed=3, scale=0.1, n_train=30, n_test=5), workers=1)
    return root


@pytest.fixture
def cli_main():
    """`python -m src` in-process: returns the exit code."""
    from src.cli import main

    return main
