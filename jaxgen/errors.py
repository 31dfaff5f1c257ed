"""The two kinds of failure jaxgen tells apart, so a crash never looks like a typo.

``UsageError``: the user can fix it (an unknown key, a value out of range, a workdir of another
experiment, a config change a checkpoint cannot take). The CLI prints one line and exits 2.
``RunError``: the run cannot go on for a reason that is not a typo and not a bug (every
checkpoint of a workdir is damaged, a coordinator cannot be reached). The CLI prints one line
and exits 1. Anything else is a bug: the CLI shows the traceback and exits 1.

``UsageError`` subclasses ``ValueError`` so library callers that catch ``ValueError`` keep
working.
"""
from __future__ import annotations


class UsageError(ValueError):
    """A mistake the user can fix: one line, exit status 2."""


class DataError(UsageError):
    """A dataset's file or record is missing, malformed or corrupt: one line naming the file
    (and the record), exit status 2."""


class RunError(RuntimeError):
    """The run cannot continue (not a user mistake, not a bug): one line, exit status 1."""


__all__ = ["DataError", "RunError", "UsageError"]
