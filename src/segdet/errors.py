"""The toolkit's own error types.

Everything that is wrong with a user's input (a file, a record in it, a config key) is raised as a
:class:`SegdetError`, whose message is one line naming where the problem is and what it is. The CLI
prints that line and exits with status 1 instead of a traceback.
"""

from __future__ import annotations

from os import PathLike


class SegdetError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class DataError(SegdetError):
    """A problem with a dataset: an unreadable file, a malformed record, an impossible value.

    ``str(err)`` reads ``"<file>: <record>: <problem>"`` (the parts that are known).
    """

    def __init__(self, problem: str, file: str | PathLike | None = None, record: str | None = None):
        self.problem = problem
        self.file = None if file is None else str(file)
        self.record = record
        super().__init__(": ".join(p for p in (self.file, record, problem) if p))


class ConfigError(SegdetError):
    """A configuration key that is unknown, mistyped or has a value of the wrong type."""
