"""Audit every row and image of a dataset root before any training.

`run_audit(root)` reads the root (intake), checks every CSV row and decodes every image, and
writes under `working/<dataset>/`:

* `audit.csv`   every problem: part,id,row,file,severity,problem,detail
                (row = 1-based line in the CSV; severity error | converted | warning)
* `train.csv`   the clean training table: id,path,male,boneage,converted
* `test.csv`    the clean test table (only when the root has a test part)
* `audit.json`  counts, the input root and a status; written last, so `status == "ok"` means
                the clean tables are complete. It also records the input CSVs' size and mtime,
                the number of files in each image folder and the clean tables' sha256, so
                `require_audit(root)` (called before folds and training) can tell a current
                audit from a stale one
* `audit_cache.csv`  per-image results keyed by (path, size, mtime), so a rerun only decodes
                new or changed files

Any `error` makes the default run fail (after writing audit.csv and printing a summary);
`skip_bad=True` leaves the bad rows out of the clean tables, and they stay listed in audit.csv.
"""

from __future__ import annotations

import csv
import math
import os
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..utils.errors import DataError, UserError
from ..utils.io import atomic_path, file_sha256, read_json_object, write_csv, write_json
from ..utils.parallel import process_pool
from .images import BLANK_STD, MIN_SIDE, REPORT_FIELDS, ImageReport, describe_non_image, inspect_image, sniff_format
from .intake import IMAGE_SUFFIX, ISSUE_COLUMNS, Intake, IntakeError, Issue, find_sources, read_dataset
from .layout import dataset_name, working_root

AUDIT_VERSION = 1
# Cached image results are reused only while the checks that produced them are unchanged.
CHECK_VERSION = f"{AUDIT_VERSION}/min{MIN_SIDE}/std{BLANK_STD:g}"
SEVERITY_ORDER = {"error": 0, "converted": 1, "warning": 2}
CLEAN_COLUMNS = ("id", "path", "male", "boneage", "converted")
SHOW_ERRORS = 20  # offenders listed per error problem in the printed summary
SHOW_OTHERS = 5  # ... per converted / warning problem
CACHE_NAME = "audit_cache.csv"


@dataclass
class AuditResult:
    root: Path
    dataset: str
    layout: str
    out_dir: Path
    train: pd.DataFrame | None  # clean table (id,path,male,boneage,converted); None when the audit failed
    test: pd.DataFrame | None  # clean test table; None without a test part or when the audit failed
    issues: pd.DataFrame  # every problem (audit.csv)
    dropped: pd.DataFrame  # intake rows left out because of errors (empty unless skip_bad)
    counts: dict = field(default_factory=dict)
    summary: str = ""
    ok: bool = True  # no errors, or skip_bad

    @property
    def n_errors(self) -> int:
        return int((self.issues["severity"] == "error").sum()) if len(self.issues) else 0


class AuditFailed(DataError):
    """The audit found errors (and skip_bad was off); `.result` holds what it found."""

    def __init__(self, message: str, result: AuditResult):
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------- per-image cache

def _load_cache(path: Path) -> dict[str, ImageReport]:
    if not path.is_file():
        return {}
    reports: dict[str, ImageReport] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                if rec.get("version") != CHECK_VERSION:
                    continue
                reports[rec["path"]] = ImageReport(
                    path=rec["path"], size=int(rec["size"]), mtime_ns=int(rec["mtime_ns"]),
                    problem=rec["problem"], detail=rec["detail"], width=int(rec["width"]),
                    height=int(rec["height"]), channels=int(rec["channels"]), bits=int(rec["bits"]),
                    conversions=rec["conversions"], note=rec["note"],
                    std=float(rec["std"]) if rec["std"] not in ("", "nan") else math.nan,
                )
    except (OSError, KeyError, ValueError, csv.Error):
        return {}  # a damaged cache only costs a re-decode
    return reports


