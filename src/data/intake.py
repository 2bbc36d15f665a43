"""Read a dataset root into one normalised table.

Two layouts are recognised:

* Kaggle (`kaggle datasets download kmader/rsna-bone-age -p input --unzip`):
  `boneage-training-dataset.csv` (id,boneage,male) + `boneage-training-dataset/boneage-training-dataset/<id>.png`
  (or the single-level `boneage-training-dataset/<id>.png` some mirrors have), and optionally
  `boneage-test-dataset.csv` (Case ID,Sex) + `boneage-test-dataset/boneage-test-dataset/<id>.png`
  and `boneage-test-labels.csv` (id,boneage,male), whose labels are merged into the test part.
* Flat: exactly one CSV with the PNGs beside it or in one subfolder; it is the training part.

The table has one row per CSV row, bad ones included (the audit decides what to drop):
`id (str), path (str, absolute; '' for an unusable id), male (True/False/None), boneage (float
months, NaN when absent), part ('train'/'test'), csv (file relative to the root), row (1-based
line number in that CSV)`. Every problem found in the CSVs is an `Issue` naming file and row.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.errors import DataError, UserError
from .layout import TEST_CSV, TEST_DIR, TEST_LABELS_CSV, TRAIN_CSV, TRAIN_DIR

MAX_AGE_MONTHS = 240.0
IMAGE_SUFFIX = ".png"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")

GET_DATA_HINT = (
    "Get the data with `kaggle datasets download kmader/rsna-bone-age -p input --unzip`, "
    "or try the workbench on synthetic data with `bash run_all.sh --demo`."
)
EXPECTED_LAYOUT = (
    f"either the Kaggle layout ({TRAIN_CSV} with {TRAIN_DIR}/<id>.png, optionally {TEST_CSV} with "
    f"{TEST_DIR}/<id>.png) or a flat folder (exactly one CSV with id,boneage,male columns and the PNGs "
    f"beside it or in one subfolder)"
)

# Column roles: normalised header (lower case, letters and digits only) -> role, in order of preference.
ROLE_KEYS = {
    "id": ("id", "caseid", "imageid", "imgid", "image", "imagename", "filename", "file", "name"),
    "boneage": ("boneage", "boneagemonths", "boneageinmonths", "age", "agemonths", "ageinmonths"),
    "male": ("male", "ismale", "sex", "gender"),
}
ROLE_NAMES = {
    "id": "id (or 'Case ID', 'image id')",
    "boneage": "boneage (or 'bone_age', 'age')",
    "male": "male (or 'sex', 'gender')",
}

_SEX_TOKENS = {"true": True, "m": True, "1": True, "male": True,
               "false": False, "f": False, "0": False, "female": False}
SEX_SPELLINGS = "True/False, M/F, 1/0, male/female (any case)"


# --------------------------------------------------------------------------- value parsing

def normalise_sex(value) -> bool | None:
    """True for male, False for female, None when the value is not a sex we accept.

    Accepted: booleans, True/False, M/F, 1/0, male/female in any case with surrounding
    whitespace, and the numbers 1/0. Anything else (including '', NaN, 'x', '2') is None.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return _SEX_TOKENS.get(value.strip().lower())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        if value == 1:
            return True
        if value == 0:
            return False
    return None


def parse_age(value: str) -> tuple[float, str]:
    """(months, problem) for a bone age cell; problem is '' when valid, 'empty' when absent (age NaN)."""
    text = value.strip()
    if text == "" or text.lower() in {"nan", "na", "n/a", "null", "none"}:
        return math.nan, "empty"
    try:
        age = float(text)
    except ValueError:
        return math.nan, f"bone age {text!r} is not a number of months"
    if math.isnan(age):
        return math.nan, "empty"
    if age < 0:
        return math.nan, f"bone age {text!r} is negative"
    if math.isinf(age) or age > MAX_AGE_MONTHS:
        return math.nan, f"bone age {text!r} is over {MAX_AGE_MONTHS:g} months (20 years)"
    return age, ""


