"""Test helpers shared by the vendor plugins' unit tests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import aiohttp


class MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's ``stream_writer`` argument:
    pass ``response_class=MockResponse`` to ``aioresponses`` callbacks/``add``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


class FakeContext:
    """A recording :class:`fleetbridge.platform.AccountContext` for the plugins' unit tests (the
    end-to-end tests use the real one)."""

    def __init__(self, session: aiohttp.ClientSession, config: dict[str, Any], *, account_id: str,
                 kinds: Iterable[str], kv: dict[str, Any] | None = None, open_refs: set[str] | None = None) -> None:
        self.account_id = account_id
        self.config = config
        self.session = session
        self.kinds = set(kinds)
        self.rates: list[str] = []
        self.secrets: set[str] = set()
        self.warnings: dict[str, str] = {}
        self.warn_calls: list[tuple[str, str | None]] = []
        self.kv: dict[str, Any] = kv if kv is not None else {}
        self.kv_writes: list[tuple[str, Any]] = []
        self.resolved: list[tuple[str, str, str]] = []
        self.open_refs = open_refs  # None: every call is open
        self.poll_requests = 0

    async def rate(self, kind: str) -> None:
        assert kind in self.kinds, kind
        self.rates.append(kind)

    def add_secret(self, value: str) -> None:
        self.secrets.add(value)

    def warn(self, code: str, message: str | None) -> None:
        self.warn_calls.append((code, message))
        if message is None:
            self.warnings.pop(code, None)
        else:
            self.warnings[code] = message

    async def kv_get(self, key: str) -> Any:
        return json.loads(json.dumps(self.kv.get(key)))

    async def kv_set(self, key: str, value: Any) -> None:
        self.kv[key] = json.loads(json.dumps(value))
        self.kv_writes.append((key, self.kv[key]))

    def resolve_call(self, vendor_ref: str, status: str, detail: str = "") -> bool:
        self.resolved.append((vendor_ref, status, detail))
        return self.open_refs is None or vendor_ref in self.open_refs

    def request_poll(self) -> None:
        self.poll_requests += 1
