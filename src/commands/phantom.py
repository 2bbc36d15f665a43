"""`python -m src phantom`: generate the synthetic hand phantom data set, or a preview PNG."""

from __future__ import annotations

import os

from ..data.layout import PROJECT_ROOT  # paths only: keeps --help fast

HELP = ("Generate the synthetic hand phantom (left-hand radiographs with known bone age) in the "
        "Kaggle layout, with keypoints and hand masks; --preview draws phantoms beside real images.")


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="input/phantom", metavar="DIR",
                        help="data set root (Kaggle kmader/rsna-bone-age layout)")
    parser.add_argument("--n-train", type=int, default=1000, metavar="N", help="training images (ids from 100001)")
    parser.add_argument("--n-test", type=int, default=200, metavar="N", help="test images (ids after the training ids)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="image size: 1 gives about 1514x2044 like RSNA, 0.25 about 380x510")
    parser.add_argument("--seed", type=int, default=0, help="each image is determined by (seed, id, scale)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="parallel processes (default: one per CPU core)")
    parser.add_argument("--force", action="store_true", help="regenerate even if the data set is complete")
    parser.add_argument("--preview", nargs="?", const="", default=None, metavar="PNG",
                        help="only draw a preview: 8 phantoms beside 8 real radiographs "
                             "(PNG defaults to working/phantom-preview.png)")
    parser.add_argument("--real", default=str(PROJECT_ROOT.parent / "shared" / "data" / "rsna-100px"), metavar="DIR",
                        help="real 100px radiographs (Kaggle layout) to show beside the phantoms in --preview "
                             "(default: ../shared/data/rsna-100px beside the project folder)")


def run(args) -> int:
    from ..data.layout import working_root

    if args.preview is not None:
        from ..data.phantom.preview import make_preview

        path, n_real = make_preview(args.preview or working_root() / "phantom-preview.png", args.real, seed=args.seed)
        if not n_real:
            print(f"real radiographs not found at {args.real}: the preview shows phantoms only")
        print(path)
        return 0

    from ..data.phantom import PhantomParams, generate

    params = PhantomParams(seed=args.seed, scale=args.scale, n_train=args.n_train, n_test=args.n_test)
    result = generate(args.out, params, workers=args.workers, force=args.force)
    if result.status == "already complete":
        print(f"phantom: {result.root} already complete ({params.n_train} train + {params.n_test} test, "
              f"seed {params.seed}, scale {params.scale}); --force regenerates")
    else:
        total = result.rendered + result.reused
        print(f"phantom: {total} images in {result.root} ({result.rendered} rendered, {result.reused} reused) "
              f"in {result.seconds:.1f} s")
    return 0