def _save_cache(path: Path, reports: dict[str, ImageReport]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=[*REPORT_FIELDS, "version"])
            writer.writeheader()
            for key in sorted(reports):
                writer.writerow({**reports[key].as_dict(), "version": CHECK_VERSION})


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def inspect_images(files: list[tuple[str, int, int]], cache_path: Path, workers: int | None = None,
                   quiet: bool = False) -> tuple[dict[str, ImageReport], int]:
    """Reports for (path, size, mtime_ns) files: cached ones reused, the rest decoded in parallel.

    Returns (reports by path, number decoded now). The cache is saved every few hundred images,
    so an interrupted audit resumes where it stopped.
    """
    cached = _load_cache(cache_path)
    reports: dict[str, ImageReport] = {}
    todo: list[str] = []
    for path, size, mtime_ns in files:
        hit = cached.get(path)
        if hit is not None and hit.size == size and hit.mtime_ns == mtime_ns:
            reports[path] = hit
        else:
            todo.append(path)
    if not todo:
        if set(cached) != set(reports):
            _save_cache(cache_path, reports)
        return reports, 0

    from tqdm.auto import tqdm

    workers = max(1, int(workers or default_workers()))
    workers = min(workers, max(1, len(todo) // 16))  # a pool is not worth it for a handful of files
    tty = sys.stderr.isatty()
    bar = tqdm(total=len(todo), desc="audit: decoding images", unit="img", disable=quiet,
               mininterval=0.5 if tty else 15, file=sys.stderr)
    last_save, done_since_save = time.monotonic(), 0
    pool = None
    try:
        if workers <= 1:
            results = map(inspect_image, todo)
        else:
            pool = process_pool(workers)
            chunksize = max(1, min(32, len(todo) // (workers * 8)))
            results = pool.map(inspect_image, todo, chunksize=chunksize)
        for report in results:
            reports[report.path] = report
            bar.update(1)
            done_since_save += 1
            if done_since_save >= 500 and time.monotonic() - last_save > 30:
                _save_cache(cache_path, reports)
                last_save, done_since_save = time.monotonic(), 0
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _save_cache(cache_path, reports)
    return reports, len(todo)


# --------------------------------------------------------------------------- file checks

def _rel(path: str | Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _scan(folder: Path) -> dict[str, os.DirEntry]:
    """Plain files in an image folder by name (sub-folders are not images and are skipped)."""
    entries: dict[str, os.DirEntry] = {}
    with os.scandir(folder) as it:
        for entry in it:
            try:
                if entry.is_file():
                    entries[entry.name] = entry
            except OSError:
                continue
    return entries


def _check_files(intake: Intake, issues: list[Issue]) -> list[tuple[str, int, int]]:
    """Missing images, files without a CSV row, non-image files; returns the files to decode."""
    root = intake.root
    table = intake.table
    to_decode: list[tuple[str, int, int]] = []
    csv_files = {os.path.abspath(s.csv) for s in intake.sources.values()}
    csv_files |= {os.path.abspath(s.labels_csv) for s in intake.sources.values() if s.labels_csv}
    for part, source in intake.sources.items():
        listing = _scan(source.image_dir)
        lower = {name.lower(): name for name in listing}
        referenced: set[str] = set()
        rows = table[table["part"] == part]
        for index, image_id, path, line in zip(rows.index, rows["id"], rows["path"], rows["row"]):
            if not path:
                continue  # invalid id, already an error
            name = image_id + IMAGE_SUFFIX
            entry = listing.get(name)
            if entry is None:
                hint = ""
                if name.lower() in lower:
                    hint = f" (there is {lower[name.lower()]}: the name's case differs)"
                elif image_id.endswith(".0") and image_id[:-2].isdigit():
                    hint = f" (the id looks like a float: was the CSV saved by a spreadsheet? try {image_id[:-2]})"
                issues.append(Issue(part, image_id, int(line), _rel(path, root), "error", "missing image",
                                    f"no such file: the CSV row has no image{hint}", int(index)))
                continue
            if name in referenced:
                continue  # duplicate id, already an error
            referenced.add(name)
            try:
                st = entry.stat()
            except OSError:
                st = None
            to_decode.append((path, st.st_size if st else -1, st.st_mtime_ns if st else -1))
        for name in sorted(set(listing) - referenced):
            full = os.path.join(os.path.abspath(source.image_dir), name)
            if full in csv_files:
                continue
            try:
                with open(full, "rb") as fh:
                    head = fh.read(64)
            except OSError:
                head = b""
            stem = name[: -len(IMAGE_SUFFIX)] if name.lower().endswith(IMAGE_SUFFIX) else name
            if name.lower().endswith(IMAGE_SUFFIX) and sniff_format(head) is not None:
                issues.append(Issue(part, stem, None, _rel(full, root), "warning", "image without csv row",
                                    f"{name} is in the image folder but no row of {_rel(source.csv, root)} names "
                                    f"id {stem}; it is ignored"))
            else:
                what = "an empty file" if not head else describe_non_image(head)
                issues.append(Issue(part, "", None, _rel(full, root), "warning", "non-image file",
                                    f"{name} in the image folder is not an image: {what}; it is ignored"))
    return to_decode


def _image_issues(intake: Intake, reports: dict[str, ImageReport], issues: list[Issue]) -> dict[str, str]:
    """Issues from decoded images; returns the conversions per path (for the clean tables)."""
    root = intake.root
    conversions: dict[str, str] = {}
    table = intake.table
    for index, part, image_id, path, line in zip(table.index, table["part"], table["id"], table["path"],
                                                 table["row"]):
        report = reports.get(path)
        if report is None:
            continue
        where = (part, image_id, int(line), _rel(path, root))
        if report.problem:
            issues.append(Issue(*where, "error", report.problem, report.detail, int(index)))
            continue
        if report.conversions:
            conversions[path] = report.conversions
            depth = f"{report.bits}-bit, {report.channels} channel{'s' if report.channels > 1 else ''}"
            issues.append(Issue(*where, "converted", "converted image",
                                f"{depth} {report.width}x{report.height}: {report.conversions} "
                                f"(read_gray8 does this whenever the image is read)", int(index)))
        if report.note:
            issues.append(Issue(*where, "warning", "not a png", report.note, int(index)))
    return conversions


# --------------------------------------------------------------------------- outputs

def issues_frame(issues: list[Issue]) -> pd.DataFrame:
    frame = pd.DataFrame([i.as_row() for i in issues], columns=list(ISSUE_COLUMNS))
    if len(frame):
        frame["_s"] = frame["severity"].map(SEVERITY_ORDER)
        frame["_p"] = frame["part"].map({"train": 0, "test": 1})
        frame["_r"] = frame["row"].fillna(0)
        frame = frame.sort_values(["_s", "problem", "_p", "file", "_r"], kind="stable")
        frame = frame.drop(columns=["_s", "_p", "_r"]).reset_index(drop=True)
    frame["row"] = frame["row"].astype("Int64")
    return frame


def _clean(table: pd.DataFrame, conversions: dict[str, str]) -> pd.DataFrame:
    out = table[["id", "path", "male", "boneage"]].copy()
    out["male"] = out["male"].astype(bool)
    out["boneage"] = out["boneage"].astype(float)
    out["converted"] = [conversions.get(p, "") for p in out["path"]]
    return out.reset_index(drop=True)


def format_summary(root: Path, dataset: str, layout: str, intake: Intake | None, issues: pd.DataFrame,
                   counts: dict, out_dir: Path) -> str:
    lines = [f"audit of {root} (layout: {layout}, dataset: {dataset})"]
    if intake is not None:
        for part, source in intake.sources.items():
            n = int((intake.table["part"] == part).sum())
            extra = f" + labels {_rel(source.labels_csv, root)}" if source.labels_csv else ""
            lines.append(f"  {part:5s} {n} rows in {_rel(source.csv, root)}{extra}; images in "
                         f"{_rel(source.image_dir, root) or '.'}/")
        if "images_checked" in counts:
            lines.append(f"  images: {counts['images_checked']} checked ({counts['images_decoded']} decoded now, "
                         f"{counts['images_checked'] - counts['images_decoded']} from the cache)")
    if not len(issues):
        lines.append("no problems found.")
        return "\n".join(lines)
    sev = Counter(issues["severity"])
    lines.append(f"problems: {sev.get('error', 0)} error(s), {sev.get('converted', 0)} converted, "
                 f"{sev.get('warning', 0)} warning(s)  (all listed in {out_dir / 'audit.csv'})")
    groups = issues.groupby(["severity", "problem"], sort=False)
    for (severity, problem), group in groups:
        lines.append(f"  {severity:9s} {problem:24s} {len(group):6d}")
    for (severity, problem), group in groups:
        show = SHOW_ERRORS if severity == "error" else SHOW_OTHERS
        lines.append(f"[{severity}] {problem}: {len(group)}")
        for rec in group.head(show).itertuples(index=False):
            where = f"{rec.part} row {rec.row}" if not pd.isna(rec.row) else rec.part
            ident = f" id {rec.id}" if rec.id else ""
            lines.append(f"    {where}{ident}: {rec.file}: {rec.detail}")
        if len(group) > show:
            lines.append(f"    ... and {len(group) - show} more (see audit.csv)")
    return "\n".join(lines)


def _input_fingerprint(intake: Intake | None) -> dict:
    if intake is None:
        return {}
    files = {}
    for source in intake.sources.values():
        for path in (source.csv, source.labels_csv):
            if path is not None and path.is_file():
                st = path.stat()
                files[_rel(path, intake.root)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return files


def _count_files(folder: Path) -> int | None:
    try:
        return len(_scan(folder))
    except OSError:
        return None


def _image_dir_counts(intake: Intake | None) -> dict:
    """Plain files per image folder (relative to the root): cheap, and it changes when images are added or removed."""
    if intake is None:
        return {}
    return {_rel(s.image_dir, intake.root) or ".": _count_files(s.image_dir) for s in intake.sources.values()}


def _audit_command(root: Path, skip_bad: bool = False) -> str:
    return f"python -m src audit --input {shlex.quote(str(root))}" + (" --skip-bad" if skip_bad else "")


def _stale_reason(root: Path, info: dict, out_dir: Path) -> str | None:
    """Why an ok audit.json no longer describes the root and the clean tables, or None when it still does."""
    inputs = info.get("inputs")
    dirs = info.get("image_dirs")
    tables = info.get("table_sha256")
    if not isinstance(inputs, dict) or not inputs or not isinstance(dirs, dict) or not isinstance(tables, dict):
        return "audit.json was written by an older version of the audit, which did not record its inputs"
    for rel, stamp in sorted(inputs.items()):
        path = root / rel
        try:
            st = path.stat()
        except OSError:
            return f"{rel} has vanished since the audit"
        if st.st_size != stamp.get("size") or st.st_mtime_ns != stamp.get("mtime_ns"):
            return f"{rel} has changed since the audit (size or modification time differs)"
    try:
        _, _, sources = find_sources(root)
    except UserError as exc:
        return f"the root is no longer a readable dataset ({exc})"
    now = {_rel(p, root) for s in sources.values() for p in (s.csv, s.labels_csv) if p is not None}
    added = sorted(now - set(inputs))
    if added:
        return f"{', '.join(added)} appeared since the audit"
    for rel, count in sorted(dirs.items()):
        current = _count_files(root / rel)
        if current != count:
            return (f"the image folder {rel}/ now has {current if current is not None else 'no'} files, "
                    f"the audit saw {count}")
    for part, digest in sorted(tables.items()):
        table = out_dir / f"{part}.csv"
        if not table.is_file():
            return f"the clean table {table} is missing"
        if file_sha256(table) != digest:
            return f"the clean table {table} was modified after the audit"
    return None


def require_audit(root: str | os.PathLike) -> dict:
    """The audit.json info of a dataset root when its last audit succeeded, is for this root and
    is still current; otherwise a UserError saying why and which command to run.

    "Current" means: every input CSV the audit read still has the size and mtime it recorded,
    no new CSV has appeared (a test part or labels file), each image folder holds the number
    of files the audit saw, and the clean tables (train.csv, test.csv) are the ones it wrote.
    Called before building folds and before training.
    """
    root = Path(os.path.abspath(root))
    out_dir = working_root() / dataset_name(root)
    path = out_dir / "audit.json"
    command = _audit_command(root)
    if not path.is_file():
        raise UserError(f"{root} is not audited yet (no {path}): run `{command}` first")
    info = read_json_object(path, f"rerun `{command}`")
    audited = info.get("input")
    if not audited or Path(audited).resolve() != root.resolve():
        raise UserError(f"{path} is the audit of another root ({audited}), not of {root}: run `{command}`")
    status = info.get("status")
    if status == "failed":
        raise UserError(f"the last audit failed: {info.get('message', '(no message recorded)')} "
                        f"Fix the data and rerun `{command}`")
    if status != "ok":
        raise UserError(f"the last audit of {root} did not finish (status {status!r}): rerun `{command}`")
    reason = _stale_reason(root, info, out_dir)
    if reason:
        raise UserError(f"the audit of {root} is stale: {reason}. Rerun "
                        f"`{_audit_command(root, bool(info.get('skip_bad')))}` (unchanged images are not decoded again)")
    return info


def audit_status(root: str | os.PathLike) -> dict | None:
    """The audit.json of a dataset root if its last audit succeeded, is for this root and is still
    current (see `require_audit`), else None."""
    try:
        return require_audit(root)
    except UserError:
        return None


def _part_losses(issues: list[Issue], part: str) -> str:
    """'N row(s) with errors: problem n, ...' for one part, or that its CSV has no data rows."""
    errors = Counter(i.problem for i in issues if i.severity == "error" and i.part == part and i.index is not None)
    if not errors:
        return "the file has no data rows"
    rows = len({i.index for i in issues if i.severity == "error" and i.part == part and i.index is not None})
    listing = ", ".join(f"{p} {n}" for p, n in errors.most_common())
    return f"every row has an error: {rows} bad row(s), {listing}"


def run_audit(root: str | os.PathLike, skip_bad: bool = False, workers: int | None = None, *,
              quiet: bool = False) -> AuditResult:
    """Audit a dataset root; write audit.csv/audit.json and (on success) the clean tables.

    Prints a human-readable summary unless `quiet`. Raises UserError for a missing or
    unrecognisable root, AuditFailed (a DataError) when errors are found and `skip_bad` is off
    or nothing usable is left; the message points at audit.csv and --skip-bad.
    """
    started = time.monotonic()
    root = Path(os.path.abspath(root))
    try:
        intake: Intake | None = read_dataset(root)
        fatal: IntakeError | None = None
    except IntakeError as exc:
        intake, fatal = None, exc
    dataset = dataset_name(root)
    out_dir = working_root() / dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    status_path = out_dir / "audit.json"
    if status_path.exists():
        status_path.unlink()  # until this run finishes, no audit is "complete"

    counts: dict = {}
    conversions: dict[str, str] = {}
    if fatal is not None:
        issue_list = list(fatal.issues)
        layout = "unreadable"
    else:
        assert intake is not None
        layout = intake.layout
        issue_list = list(intake.issues)
        files = _check_files(intake, issue_list)
        reports, decoded = inspect_images(files, out_dir / CACHE_NAME, workers=workers, quiet=quiet)
        conversions = _image_issues(intake, reports, issue_list)
        counts.update(images_checked=len(files), images_decoded=decoded)
    issues = issues_frame(issue_list)
    write_csv(issues, out_dir / "audit.csv")

    bad = sorted({i.index for i in issue_list if i.severity == "error" and i.index is not None})
    table = intake.table if intake is not None else pd.DataFrame(columns=["part"])
    dropped = table.loc[bad] if bad else table.iloc[0:0]
    sev = Counter(issues["severity"])
    counts.update(
        errors=sev.get("error", 0), converted=sev.get("converted", 0), warnings=sev.get("warning", 0),
        problems=dict(Counter(issues["problem"])),
    )
    for part in ("train", "test"):
        if intake is not None and part in intake.sources:
            counts[f"{part}_rows_csv"] = int((table["part"] == part).sum())
            counts[f"{part}_rows_dropped"] = int((dropped["part"] == part).sum())
    summary = format_summary(root, dataset, layout, intake, issues, counts, out_dir)
    result = AuditResult(root, dataset, layout, out_dir, None, None, issues, dropped, counts, summary, ok=False)

    def fail(message: str) -> AuditFailed:
        for name in ("train.csv", "test.csv"):
            stale = out_dir / name
            if stale.exists():
                stale.unlink()  # later stages must not run on tables this audit did not approve
        write_json({"status": "failed", "input": str(root), "dataset": dataset, "layout": layout,
                    "skip_bad": skip_bad, "counts": counts, "inputs": _input_fingerprint(intake),
                    "image_dirs": _image_dir_counts(intake), "message": message, "version": AUDIT_VERSION,
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}, status_path)
        if not quiet:
            print(summary, flush=True)
        return AuditFailed(message, result)

    if fatal is not None:
        raise fail(f"{fatal} (listed in {out_dir / 'audit.csv'}; the file must be fixed, --skip-bad cannot help)")
    n_errors = counts["errors"]
    if n_errors and not skip_bad:
        by_problem = Counter(issues.loc[issues["severity"] == "error", "problem"])
        listing = ", ".join(f"{p} {n}" for p, n in by_problem.most_common())
        raise fail(f"the audit found {n_errors} error(s) ({listing}); every one is listed in "
                   f"{out_dir / 'audit.csv'}. Fix the data, or rerun with --skip-bad to leave the {len(bad)} bad "
                   f"row(s) out (`python -m src audit --input {root} --skip-bad`).")

    assert intake is not None
    keep = table.drop(index=bad)
    train = _clean(keep[keep["part"] == "train"], conversions)
    test = _clean(keep[keep["part"] == "test"], conversions) if "test" in intake.sources else None
    if train.empty:
        raise fail(f"no usable training rows are left in {_rel(intake.sources['train'].csv, root)} of {root} "
                   f"({_part_losses(issue_list, 'train')}); see {out_dir / 'audit.csv'}")
    if test is not None and test.empty:
        # A dataset with a test part must keep test rows: --skip-bad may drop bad rows, never the whole part.
        source = intake.sources["test"]
        raise fail(f"no usable test rows are left in {_rel(source.csv, root)} of {root} "
                   f"({_part_losses(issue_list, 'test')}); --skip-bad cannot leave out the whole test part. "
                   f"Fix {source.csv}; every problem is listed in {out_dir / 'audit.csv'}")
    counts["train_rows"] = len(train)
    if test is not None:
        counts["test_rows"] = len(test)
        counts["test_labelled"] = int(test["boneage"].notna().sum())

    write_csv(train, out_dir / "train.csv")
    table_sha = {"train": file_sha256(out_dir / "train.csv")}
    if test is not None:
        write_csv(test, out_dir / "test.csv")
        table_sha["test"] = file_sha256(out_dir / "test.csv")
    elif (out_dir / "test.csv").exists():
        (out_dir / "test.csv").unlink()  # from an earlier root that had a test part

    lines = [summary]
    if bad:
        per_part = ", ".join(f"{counts.get(f'{p}_rows_dropped', 0)} {p}" for p in intake.sources)
        lines.append(f"--skip-bad: left out {len(bad)} bad row(s) ({per_part}); they stay listed in audit.csv")
    label_errors = sum(1 for i in issue_list if i.severity == "error" and i.index is None)
    if label_errors:
        lines.append(f"--skip-bad: ignored {label_errors} bad row(s) of the test labels file (those test images "
                     f"stay, unlabelled); listed in audit.csv")
    kept = f"{len(train)} train rows" + (f", {len(test)} test rows ({counts['test_labelled']} labelled)"
                                         if test is not None else "")
    tables = "train.csv" + (", test.csv" if test is not None else "")
    lines.append(f"kept {kept}; wrote {tables}, audit.csv, audit.json in {out_dir} "
                 f"({time.monotonic() - started:.1f} s)")
    result.summary = "\n".join(lines)
    result.train, result.test, result.ok = train, test, True
    write_json({"status": "ok", "input": str(root), "dataset": dataset, "layout": layout, "skip_bad": skip_bad,
                "counts": counts, "inputs": _input_fingerprint(intake), "image_dirs": _image_dir_counts(intake),
                "table_sha256": table_sha, "version": AUDIT_VERSION,
                "tables": {"train": "train.csv", **({"test": "test.csv"} if test is not None else {})},
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}, status_path)
    if not quiet:
        print(result.summary, flush=True)
    return result
