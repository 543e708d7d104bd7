"""User-facing errors and the one "did you mean" helper.

Every problem a user can fix (a missing file, a bad config field, an unknown set name) is raised
as :class:`UsageError` with a one-line message naming the file or field. The command line prints
the message and exits with code 2; the traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UsageError(ValueError):
    """A usage or input error: one line, names the offending file or field, exit code 2."""

    exit_code = 2


class DivergedError(RuntimeError):
    """Training diverged: a loss became NaN or infinite (lower the learning rate, or enable
    gradient clipping). The command line reports it in one line with exit code 2."""


def did_you_mean(name: object, candidates: Iterable[object], prefix: str = "") -> str:
    """The suffix ``" (did you mean 'x'?)"`` for the closest candidate, or ``""``.

    Args:
        name: what the user wrote.
        candidates: the valid names.
        prefix: prepended to the suggestion (e.g. the dotted path of the parent field).

    Returns:
        A string to append to an error message (empty when nothing is close).
    """
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""
