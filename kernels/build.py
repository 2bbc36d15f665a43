"""Write the Kaggle kernels under kernels/: each a folder with kernel-metadata.json and a notebook.

    python kernels/build.py                 # rewrite every kernel (after editing the cells below)
    python kernels/build.py --user NAME     # the same, owned by Kaggle user NAME (ids and sources)
    python kernels/build.py --check         # exit 1 when a committed file differs from what this writes

The notebooks only call the workbench (`python -m src ...` in-process, or its functions); the code
itself comes from the code+weights dataset. Every location comes from an environment variable
with Kaggle's path as its default, so the same notebook runs here against the phantom.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
DEFAULT_USER = "your-kaggle-username"
DATA = "kmader/rsna-bone-age"
WEIGHTS = "boneage-workbench-weights"

LOCATIONS = '''\
import os
import sys
from pathlib import Path

# Where things are: Kaggle's paths unless the environment says otherwise (tests run this on a phantom).
INPUT = Path(os.environ.get("BONEAGE_INPUT", "/kaggle/input/rsna-bone-age"))             # the data set
CODE = Path(os.environ.get("BONEAGE_CODE", "/kaggle/input/boneage-workbench-weights"))   # code+weights dataset
OUTPUT = Path(os.environ.get("BONEAGE_OUTPUT", "/kaggle/working"))                       # where this kernel writes
OUTPUT.mkdir(parents=True, exist_ok=True)

sys.path.insert(0, str(CODE))  # the workbench's code comes from the code+weights dataset, not a checkout
import src

print("code from", Path(src.__file__).resolve().parent)
'''

RUN_HELPER = '''\
from src.cli import main


def run(*argv):
    """`python -m src ARGV`, in this process; stops the notebook on a non-zero exit."""
    argv = [str(a) for a in argv]
    print("$ python -m src", " ".join(argv), flush=True)
    code = main(argv)
    assert code == 0, f"`python -m src {' '.join(argv)}` failed with exit code {code}"
'''


def train_cells(user: str) -> list:
    return [
        new_markdown_cell(
            "# boneage-workbench: train\n\n"
            "Runs the workbench on Kaggle's GPU against `kmader/rsna-bone-age`: audit, folds, the profile's "
            "models (the baseline and the model family of `src/configs/families.yaml`), the stack, the "
            "leaderboard and the report. Its output `boneage-workbench-weights/` is the code+weights dataset "
            "that `kernels/submit` predicts from; `workbench/` keeps the run's tables (OOF, leaderboard, report) "
            "for `kernels/inspect-oof`.\n\n"
            "The code comes from the code+weights dataset attached as input (any earlier version of it, e.g. "
            "one packaged from the phantom demo, carries the code). `BONEAGE_PROFILE` (default `full`), "
            "`BONEAGE_CONFIGS` (space-separated experiment names) and `BONEAGE_OVERRIDES` (`key=value ...`) "
            "choose what trains. The whole `full` family needs more than one 12-hour session: pick configs."),
        new_code_cell(LOCATIONS + f'''
PROFILE = os.environ.get("BONEAGE_PROFILE", "full")
CONFIGS = os.environ.get("BONEAGE_CONFIGS", "").split()
OVERRIDES = os.environ.get("BONEAGE_OVERRIDES", "").split()
KAGGLE_USER = os.environ.get("BONEAGE_KAGGLE_USER", "{user}")
WORK = OUTPUT / "workbench"
os.environ["BONEAGE_WORKING"] = str(WORK)  # the kernel's inputs are read-only: work under OUTPUT
'''),
        new_code_cell(RUN_HELPER),
        new_code_cell('''\
import yaml
from src.engine.config import CONFIG_DIR

if not CONFIGS:
    family = yaml.safe_load((CONFIG_DIR / "families.yaml").read_text()).get(PROFILE) or []
    CONFIGS = ["baseline_inception_v3", *family]
print("profile", PROFILE, "configs", CONFIGS, "overrides", OVERRIDES)

run("audit", "--input", INPUT)
run("folds", "--input", INPUT)
run("train", *[arg for name in CONFIGS for arg in ("--config", name)], "--profile", PROFILE, "--input", INPUT,
    "--device", "auto", *OVERRIDES)
run("stack", "--input", INPUT)
run("leaderboard", "--input", INPUT)
run("report", "--input", INPUT)
'''),
        new_code_cell('''\
run("kaggle-package", "--input", INPUT, "--out", OUTPUT / "boneage-workbench-weights", "--user", KAGGLE_USER,
    "--device", "auto")

# The package holds the prediction weights: drop the cache and the training checkpoints from the output.
import shutil

shutil.rmtree(WORK / "cache", ignore_errors=True)
for checkpoint in WORK.rglob("*.pt"):
    checkpoint.unlink()
'''),
    ]


def submit_cells(user: str) -> list:
    return [
        new_markdown_cell(
            "# boneage-workbench: submit\n\n"
            "Offline inference: the code+weights dataset (`kaggle-package`'s folder) and the data set's test "
            "images give `submission.csv` (`id,boneage` in months) and `predictions.csv` (each model's "
            "prediction beside the stack's). It runs `python -m src predict`, on the GPU when there is one."),
        new_code_cell(LOCATIONS),
        new_code_cell(RUN_HELPER),
        new_code_cell('''\
from src.inference.kaggle import test_part

images, sex_csv = test_part(INPUT)
run("predict", images, "--sex-csv", sex_csv, "--code", CODE, "--out", OUTPUT / "predictions.csv",
    "--submission", OUTPUT / "submission.csv")
'''),
        new_code_cell('''\
import pandas as pd

submission = pd.read_csv(OUTPUT / "submission.csv")
print(f"{len(submission)} test ids, bone age {submission['boneage'].min():.1f}..{submission['boneage'].max():.1f} months")
pd.read_csv(OUTPUT / "predictions.csv").head(10)
'''),
    ]


def inspect_cells(user: str) -> list:
    return [
        new_markdown_cell(
            "# boneage-workbench: inspect the OOF predictions\n\n"
            "Loads the out-of-fold predictions of a finished run (the train kernel's `workbench/` output, "
            "`BONEAGE_RUN`) and shows the leaderboard and the error by age bucket and sex, with plots."),
        new_code_cell(LOCATIONS + '''
RUN = Path(os.environ.get("BONEAGE_RUN", "/kaggle/input/boneage-workbench-train/workbench"))  # a finished run
'''),
        new_code_cell(RUN_HELPER),
        new_code_cell('''\
from src.inference.kaggle import stage_run

# The run's tables, copied where the report may write beside them.
os.environ["BONEAGE_WORKING"] = str(stage_run(RUN, INPUT, OUTPUT / "workbench"))
run("leaderboard", "--input", INPUT)
run("report", "--input", INPUT)
'''),
        new_code_cell('''\
import pandas as pd
from IPython.display import Image, Markdown, display
from src.data.layout import DatasetPaths

work = DatasetPaths(INPUT).work_dir()
display(Markdown((work / "leaderboard.md").read_text()))
'''),
        new_code_cell('''\
buckets = pd.read_csv(work / "report" / "age_buckets.csv")
order = buckets["bucket"].drop_duplicates()
for sex in ("both", "male", "female"):
    rows = buckets[buckets["sex"] == sex]
    print(f"OOF MAE (months) by age bucket (years), {sex}:")
    display(rows.pivot(index="bucket", columns="model", values="mae").reindex(order).round(2))
'''),
        new_code_cell('''\
for png in sorted((work / "report").glob("*.png")):
    print(png.name)
    display(Image(filename=str(png)))
'''),
    ]


KERNELS = {
    "train": dict(title="boneage-workbench train", cells=train_cells, gpu=True, internet=True, kernel_sources=[]),
    "submit": dict(title="boneage-workbench submit", cells=submit_cells, gpu=True, internet=False, kernel_sources=[]),
    "inspect-oof": dict(title="boneage-workbench inspect-oof", cells=inspect_cells, gpu=False, internet=False,
                        kernel_sources=["train"]),
}


def slug(title: str) -> str:
    return title.lower().replace(" ", "-")


def metadata(name: str, user: str) -> dict:
    spec = KERNELS[name]
    return {
        "id": f"{user}/{slug(spec['title'])}",
        "title": spec["title"],
        "code_file": f"{name}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": spec["gpu"],
        "enable_internet": spec["internet"],
        "dataset_sources": [DATA, f"{user}/{WEIGHTS}"],
        "kernel_sources": [f"{user}/{slug(KERNELS[k]['title'])}" for k in spec["kernel_sources"]],
        "competition_sources": [],
    }


def notebook(name: str, user: str) -> str:
    nb = new_notebook(cells=KERNELS[name]["cells"](user))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for k, cell in enumerate(nb.cells):
        cell["id"] = f"{name}-{k}"  # stable ids: a rebuild changes nothing that did not change
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def files(user: str) -> dict[Path, str]:
    out = {}
    for name in KERNELS:
        out[HERE / name / "kernel-metadata.json"] = json.dumps(metadata(name, user), indent=2) + "\n"
        out[HERE / name / f"{name}.ipynb"] = notebook(name, user)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", default=DEFAULT_USER, help="your Kaggle user name (kernel and dataset ids)")
    parser.add_argument("--check", action="store_true", help="only compare the files with what would be written")
    args = parser.parse_args(argv)
    stale = []
    for path, text in files(args.user).items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print("out of date (run `python kernels/build.py`): " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
