"""`python -m src predict`: bone age for new images from trained models (the stack, or one model)."""

from __future__ import annotations

HELP = ("Predict bone age (months) for one image or a folder of images with a dataset's stack (or one "
        "--model), from working/<dataset>/ or a packaged --code folder; writes id,boneage and each model's "
        "prediction as CSV.")


def add_arguments(parser) -> None:
    parser.add_argument("images", metavar="PATH", help="an image file, or a folder of images (id = file name "
                                                       "without its suffix)")
    sex = parser.add_mutually_exclusive_group()
    sex.add_argument("--sex", metavar="M|F", help="the sex of the one image")
    sex.add_argument("--sex-csv", metavar="CSV", help="each image's sex: id,male (True/False) or Kaggle's Case ID,Sex (M/F)")
    parser.add_argument("--input", metavar="DIR",
                        help="the dataset the models were trained on: its working/<dataset>/ stack or --model "
                             "(default: input, unless --code is given)")
    parser.add_argument("--code", metavar="FOLDER",
                        help="a code+weights folder from `python -m src kaggle-package` (its manifest.json) "
                             "instead of a working tree")
    parser.add_argument("--model", metavar="NAME", help="predict with this one experiment instead of the stack")
    parser.add_argument("--out", metavar="CSV", help="where to write the predictions (default: standard output)")
    parser.add_argument("--submission", metavar="CSV",
                        help="also write id,boneage for every id of --sex-csv, in its order (a Kaggle submission); "
                             "an id without an image is an error")
    parser.add_argument("--device", default="auto", metavar="DEV", help="auto | cpu | cuda | cuda:N")


def run(args) -> int:
    import logging
    import sys

    from ..inference.bundle import load_bundle
    from ..inference.inputs import list_images, read_sex_csv, with_sex
    from ..inference.predictor import predict_table
    from ..utils.errors import DataError, UserError
    from ..utils.io import write_csv

    log = logging.getLogger("predict")
    if args.code and args.input:
        raise UserError("give --input DIR (a working tree) or --code FOLDER (a package), not both")
    if args.submission and not args.sex_csv:
        raise UserError("--submission needs --sex-csv: the CSV lists the ids to submit")
    table = with_sex(list_images(args.images), sex=args.sex, sex_csv=args.sex_csv)
    if args.submission:
        listed = read_sex_csv(args.sex_csv).index
        lacking = [i for i in listed if i not in set(table["id"])]
        if lacking:
            raise DataError(f"{args.images} has no image for {len(lacking)} ids of {args.sex_csv} (first: "
                            f"{lacking[:10]}); a submission needs every one")
    bundle = load_bundle(args.input, args.code, args.model)
    log.info("predicting %d images with %s from %s", len(table),
             f"the stack of {', '.join(m.name for m in bundle.models)}" if bundle.stack else bundle.models[0].name,
             bundle.source)
    result = predict_table(bundle, table, device=args.device)
    if args.out:
        write_csv(result, args.out)
        log.info("wrote %s: %d images, bone age %.1f..%.1f months", args.out, len(result), result["boneage"].min(),
                 result["boneage"].max())
    else:
        result.to_csv(sys.stdout, index=False)
    if args.submission:
        write_csv(result[["id", "boneage"]], args.submission)
        print(f"wrote {args.submission}: {len(result)} ids (bone age {result['boneage'].min():.1f}.."
              f"{result['boneage'].max():.1f} months)", file=sys.stderr if not args.out else sys.stdout, flush=True)
    return 0
