"""`python -m src register`: find the registration keypoints of every image of a dataset.

The detector runs on every audited train and test image, in parallel and resumably: its raw
output is kept in `registration/detections.csv` (with the detector's version), and a rerun
detects only the images it lacks, or all of them when the detector changed (`--force`: all).
From it the command writes

- `registration/keypoints.csv`: KEYPOINT_COLUMNS, coordinates in the original image's pixels;
  a flagged image keeps the detector's guess with `method=fallback`, which makes the
  `register` preprocessing step use the letterboxed fallback frame for it;
- `registration/flagged.csv`: id, reason (failed | low_confidence), confidence;
- `registration/registration.json`: the detector version, the threshold and the counts;
- with `--qa`: `registration/qa/` with scores against the ground truth (the phantom's
  `ground-truth/keypoints.csv`, a `keypoints.csv` at the dataset root, or `--truth FILE`) when
  there is one, and grids of registered images with their keypoints (random and least confident).
"""

from __future__ import annotations

import functools
import os

HELP = ("Detect the three registration keypoints (middle-finger tip, thumb tip, capitate) on every image and "
        "write working/<dataset>/registration/{keypoints,flagged}.csv for the 'register' preprocessing step; "
        "--qa scores them against ground truth and draws grids.")

DEFAULT_MIN_CONFIDENCE = 0.5  # the same default as the `register` step's
QA_FRAME_SCALE = 0.2          # grids show 320 x 416 frames
QA_GRID_IMAGES = 16
SAVE_EVERY_S = 30.0
DETECTION_EXTRA = ["detector", "error"]


def add_arguments(parser) -> None:
    parser.add_argument("--input", default="input", metavar="DIR", help="dataset root, audited first")
    parser.add_argument("--qa", action="store_true",
                        help="write registration/qa/: scores against the ground truth when the dataset has one "
                             "(or --truth) and grids of registered images with their keypoints")
    parser.add_argument("--truth", metavar="FILE",
                        help="ground-truth keypoints for --qa (CSV or COCO JSON; implies --qa); without it the "
                             "dataset's ground-truth/keypoints.csv or keypoints.csv is used when present")
    parser.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE, metavar="X",
                        help="detections below this confidence are flagged and fall back to the unregistered image")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="detect at most N more images in this run (a rerun continues)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes that run the detector (default: one per CPU core)")
    parser.add_argument("--force", action="store_true", help="detect every image again")


def run(args) -> int:
    import logging
    from pathlib import Path

    from ..data.audit import require_audit
    from ..data.layout import DatasetPaths
    from ..utils.errors import UserError

    log = logging.getLogger("register")
    if not 0.0 <= args.min_confidence <= 1.0:
        raise UserError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
    for flag, value in (("--limit", args.limit), ("--workers", args.workers)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    require_audit(args.input)
    paths = DatasetPaths(Path(args.input))
    images = audited_images(paths.work_dir())
    _detect, version = load_detector()  # here, so a missing detector is one clear error
    out_dir = paths.work_dir() / "registration"
    detections = detect_all(images, out_dir, version, force=args.force, limit=args.limit,
                            workers=args.workers or os.cpu_count() or 1)
    summary = write_tables(detections, images, out_dir, version, args.min_confidence)
    pending = summary["pending"]
    print(f"register: {summary['detected']} of {summary['images']} images have keypoints, {summary['flagged']} "
          f"flagged ({summary['failed']} failed, {summary['low_confidence']} below confidence "
          f"{args.min_confidence:g}: they fall back to the unregistered image) -> {out_dir / 'keypoints.csv'}"
          + (f"; {pending} still to detect (run again)" if pending else ""), flush=True)
    if args.qa or args.truth:
        from ..registration.keypoint_io import read_keypoint_table

        run_qa(paths, images, read_keypoint_table(out_dir / "keypoints.csv"), out_dir / "qa", args.truth,
               args.min_confidence, log)
    return 0


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
    """(detect_keypoints, version); the version changes whenever the detector's code does,
    unless the module states a DETECTOR_VERSION itself. Cached: workers call it per image."""
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


def _detect_one(job: tuple[str, str]) -> dict:
    """One image's detection row; a detector error is recorded on the row (flagged as failed),
    never raised, so one bad image does not stop a run of thousands."""
    from ..data.images import read_gray8

    image_id, path = job
    detect, version = load_detector()
    try:
        row = detect(read_gray8(path).pixels).row(image_id)
        row["error"] = ""
    except Exception as exc:  # recorded per image, listed in flagged.csv
        row = {"id": image_id, "confidence": 0.0, "mirrored": False, "method": "fallback",
               "error": f"{type(exc).__name__}: {exc}"[:300]}
    row["detector"] = version
    return row


def read_detections(path, version: str) -> dict[str, dict]:
    """The saved detections made by this detector version (older ones are redone)."""
    import pandas as pd

    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path, dtype={"id": str, "method": str, "detector": str, "error": str},
                            keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}  # a rebuildable store: start again
    table = (table[table["detector"] == version] if "detector" in table else table.iloc[:0]).copy()
    table["error"] = table["error"].fillna("") if "error" in table else ""
    return {str(r["id"]): r for r in table.to_dict("records")}