def check_id(value: str) -> str:
    """'' when `value` is a usable image id (plain integer or name), else why not."""
    if value == "":
        return "empty id"
    if "/" in value or "\\" in value:
        return f"{value!r} contains a path separator"
    if value in {".", ".."} or ".." in value:
        return f"{value!r} contains '..'"
    if any(ch.isspace() for ch in value):
        return f"{value!r} contains whitespace"
    if not ID_PATTERN.match(value):
        bad = sorted({ch for ch in value if not re.match(r"[A-Za-z0-9_.-]", ch)})
        return f"{value!r} contains characters outside [A-Za-z0-9_.-]: {''.join(bad)!r}"
    return ""


def header_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# --------------------------------------------------------------------------- issues and results

@dataclass
class Issue:
    """One problem: a row of audit.csv. `index` (the intake table row it condemns) is not written."""

    part: str
    id: str
    row: int | None  # 1-based line number in `file` when the problem comes from a CSV row
    file: str  # relative to the dataset root where possible
    severity: str  # 'error' | 'converted' | 'warning'
    problem: str
    detail: str
    index: int | None = None

    def as_row(self) -> dict:
        data = asdict(self)
        data.pop("index")
        return data


ISSUE_COLUMNS = ("part", "id", "row", "file", "severity", "problem", "detail")


class IntakeError(DataError):
    """A fatal problem with a whole file (e.g. a missing column); `.issues` lists what was found."""

    def __init__(self, message: str, issues: list[Issue], root: Path):
        super().__init__(message)
        self.issues = issues
        self.root = root


@dataclass
class PartSource:
    part: str  # 'train' | 'test'
    csv: Path
    image_dir: Path
    labels_csv: Path | None = None


@dataclass
class Intake:
    root: Path
    layout: str  # 'kaggle' | 'kaggle (single-level folders)' | 'flat'
    sources: dict[str, PartSource]
    table: pd.DataFrame
    issues: list[Issue] = field(default_factory=list)

    def part(self, name: str) -> pd.DataFrame:
        return self.table[self.table["part"] == name]


TABLE_COLUMNS = ("id", "path", "male", "boneage", "part", "csv", "row")


# --------------------------------------------------------------------------- CSV reading

