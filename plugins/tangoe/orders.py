"""Orders: status tables, the status-change events, and the properties of SUSPEND/UNSUSPEND orders.

The cursor of ``async_fetch_events`` is ``{"orders": {order id: status}}``: a status that differs from
the cursor's is one event (uid ``order:<id>:<old>><new>``) on the device the order concerns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetbridge.platform import Event

from .api import digits
from .mapping import dig, text

#: Service -> transaction type; and the line state that makes the call pointless.
TRANSACTIONS: dict[str, str] = {"sim_suspend": "SUSPEND", "sim_restore": "UNSUSPEND"}
ALREADY: dict[str, str] = {"sim_suspend": "suspended", "sim_restore": "active"}

SUCCESS_STATUSES = frozenset({"COMPLETED", "COMPLETE", "CLOSED", "FULFILLED"})
FAILED_STATUSES = frozenset({"CANCELLED", "CANCELED", "REJECTED", "DENIED", "FAILED", "ERROR"})
FINAL_STATUSES = SUCCESS_STATUSES | FAILED_STATUSES

#: Vendor status -> event type. Completed SUSPEND/UNSUSPEND orders say what happened to the SIM.
STATUS_EVENTS: dict[str, str] = {
    **{s: "orderCompleted" for s in SUCCESS_STATUSES},
    **{s: "orderCancelled" for s in FAILED_STATUSES},
    "SHIPPED": "orderShipped", "PARTIALLY_SHIPPED": "orderShipped",
}
COMPLETED_EVENTS: dict[str, str] = {"SUSPEND": "simSuspended", "UNSUSPEND": "simRestored"}
EVENT_TYPES: tuple[str, ...] = ("orderCreated", "orderShipped", "orderCompleted", "orderCancelled",
                                "simSuspended", "simRestored", "general")

FILLER_TEXT = "Requested through fleetbridge"
EMPLOYEE_CHOICES = frozenset({"USER", "HOLD_SERVICE", "ACCOUNT_HOLDER", "EMPLOYEE"})


def status_of(order: Mapping[str, Any]) -> str:
    return str(order.get("status") or "UNKNOWN").upper()


def is_open(status: str) -> bool:
    return status not in FINAL_STATUSES


def event_type(transaction: str, old: str | None, new: str) -> str:
    """The one event of a status change (``old`` None: an order we had not seen)."""
    if new in SUCCESS_STATUSES and transaction in COMPLETED_EVENTS:
        return COMPLETED_EVENTS[transaction]
    if new in STATUS_EVENTS:
        return STATUS_EVENTS[new]
    return "orderCreated" if old is None else "general"


def order_time(order: Mapping[str, Any]) -> datetime:
    """When the order last changed (``dateUpdated``, ``statusDate``, ``dateSubmitted``), else now."""
    for key in ("dateUpdated", "statusDate", "lastUpdated", "dateSubmitted"):
        value = order.get(key)
        if isinstance(value, str) and value:
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.now(UTC)


@dataclass(slots=True)
class DeviceIndex:
    """Finds the handset an order concerns: by service id, then service number, then device id."""

    by_service: dict[str, str] = field(default_factory=dict)
    by_number: dict[str, str] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)

    def add(self, device_id: str, service_id: str | None, number: str | None) -> None:
        self.devices.add(device_id)
        if service_id:
            self.by_service[service_id] = device_id
        if number:
            self.by_number[number] = device_id

    def find(self, order: Mapping[str, Any]) -> str | None:
        service = text(order.get("serviceId")) or text(dig(order, "service", "id"))
        if service and service in self.by_service:
            return self.by_service[service]
        number = digits(order.get("serviceNumber") or dig(order, "service", "serviceNumber"))
        if number and number in self.by_number:
            return self.by_number[number]
        device = text(order.get("deviceId")) or text(dig(order, "device", "id"))
        return device if device in self.devices else None


def order_events(orders: Iterable[Mapping[str, Any]], known: Mapping[str, str],
                 index: DeviceIndex) -> list[Event]:
    """One event per order whose status differs from ``known`` (order id -> status)."""
    events = []
    for order in orders:
        order_id, new = text(order.get("orderId")) or text(order.get("id")), status_of(order)
        old = known.get(order_id) if order_id else None
        device_id = index.find(order)
        if order_id is None or old == new or device_id is None:
            continue
        transaction = str(order.get("transactionType") or "").upper()
        events.append(Event(
            device_id=device_id,
            event_type=event_type(transaction, old, new),
            at=order_time(order),
            uid=f"order:{order_id}:{old or ''}>{new}",
            data={k: v for k, v in {
                "vendor_code": new, "vendor_name": transaction or None, "order_id": order_id,
                "transaction_type": transaction or None, "previous_status": old,
                "external_order_number": text(order.get("externalOrderNumber")),
            }.items() if v is not None},
        ))
    return events


def open_counts(orders: Iterable[Mapping[str, Any]], index: DeviceIndex) -> dict[str, int]:
    """Open orders per device (every indexed device, 0 when none)."""
    counts = dict.fromkeys(index.devices, 0)
    for order in orders:
        device_id = index.find(order)
        if device_id is not None and is_open(status_of(order)):
            counts[device_id] += 1
    return counts


# --- order properties ---------------------------------------------------------------------------

class MissingProperties(Exception):
    """Required order properties that neither the config nor the line can fill."""

    def __init__(self, labels: list[str]) -> None:
        super().__init__(", ".join(labels))
        self.labels = labels


@dataclass(frozen=True, kw_only=True, slots=True)
class OrderSubject:
    """What the plugin knows about the line an order is for."""

    service_number: str | None
    employee_id: str | None
    company_employee_id: str | None
    today: str  # ISO 8601 date-time, midnight UTC (+00:00, which the vendor accepts)


def fill_properties(groups: Iterable[Mapping[str, Any]], configured: Mapping[str, str],
                    subject: OrderSubject) -> list[dict[str, Any]]:
    """The ``properties`` of an order request; raises MissingProperties for required gaps.

    A configured value (``order_properties: {FIELD_ID: value}``) wins; else a field the plugin can
    answer from the line (service number, the assigned employee, today's date, a filler note); else
    a required CHOICE with a single option takes it. Optional fields without a value are left out.
    """
    out, missing = [], []
    for group in groups:
        fields = []
        for spec in group.get("fields") or []:
            if not isinstance(spec, Mapping) or not spec.get("id"):
                continue
            value = configured.get(str(spec["id"])) or _auto_value(spec, subject)
            if value is None:
                if str(spec.get("validation") or "").upper() == "REQUIRED":
                    missing.append(f"{spec['id']} ({spec.get('label') or spec.get('type')})")
                continue
            fields.append(_typed(spec, value))
        if fields:
            out.append({"groupId": group.get("groupId") or "MISCELLANEOUS", "fields": fields})
    if missing:
        raise MissingProperties(missing)
    return out


def _auto_value(spec: Mapping[str, Any], subject: OrderSubject) -> str | None:
    field_id, kind = str(spec["id"]).upper(), str(spec.get("type") or "TEXT").upper()
    required = str(spec.get("validation") or "").upper() == "REQUIRED"
    if kind == "TEXT":
        if field_id == "SERVICE_NUMBER":
            return subject.service_number
        return FILLER_TEXT if field_id == "ADDITIONAL_INSTRUCTIONS" else None
    if kind == "DATE":
        return subject.today if required else None
    if kind == "CHOICE":
        return _choice(spec, field_id, subject, required)
    return None


def _choice(spec: Mapping[str, Any], field_id: str, subject: OrderSubject, required: bool) -> str | None:
    choices = [c for c in spec.get("choices") or [] if isinstance(c, Mapping) and c.get("id") is not None]
    if field_id in EMPLOYEE_CHOICES:
        wanted = [w for w in (subject.company_employee_id, subject.employee_id) if w]
        if not choices:
            return wanted[0] if wanted else None
        for choice in choices:
            if str(choice["id"]) in wanted:
                return str(choice["id"])
    if required and len(choices) == 1:
        return str(choices[0]["id"])
    return None


def _typed(spec: Mapping[str, Any], value: str) -> dict[str, Any]:
    kind = str(spec.get("type") or "TEXT").upper()
    field: dict[str, Any] = {"id": spec["id"], "type": kind}
    if kind == "CHOICE":
        field["choice"] = {"id": value}
    elif kind == "DATE":
        field["date"] = value
    else:
        field["text"] = value
    return field
