"""User-facing errors: the CLI prints these as one clear message, never a traceback."""


class UserError(Exception):
    """Bad input or a bad request from the user; the message says what and where."""


class DataError(UserError):
    """A data file or row is unusable; the message names the file or row."""
