"""`python -m src report`: where in the age range the models err, as one offline HTML page."""

from __future__ import annotations

from ..ensemble import add_selection_arguments
from ..reports import DEFAULT_BUCKETS, DEFAULT_WORST

HELP = ("OOF error by age bucket and sex (n, MAE, bias, p90) for every finished experiment and the stack, with "
        "plots and the leaderboard; writes working/<dataset>/report/index.html, age_buckets.csv and PNGs.")


def add_arguments(parser) -> None:
    add_selection_arguments(parser, "report")
    parser.add_argument("--buckets", default=DEFAULT_BUCKETS, metavar="Y0,Y1,...",
                        help="age bucket edges in years, increasing; a bucket is [lo, hi), the last one also "
                             "holds its upper edge; an id outside every bucket is an error")
    parser.add_argument("--worst", type=int, default=DEFAULT_WORST, metavar="N",
                        help="how many of the largest OOF errors to show as thumbnails (0: no grid)")


def run(args) -> int:
    import logging

    from ..ensemble.inputs import parse_names
    from ..reports.build import build_report

    log = logging.getLogger("report")
    report = build_report(args.input, parse_names(args.models), args.buckets, args.worst)
    log.info("wrote %s, %s and %s", report.csv, ", ".join(p.name for p in report.pngs), report.index)
    print(report.index.resolve().as_uri(), flush=True)
    return 0
