"""`python -m src stack`: a linear stack of finished experiments, nested by fold."""

from __future__ import annotations

import argparse

HELP = ("Fit a linear stack (nnls, lad, linear or ridge) on finished experiments' OOF predictions, nested by fold; "
        "writes working/<dataset>/stack/.")


def add_arguments(parser) -> None:
    from ..ensemble import DEFAULT_ALPHA, DEFAULT_LAYOUT, DEFAULT_METHOD, LAYOUTS, METHODS, add_selection_arguments

    add_selection_arguments(parser, "stack")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                        help="nnls: least squares, non-negative weights; lad: least absolute deviations, non-negative "
                             "weights; linear: unconstrained least squares; ridge: L2 with --alpha; auto: nnls or lad, "
                             "chosen for each outer fold by CV on its fitting folds")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="ridge penalty (ridge only)")
    parser.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT,
                        help="joint: one stack; per-sex: one per sex (forced by a sex-specific model); auto: with "
                             "only both-sex models, each outer fold picks joint or per-sex by CV on its fitting folds")
    parser.add_argument("--intercept", action=argparse.BooleanOptionalAction, default=True,
                        help="fit an intercept, so the stack also corrects a linear bias (on by default)")


def run(args) -> int:
    import logging

    from ..ensemble.inputs import load_dataset, parse_names, select_models
    from ..ensemble.stacker import describe, fit_stack, write_stack

    log = logging.getLogger("stack")
    dataset = load_dataset(args.input)
    models = select_models(dataset, parse_names(args.models))
    result = fit_stack(dataset, models, method=args.method, alpha=args.alpha, intercept=args.intercept,
                       layout=args.layout)
    stack_dir = dataset.work_dir / "stack"
    write_stack(result, stack_dir)
    if not dataset.has_test:
        log.info("the dataset has no test part: no stack/test.csv")
    log.info("wrote %s", stack_dir)
    print(describe(result.meta), flush=True)
    return 0
