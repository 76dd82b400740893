"""Credentials never leave the process: `redact()` hides the password of every URL in a text
(`scheme://user:***@host`), and `RedactFilter` applies it to every log record.

Usage: `print(redact(uri))`; `handler.addFilter(RedactFilter())`. Every place gruflow prints,
logs, tags or writes an artifact that can hold a URL goes through `redact()`.
"""

from __future__ import annotations

import logging
import re

from components.errors import GruflowError

# scheme://user:password@host -> the password is everything between the first ':' of the
# userinfo and the last '@' before the host (passwords may contain '@' and ':').
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):"
    r"(?P<password>[^/\s]*)@(?=[^@/\s]*(?:[/\s'\"]|$))"
)


def redact(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` replaced by ***."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


class RedactedError(RuntimeError):
    """An error whose message held a credential: the same message, redacted."""


class RedactedUserError(GruflowError):
    """A user error (exit 2) whose message held a credential, redacted."""


class RedactFilter(logging.Filter):
    """Redacts the message and the traceback of every record it sees (attach to handlers:
    a handler's filters see records from every logger that reaches it)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format: leave it to the handler's own error path
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redacted_errors(fn):
    """Decorate a flow or task: an exception whose text holds a credential is re-raised with
    the text redacted, so Prefect's stored state message never carries it."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            text = str(exc)
            if redact(text) != text:
                kind = RedactedUserError if isinstance(exc, GruflowError) else RedactedError
                clean = kind(f"{type(exc).__name__}: {redact(text)}")
                for note in getattr(exc, "__notes__", []):  # e.g. whether outputs came back
                    clean.add_note(redact(note))
                raise clean from None
            raise

    return wrapper
