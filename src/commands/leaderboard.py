"""`python -m src leaderboard`: every model, their mean, the stack and the mean predictor, side by side."""

from __future__ import annotations

HELP = ("Score every finished experiment, their mean, the saved stack and the mean predictor on OOF (and test "
        "labels); writes working/<dataset>/leaderboard.csv and .md.")


def add_arguments(parser) -> None:
    from ..ensemble import add_selection_arguments

    add_selection_arguments(parser, "rank")
    parser.add_argument("--test-labels", action="append", metavar="FILE", default=[],
                        help="CSV of test labels (id,boneage or 'Case ID','Bone Age (months)'), scored as column "
                             "test_mae_<file stem>; repeatable")


def run(args) -> int:
    import logging

    from ..ensemble.inputs import load_dataset, parse_names, select_models
    from ..ensemble.leaderboard import build_leaderboard, to_markdown, write_leaderboard

    log = logging.getLogger("leaderboard")
    dataset = load_dataset(args.input)
    models = select_models(dataset, parse_names(args.models))
    table = build_leaderboard(dataset, models, args.test_labels)
    csv_path, md_path = write_leaderboard(table, dataset.work_dir)
    print(to_markdown(table), end="", flush=True)
    log.info("wrote %s and %s", csv_path, md_path)
    return 0