@dataclass
class _CsvRows:
    file: str  # relative name for messages
    header: list[str]
    columns: dict[str, int]  # role -> column index
    records: list[tuple[int, list[str]]]  # (line number, cells), data rows only


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _read_csv(path: Path, root: Path, part: str, required: tuple[str, ...], optional: tuple[str, ...],
              issues: list[Issue]) -> _CsvRows:
    """Read a CSV's header and rows, recording BOM/encoding/header warnings; fatal problems raise."""
    name = _rel(path, root)

    def fatal(problem: str, message: str) -> IntakeError:
        issue = Issue(part, "", None, name, "error", problem, message)
        return IntakeError(f"{path}: {message}", issues + [issue], root)

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fatal("unreadable csv", f"cannot read the file: {exc.strerror or exc}") from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        issues.append(Issue(part, "", 1, name, "warning", "utf-8 bom",
                            "the file starts with a UTF-8 byte-order mark; stripped"))
        raw = raw[3:]
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = raw.decode("utf-16")
        issues.append(Issue(part, "", None, name, "warning", "encoding",
                            "the file is UTF-16 (saved as 'Unicode text'?); read as UTF-16"))
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = raw.decode("latin-1")
            issues.append(Issue(part, "", None, name, "warning", "encoding",
                                f"the file is not UTF-8 (byte {exc.start}); read as Latin-1"))
    if not text.strip():
        raise fatal("empty csv", "the file is empty: expected a header line and one row per image")

    first_line = text.lstrip("\r\n").splitlines()[0]
    delimiter = ","
    if "," not in first_line:
        for candidate in (";", "\t"):
            if candidate in first_line:
                delimiter = candidate
                issues.append(Issue(part, "", None, name, "warning", "delimiter",
                                    f"columns are separated by {candidate!r}, not ','; read it that way"))
                break

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    header_line = 0
    records: list[tuple[int, list[str]]] = []
    last_line = 0
    try:
        for cells in reader:
            start = last_line + 1
            last_line = reader.line_num
            if not cells or all(c.strip() == "" for c in cells):
                continue  # blank line
            if header is None:
                header, header_line = cells, start
            else:
                records.append((start, cells))
    except csv.Error as exc:
        raise fatal("unreadable csv", f"not a valid CSV file near line {reader.line_num}: {exc}") from exc
    assert header is not None

    stripped = [h.strip() for h in header]
    width = len(header)
    if records and width > 1 and not any(_fits(cells, width) for _, cells in records):
        # Not one row has the header's columns: the file as a whole is unreadable (typically a header
        # saved with ';' over rows with ','), and leaving every row out would silently empty the part.
        sample = delimiter.join(records[0][1])
        row_delims = [d for d in (",", ";", "\t") if d != delimiter and d in sample]
        why = (f"the header is separated by {delimiter!r} but the rows by {row_delims[0]!r}" if row_delims else
               f"every row has a different number of fields (first: line {records[0][0]}, "
               f"{len(records[0][1])} field(s): {records[0][1]!r})")
        raise fatal("unsplittable csv",
                    f"none of its {len(records)} rows can be split into the header's {width} columns "
                    f"({', '.join(repr(h) for h in stripped)}): {why}. Save the file with one separator "
                    f"throughout (--skip-bad cannot help: it would leave out every row)")
    changed = [h for h, s in zip(header, stripped) if h != s]
    if changed:
        issues.append(Issue(part, "", header_line, name, "warning", "whitespace",
                            f"stray whitespace in header(s) {', '.join(repr(h) for h in changed)}; stripped"))
    keys = [header_key(h) for h in stripped]
    columns: dict[str, int] = {}
    for role in required + optional:
        for key in ROLE_KEYS[role]:
            hits = [i for i, k in enumerate(keys) if k == key]
            if len(hits) > 1:
                raise fatal("duplicate column",
                            f"column {stripped[hits[0]]!r} appears {len(hits)} times; found columns: "
                            f"{', '.join(stripped)}")
            if hits and hits[0] not in columns.values():
                columns[role] = hits[0]
                break
    missing = [role for role in required if role not in columns]
    if missing:
        names = " and ".join(f"'{ROLE_NAMES[r]}'" for r in missing)
        raise fatal("missing column",
                    f"missing column {names}; found columns: {', '.join(repr(s) for s in stripped)}")
    return _CsvRows(name, stripped, columns, records)


def _fits(cells: list[str], width: int) -> bool:
    """Whether a row splits into the header's `width` columns (trailing empty separators allowed)."""
    if len(cells) > width and all(c.strip() == "" for c in cells[width:]):
        return True
    return len(cells) == width


@dataclass
class _Row:
    line: int
    id: str
    male: bool | None
    boneage: float
    ok: bool = True  # False when a CSV-level error condemns the row


