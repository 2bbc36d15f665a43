"""`python -m src folds`: the cross-validation split every model reads."""

from __future__ import annotations

from pathlib import Path

HELP = "Build or reuse stratified sex x age-bin folds (canonical folds.csv for RSNA ids)."


def add_arguments(parser) -> None:
    parser.add_argument("--input", default="input", help="dataset root (audited first with `python -m src audit`)")
    parser.add_argument("--n-folds", type=int, default=5, help="number of folds for a new split")
    parser.add_argument("--seed", type=int, default=42, help="StratifiedKFold seed (logged and saved)")
    parser.add_argument("--rebuild", action="store_true", help="replace this dataset's own split")
    parser.add_argument(
        "--canonical", metavar="LABELS_CSV",
        help="build the project's canonical folds.csv from the full RSNA label file (id,boneage,male), "
             "e.g. ../shared/data/rsna-labels/train.csv",
    )


def run(args) -> int:
    import logging

    from ..data.folds import CANONICAL_FOLDS, build_folds, check_folds, resolve_folds
    from ..data.layout import DatasetPaths
    from ..utils.errors import UserError
    from ..utils.io import read_id_csv, write_csv

    log = logging.getLogger("folds")
    if args.canonical:
        labels = read_id_csv(args.canonical)  # rejects unknown sex values, naming the rows
        folds = build_folds(labels, n_folds=args.n_folds, seed=args.seed)
        check_folds(folds, n_folds=args.n_folds)
        write_csv(folds, CANONICAL_FOLDS)
        log.info("wrote %s: %d ids, %d folds, seed %d", CANONICAL_FOLDS, len(folds), args.n_folds, args.seed)
        return 0

    paths = DatasetPaths(Path(args.input))
    train_table = paths.work_dir() / "train.csv"
    if not train_table.is_file():
        raise UserError(f"{train_table} not found: run `python -m src audit --input {args.input}` first")
    table = read_id_csv(train_table)
    assignment = resolve_folds(table, paths.work_dir(), n_folds=args.n_folds, seed=args.seed, rebuild=args.rebuild)
    log.info("folds (%s) -> %s", assignment.mode, assignment.path)
    return 0
