"""Test helpers shared by the vendor plugins' unit tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp


class MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's ``stream_writer`` argument:
    pass ``response_class=MockResponse`` to ``aioresponses`` callbacks/``add``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)
