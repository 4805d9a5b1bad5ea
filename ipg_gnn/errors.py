"""Errors a user fixes from the message alone, and how the entry points show them.

A bad setting, a missing or damaged file, an unsupported model op or a run directory in use is
not a bug of the project: a traceback would bury the one line that says what to do. Such errors
derive from :class:`UserError`; `train.py` and `repair.py` print its message and exit with 1.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class UserError(Exception):
    """An error whose message names the setting, file or input at fault and what to do."""


class ConfigError(UserError, ValueError):
    """A setting is out of its range or names nothing known; the message names the key."""


class MissingFileError(UserError, FileNotFoundError):
    """A file a job needs (a run's artifact, a cached store) is not there; the message says
    which step makes it."""


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Show a :class:`UserError` as `error: <message>` on stderr and exit with status 1."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
