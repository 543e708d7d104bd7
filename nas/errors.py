"""User-facing errors.

Every problem a user can fix (a missing file, a bad config field, an unknown set name) is raised
as :class:`UsageError` with a one-line message naming the file or field. The command line prints
the message and exits with code 2; the traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A usage or input error: one line, names the offending file or field, exit code 2."""

    exit_code = 2
