"""Tangoe asset records (``/assets/devices``, ``/assets/services``) -> fleetbridge devices and state.

Each handset (device asset) is one device; the service asset (line) attached to it gives the
number, carrier, plan and line status. Ids stay strings, as the vendor sends them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetbridge.platform import DeviceInfo

from .api import digits

#: Keys every handset reports, and those its line adds.
HANDSET_KEYS = frozenset({"lifecycle_state", "imei", "assigned_to", "open_orders", "attributes"})
LINE_KEYS = frozenset({"msisdn", "carrier", "plan", "line_status", "sim_state", "iccid"})

#: Vendor service status -> canonical ``sim_state`` (the `sim` switch is ON for "active").
SIM_STATES: dict[str, str] = {
    "ACTIVE": "active", "SUSPENDED": "suspended", "SUSPEND": "suspended", "DEACTIVATED": "deactivated",
    "DISCONNECTED": "deactivated", "CANCELLED": "deactivated", "TERMINATED": "deactivated",
}
#: Which of several lines on one handset wins (lower first); unknown statuses come last.
LINE_PREFERENCE = {"ACTIVE": 0, "SUSPENDED": 1}
#: Employee references appear under any of these keys.
EMPLOYEE_KEYS = ("employee", "accountHolder", "assignedTo", "user")


def dig(record: Any, *path: str) -> Any:
    """``record[path[0]][path[1]]...`` or None."""
    for key in path:
        if type(record) is not dict and not isinstance(record, Mapping):
            return None
        record = record.get(key)
    return record


def text(value: Any) -> str | None:
    """A non-empty string of ``value`` (a name or id object gives its name, else its id)."""
    if type(value) is str:  # the common case
        return value.strip() or None
    if isinstance(value, Mapping):
        value = value.get("name") or value.get("label") or value.get("id")
    if value is None or isinstance(value, (dict, list)):
        return None
    out = str(value).strip()
    return out or None


def imei_of(device: Mapping[str, Any]) -> str | None:
    """The IMEI from ``serialNumber`` ({type, value} or a list of them) or a plain ``imei``."""
    serials = device.get("serialNumbers") or device.get("serialNumber")
    for serial in serials if isinstance(serials, list) else [serials]:
        if isinstance(serial, Mapping) and str(serial.get("type") or "IMEI").upper() in ("IMEI", "MEID"):
            value = digits(serial.get("value"))
            if value:
                return value
    return digits(device.get("imei")) or None


def model_of(device: Mapping[str, Any]) -> str | None:
    return text(device.get("model"))


def manufacturer_of(device: Mapping[str, Any]) -> str | None:
    return text(device.get("manufacturer")) or text(dig(device, "model", "manufacturer"))


def employee_of(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in EMPLOYEE_KEYS:
        value = record.get(key)
        if isinstance(value, Mapping) and value:
            return value
    return None


def person(employee: Mapping[str, Any] | None) -> str | None:
    """``"Barbara Andrews"``, else the company employee id, else the id."""
    if not employee:
        return None
    name = " ".join(p for p in (text(employee.get("firstName")), text(employee.get("lastName"))) if p)
    return name or text(employee.get("companyEmployeeId")) or text(employee.get("id"))


def needs_detail(device: Mapping[str, Any]) -> bool:
    """Whether a list record lacks what the handset's entities need (IMEI, model)."""
    return imei_of(device) is None or model_of(device) is None


def line_device_id(line: Mapping[str, Any]) -> str | None:
    return text(dig(line, "device", "id")) or text(line.get("deviceId"))


