"""`python -m src submit`: write submission/submission.csv from the stack's test predictions."""

from __future__ import annotations

HELP = "Write the submission (id,boneage in months, every test id) from the stack's test predictions."


def add_arguments(parser) -> None:
    from ..data.layout import PROJECT_ROOT

    parser.add_argument("--input", default="input", metavar="DIR", help="dataset root whose stack to submit")
    parser.add_argument("--predictions", metavar="CSV",
                        help="predictions to submit (id,pred); default: working/<dataset>/stack/test.csv")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "submission" / "submission.csv"), metavar="CSV",
                        help="where to write the submission")


def run(args) -> int:
    from pathlib import Path

    from ..data.layout import DatasetPaths
    from ..ensemble.submission import write_submission

    work = DatasetPaths(Path(args.input)).work_dir()
    predictions = Path(args.predictions) if args.predictions else work / "stack" / "test.csv"
    submission = write_submission(work / "test.csv", predictions, Path(args.out))
    print(f"wrote {args.out}: {len(submission)} test ids from {predictions} "
          f"(bone age {submission['boneage'].min():.1f}..{submission['boneage'].max():.1f} months)", flush=True)
    return 0