def _parse_rows(rows: _CsvRows, part: str, labelled: bool, issues: list[Issue],
                first_index: int | None) -> list[_Row]:
    """Parse each data row; record whitespace warnings and per-row errors.

    `first_index` is the table index of the first row (issues point at their table row);
    None for a labels file, whose rows are not table rows.
    """
    out: list[_Row] = []
    width = len(rows.header)
    col = rows.columns
    for n, (line, cells) in enumerate(rows.records):
        index = None if first_index is None else first_index + n

        def issue(severity, problem, detail, id_=""):
            issues.append(Issue(part, id_, line, rows.file, severity, problem, detail, index))

        padded = list(cells)
        if len(padded) > width and all(c.strip() == "" for c in padded[width:]):
            padded = padded[:width]  # trailing separators
        malformed = len(padded) != width
        padded = (padded + [""] * width)[:width]
        spaced = [rows.header[i] for i, c in enumerate(padded) if c != c.strip()]
        values = [c.strip() for c in padded]
        raw_id = values[col["id"]]
        if raw_id.lower().endswith(IMAGE_SUFFIX):
            raw_id = raw_id[: -len(IMAGE_SUFFIX)]
        row = _Row(line, raw_id, None, math.nan)
        out.append(row)
        if malformed:
            row.ok = False
            issue("error", "malformed row", f"{len(cells)} fields where the header has {width}: {cells!r}", raw_id)
            continue
        if spaced:
            issue("warning", "whitespace", f"stray whitespace around the value(s) of {', '.join(spaced)}; stripped",
                  raw_id)
        why = check_id(raw_id)
        if why:
            row.ok = False
            issue("error", "invalid id", f"{why}: an id must be a plain integer or name", raw_id)
        if "male" in col:
            cell = values[col["male"]]
            row.male = normalise_sex(cell)
            if row.male is None:
                row.ok = False
                issue("error", "unknown sex", f"sex value {cell!r} in column {rows.header[col['male']]!r} is not "
                      f"one of {SEX_SPELLINGS}", raw_id)
        if "boneage" in col:
            age, why = parse_age(values[col["boneage"]])
            row.boneage = age
            if why and (labelled or why != "empty"):
                row.ok = False
                what = f"missing bone age ({values[col['boneage']]!r})" if why == "empty" else why
                issue("error", "invalid age", f"{what}; expected 0..{MAX_AGE_MONTHS:g} months", raw_id)
    return out


def _flag_duplicates(rows: list[_Row], part: str, file: str, issues: list[Issue], first_index: int | None) -> None:
    """Duplicate ids: identical repeats condemn the later rows; conflicting labels condemn them all."""
    by_id: dict[str, list[int]] = {}
    for n, row in enumerate(rows):
        if row.id and not check_id(row.id):
            by_id.setdefault(row.id, []).append(n)
    for image_id, positions in by_id.items():
        if len(positions) < 2:
            continue
        group = [rows[p] for p in positions]
        lines = ", ".join(str(r.line) for r in group)
        labels = {(r.male, None if math.isnan(r.boneage) else r.boneage) for r in group}
        condemned = positions[1:] if len(labels) == 1 else positions
        for p in condemned:
            row = rows[p]
            row.ok = False
            if len(labels) == 1:
                detail = f"id {image_id} is repeated (rows {lines}) with the same labels; only row {group[0].line} is kept"
            else:
                detail = f"id {image_id} appears in rows {lines} with different labels; none of them can be trusted"
            index = None if first_index is None else first_index + p
            issues.append(Issue(part, image_id, row.line, file, "error", "duplicate id", detail, index))


# --------------------------------------------------------------------------- layouts

def _listing(root: Path) -> str:
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError:
        return "(cannot list it)"
    if not entries:
        return "(it is empty)"
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:15]]
    more = f", ... ({len(entries) - 15} more)" if len(entries) > 15 else ""
    return ", ".join(shown) + more


def _has_png(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.name.lower().endswith(IMAGE_SUFFIX) and e.is_file() for e in it)
    except OSError:
        return False


def _kaggle_image_dir(root: Path, nested: str) -> Path | None:
    """The image folder of a Kaggle part: nested `x/x/`, else the single-level `x/` variant."""
    double = root / nested
    single = double.parent
    if double.is_dir() and (_has_png(double) or not _has_png(single)):
        return double
    if single.is_dir() and _has_png(single):
        return single
    return None


