"""AirVantage gateway inventory and operations: endpoints, paging, error keys, operation outcomes.

* ``GET /api/v1/gateways?fields=..&offset=..&size=..`` plus criteria -> ``{items, count, size, offset}``;
  paged by offset until ``count`` items are held (``count`` may move: an empty page also ends it).
* ``GET|PUT /api/v1/gateways/{uid}``: details and edit (only the fields sent are changed).
* ``POST /api/v1/operations/gateways/label`` -> ``{"operation": uid}``; the operation runs later:
  ``GET /api/v1/operations/{uid}`` until ``FINISHED``, then its counters tell success or failure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetbridge.errors import AuthFailed, BadResponse, VendorError
from fleetbridge.platform import ServiceResult

from .rest import RestClient

_LOGGER = logging.getLogger(__name__)

GATEWAYS_PATH = "/api/v1/gateways"
OPERATIONS_PATH = "/api/v1/operations"
LABEL_PATH = "/api/v1/operations/gateways/label"
FIELDS = ("uid", "imei", "macAddress", "serialNumber", "type", "state", "creationDate", "labels", "metadata")
STATES = ("INVENTORY", "BEING_TRANSFERRED")
MAX_PAGES = 1000
MAX_LABELS = 100  # label.amount.exceeded past it
FINISHED = "FINISHED"

#: error key -> (class, readable reason): the document's keys, and a hint where one helps.
MESSAGES: dict[str, tuple[type[VendorError], str]] = {
    "gateway.unknown": (VendorError, ("the gateway is unknown to AirVantage (deleted, transferred, or in another "
                                      "region or company)")),
    "gateway.not.unique.identifiers": (VendorError, ("one of IMEI, MAC address or serial number is already used "
                                                     "by another gateway")),
    "gateway.missing.identifiers": (VendorError, "at least one of IMEI, MAC address or serial number must be set"),
    "gateway.invalid.metadata": (VendorError, "metadata keys must not be blank or repeated"),
    "gateway.invalid.mac.address": (VendorError, ("the MAC address must be six pairs of hex digits separated "
                                                  "by colons")),
    "gateway.being.transferred": (VendorError, "the gateway is being transferred and cannot be edited"),
    "gateway.assigned": (VendorError, "the gateway is assigned to a system"),
    "system.invalid.state": (VendorError, ("only labels can be changed while the gateway's system is not in "
                                           "INVENTORY or MAINTENANCE")),
    "system.communication.identifier.already.used": (VendorError, ("the communication identifier is already "
                                                                   "used by another system")),
    "company.unknown": (AuthFailed, ("the configured company is unknown (check company: and the region of "
                                     "base_url)")),
    "company.missing": (VendorError, "the destination company is missing"),
    "partner.unknown": (VendorError, "the destination company is not a partner"),
    "label.missing": (VendorError, "no label to add or remove"),
    "label.amount.exceeded": (VendorError, f"more than {MAX_LABELS} labels to add or remove"),
    "label.unknown": (VendorError, "the label is unknown"),
    "selection.empty": (VendorError, "no gateway matches the selection"),
    "selection.invalid": (VendorError, "the gateway selection is invalid"),
    "selection.max.uid.reached": (VendorError, "more than 100 gateway uids in one selection"),
    "operation.unknown": (VendorError, "the operation is unknown"),
    "file.unreadable": (VendorError, "the CSV file is unreadable"),
    "file.header.missing": (VendorError, "the CSV header is missing"),
    "csv.header.unknown.column": (VendorError, "the CSV header has an unknown column"),
    "file.missing.data": (VendorError, "the CSV file holds no data"),
    "file.too.large": (VendorError, "the CSV file is larger than 10 MB"),
}


@dataclass(frozen=True, slots=True)
class Criteria:
    """The documented criteria of the gateway listing (``criteria:`` in the account config)."""

    labels: tuple[str, ...] = ()
    type: str | None = None
    states: tuple[str, ...] = ()
    assigned: bool | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> Criteria:
        data = data or {}
        return cls(labels=tuple(data.get("labels") or ()), type=data.get("type"),
                   states=tuple(data.get("states") or ()), assigned=data.get("assigned"),
                   metadata=dict(data.get("metadata") or {}))

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"labels": list(self.labels) or None, "type": self.type,
                               "states": list(self.states) or None, "assigned": self.assigned}
        if self.metadata:
            out["metadata"] = ",".join(f"{k}:{v}" for k, v in self.metadata.items())
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Operation:
    """An operation's state and its task counters (PENDING, IN_PROGRESS, SUCCESS, FAILURE, CANCELLED...)."""

    uid: str
    state: str
    counters: Mapping[str, int]
    total: int

    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    def outcome(self, what: str) -> ServiceResult:
        """The result of a FINISHED operation: success only when every task succeeded."""
        done = self.counters.get("SUCCESS", 0)
        failed = self.counters.get("FAILURE", 0)
        cancelled = self.counters.get("CANCELLED", 0) + self.counters.get("BEING_CANCELLED", 0)
        total = self.total or done + failed + cancelled
        if done and not failed and not cancelled:
            return ServiceResult(status="success", detail=f"{what}: {done} of {total} gateway(s) done")
        if not done and not failed and not cancelled:
            return ServiceResult(status="failed", detail=f"{what}: the operation finished without any gateway")
        parts = [f"{done} of {total} done", f"{failed} failed"] + ([f"{cancelled} cancelled"] if cancelled else [])
        prefix = "partial failure" if done else "failed"
        return ServiceResult(status="failed", detail=f"{what}: {prefix} ({', '.join(parts)})")


