"""`python -m src folds`: the cross-validation split every model reads."""

from __future__ import annotations

from pathlib import Path

HELP = "Build or reuse stratified sex x age-bin folds (canonical folds.csv for RSNA ids)."

DEFAULT_INPUT = "input"


def add_arguments(parser) -> None:
    parser.add_argument("--input", default=None,
                        help=f"dataset root, audited first with `python -m src audit` (default: {DEFAULT_INPUT})")
    parser.add_argument("--n-folds", type=int, default=None,
                        help="number of folds for a new split of a non-RSNA dataset (default 5; a saved split "
                             "keeps its own number unless --rebuild)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed of a new split, and of the rule that deals --extend's extra ids (logged and saved)")
    parser.add_argument("--rebuild", action="store_true", help="replace this (non-RSNA) dataset's own split")
    parser.add_argument(
        "--extend", action="store_true",
        help="for an RSNA set plus ids that are not in the canonical folds.csv: keep every canonical id in its "
             "canonical fold and deal the extra ids to folds by a seeded stratified sex x age rule "
             "(mode 'canonical-extended' in folds.json)",
    )
    parser.add_argument(
        "--canonical", metavar="LABELS_CSV",
        help="rewrite the project's committed canonical folds.csv from the full RSNA training label file "
             "(columns id,boneage,male), e.g. `python -m src folds --canonical ../shared/data/rsna-labels/train.csv`; "
             "takes no --input, --extend or --rebuild",
    )


def run(args) -> int:
    import logging

    from ..data.audit import require_audit
    from ..data.folds import CANONICAL_FOLDS, DEFAULT_N_FOLDS, build_folds, check_folds, resolve_folds
    from ..data.layout import DatasetPaths
    from ..utils.errors import DataError, UserError
    from ..utils.io import read_id_csv, write_csv

    log = logging.getLogger("folds")
    if args.canonical:
        clashing = [flag for flag, given in (("--input", args.input is not None), ("--extend", args.extend),
                                             ("--rebuild", args.rebuild)) if given]
        if clashing:
            raise UserError(f"--canonical LABELS_CSV rewrites the committed {CANONICAL_FOLDS.name} from a label file "
                            f"and takes no {', '.join(clashing)}: run `python -m src folds --canonical LABELS_CSV` "
                            f"alone, or drop --canonical to build a dataset's folds")
        labels_path = Path(args.canonical)
        if not labels_path.is_file():
            raise UserError(f"--canonical {args.canonical}: no such file. It takes the full RSNA training label "
                            f"file (columns id,boneage,male), e.g. ../shared/data/rsna-labels/train.csv or the "
                            f"Kaggle download's boneage-training-dataset.csv")
        labels = read_id_csv(labels_path)  # rejects unknown sex values, naming the rows
        missing = [c for c in ("id", "boneage", "male") if c not in labels.columns]
        if missing:
            raise DataError(f"{labels_path}: --canonical needs columns id,boneage,male; missing {missing}, "
                            f"found {list(labels.columns)}")
        n_folds = args.n_folds or DEFAULT_N_FOLDS
        folds = build_folds(labels, n_folds=n_folds, seed=args.seed)
        check_folds(folds, n_folds=n_folds)
        write_csv(folds, CANONICAL_FOLDS)
        log.info("wrote %s: %d ids, %d folds, seed %d", CANONICAL_FOLDS, len(folds), n_folds, args.seed)
        return 0

    input_dir = args.input if args.input is not None else DEFAULT_INPUT
    if args.n_folds is not None and args.n_folds < 2:
        raise UserError(f"--n-folds must be at least 2, got {args.n_folds}")
    require_audit(input_dir)  # audited, successfully, for this root, and still current
    paths = DatasetPaths(Path(input_dir))
    train_table = paths.work_dir() / "train.csv"
    table = read_id_csv(train_table)
    assignment = resolve_folds(table, paths.work_dir(), n_folds=args.n_folds, seed=args.seed, rebuild=args.rebuild,
                               extend=args.extend, input_dir=input_dir)
    log.info("folds (%s) -> %s", assignment.mode, assignment.path)
    return 0
