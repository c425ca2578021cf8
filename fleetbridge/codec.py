"""JSON on the hot path: orjson, a tenth of the stdlib's time to encode a state and a third to
decode a vendor record.

``loads`` reads an integer beyond 64 bits as a float (orjson's rule), so it is for vendor answers
whose documents give long identifiers as strings (the tracker API: IMEI and ICCID are strings);
a plugin whose vendor may send an ICCID as a bare number decodes with the stdlib ``json``.
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
