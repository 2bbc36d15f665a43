"""`python -m src register`: find the registration keypoints of every image of a dataset.

Two detectors behind one interface (`--detector`):

- `heuristic` (the default): the classical detector (src/registration/heuristic.py) on the hand
  mask, in a process pool. `--mask learned` gives it the learned hand mask instead of the
  classical one: a U-Net trained by the paper's positive mining from the classical masks of the
  dataset's images that pass a quality check (registration/mask/); an image whose learned mask
  fails that check keeps its classical mask.
- `learned`: the heatmap keypoint network (src/registration/learned_keypoints.py), trained on
  `--keypoints FILE` (a CSV or COCO keypoint table), or, without it, by the paper's pseudo-label
  loop from the confident heuristic detections (run first, over every image) for `--rounds`
  rounds; or `--detector-weights FILE`, a detector trained before (e.g. on a phantom). Its weights
  are kept in registration/detector/ and reused while the training table and config are the same.

Detection runs on every audited train and test image, resumably: the raw output is kept in
`registration/detections.csv` with the detector's version (the learned one's includes its
model's fingerprint; each kind keeps its own rows), and a rerun detects only the images it
lacks, or all of them when the detector changed (`--force`: all). From it the command writes

- `registration/keypoints.csv`: KEYPOINT_COLUMNS, coordinates in the original image's pixels,
  `method` learned or heuristic; a flagged image keeps the detector's guess with
  `method=fallback`, which makes the `register` preprocessing step use the letterboxed fallback
  frame for it;
- `registration/flagged.csv`: id, reason (failed | low_confidence), confidence;
- `registration/registration.json`: the detector (kind, version, how it was trained), the
  threshold and the counts, and with --qa a summary of the scores;
- with `--qa`: `registration/qa/` with scores against the ground truth (the phantom's
  `ground-truth/keypoints.csv`, a `keypoints.csv` at the dataset root, or `--truth FILE`) when
  there is one, and grids of registered images with their keypoints (random and least confident).
  A learned detector is never scored on an image it trained on: those are predicted out of fold
  (cross-validation, `qa/qa.json` says so); the heuristic's scores on the same images go to
  `qa/scores_heuristic.csv` when its detections are at hand. With `--mask learned` and the
  phantom's ground-truth masks, `qa/mask_scores.csv` has the IoU of the learned and the classical mask.
"""

from __future__ import annotations

import functools
import os

HELP = ("Detect the three registration keypoints (middle-finger tip, thumb tip, capitate) on every image with the "
        "heuristic or a learned detector and write working/<dataset>/registration/{keypoints,flagged}.csv for the "
        "'register' preprocessing step; --qa scores them against ground truth and draws grids.")

DEFAULT_MIN_CONFIDENCE = 0.5  # the same default as the `register` step's
QA_FRAME_SCALE = 0.2          # grids show 320 x 416 frames
QA_GRID_IMAGES = 16
DETECTION_EXTRA = ["detector", "error", "mask"]


