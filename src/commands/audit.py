"""`python -m src audit`: check every CSV row and image, write the clean tables."""

from __future__ import annotations

HELP = ("Audit a dataset root (every CSV row and image) and write working/<dataset>/"
        "{audit.csv,audit.json,train.csv,test.csv}.")


def add_arguments(parser) -> None:
    parser.add_argument("--input", default="input", metavar="DIR",
                        help="dataset root: the Kaggle kmader/rsna-bone-age layout or a flat folder (one CSV + PNGs)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave rows with errors out of the clean tables instead of failing "
                             "(they stay listed in audit.csv)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes that decode images (default: one per CPU core)")


def run(args) -> int:
    from ..data.audit import run_audit
    from ..utils.errors import UserError

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    run_audit(args.input, skip_bad=args.skip_bad, workers=args.workers)
    return 0
