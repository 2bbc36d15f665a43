"""Where things live: the Kaggle `kmader/rsna-bone-age` layout and the project's working tree.

Every module that reads or writes a dataset asks this module for paths, so the layout is
spelled out in exactly one place.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

TRAIN_CSV = "boneage-training-dataset.csv"
TRAIN_DIR = "boneage-training-dataset/boneage-training-dataset"
TEST_CSV = "boneage-test-dataset.csv"
TEST_DIR = "boneage-test-dataset/boneage-test-dataset"
# Not part of Kaggle's layout: the phantom (and users who have them) put test labels here.
TEST_LABELS_CSV = "boneage-test-labels.csv"
# Phantom ground truth for registration (keypoints + hand masks).
GROUND_TRUTH_DIR = "ground-truth"
KEYPOINTS_CSV = "ground-truth/keypoints.csv"
MASKS_DIR = "ground-truth/masks"
PHANTOM_MARKER = "phantom.json"

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CANONICAL_FOLDS = PROJECT_ROOT / "folds.csv"


def working_root() -> Path:
    """`working/` at the project root, or $BONEAGE_WORKING (tests point it at a tmp dir)."""
    return Path(os.environ.get("BONEAGE_WORKING", PROJECT_ROOT / "working"))


def dataset_name(input_dir: str | os.PathLike) -> str:
    """A short, readable, collision-free name for a dataset root, used as `working/<dataset>/`.

    Kaggle's `-p input --unzip` puts the data straight into the project's `input/`, so that
    root is called `rsna-bone-age`. Any other root is called by its folder name plus 6 hex
    characters of the sha1 of its path, e.g. `rsna-100px-1a2b3c`, so two roots that share a
    folder name (`a/x`, `b/x`) never share `working/<dataset>/`. The hashed path is relative to
    the project root when the root lies inside the project (moving the checkout renames
    nothing), else the resolved absolute path.
    """
    path = Path(input_dir).resolve()
    project = PROJECT_ROOT.resolve()
    if path == project / "input":
        return "rsna-bone-age"
    try:
        ident = path.relative_to(project).as_posix()
    except ValueError:
        ident = path.as_posix()
    digest = hashlib.sha1(ident.encode("utf-8")).hexdigest()[:6]
    return f"{path.name or 'root'}-{digest}"


@dataclass(frozen=True)
class DatasetPaths:
    """All the paths of one dataset root in the Kaggle layout."""

    root: Path

    @property
    def train_csv(self) -> Path:
        return self.root / TRAIN_CSV

    @property
    def train_dir(self) -> Path:
        return self.root / TRAIN_DIR

    @property
    def test_csv(self) -> Path:
        return self.root / TEST_CSV

    @property
    def test_dir(self) -> Path:
        return self.root / TEST_DIR

    @property
    def test_labels_csv(self) -> Path:
        return self.root / TEST_LABELS_CSV

    @property
    def keypoints_csv(self) -> Path:
        return self.root / KEYPOINTS_CSV

    @property
    def masks_dir(self) -> Path:
        return self.root / MASKS_DIR

    @property
    def name(self) -> str:
        return dataset_name(self.root)

    def work_dir(self) -> Path:
        return working_root() / self.name