def add_arguments(parser) -> None:
    parser.add_argument("--input", default="input", metavar="DIR", help="dataset root, audited first")
    parser.add_argument("--detector", choices=("heuristic", "learned"), default="heuristic",
                        help="heuristic: the classical detector on the hand mask; learned: the heatmap network, "
                             "trained on --keypoints, or by pseudo-labels from the confident heuristic detections, "
                             "or given by --detector-weights")
    parser.add_argument("--mask", choices=("classical", "learned"), default="classical",
                        help="the hand mask the heuristic reads the keypoints from (with --detector learned: the "
                             "one its pseudo-label seeds come from); learned: a U-Net trained by positive mining "
                             "from the classical masks that pass a quality check (registration/mask/), used on "
                             "each image whose learned mask passes that check too (the classical one elsewhere)")
    parser.add_argument("--qa", action="store_true",
                        help="write registration/qa/: scores against the ground truth when the dataset has one "
                             "(or --truth), cross-validated for a learned detector's training images, and grids "
                             "of registered images with their keypoints")
    parser.add_argument("--truth", metavar="FILE",
                        help="ground-truth keypoints for --qa (CSV or COCO JSON; implies --qa); without it the "
                             "dataset's ground-truth/keypoints.csv or keypoints.csv is used when present")
    parser.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE, metavar="X",
                        help="detections below this confidence are flagged and fall back to the unregistered "
                             "image; also the confidence a pseudo-label needs")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="detect at most N more images in this run (a rerun continues; the heuristic seeds "
                             "of the pseudo-label loop are always completed first)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes that run the heuristic detector (default: one per CPU core)")
    parser.add_argument("--force", action="store_true", help="detect every image again (trained models are kept)")
    learned = parser.add_argument_group("learned models (--detector learned, --mask learned)")
    learned.add_argument("--keypoints", metavar="FILE",
                         help="training table for the learned detector: CSV (id, <point>_x, <point>_y ...) or COCO "
                              "keypoint JSON, in the images' pixels (e.g. a phantom's ground-truth/keypoints.csv; "
                              "a missing capitate is filled in from wrist and MCP); without it the detector learns "
                              "from pseudo-labels")
    learned.add_argument("--rounds", type=int, default=None, metavar="N",
                         help="rounds of the pseudo-label loop and of the mask's positive mining (default: 2; "
                              "1 with --keypoints: train on the table only)")
    learned.add_argument("--detector-weights", metavar="FILE",
                         help="an already trained detector (a detector.pt) to detect with, without training")
    learned.add_argument("--backbone", metavar="NAME", help="timm encoder of the learned models (default: resnet10t)")
    learned.add_argument("--side", type=int, metavar="PX",
                         help="input side of the learned models, a multiple of 32 (default: 128)")
    learned.add_argument("--epochs", type=int, metavar="N",
                         help="training epochs of the learned models (default: 40 detector, 30 mask)")
    learned.add_argument("--max-train", type=int, metavar="N",
                         help="train the detector on at most N labelled images (a seeded sample; default: all)")
    learned.add_argument("--folds", type=int, default=5, metavar="K",
                         help="cross-validation folds for scoring the learned detector's training images in --qa")
    learned.add_argument("--device", metavar="DEV", help="auto | cpu | cuda | cuda:N (default: auto)")


def run(args) -> int:
    import logging
    from pathlib import Path

    from ..data.audit import require_audit
    from ..data.layout import DatasetPaths
    from ..utils.io import write_json

    log = logging.getLogger("register")
    check_arguments(args)
    require_audit(args.input)
    paths = DatasetPaths(Path(args.input))
    images = audited_images(paths.work_dir())
    out_dir = paths.work_dir() / "registration"
    workers = args.workers or os.cpu_count() or 1
    heuristic = HeuristicRun(*load_detector())  # here, so a missing detector is one clear error
    extra: dict = {"kind": "heuristic", "mask": "classical"}
    mask_model = None
    if args.mask == "learned":
        from ..registration import detectors

        mask_model, mask_weights, extra["mask_model"] = detectors.learned_mask(
            detectors.dataset_images(images), out_dir / detectors.MASK_DIR, mask_config(args), args.rounds or 2,
            heuristic.version)
        heuristic = HeuristicRun(heuristic.detect, heuristic.version, mask_weights, mask_model)
        extra["mask"] = "learned"
    chosen = heuristic
    if args.detector == "learned":
        chosen = learned_detector(args, paths, images, out_dir, heuristic, workers, extra)
    detections = detect_all(images, out_dir, chosen, force=args.force, limit=args.limit, workers=workers)
    summary = write_tables(detections, images, out_dir, chosen.version, args.min_confidence, extra)
    pending = summary["pending"]
    print(f"register: {summary['detected']} of {summary['images']} images have {chosen.kind} keypoints, "
          f"{summary['flagged']} flagged ({summary['failed']} failed, {summary['low_confidence']} below confidence "
          f"{args.min_confidence:g}: they fall back to the unregistered image) -> {out_dir / 'keypoints.csv'}"
          + (f"; {pending} still to detect (run again)" if pending else ""), flush=True)
    if args.qa or args.truth:
        from ..registration.keypoint_io import read_keypoint_table

        qa_summary = run_qa(paths, images, read_keypoint_table(out_dir / "keypoints.csv"), out_dir / "qa", args.truth,
                            args.min_confidence, log, chosen, heuristic if chosen is not heuristic else None,
                            out_dir / "detections.csv", mask_model)
        write_json({**summary, "qa": qa_summary}, out_dir / "registration.json")
    return 0


