"""User-facing errors: the CLI prints these as one clear message, never a traceback."""


class UserError(Exception):
    """Bad input or a bad request from the user; the message says what and where."""


class DataError(UserError):
    """A data file or row is unusable; the message names the file or row."""


class DiskFullError(UserError):
    """A write failed because the disk (or the user's quota) is full; the message names the file
    that was being written and how much space is left. The OSError it came from is its __cause__."""