def index_lines(lines: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Device id -> its line (an active line wins over a suspended one, then the lowest id)."""
    best: dict[str, Mapping[str, Any]] = {}
    for line in lines:
        device_id = line_device_id(line)
        if device_id is None:
            continue
        current = best.get(device_id)
        if current is None or _line_rank(line) < _line_rank(current):
            best[device_id] = line
    return best


def _line_rank(line: Mapping[str, Any]) -> tuple[int, str]:
    status = str(line.get("status") or "").upper()
    return LINE_PREFERENCE.get(status, 9), str(line.get("id") or "")


def merge(listed: Mapping[str, Any], detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """The list record completed by its detail (the list's values win: they are the fresher)."""
    if not detail:
        return dict(listed)
    return {**detail, **{k: v for k, v in listed.items() if v not in (None, "", {}, [])}}


@dataclass(frozen=True, slots=True)
class Handset:
    """One device asset and the line on it (if any)."""

    device: Mapping[str, Any]
    line: Mapping[str, Any] | None = None

    @property
    def id(self) -> str:
        return str(self.device["id"])

    @property
    def employee(self) -> Mapping[str, Any] | None:
        return employee_of(self.device) or (employee_of(self.line) if self.line else None)

    @property
    def number(self) -> str | None:
        return digits(self.line.get("serviceNumber")) or None if self.line else None

    @property
    def service_id(self) -> str | None:
        return text(self.line.get("id")) if self.line else None


def device_info(handset: Handset, services: tuple[str, ...]) -> DeviceInfo:
    """The fleetbridge device of a handset; ``services`` apply only when it has a line."""
    device, line, employee = handset.device, handset.line, handset.employee
    model, who, imei, number = model_of(device), person(employee), imei_of(device), handset.number
    name = f"{model} ({who})" if model and who else model or number or f"Device {handset.id}"
    identifiers = {"tangoe_device": handset.id, "imei": imei, "msisdn": number,
                   "tangoe_service": handset.service_id}
    attributes = {"service_id": handset.service_id, "service_number": number,
                  "employee_id": text(dig(employee, "id")),
                  "company_employee_id": text(dig(employee, "companyEmployeeId"))}
    return DeviceInfo(
        id=handset.id,
        name=name,
        model=model,
        manufacturer=manufacturer_of(device),
        serial_number=imei,
        suggested_area=text(dig(employee, "department")),
        identifiers={k: v for k, v in identifiers.items() if v},
        attributes={k: v for k, v in attributes.items() if v},
        keys=HANDSET_KEYS | (LINE_KEYS if line else frozenset()),
        services=services if line else (),
        has_events=True,
    )


#: Employee field -> state attribute (a department object gives its name).
EMPLOYEE_ATTRIBUTES = (("id", "employee_id"), ("companyEmployeeId", "company_employee_id"),
                       ("department", "department"))
#: Line key -> the line fields that may give it, the first with a text wins.
LINE_TEXTS = (("carrier", ("vendor", "carrier")), ("plan", ("plan", "ratePlan")))


def handset_state(handset: Handset) -> dict[str, Any]:
    """Canonical state of a handset (only what the vendor gave)."""
    device, line = handset.device, handset.line
    employee = employee_of(device) or (employee_of(line) if line else None)
    state: dict[str, Any] = {}
    _put(state, "lifecycle_state", _lower(device.get("status")))
    _put(state, "imei", imei_of(device))
    _put(state, "assigned_to", person(employee))
    attributes: dict[str, Any] = {}
    if employee:
        for field, name in EMPLOYEE_ATTRIBUTES:
            _put(attributes, name, text(employee.get(field)))
    if line:
        _put(attributes, "service_id", text(line.get("id")))
        _put(attributes, "carrier_id", text(dig(line, "vendor", "id")))
    if attributes:
        state["attributes"] = attributes
    if line:
        status = str(line.get("status") or "").upper()
        _put(state, "msisdn", digits(line.get("serviceNumber")) or None)
        for key, fields in LINE_TEXTS:
            for field in fields:
                value = text(line.get(field))
                if value is not None:
                    state[key] = value
                    break
        line_status = _lower(status)
        _put(state, "line_status", line_status)
        _put(state, "sim_state", SIM_STATES.get(status, line_status))
        _put(state, "iccid", digits(line.get("simId") or line.get("iccid")) or None)
    return state


def _put(into: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        into[key] = value


def _lower(value: Any) -> str | None:
    out = text(value)
    return out.lower() if out else None
