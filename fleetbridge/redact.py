"""Secrets never leave the process: one registry of secret values, applied to every log record and
to every text the bridge publishes."""

from __future__ import annotations

import logging
import re

_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
MASK = "***"


def add_secret(value: str | None) -> None:
    """Register a value (password, key, token) to be masked wherever it would appear."""
    global _pattern
    if not value or len(value) < 4 or value in _secrets:
        return
    _secrets.add(value)
    _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    if _pattern is None or not text:
        return text
    return _pattern.sub(MASK, text)


class RedactingFilter(logging.Filter):
    """Masks secrets in the final message (and traceback) of each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is None:
            return True
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
