"""tqdm progress bars that stay readable in logs: a terminal gets live updates, a file or CI
log gets one line at most every 30 s with the real count, and a final line when the bar ends.

tqdm is made for terminals: it redraws one line with carriage returns, freezes the count it
shows between timed updates (its dynamic `miniters`), and wipes a `leave=False` bar at the end.
In a log file that makes one unreadable line of `\\r` segments stuck at `0/74`. Off a terminal,
`progress` therefore updates on time alone (`miniters=1`), writes each update as its own line,
drops the cursor movements and wipes, and always leaves the final count.
"""

from __future__ import annotations

import os
import re
import sys

from tqdm import tqdm as _std_tqdm
from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0
INTERVAL_ENV = "BONEAGE_PROGRESS_INTERVAL"  # seconds between log lines off a terminal (tests use it)

_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def log_interval() -> float:
    """Seconds between progress lines in a log: $BONEAGE_PROGRESS_INTERVAL, else 30."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, LOG_INTERVAL_S)))
    except ValueError:
        return LOG_INTERVAL_S


class _LineWriter:
    """A file wrapper that turns tqdm's in-place redraws into whole lines: every status becomes
    one `\\n`-terminated line, blank redraws (wipes) and terminal escapes are dropped, and a line
    identical to the previous one is not repeated."""

    def __init__(self, fp):
        self._fp = fp
        self._last = None

    def write(self, text: str) -> int:
        for chunk in re.split(r"[\r\n]", _ESCAPES.sub("", str(text))):
            line = chunk.rstrip()
            if line and line != self._last:
                self._fp.write(line + "\n")
                self._last = line
        return len(text)

    def flush(self) -> None:
        getattr(self._fp, "flush", lambda: None)()

    def __getattr__(self, name):  # encoding, isatty, fileno, ...
        return getattr(self._fp, name)


class LogTqdm(_std_tqdm):
    """tqdm for a log file: see the module docstring."""

    def __init__(self, iterable=None, *args, file=None, **kwargs):
        kwargs["miniters"] = 1  # update on time alone: dynamic miniters freezes the shown count
        kwargs["leave"] = True  # a log keeps the final count (a file cannot wipe a line anyway)
        kwargs.pop("dynamic_ncols", None)
        kwargs.setdefault("ascii", True)
        super().__init__(iterable, *args, file=_LineWriter(file if file is not None else sys.stderr), **kwargs)

    def display(self, msg=None, pos=None):
        if msg is None:
            self._shown = (self.n, self.postfix)
        return super().display(msg=msg, pos=pos)

    def close(self):
        if not self.disable and getattr(self, "_shown", None) == (self.n, self.postfix):
            self.leave = False  # the final count is the last line already: do not repeat it
        super().close()

    def moveto(self, n):  # nested bars: no cursor movement in a log
        pass


def _isatty(fp) -> bool:
    try:
        return bool(fp.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable=None, **kwargs):
    """A progress bar on stderr (or `file=`): live on a terminal, a line every 30 s in a log."""
    fp = kwargs.get("file") or sys.stderr
    if _isatty(fp):
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)
    kwargs.setdefault("mininterval", log_interval())
    return LogTqdm(iterable, **kwargs)