def save_detections(rows: dict[str, dict], path) -> None:
    import pandas as pd

    from ..registration.types import KEYPOINT_COLUMNS
    from ..utils.io import write_csv

    table = pd.DataFrame(list(rows.values()), columns=KEYPOINT_COLUMNS + DETECTION_EXTRA)
    write_csv(table.sort_values("id", kind="stable"), path)


def detect_all(images, out_dir, version: str, force: bool, limit: int | None, workers: int) -> dict[str, dict]:
    """Detections for the images (resumed from out_dir/detections.csv), saved as they come."""
    import contextlib
    import logging
    import time

    from ..utils.parallel import process_pool
    from ..utils.progress import progress

    log = logging.getLogger("register")
    store = out_dir / "detections.csv"
    done = {} if force else read_detections(store, version)
    todo = [(i, p) for i, p in zip(images["id"].astype(str), images["path"].astype(str)) if i not in done]
    if limit is not None:
        todo = todo[:limit]
    if not todo:
        log.info("every image already has keypoints from detector %s (--force detects again)", version)
        return done
    log.info("detecting keypoints on %d images (%d already done) with %d workers", len(todo), len(done), workers)
    pool = process_pool(workers) if workers > 1 and len(todo) > 1 else None
    bar = None
    try:
        results = pool.map(_detect_one, todo, chunksize=max(1, len(todo) // (workers * 16))) if pool \
            else map(_detect_one, todo)
        bar = progress(results, total=len(todo), desc="register")
        last_save = time.monotonic()
        for row in bar:
            done[row["id"]] = row
            if time.monotonic() - last_save > SAVE_EVERY_S:
                save_detections(done, store)
                last_save = time.monotonic()
    except BaseException:
        with contextlib.suppress(Exception):
            save_detections(done, store)  # an interrupted run resumes from here
        raise
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    save_detections(done, store)
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


def write_tables(detections: dict[str, dict], images, out_dir, version: str, min_confidence: float) -> dict:
    """keypoints.csv, flagged.csv and registration.json for the images that have a detection."""
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
               "low_confidence": int((flags["reason"] == "low_confidence").sum())}
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


def run_qa(paths, images, predicted, qa_dir, truth: str | None, min_confidence: float, log) -> None:
    """Scores against the ground truth (when there is one) and grids of registered images."""
    from ..registration.keypoint_io import read_keypoint_table
    from ..utils.errors import UserError
    from ..utils.io import write_csv

    try:
        from ..registration import qa
    except ImportError as exc:
        raise UserError(f"--qa needs src/registration/qa.py, which cannot be imported ({exc})") from exc

    truth_path = find_truth(paths, truth)
    if truth_path is None:
        log.info("qa: no ground truth for %s (give --truth FILE to score); drawing grids only", paths.root)
    else:
        scores = qa.score_keypoints(predicted, read_keypoint_table(truth_path))
        write_csv(scores.reset_index(), qa_dir / "scores.csv")  # `point` is the index
        means = scores.select_dtypes("number").mean().round(3).to_dict()
        print(f"qa: scored against {truth_path} -> {qa_dir / 'scores.csv'} (means: {means})", flush=True)
    for name, ids in grid_selection(predicted, min_confidence).items():
        if ids:
            path = draw_grid(ids, images, predicted, min_confidence, qa_dir / f"grid_{name}.png", qa)
            print(f"qa: {len(ids)} {name} images -> {path}", flush=True)


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