def parse_operation(payload: Any, uid: str) -> Operation:
    """An operation answer; counters as ``[{state, count}]`` (or a ``{state: count}`` object)."""
    if not isinstance(payload, dict) or not payload.get("state"):
        raise BadResponse(f"GET {OPERATIONS_PATH}/{{uid}}: not an operation")
    raw = payload.get("counters")
    raw = raw if isinstance(raw, (dict, list)) else []
    pairs: Iterable[tuple[Any, Any]] = (raw.items() if isinstance(raw, dict) else
                                        ((c.get("state"), c.get("count")) for c in raw if isinstance(c, dict)))
    counters: dict[str, int] = {}
    for state, count in pairs:
        try:
            counters[str(state)] = counters.get(str(state), 0) + int(count)
        except (TypeError, ValueError, OverflowError):
            continue
    try:
        total = int(payload.get("total") or 0)
    except (TypeError, ValueError, OverflowError):
        total = 0
    return Operation(uid=str(payload.get("uid") or uid), state=str(payload["state"]), counters=counters,
                     total=total)


def metadata_dict(value: Any) -> dict[str, str]:
    """Gateway metadata as a dict: bodies carry ``[{key, value}]``; an object is accepted too."""
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and item.get("key") not in (None, ""):
            out[str(item["key"])] = "" if item.get("value") is None else str(item["value"])
    return out


def metadata_list(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in values.items()]


class AirVantageApi:
    """The gateway endpoints the platform uses. ``company`` goes where the document allows it."""

    def __init__(self, rest: RestClient, *, company: str | None = None, page_size: int = 100) -> None:
        self.rest = rest
        self.company = company
        self.page_size = page_size

    def _company(self) -> dict[str, str]:
        return {"company": self.company} if self.company else {}

    async def gateways(self, criteria: Criteria) -> list[dict[str, Any]]:
        """Every gateway matching ``criteria`` (all pages, each uid once)."""
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        for _ in range(MAX_PAGES):
            params = {"fields": ",".join(FIELDS), "offset": offset, "size": self.page_size,
                      **criteria.params(), **self._company()}
            page = await self.rest.request("GET", GATEWAYS_PATH, params=params)
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise BadResponse(f"GET {GATEWAYS_PATH}: expected {{items, count, size, offset}}")
            items = [i for i in page["items"] if isinstance(i, dict) and i.get("uid")]
            for item in items:
                found.setdefault(str(item["uid"]), item)
            offset += len(page["items"])
            count = _int(page.get("count"))
            if not page["items"] or (count is not None and offset >= count) or \
                    (count is None and len(page["items"]) < self.page_size):
                return list(found.values())
        _LOGGER.warning("gateway listing stopped after %d pages", MAX_PAGES)
        return list(found.values())

    async def gateway(self, uid: str) -> dict[str, Any]:
        payload = await self.rest.request("GET", f"{GATEWAYS_PATH}/{uid}")
        if not isinstance(payload, dict):
            raise BadResponse(f"GET {GATEWAYS_PATH}/{{uid}}: expected a gateway")
        return payload

    async def edit(self, uid: str, changes: Mapping[str, Any]) -> dict[str, Any] | None:
        """Change only the fields in ``changes``."""
        return await self.rest.request("PUT", f"{GATEWAYS_PATH}/{uid}", json_body=dict(changes))

    async def label(self, uids: Sequence[str], *, add: Sequence[str] = (), remove: Sequence[str] = ()) -> str:
        """Start a label operation on ``uids``; its operation uid."""
        labels = {k: list(v) for k, v in (("add", add), ("remove", remove)) if v}
        body = {"labels": labels, "criteria": {"uids": list(uids)}}
        payload = await self.rest.request("POST", LABEL_PATH, params=self._company() or None, json_body=body)
        operation = payload.get("operation") if isinstance(payload, dict) else None
        if not isinstance(operation, str) or not operation:
            raise BadResponse(f"POST {LABEL_PATH}: the answer holds no operation uid")
        return operation

    async def operation(self, uid: str) -> Operation:
        return parse_operation(await self.rest.request("GET", f"{OPERATIONS_PATH}/{uid}"), uid)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None
