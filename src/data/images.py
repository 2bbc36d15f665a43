"""Decode any radiograph PNG we accept into one form: 8-bit, single-channel.

Used by the audit (to find and describe problems) and by the preprocessing cache (to
convert), so both agree on what an image is: every row the audit keeps is one that
`read_gray8` decodes.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..utils.errors import DataError

MIN_SIDE = 32  # smaller than this is not a usable radiograph
BLANK_STD = 1.0  # an 8-bit image whose pixel std is below this is blank (constant or near-constant)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Signatures of other image formats cv2 can decode (a file may be misnamed .png).
_OTHER_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)
_PNG_COLOR_TYPES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}


@dataclass
class DecodedImage:
    pixels: np.ndarray  # uint8, HxW
    conversions: list[str] = field(default_factory=list)  # e.g. "16-bit -> 8-bit", "RGB -> gray"


def to_gray8(raw: np.ndarray) -> DecodedImage:
    """Convert an array as cv2.IMREAD_UNCHANGED returns it to 8-bit gray, noting each conversion."""
    notes: list[str] = []
    img = raw
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
            notes.append("RGBA -> gray")
        elif channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            notes.append("RGB -> gray")
        elif channels == 1:
            img = img[:, :, 0]
        else:
            raise ValueError(f"{channels} channels")
    if img.dtype == np.uint16:
        # Radiographs often use only 10-14 of the 16 bits: stretch the used range, not 0..65535.
        lo, hi = float(img.min()), float(img.max())
        scale = 255.0 / max(hi - lo, 1.0)
        img = np.clip((img.astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)
        notes.append("16-bit -> 8-bit")
    elif img.dtype != np.uint8:
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        notes.append(f"{raw.dtype} -> 8-bit")
    return DecodedImage(np.ascontiguousarray(img), notes)


# --------------------------------------------------------------------------- file sniffing

def sniff_format(head: bytes) -> str | None:
    """'PNG', 'JPEG', ... from a file's first bytes; None when it is no image format we know."""
    if head.startswith(PNG_SIGNATURE):
        return "PNG"
    for signature, name in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return None


def describe_non_image(head: bytes) -> str:
    """A short description of a file that is not an image: text (quoted) or its first bytes."""
    sample = head[:48]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(ch.isprintable() or ch in "\r\n\t" for ch in text.rstrip("\x00")):
        shown = text.strip().replace("\r", " ").replace("\n", " ")[:32]
        return f"a text file starting with {shown!r}"
    return f"unknown format (first bytes {sample[:8].hex(' ')})"


@dataclass
class PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int
    complete: bool  # an IEND chunk closes the chunk chain inside the file
    problem: str = ""  # why it is incomplete or malformed


def parse_png(buf: bytes | memoryview) -> PngHeader:
    """Walk a PNG's chunk chain (headers only, no inflate): IHDR fields and whether it is complete.

    A truncated PNG either ends inside a chunk or never reaches IEND; some decoders return
    the rows they got, so this structural check is what catches truncation reliably.
    """
    n = len(buf)
    if n < 33 or bytes(buf[:8]) != PNG_SIGNATURE:
        return PngHeader(0, 0, 0, 0, False, "file ends inside the PNG header")
    length, ctype = struct.unpack(">I4s", bytes(buf[8:16]))
    if ctype != b"IHDR" or length != 13:
        return PngHeader(0, 0, 0, 0, False, "first chunk is not a valid IHDR")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", bytes(buf[16:26]))
    header = PngHeader(width, height, bit_depth, color_type, False)
    pos = 8
    saw_idat = False
    while pos + 12 <= n:
        length, ctype = struct.unpack(">I4s", bytes(buf[pos:pos + 8]))
        end = pos + 12 + length
        if end > n:
            header.problem = f"file ends inside a {ctype.decode('latin-1')!r} chunk ({end - n} bytes missing)"
            return header
        if ctype == b"IDAT":
            saw_idat = True
        if ctype == b"IEND":
            header.complete = saw_idat
            if not saw_idat:
                header.problem = "no image data (IDAT) before IEND"
            return header
        pos = end
    header.problem = "file ends before the IEND chunk"
    return header


# --------------------------------------------------------------------------- decoding

