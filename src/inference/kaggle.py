"""What touches Kaggle itself: the credentials file, the API client, and the run a kernel reads.

The `kaggle` package creates its config folder and reads the credentials as it is imported, so
it is imported here only when an upload is asked for, after `check_credentials_file` has warned
about a `kaggle.json` other users can read (as the kaggle CLI does). Nothing here prints or
logs what the credentials file holds.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import sys
from pathlib import Path

from ..data.layout import dataset_name
from ..utils.errors import UserError

log = logging.getLogger(__name__)

CREDENTIALS = "kaggle.json"
RUN_FILES = (".csv", ".json", ".yaml", ".txt", ".md", ".html", ".png")  # what a kernel reads of a finished run
RUN_SKIPPED = ("cache", "tensorboard")


def kaggle_config_dir() -> Path:
    """Where the kaggle CLI looks for kaggle.json (KAGGLE_CONFIG_DIR, ~/.kaggle, or the XDG
    folder on Linux when ~/.kaggle does not exist), without creating anything."""
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)
    home = Path(os.path.expanduser("~")) / ".kaggle"
    if sys.platform.startswith("linux") and not home.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path(os.path.expanduser("~")) / ".config") / "kaggle"
    return home


def check_credentials_file() -> Path | None:
    """The credentials file, when there is one; a warning when its group or others may read it."""
    path = kaggle_config_dir() / CREDENTIALS
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if os.name != "nt" and mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("your Kaggle API key %s is readable by other users on this system (mode %s): run "
                    "`chmod 600 %s`", path, oct(stat.S_IMODE(mode)), path)
    return path


def kaggle_api():
    """An authenticated kaggle API client, importing the package only now."""
    check_credentials_file()
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise UserError("the kaggle package is not installed: `pip install kaggle`") from exc
    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit):  # its message may quote the config; say only what to do
        raise UserError(f"Kaggle authentication failed: put your API token in {kaggle_config_dir() / CREDENTIALS} "
                        f"(chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY") from None
    return api


def upload_dataset(folder: Path, mode: str, notes: str) -> str:
    """`kaggle datasets create|version -p FOLDER --dir-mode zip`; returns what Kaggle answered."""
    api = kaggle_api()
    if mode == "new":
        response = api.dataset_create_new(str(folder), public=False, convert_to_csv=False, dir_mode="zip")
    else:
        response = api.dataset_create_version(str(folder), version_notes=notes, convert_to_csv=False, dir_mode="zip")
    error = getattr(response, "error", None)
    if error:
        raise UserError(f"Kaggle refused the upload of {folder}: {error}")
    return str(getattr(response, "url", "") or "uploaded")


def stage_run(run_root: str | Path, input_dir: str | Path, dest_root: str | Path) -> Path:
    """Copy the tables of a finished run (a working root, such as the train kernel's output) to
    a writable working root, under the dataset name `input_dir` has here; returns that root.

    Kernel inputs are read-only and the report writes beside the tables, so it works on a copy.
    Only small files come along: no cache, no checkpoint, no TensorBoard log."""
    run_root, dest_root = Path(run_root), Path(dest_root)
    name = dataset_name(input_dir)
    source = run_root / name
    if not (source / "folds.json").is_file():
        found = sorted(p for p in run_root.glob("*/folds.json")) if run_root.is_dir() else []
        if len(found) != 1:
            raise UserError(f"{run_root}: expected one dataset folder with folds.json (the train kernel's working "
                            f"tree), found {[str(p.parent.name) for p in found] or 'none'}")
        source = found[0].parent
    target = dest_root / name
    if target.exists():
        shutil.rmtree(target)

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        return {n for n in names if n in RUN_SKIPPED or ((here / n).is_file() and not n.endswith(RUN_FILES))}

    shutil.copytree(source, target, ignore=ignore)
    log.info("copied the run's tables from %s to %s", source, target)
    return dest_root


def test_part(input_dir: str | Path) -> tuple[Path, Path]:
    """(image folder, `Case ID,Sex` CSV) of a data set's test part in the Kaggle layout, nested
    `boneage-test-dataset/boneage-test-dataset/` or single-level."""
    from ..data.layout import DatasetPaths

    paths = DatasetPaths(Path(input_dir))
    if not paths.test_csv.is_file():
        raise UserError(f"{input_dir}: no {paths.test_csv.name}, so no test part to predict")
    for folder in (paths.test_dir, paths.test_dir.parent):
        if folder.is_dir() and any(p.suffix.lower() == ".png" for p in folder.iterdir()):
            return folder, paths.test_csv
    raise UserError(f"{input_dir}: no test images in {paths.test_dir} (or {paths.test_dir.parent})")
