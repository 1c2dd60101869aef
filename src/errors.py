"""User-facing errors: one line on stderr, non-zero exit, no traceback."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input or configuration; the message names the file, column, encoder or key."""


def cli(main):
    """Decorator for command entry points: a UserError becomes a one-line message and exit code 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    return wrapper