def learned_detector(args, paths, images, out_dir, heuristic, workers: int, extra: dict):
    """The learned detector (detectors.LearnedRun): --detector-weights, or trained on --keypoints,
    or by pseudo-labels from the heuristic's detections of every image (run first, resumably)."""
    import logging

    from ..registration import detectors

    lazy = detectors.dataset_images(images)
    seeds = table = None
    if args.keypoints:
        table = detectors.training_table(args.keypoints, lazy)
    elif not args.detector_weights:
        logging.getLogger("register").info("pseudo-labels: the heuristic detector first, on every image")
        seeds = detections_frame(detect_all(images, out_dir, heuristic, force=args.force, limit=None, workers=workers))
        confident = sum(flag_reason(r, args.min_confidence) is None for r in seeds.to_dict("records"))
        extra["heuristic"] = {"version": heuristic.version, "confident": int(confident)}
    run = detectors.learned_run(lazy, out_dir / detectors.DETECTOR_DIR, detector_config(args), dataset=paths.name,
                                table=table, seeds=seeds, rounds=args.rounds or (1 if table is not None else 2),
                                min_confidence=args.min_confidence, weights=args.detector_weights, folds=args.folds)
    extra.update(kind="learned", training=run.info)
    return run


def check_arguments(args) -> None:
    from ..utils.errors import UserError

    if not 0.0 <= args.min_confidence <= 1.0:
        raise UserError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
    for flag, value in (("--limit", args.limit), ("--workers", args.workers), ("--rounds", args.rounds),
                        ("--epochs", args.epochs), ("--max-train", args.max_train)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.folds < 2:
        raise UserError(f"--folds must be at least 2, got {args.folds}")
    if args.side is not None and (args.side < 32 or args.side % 32):
        raise UserError(f"--side must be a positive multiple of 32, got {args.side}")
    if args.detector != "learned":
        only_learned = (("--keypoints", args.keypoints), ("--detector-weights", args.detector_weights),
                        ("--max-train", args.max_train))
        given = [flag for flag, value in only_learned if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply to --detector learned")
    if args.keypoints and args.detector_weights:
        raise UserError("give --keypoints (train a detector) or --detector-weights (use a trained one), not both")
    if args.mask == "learned" and (args.keypoints or args.detector_weights):
        raise UserError("--mask learned serves the heuristic (and the pseudo-labels it seeds); with --keypoints or "
                        "--detector-weights no heuristic runs")
    for flag, path in (("--keypoints", args.keypoints), ("--detector-weights", args.detector_weights)):
        if path and not os.path.isfile(path):
            raise UserError(f"{flag} {path}: no such file")


def _net_overrides(args) -> dict:
    values = {"backbone": args.backbone, "side": args.side, "epochs": args.epochs, "device": args.device}
    return {k: v for k, v in values.items() if v is not None}


def detector_config(args):
    from ..registration.learned_keypoints import DetectorConfig

    return DetectorConfig(**_net_overrides(args), max_train=args.max_train)


def mask_config(args):
    from ..registration.learned_mask import MaskConfig

    return MaskConfig(**_net_overrides(args))


def audited_images(work_dir):
    """id, path of every image in the audited tables (train, then test when there is one)."""
    import pandas as pd

    from ..utils.io import read_id_csv

    tables = [read_id_csv(work_dir / name)[["id", "path"]] for name in ("train.csv", "test.csv")
              if (work_dir / name).is_file()]
    return pd.concat(tables, ignore_index=True).drop_duplicates("id")


# ------------------------------------------------------------------------------ detection


@functools.lru_cache(maxsize=1)
def load_detector():
    """(detect_keypoints, version) of the heuristic; the version changes whenever the detector's
    code does, unless the module states a DETECTOR_VERSION itself. Cached: workers call it per image."""
    import hashlib
    from pathlib import Path

    from ..utils.errors import UserError

    try:
        from ..registration import heuristic
    except ImportError as exc:
        raise UserError(f"the keypoint detector src/registration/heuristic.py cannot be imported ({exc})") from exc
    stated = getattr(heuristic, "DETECTOR_VERSION", None)
    if stated is not None:
        return heuristic.detect_keypoints, f"heuristic-{stated}"
    digest = hashlib.sha1()
    for name in ("heuristic.py", "mask.py"):
        source = Path(heuristic.__file__).with_name(name)
        if source.is_file():
            digest.update(source.read_bytes())
    return heuristic.detect_keypoints, f"heuristic-src-{digest.hexdigest()[:12]}"


class HeuristicRun:
    """The heuristic detector as `register` runs it (the same interface as detectors.LearnedRun:
    kind, version, results(jobs, workers), honest_predictions): in a process pool, on the
    classical mask or, given `mask_weights`, on the learned one where it passes the check."""

    kind = "heuristic"

    def __init__(self, detect, version: str, mask_weights=None, mask_model=None):
        self.detect, self.mask_weights = detect, mask_weights
        self.version = version
        if mask_weights is not None:
            from ..registration.detectors import mask_version

            self.version = f"{version}+{mask_version(mask_weights, mask_model)}"

    def results(self, jobs: list[tuple[str, str]], workers: int):
        from ..registration.resumable import pooled

        if self.mask_weights is not None:
            jobs = [(image_id, path, str(self.mask_weights)) for image_id, path in jobs]
        return pooled(_detect_one, jobs, workers, "register")

    def honest_predictions(self, predicted, scored: list[str]):
        """The heuristic learns nothing from the images: its predictions are scored as they are."""
        return predicted, {"detector": "heuristic", "version": self.version, "scored": len(scored),
                           "cross_validated": False, "note": "the heuristic is not trained on the images"}


def _detect_one(job: tuple) -> dict:
    """One image's detection row (job: id, path[, learned mask weights]); a detector error is
    recorded on the row (flagged as failed), never raised, so one bad image does not stop a run
    of thousands."""
    from ..data.images import read_gray8

    image_id, path = job[:2]
    detect, version = load_detector()
    mask_used = ""
    try:
        pixels = read_gray8(path).pixels
        mask = None
        if len(job) > 2:  # the learned mask where it passes the quality check, else the classical one
            from ..registration.detectors import checked_learned_mask

            mask = checked_learned_mask(pixels, job[2])
            mask_used = "classical" if mask is None else "learned"
        row = (detect(pixels) if mask is None else detect(pixels, mask)).row(image_id)
        row["error"] = ""
    except Exception as exc:  # recorded per image, listed in flagged.csv
        row = {"id": image_id, "confidence": 0.0, "mirrored": False, "method": "fallback",
               "error": f"{type(exc).__name__}: {exc}"[:300]}
    row["detector"], row["mask"] = version, mask_used
    return row


def _family(version) -> str:
    """heuristic, learned, ...: detections.csv keeps one version of each kind."""
    return str(version).split("-", 1)[0]


class DetectionStore:
    """registration/detections.csv: the rows of `version` (`done`, id -> row), kept beside the
    other detector kinds' rows (the heuristic's survive a learned run, and the other way round);
    an older version of the same kind is dropped when saved."""

    def __init__(self, path, version: str, force: bool = False):
        self.path, self.version = path, version
        table = _read_store(path)
        ours = table["detector"] == version
        self.kept = table[table["detector"].map(_family) != _family(version)]
        self.done = {} if force else {str(r["id"]): r for r in table[ours].to_dict("records")}
        self._columns = _store_columns()

    def save(self) -> None:
        import pandas as pd

        from ..utils.io import write_csv

        ours = pd.DataFrame(list(self.done.values()), columns=self._columns)
        table = pd.concat([self.kept[self._columns], ours], ignore_index=True) if len(self.kept) else ours
        write_csv(table.sort_values(["id", "detector"], kind="stable"), self.path)


def _store_columns() -> list[str]:
    from ..registration.types import KEYPOINT_COLUMNS

    return KEYPOINT_COLUMNS + DETECTION_EXTRA


def _read_store(path):
    """Every row of a detections.csv (an unreadable one is a rebuildable store: empty)."""
    import pandas as pd

    empty = pd.DataFrame(columns=_store_columns())
    if not path.is_file():
        return empty
    try:
        table = pd.read_csv(path, dtype={"id": str, "method": str, "detector": str, "error": str, "mask": str},
                            keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return empty
    if "detector" not in table:
        return empty
    for column in DETECTION_EXTRA:
        table[column] = table[column].fillna("") if column in table else ""
    return table.reindex(columns=_store_columns())


def read_detections(path, version: str) -> dict[str, dict]:
    """The saved detections made by this detector version (older ones are redone)."""
    return DetectionStore(path, version).done


def detections_frame(detections: dict[str, dict]):
    import pandas as pd

    return pd.DataFrame(list(detections.values()), columns=_store_columns())


def detect_all(images, out_dir, detector, force: bool, limit: int | None, workers: int) -> dict[str, dict]:
    """`detector`'s detections for the images (resumed from out_dir/detections.csv), saved as they come."""
    import logging

    from ..registration.resumable import collect

    log = logging.getLogger("register")
    store = DetectionStore(out_dir / "detections.csv", detector.version, force=force)
    done = store.done
    todo = [(i, p) for i, p in zip(images["id"].astype(str), images["path"].astype(str)) if i not in done]
    if limit is not None:
        todo = todo[:limit]
    if not todo:
        log.info("every image already has keypoints from detector %s (--force detects again)", detector.version)
        return done
    log.info("detecting keypoints on %d images (%d already done) with the %s detector%s", len(todo), len(done),
             detector.kind, f", {workers} workers" if detector.kind == "heuristic" else "")

    def keep(row: dict) -> None:
        done[row["id"]] = {**row, "detector": detector.version}  # with the learned mask's part, if any

    with detector.results(todo, workers) as results:
        collect(results, keep, store.save)
    return done


# ------------------------------------------------------------------------------ tables


def flag_reason(row: dict, min_confidence: float) -> str | None:
    """failed (the detector raised, gave up, or left a point out), low_confidence, or None."""
    import math

    coords = [row.get(f"{p}_{a}") for p in ("middle", "thumb", "capitate") for a in "xy"]
    if row.get("error") or row.get("method") == "fallback" or any(
            c is None or not math.isfinite(float(c)) for c in coords):
        return "failed"
    confidence = float(row.get("confidence", 0.0))
    return "low_confidence" if not confidence >= min_confidence else None


def write_tables(detections: dict[str, dict], images, out_dir, version: str, min_confidence: float,
                 extra: dict | None = None) -> dict:
    """keypoints.csv, flagged.csv and registration.json (with `extra`: which detector, how it
    was trained, QA) for the images that have a detection."""
    import pandas as pd

    from ..registration.keypoint_io import write_keypoint_table
    from ..registration.types import KEYPOINT_COLUMNS
    from ..utils.io import write_csv, write_json

    ids = [i for i in images["id"].astype(str) if i in detections]
    rows, flagged = [], []
    for image_id in ids:
        row = {c: detections[image_id].get(c) for c in KEYPOINT_COLUMNS}
        reason = flag_reason(detections[image_id], min_confidence)
        if reason:
            row["method"] = "fallback"
            flagged.append({"id": image_id, "reason": reason, "confidence": row["confidence"]})
        rows.append(row)
    write_keypoint_table(pd.DataFrame(rows, columns=KEYPOINT_COLUMNS), out_dir / "keypoints.csv")
    flags = pd.DataFrame(flagged, columns=["id", "reason", "confidence"])
    write_csv(flags.sort_values("id", kind="stable"), out_dir / "flagged.csv")
    summary = {"detector": version, "min_confidence": min_confidence, "images": len(images), "detected": len(ids),
               "pending": len(images) - len(ids), "flagged": len(flags),
               "failed": int((flags["reason"] == "failed").sum()),
               "low_confidence": int((flags["reason"] == "low_confidence").sum()), **(extra or {})}
    write_json(summary, out_dir / "registration.json")
    return summary


# ------------------------------------------------------------------------------ QA


def find_truth(paths, truth: str | None):
    """The ground-truth keypoint file: --truth, else the phantom's, else the dataset root's; or None."""
    from pathlib import Path

    from ..utils.errors import UserError

    if truth:
        if not Path(truth).is_file():
            raise UserError(f"--truth {truth}: no such file (a keypoint CSV or COCO JSON)")
        return Path(truth)
    for candidate in (paths.keypoints_csv, paths.root / "keypoints.csv"):
        if candidate.is_file():
            return candidate
    return None


def run_qa(paths, images, predicted, qa_dir, truth: str | None, min_confidence: float, log, detector=None,
           heuristic=None, store=None, mask_model=None) -> dict:
    """Scores against the ground truth (when there is one; a learned `detector`'s training images
    out of fold, see its honest_predictions), the `heuristic`'s on the same images when `store`
    (detections.csv) holds its detections, the learned mask's IoU when the dataset has ground-truth
    masks, and grids of registered images. Writes qa/qa.json and returns its summary."""
    from ..registration.keypoint_io import read_keypoint_table
    from ..utils.errors import UserError
    from ..utils.io import write_csv, write_json

    try:
        from ..registration import qa
    except ImportError as exc:
        raise UserError(f"--qa needs src/registration/qa.py, which cannot be imported ({exc})") from exc

    summary: dict = {"detector": detector.kind if detector is not None else "heuristic"}
    truth_path = find_truth(paths, truth)
    if truth_path is None:
        log.info("qa: no ground truth for %s (give --truth FILE to score); drawing grids only", paths.root)
    else:
        truth_table = read_keypoint_table(truth_path)
        scored = sorted(set(truth_table["id"].astype(str)) & set(predicted["id"].astype(str)))
        honest, info = (detector.honest_predictions(predicted, scored) if detector is not None
                        else (predicted, {"cross_validated": False}))
        scores = qa.score_keypoints(honest, truth_table)
        write_csv(scores.reset_index(), qa_dir / "scores.csv")  # `point` is the index
        summary.update(info, truth=str(truth_path), scores=_score_summary(scores))
        means = scores.select_dtypes("number").mean().round(3).to_dict()
        how = "cross-validated: training images out of fold" if info.get("cross_validated") else "as detected"
        print(f"qa: {summary['detector']} detector ({how}) scored against {truth_path} -> {qa_dir / 'scores.csv'} "
              f"(means: {means})", flush=True)
        if heuristic is not None and store is not None:
            summary["heuristic"] = heuristic_scores(heuristic, store, truth_table, scored, min_confidence,
                                                    qa_dir / "scores_heuristic.csv", qa)
    if mask_model is not None and paths.masks_dir.is_dir():
        from ..registration.detectors import dataset_images, mask_qa

        table, summary["mask"] = mask_qa(mask_model, dataset_images(images), paths.masks_dir)
        write_csv(table, qa_dir / "mask_scores.csv")
        print(f"qa: hand masks against {paths.masks_dir} -> {qa_dir / 'mask_scores.csv'} ({summary['mask']})",
              flush=True)
    for name, ids in grid_selection(predicted, min_confidence).items():
        if ids:
            path = draw_grid(ids, images, predicted, min_confidence, qa_dir / f"grid_{name}.png", qa)
            print(f"qa: {len(ids)} {name} images -> {path}", flush=True)
    write_json(summary, qa_dir / "qa.json")
    return summary


def heuristic_scores(heuristic, store, truth_table, scored: list[str], min_confidence: float, path, qa) -> dict:
    """The heuristic's scores on the scored images (when detections.csv holds its detections of
    them) and its flag count over all it detected, beside a learned detector's."""
    from ..utils.io import write_csv

    rows = read_detections(store, heuristic.version)
    out = {"version": heuristic.version, "detected": len(rows),
           "flagged": sum(flag_reason(r, min_confidence) is not None for r in rows.values())}
    if not rows or not set(scored) <= set(rows):
        out["note"] = "the heuristic's detections of the scored images are not at hand: not scored"
        return out
    scores = qa.score_keypoints(detections_frame(rows), truth_table)
    write_csv(scores.reset_index(), path)
    out.update(scores=_score_summary(scores), scores_csv=str(path))
    means = scores.select_dtypes("number").mean().round(3).to_dict()
    print(f"qa: the heuristic on the same images -> {path} (means: {means}); it flags {out['flagged']} of "
          f"{len(rows)} images", flush=True)
    return out


def _score_summary(scores) -> dict:
    """score_keypoints' table as {point: {column: value}} for qa.json."""
    import math

    numbers = scores.select_dtypes("number")
    return {str(point): {c: round(float(v), 4) if math.isfinite(float(v)) else None for c, v in row.items()}
            for point, row in numbers.iterrows()}


def grid_selection(predicted, min_confidence: float, n: int = QA_GRID_IMAGES, seed: int = 0) -> dict[str, list[str]]:
    """Ids for the grids: random registered ones (seeded), and the least confident with points."""
    import numpy as np

    with_points = predicted.dropna(subset=[f"{p}_{a}" for p in ("middle", "thumb", "capitate") for a in "xy"])
    registered = with_points[(with_points["method"] != "fallback") & (with_points["confidence"] >= min_confidence)]
    rng = np.random.default_rng(seed)
    random_ids = sorted(rng.choice(registered["id"].to_numpy(), size=min(n, len(registered)), replace=False))
    worst = with_points.sort_values(["confidence", "id"], kind="stable").head(n)["id"].tolist()
    return {"random": [str(i) for i in random_ids], "least_confident": [str(i) for i in worst]}


def draw_grid(ids: list[str], images, predicted, min_confidence: float, path, qa):
    """Each image in the frame (registered, or its fallback) with its keypoints mapped there."""
    from ..data.images import read_gray8
    from ..registration.frame import fallback_matrix, frame_matrix, map_keypoints, warp_with
    from ..registration.keypoint_io import keypoints_from_row
    from ..registration.steps import trusted

    path_of = dict(zip(images["id"].astype(str), images["path"].astype(str)))
    rows = {str(r["id"]): r for r in predicted.to_dict("records")}
    frames, points, titles = [], [], []
    for image_id in ids:
        image = read_gray8(path_of[image_id]).pixels
        kp = keypoints_from_row(rows[image_id])
        matrix = None
        if trusted(kp, min_confidence):
            try:
                matrix = frame_matrix(kp, QA_FRAME_SCALE)
            except ValueError:
                matrix = None
        label = kp.method if matrix is not None else "fallback"
        if matrix is None:
            matrix = fallback_matrix(image.shape[1], image.shape[0], QA_FRAME_SCALE)
        frames.append(warp_with(image, matrix, QA_FRAME_SCALE))
        points.append(map_keypoints(matrix, kp))
        titles.append(f"{image_id} {label} {kp.confidence:.2f}")
    return qa.keypoint_grid(frames, points, titles, path)
