"""Shared parts of the vendor simulators: switchable faults and a proxy's HTML error page.

Each plugin's simulator subclasses :class:`FaultSwitches` with the faults its vendor can show
(``rate_limit`` where the API throttles, token tricks, ...) and serves them at ``/_sim/faults``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any

#: what an nginx in front of a vendor answers when the backend is down (``{status}`` filled in)
HTML_PAGE = ("<html>\r\n<head><title>{status} Bad Gateway</title></head>\r\n<body>\r\n<center><h1>{status} Bad "
             "Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


@dataclass
class FaultSwitches:
    """Faults every simulator offers. A counter field takes an int N (fire on the next N requests),
    a float p in (0, 1] (fire with probability p on each request) or True (always). ``slow`` delays
    every answer (s); ``html_status`` is the HTTP status of the HTML page (502, or 200 for a proxy
    that says "OK")."""

    http_500: int | float = 0
    html_error: int | float = 0
    malformed_json: int | float = 0
    slow: float = 0.0
    html_status: int = 502

    def fire(self, name: str, rng: random.Random) -> bool:
        """Whether fault ``name`` fires for this request (consuming one count)."""
        value = getattr(self, name)
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if value > 0:
                setattr(self, name, value - 1)
                return True
            return False
        return value > 0 and rng.random() < value

    def update(self, values: dict[str, Any]) -> None:
        """Set fields from a dict, rejecting unknown names and non-numeric values (all or nothing)."""
        names = {f.name for f in fields(self)}
        for key, value in values.items():
            if key not in names or not isinstance(value, int | float):
                raise ValueError(f"bad fault {key}={value!r}")
        for key, value in values.items():
            setattr(self, key, value)

    def reset(self) -> None:
        self.update({f.name: f.default for f in fields(self)})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
