"""An example vendor plugin: the (imaginary) Acme Fleet Cloud.

Complete but small: a platform with its config schema, discovery, polling, one service, an event
source and an observer hook. docs/plugins.md walks through it; the test suite installs it with pip
and runs it through the real bridge.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import voluptuous as vol

from fleetbridge import hookimpl
from fleetbridge.errors import AuthFailed, Rejected
from fleetbridge.platform import BASE_ACCOUNT_SCHEMA, DeviceInfo, Event, Platform, RateLimit, ServiceResult

TRUCKS = ("ACME-1", "ACME-2")


class AcmePlatform(Platform):
    """A stand-in vendor: two trucks parked in Munich, one token, one reboot command."""

    name = "acme"
    title = "Acme Fleet Cloud"
    manufacturer = "Acme"
    CONFIG_SCHEMA = BASE_ACCOUNT_SCHEMA.extend({
        vol.Required("token", description="API token (use !secret)"): str,
    })
    SECRET_KEYS = ("token",)
    RATE_LIMITS = {"state": RateLimit(min_interval=0)}
    SERVICES = ("reboot",)
    EVENT_TYPES = ("sos",)
    DEFAULT_SCAN_INTERVAL = 10

    async def async_setup(self) -> None:
        if not self.config["token"].startswith("tok-"):
            raise AuthFailed("Acme refused the token")
        self._started = time.time()

    async def async_discover(self) -> list[DeviceInfo]:
        keys = frozenset({"latitude", "longitude", "battery", "online"})
        return [DeviceInfo(id=t, name=f"Acme truck {t[-1]}", model="T1", keys=keys, services=self.SERVICES,
                           has_events=True) for t in TRUCKS]

    async def async_poll(self, devices: list[DeviceInfo]) -> dict[str, dict[str, Any]]:
        await self.ctx.rate("state")
        return {d.id: {"latitude": 48.137, "longitude": 11.575, "battery": 80 + i, "online": True}
                for i, d in enumerate(devices)}

    async def async_fetch_events(self, devices: list[DeviceInfo], cursor: Any) -> tuple[list[Event], Any]:
        if cursor:  # one SOS per installation, then nothing
            return [], cursor
        at = datetime.fromtimestamp(self._started, timezone.utc)
        return [Event(device_id=TRUCKS[0], event_type="sos", at=at, uid=f"sos-{TRUCKS[0]}",
                      data={"vendor_code": "SOS"})], {"done": True}

    async def async_call(self, device: DeviceInfo, call) -> ServiceResult:
        if call.state.get("online") is False:
            raise Rejected("the truck is offline")
        await call.pending("queued at Acme", vendor_ref=f"job-{device.id}")
        return ServiceResult(status="success", detail=f"{device.id} rebooted")


SEEN: list[tuple[str, str, list[str]]] = []


@hookimpl
def fleetbridge_register_platforms(register):
    register(AcmePlatform)


@hookimpl
def fleetbridge_state_changed(account, device, changed):
    """An observer: other plugins can react to state changes (here: just remember them)."""
    SEEN.append((account, device, sorted(changed)))
