"""Voluptuous validators for numbers, shared by the config, the service payloads and plugin schemas.

``vol.Coerce(float)`` lets ``.inf``, ``.nan`` and ``true`` through and raises ``OverflowError`` (a
traceback, not a config error) on a 400-digit integer; ``vol.Coerce(int)`` truncates ``1.5`` to 1.
These accept numbers and numeric text, and reject everything else with ``vol.Invalid``.
"""

from __future__ import annotations

import math
from typing import Any

import voluptuous as vol


def number(value: Any) -> float:
    """A finite number, also as text."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise vol.Invalid("expected a number")
    try:
        result = float(value)
    except (ValueError, OverflowError):
        raise vol.Invalid("expected a number") from None
    if not math.isfinite(result):
        raise vol.Invalid("expected a finite number")
    return result


def integer(value: Any) -> int:
    """An integer, also as text; a float only when whole."""
    if isinstance(value, bool):
        raise vol.Invalid("expected an integer")
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise vol.Invalid("expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise vol.Invalid("expected an integer")
