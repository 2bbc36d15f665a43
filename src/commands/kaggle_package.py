"""`python -m src kaggle-package`: the code+weights folder a Kaggle kernel predicts from."""

from __future__ import annotations

HELP = ("Build the code+weights folder for `kaggle datasets create -p FOLDER --dir-mode zip`: src/, the stack's "
        "models' prediction weights and resolved configs, stack.json, manifest.json and dataset-metadata.json.")


def add_arguments(parser) -> None:
    parser.add_argument("--input", default="input", metavar="DIR", help="the dataset whose stack (or --model) to package")
    parser.add_argument("--out", required=True, metavar="FOLDER",
                        help="the folder to write (replaced when it holds an earlier package)")
    parser.add_argument("--model", metavar="NAME", help="package this one experiment instead of the stack")
    parser.add_argument("--user", metavar="NAME",
                        help="your Kaggle user name, for the dataset id NAME/boneage-workbench-weights "
                             "(default: $KAGGLE_USERNAME)")
    parser.add_argument("--license", default="other", metavar="NAME", help="the dataset's license, as Kaggle names it")
    parser.add_argument("--check", type=int, default=4, metavar="N",
                        help="predict N of the dataset's test images from the finished folder alone and compare "
                             "them with the stack's test.csv (0: skip)")
    parser.add_argument("--device", default="cpu", metavar="DEV", help="device for --check")
    parser.add_argument("--upload", choices=["new", "version"],
                        help="then upload it with the kaggle API: a new dataset, or a new version of it")
    parser.add_argument("--message", default="boneage-workbench weights", metavar="TEXT",
                        help="version notes for --upload version")


def run(args) -> int:
    import logging
    import os

    from ..inference.kaggle import check_credentials_file, upload_dataset
    from ..inference.package import PLACEHOLDER_USER, build_package, check_package, size_report

    log = logging.getLogger("kaggle-package")
    check_credentials_file()
    user = args.user or os.environ.get("KAGGLE_USERNAME") or PLACEHOLDER_USER
    if user == PLACEHOLDER_USER:
        log.warning("no --user or $KAGGLE_USERNAME: the dataset id is %s/...; set it in dataset-metadata.json "
                    "before uploading", PLACEHOLDER_USER)
    result = build_package(args.input, args.out, user, model=args.model, license_name=args.license)
    checked = check_package(result.folder, args.input, args.check, device=args.device) if args.check else None
    if checked is not None:
        n, diff = checked
        print(f"check: {n} test images predicted from the package alone match the trained "
              f"predictions (largest difference {diff:.5f} months)", flush=True)
    print(f"wrote {size_report(result)}", flush=True)
    if args.upload:
        print(f"uploaded: {upload_dataset(result.folder, args.upload, args.message)}", flush=True)
    else:
        print(f"upload it with: kaggle datasets create -p {result.folder} --dir-mode zip  "
              f"(a new version: kaggle datasets version -p {result.folder} --dir-mode zip -m NOTES)", flush=True)
    return 0
