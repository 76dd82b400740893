"""Project error type and the CLI guard that turns it into one line and a non-zero exit."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class GruflowError(Exception):
    """A user-facing problem: the message names the input and the fix."""


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a `main()`: user mistakes print one line on stderr and exit 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GruflowError as exc:
            print(f"gruflow: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
