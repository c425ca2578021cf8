"""JSON on the hot path: orjson, a tenth of the stdlib's time to encode a state and a third to
decode a vendor record.

``loads`` reads an integer beyond 64 bits as a float (orjson's rule), so it is for vendor answers
whose documents give long identifiers as strings (the tracker API: IMEI and ICCID are strings);
a plugin whose vendor may send an ICCID as a bare number decodes with ``loads_exact``: the stdlib's
value always, through orjson unless the text may hold an integer literal of 19 or more digits.
``dumps`` writes what orjson cannot (non-string keys, integers beyond 64 bits) with the stdlib.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """The JSON value of ``data``; ``ValueError`` (a ``json.JSONDecodeError``) if malformed."""
    return orjson.loads(data)


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys (equal data, equal bytes: unchanged states stay unsent)."""
    try:
        # orjson's bytes keep their 4 KB work buffer; a right-sized copy is what the link retains
        return memoryview(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).tobytes()
    except TypeError:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


#: digits made alike; what may come between a value's start and its digits (``,``, ``[``, JSON
#: whitespace, a minus sign) made ``:``: ``", -8931..."`` becomes ``":::0000..."``
_FLATTEN = bytes.maketrans(b"0123456789,[ \t\n\r-", b"0" * 10 + b":" * 7)
_LONG_VALUE = b":" + b"0" * 19  # a nested number of 19+ digits: maybe beyond 64 bits


def may_hold_long_integer(raw: bytes) -> bool:
    """Whether a JSON text may hold a nested number of 19+ digits (digits in a string can give a
    false positive, never a false negative: a nested value follows ``:``, ``,`` or ``[`` and JSON
    whitespace)."""
    return _LONG_VALUE in raw.translate(_FLATTEN)


def loads_exact(data: bytes | str) -> Any:
    """``json.loads(data)``'s value and errors, through orjson where that gives the same value.

    orjson answers unless the text may hold an integer of 19+ digits (orjson reads one beyond 64 bits
    as a float: an ICCID sent as a bare number), fails (NaN, Infinity, lone surrogates, a BOM, another
    encoding: all the stdlib's to accept or refuse) or gives a top-level float (a bare long number).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if not may_hold_long_integer(raw):
        try:
            value = orjson.loads(data)
        except ValueError:
            pass
        else:
            if type(value) is not float:
                return value
    return json.loads(data)
