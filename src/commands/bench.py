"""`python -m src bench`: our data, preprocessing, inference and training paths against naive
references, measured side by side in one run; writes working/bench/bench.md and bench.json."""

from __future__ import annotations

HELP = ("Benchmark: loader, preprocess, inference_tta, train_step and demo_end_to_end, each as a ratio "
        "against a naive reference measured in the same run (working/bench/bench.md, bench.json).")
ROWS = ("loader", "preprocess", "inference_tta", "train_step", "demo_end_to_end")


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: few small images, small inputs; checks the bench runs, measures nothing")
    parser.add_argument("--images", type=int, help="phantom images per row (default: 32; 4 with --quick)")
    parser.add_argument("--scale", type=float, help="phantom scale (default: 1, about 1514 x 2044; 0.1 with --quick)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row; the median is reported")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma list of rows to run")
    parser.add_argument("--run-demo", action="store_true",
                        help="run `bash run_all.sh --demo` from an empty working/ for demo_end_to_end (about 15 "
                             "minutes); without it the row reads the last demo run's run_all_timings.json")
    parser.add_argument("--demo-timings", metavar="JSON", help="read demo_end_to_end from this run_all_timings.json")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: working/bench)")


def run(args) -> int:
    import logging
    from pathlib import Path

    from ..bench import rows as bench_rows
    from ..bench.measure import machine
    from ..bench.table import markdown, write
    from ..data.layout import working_root
    from ..utils.errors import UserError

    log = logging.getLogger("bench")
    chosen = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(chosen) - set(ROWS))
    if unknown:
        raise UserError(f"--rows: unknown row(s) {', '.join(unknown)} (rows: {', '.join(ROWS)})")
    if args.repeats < 3 and not args.quick:
        raise UserError("--repeats must be >= 3: each row reports the median of at least 3 repeats")
    out_dir = Path(args.out) if args.out else working_root() / "bench"
    n = args.images or (4 if args.quick else 32)
    scale = args.scale or (0.1 if args.quick else 1.0)
    ctx = bench_rows.bench_phantom(out_dir, n, scale, workers=2)
    ctx.repeats, ctx.quick = max(args.repeats, 1), args.quick
    makers = {"loader": bench_rows.loader_row, "preprocess": bench_rows.preprocess_row,
              "inference_tta": bench_rows.inference_row, "train_step": bench_rows.train_step_row}
    results = []
    for name in chosen:
        log.info("bench: %s (%d images at scale %g, %d repeats)", name, n, scale, ctx.repeats)
        if name == "demo_end_to_end":
            timings = (Path(args.demo_timings) if args.demo_timings else
                       bench_rows.run_demo(out_dir) if args.run_demo else bench_rows.demo_timings_path())
            row = bench_rows.demo_row(timings)
            if row is None:
                log.warning("demo_end_to_end: no demo run's timings at %s; run `bash run_all.sh --demo` from an "
                            "empty working/ first, or pass --run-demo", timings)
                continue
        else:
            row = makers[name](ctx)
        results.append(row)
    info = machine()
    json_path, md_path = write(results, info, out_dir, args.quick,
                               {"images": n, "scale": scale, "repeats": ctx.repeats, "rows": chosen})
    print(markdown(results, info, args.quick))
    print(f"wrote {md_path} and {json_path}")
    return 0
