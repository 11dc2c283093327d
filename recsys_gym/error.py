"""Exceptions raised by :mod:`recsys_gym`.

Every error names the argument, file or column at fault, shows the value received and what was
expected. They subclass the built-in exception a caller would catch anyway.
"""


class RecsysGymError(Exception):
    """Base class of every error this package raises on purpose."""


class DataError(RecsysGymError, ValueError):
    """A data file or table is missing, malformed or inconsistent.

    The message names the file (and line, for a malformed row) or the table and column.
    """


class MissingDataError(DataError, FileNotFoundError):
    """A required data directory or file does not exist."""


class CacheError(RecsysGymError, RuntimeError):
    """A cache directory holds something that cannot be trusted or cannot be written."""