def find_sources(root: str | os.PathLike) -> tuple[Path, str, dict[str, PartSource]]:
    """Recognise the layout of a dataset root; a UserError says what was expected and what is there."""
    root = Path(os.path.abspath(root))
    if not root.exists():
        raise UserError(f"input folder {root} does not exist. Expected {EXPECTED_LAYOUT}. {GET_DATA_HINT}")
    if not root.is_dir():
        raise UserError(f"input {root} is a file, not a folder. Expected {EXPECTED_LAYOUT}. {GET_DATA_HINT}")

    train_csv, test_csv = root / TRAIN_CSV, root / TEST_CSV
    if train_csv.is_file() or test_csv.is_file() or (root / TRAIN_DIR).parent.is_dir():
        if not train_csv.is_file():
            raise UserError(f"{root} looks like the Kaggle layout but has no {TRAIN_CSV} (the training labels). "
                            f"It contains: {_listing(root)}. {GET_DATA_HINT}")
        sources: dict[str, PartSource] = {}
        layouts = set()
        for part, csv_path, nested in (("train", train_csv, TRAIN_DIR), ("test", test_csv, TEST_DIR)):
            if not csv_path.is_file():
                if part == "test" and (root / nested).parent.is_dir():
                    raise UserError(f"{root} has the test image folder {Path(nested).parent}/ but no {TEST_CSV} "
                                    f"(Case ID,Sex). Restore it from the Kaggle download. {GET_DATA_HINT}")
                continue
            image_dir = _kaggle_image_dir(root, nested)
            if image_dir is None:
                raise UserError(f"{root} has {csv_path.name} but no images in {nested}/ (or {Path(nested).parent}/): "
                                f"was the download unzipped completely? It contains: {_listing(root)}. "
                                f"{GET_DATA_HINT}")
            layouts.add("kaggle" if image_dir == root / nested else "kaggle (single-level folders)")
            labels = root / TEST_LABELS_CSV if part == "test" and (root / TEST_LABELS_CSV).is_file() else None
            sources[part] = PartSource(part, csv_path, image_dir, labels)
        return root, " + ".join(sorted(layouts)), sources

    csvs = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if len(csvs) == 1:
        if _has_png(root):
            return root, "flat", {"train": PartSource("train", csvs[0], root)}
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _has_png(p))
        if len(subdirs) == 1:
            return root, "flat", {"train": PartSource("train", csvs[0], subdirs[0])}
        if len(subdirs) > 1:
            raise UserError(f"{root} has one CSV ({csvs[0].name}) but PNGs in several subfolders "
                            f"({', '.join(p.name for p in subdirs)}); a flat dataset keeps its PNGs beside the CSV "
                            f"or in one subfolder. Expected {EXPECTED_LAYOUT}.")
        raise UserError(f"{root} has one CSV ({csvs[0].name}) but no PNG images beside it or in a subfolder. "
                        f"It contains: {_listing(root)}. Expected {EXPECTED_LAYOUT}. {GET_DATA_HINT}")
    hint = ""
    nested_roots = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / TRAIN_CSV).is_file()]
    if nested_roots:
        hint = f" The Kaggle layout is in {nested_roots[0]}: pass `--input {nested_roots[0]}`."
    elif any(p.suffix.lower() == ".zip" for p in root.iterdir()):
        hint = " There is a .zip file: unzip it here (kaggle's `--unzip` does that)."
    found = f"{len(csvs)} CSV files ({', '.join(p.name for p in csvs)})" if csvs else "no CSV file"
    raise UserError(f"no recognisable dataset in {root}: found {found}. It contains: {_listing(root)}. "
                    f"Expected {EXPECTED_LAYOUT}.{hint} {GET_DATA_HINT}")