@contextlib.contextmanager
def _quiet_stderr():
    """Silence libpng's own messages on fd 2 while decoding; the audit reports problems itself."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _decode_bytes(buf: np.ndarray, quiet: bool = False) -> tuple[np.ndarray | None, str, str]:
    """(raw array or None, problem, detail) for a file's bytes; problem is '' when it decoded."""
    if buf.size == 0:
        return None, "zero-byte image", "the file is empty (0 bytes)"
    head = buf[:64].tobytes()
    fmt = sniff_format(head)
    if fmt is None:
        return None, "not an image", f"not an image file: {describe_non_image(head)}"
    if fmt == "PNG":
        header = parse_png(memoryview(buf))
        if not header.complete:
            return None, "truncated image", f"truncated PNG ({buf.size} bytes): {header.problem}"
    if quiet:
        with _quiet_stderr():
            raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    else:
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if raw is None:
        return None, "unreadable image", f"{fmt} data that cannot be decoded (corrupt)"
    return raw, "", ""


def read_gray8(path: str | os.PathLike) -> DecodedImage:
    """Read an image file as 8-bit gray; raise DataError naming the file when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file is missing")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: zero-byte file")
    buf = np.fromfile(path, dtype=np.uint8)
    raw, problem, detail = _decode_bytes(buf)
    if raw is None:
        raise DataError(f"{path}: {detail}")
    try:
        decoded = to_gray8(raw)
    except ValueError as exc:
        raise DataError(f"{path}: unsupported image format ({exc})") from exc
    return decoded


# --------------------------------------------------------------------------- audit inspection

@dataclass
class ImageReport:
    """What the audit needs to know about one image file (cached per path, size and mtime)."""

    path: str
    size: int = 0
    mtime_ns: int = 0
    problem: str = ""  # '' when usable; else e.g. 'truncated image', 'blank image'
    detail: str = ""
    width: int = 0
    height: int = 0
    channels: int = 0
    bits: int = 0
    conversions: str = ""  # '; '-joined read_gray8 conversions, e.g. '16-bit -> 8-bit'
    note: str = ""  # a harmless oddity worth a warning, e.g. JPEG data in a .png file
    std: float = math.nan

    def as_dict(self) -> dict:
        return asdict(self)


REPORT_FIELDS = tuple(ImageReport.__dataclass_fields__)


def inspect_image(path: str) -> ImageReport:
    """Decode one image the way `read_gray8` does and describe it; never raises.

    Checks: zero bytes, not an image (text or unknown bytes), truncated PNG (chunk walk),
    undecodable data, unsupported channels, conversions (16-bit, RGB/RGBA), tiny (< MIN_SIDE)
    and blank (std < BLANK_STD) images.
    """
    report = ImageReport(path=str(path))
    try:
        st = os.stat(path)
        report.size, report.mtime_ns = int(st.st_size), int(st.st_mtime_ns)
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        report.problem, report.detail = "unreadable image", f"cannot read the file: {exc.strerror or exc}"
        return report
    raw, problem, detail = _decode_bytes(buf, quiet=True)
    if raw is None:
        report.problem, report.detail = problem, detail
        return report
    fmt = sniff_format(buf[:64].tobytes())
    if fmt != "PNG":
        report.note = f"{fmt} data in a .png file (decoded anyway)" if str(path).lower().endswith(".png") else ""
    report.height, report.width = int(raw.shape[0]), int(raw.shape[1])
    report.channels = 1 if raw.ndim == 2 else int(raw.shape[2])
    report.bits = int(raw.dtype.itemsize * 8)
    try:
        decoded = to_gray8(raw)
    except ValueError as exc:
        report.problem, report.detail = "unreadable image", f"unsupported image format ({exc})"
        return report
    report.conversions = "; ".join(decoded.conversions)
    pixels = decoded.pixels
    _, std = cv2.meanStdDev(pixels)
    report.std = round(float(std[0, 0]), 3)
    if min(report.height, report.width) < MIN_SIDE:
        report.problem = "tiny image"
        report.detail = f"{report.width}x{report.height} px (smallest side < {MIN_SIDE} px)"
    elif report.std < BLANK_STD or float(raw.max()) - float(raw.min()) < 2:
        # also blank: at most two adjacent raw levels, which the 16-bit stretch would blow up to 0/255 noise
        lo, hi = raw.min(), raw.max()
        what = (f"constant value {lo}" if lo == hi else
                f"near-constant (values {lo}..{hi}, std {report.std:.2f} after conversion to 8-bit)")
        report.problem = "blank image"
        report.detail = f"blank {report.width}x{report.height} image: {what}"
    return report
