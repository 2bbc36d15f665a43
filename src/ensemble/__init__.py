"""Ensembles of finished experiments: a linear stack fitted on OOF predictions, nested by fold
(`python -m src stack`), and a leaderboard of models, their mean, the stack and the mean
predictor (`python -m src leaderboard`).

Both read only what the engine wrote under `working/<dataset>/`; `inputs.py` decides which
experiment folders may be combined (same folds file, full OOF coverage, one fingerprint)."""

# Stack settings, here so the CLI can offer them without importing pandas or scikit-learn.
FIT_METHODS = ("nnls", "lad", "linear", "ridge")
AUTO_METHODS = ("nnls", "lad")  # `auto`: nested CV picks one of these, per outer fold
METHODS = (*FIT_METHODS, "auto")
DEFAULT_METHOD = "nnls"
DEFAULT_ALPHA = 1.0
LAYOUTS = ("auto", "joint", "per-sex")
DEFAULT_LAYOUT = "auto"


def add_selection_arguments(parser, what: str) -> None:
    """`--input` and `--models`, shared by every command that reads finished experiments."""
    parser.add_argument("--input", default="input", metavar="DIR", help=f"dataset root whose experiments to {what}")
    parser.add_argument("--models", metavar="NAME,...",
                        help=f"experiments to {what} (folder names under working/<dataset>/; each one that cannot "
                             "be combined is an error naming it). Default: every finished experiment, skipping with "
                             "a warning those trained on other folds, with incomplete OOF or mixed fold fingerprints")