def read_dataset(root: str | os.PathLike) -> Intake:
    """Read a dataset root (Kaggle or flat layout) into one normalised table plus CSV-level issues.

    Raises UserError when the root is missing or unrecognisable, IntakeError (a DataError) when
    a file is unusable as a whole (missing column, empty file).
    """
    root, layout, sources = find_sources(root)
    issues: list[Issue] = []
    records: list[dict] = []
    parsed: dict[str, list[_Row]] = {}
    for part, source in sources.items():
        labelled = part == "train"
        required = ("id", "boneage", "male") if labelled else ("id", "male")
        rows = _read_csv(source.csv, root, part, required, ("boneage",) if not labelled else (), issues)
        first = len(records)
        parsed_rows = _parse_rows(rows, part, labelled, issues, first)
        _flag_duplicates(parsed_rows, part, rows.file, issues, first)
        if part == "test" and source.labels_csv is not None:
            _merge_test_labels(source.labels_csv, root, parsed_rows, issues, first)
        parsed[part] = parsed_rows
        image_dir = os.path.abspath(source.image_dir)
        for row in parsed_rows:
            usable_id = bool(row.id) and not check_id(row.id)
            records.append({
                "id": row.id,
                "path": os.path.join(image_dir, row.id + IMAGE_SUFFIX) if usable_id else "",
                "male": row.male,
                "boneage": row.boneage,
                "part": part,
                "csv": rows.file,
                "row": row.line,
            })
    if "train" in parsed and "test" in parsed:
        _flag_cross_part(parsed, sources, root, issues)
    table = pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS))
    table["id"] = table["id"].astype(str)
    table["boneage"] = table["boneage"].astype(float)
    table["row"] = table["row"].astype(int)
    return Intake(root, layout, sources, table, issues)


def _merge_test_labels(path: Path, root: Path, test_rows: list[_Row], issues: list[Issue], first: int) -> None:
    """Fill test bone ages from boneage-test-labels.csv (id,boneage[,male]).

    A bad label row is an error in the labels file; it never condemns the test row itself
    (with --skip-bad the label is left out and the test image stays, unlabelled).
    """
    labels = _read_csv(path, root, "test", ("id", "boneage"), ("male",), issues)
    label_rows = _parse_rows(labels, "test", True, issues, None)
    _flag_duplicates(label_rows, "test", labels.file, issues, None)
    by_id = {r.id: r for r in label_rows if r.ok}
    bad_ids = {r.id for r in label_rows if not r.ok}
    test_ids = {r.id for r in test_rows}
    for n, row in enumerate(test_rows):
        label = by_id.get(row.id)
        if label is None:
            continue
        row.boneage = label.boneage
        if label.male is not None and row.male is not None and label.male != row.male:
            issues.append(Issue("test", row.id, row.line, _rel(root / TEST_CSV, root), "warning", "sex mismatch",
                                f"{labels.file} row {label.line} gives male={label.male}, the test CSV "
                                f"male={row.male}; the test CSV is kept", first + n))
    unlabelled = [r for r in test_rows if math.isnan(r.boneage) and r.id not in bad_ids]
    if unlabelled:
        issues.append(Issue("test", unlabelled[0].id, unlabelled[0].line, _rel(root / TEST_CSV, root), "warning",
                            "unlabelled test row", f"{len(unlabelled)} test row(s) have no label in {labels.file} "
                            f"(first: id {unlabelled[0].id}); they stay unlabelled"))
    for label in label_rows:
        if label.ok and label.id not in test_ids:
            issues.append(Issue("test", label.id, label.line, labels.file, "warning", "label without test row",
                                f"{labels.file} labels id {label.id}, which is not in {TEST_CSV}; ignored"))


def _flag_cross_part(parsed: dict[str, list[_Row]], sources: dict[str, PartSource], root: Path,
                     issues: list[Issue]) -> None:
    """An id in both parts would collide in every id-keyed artefact (cache, predictions): error on both."""
    train_ids = {r.id for r in parsed["train"] if r.id}
    both = {r.id for r in parsed["test"] if r.id in train_ids}
    if not both:
        return
    offset = {"train": 0, "test": len(parsed["train"])}
    for part in ("train", "test"):
        other = "test" if part == "train" else "train"
        for n, row in enumerate(parsed[part]):
            if row.id in both:
                row.ok = False
                issues.append(Issue(part, row.id, row.line, _rel(sources[part].csv, root), "error", "duplicate id",
                                    f"id {row.id} is in both the training and the test CSV; ids must be unique "
                                    f"across parts (the {other} row is flagged too)", offset[part] + n))
