"""The bridge: accounts on one side, the MQTT contract on the other.

Topics (see docs/mqtt.md): ``<base>/bridge/{state,info,devices}``, per device ``state``,
``availability``, ``event``, ``<service>/set`` and ``<service>/result``, and Home Assistant
discovery under ``<prefix>``.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import random
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

from . import __version__, codec, discovery, redact
from .account import Account, Device, _iso
from .config import Config
from .errors import Rejected
from .ledger import EventLedger
from .mqtt import WINDOW
from .platform import SLUG_RE, Event, slugify
from .plugins import PluginRegistry
from .services import CONTROL_BY_KEY, SERVICE_BY_NAME, decode_payload, parse_payload
from .storage import Store

_LOGGER = logging.getLogger(__name__)
OUTBOX_PAGE = 1000  # stored events queued for MQTT at a time

INFO_DEBOUNCE = 0.05  # status changes
INFO_PERIOD = 30.0  # routine counters (last poll, requests)
BIRTH_DELAY = (1.0, 5.0)
DISCOVERY_SETTLE = 2.0  # seconds Home Assistant gets to subscribe to new entities


_json = codec.dumps


class Bridge:
    """Owns the store, the MQTT link and the accounts of one configuration."""

    def __init__(self, config: Config, registry: PluginRegistry) -> None:
        from .mqtt import MqttLink

        assert config.mqtt is not None, "the runner resolves an embedded broker before the bridge starts"
        self.config = config
        self.registry = registry
        self.mqtt_cfg = config.mqtt
        self.store = Store(config.storage)
        self.topics = discovery.Topics(base=self.mqtt_cfg.base_topic, prefix=self.mqtt_cfg.discovery_prefix)
        self.bridge_id = f"fleetbridge_bridge_{slugify(self.mqtt_cfg.client_id)}"
        self.started_at = time.time()
        self.accounts: dict[str, Account] = {
            a.id: Account(self, a, registry.platforms.get(a.platform)) for a in config.accounts
        }
        self._discovery_topics: dict[tuple[str, str], set[str]] = {}
        self._info_task: asyncio.Task[None] | None = None
        self._info_delay = 0.0
        self._outbox_queued: set[int] = set()
        self._outbox_more = False  # the last page of the outbox was full: refill as it drains
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats: dict[str, Any] = {"commands": 0, "events": 0, "results": {}}  # results by status
        self._state_observers = bool(registry.pm.hook.fleetbridge_state_changed.get_hookimpls())
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=50)
        prefix = self.mqtt_cfg.discovery_prefix
        self.mqtt = MqttLink(
            self.mqtt_cfg,
            will_topic=self.topics.bridge("state"),
            subscriptions=[f"{self.topics.base}/+/+/+/set", f"{prefix}/status"],
            on_message=self.on_message,
            on_connect=self.flush_outbox,
            discovery_filters=[f"{prefix}/device/+/config", f"{prefix}/+/+/+/config"]
            if self.mqtt_cfg.discovery else [],
            owns_discovery=self._owns_discovery,
        )
        self.ledger: EventLedger | None = None
        if self.mqtt_cfg.event_ledger:
            self.ledger = EventLedger(self.mqtt_cfg, events=self.topics.device("+", "+", "event"),
                                      marker=self.topics.bridge("ledger"), on_seen=self._event_seen)
            self.mqtt.acked_barrier = self.ledger.sync
            self.mqtt.acked_window = WINDOW  # what the broker took is known after a crash: no need to
            #                                  send events one at a time

    # -- life cycle ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then publish ``offline`` and close everything."""
        self._publish_bridge_discovery()
        self._publish_info()
        self._publish_devices_list()
        tasks = [asyncio.create_task(self.mqtt.run(), name="mqtt")]
        if self.ledger:
            tasks.append(asyncio.create_task(self.ledger.run(), name="event-ledger"))
        tasks += [asyncio.create_task(acc.run(), name=f"account:{acc.id}") for acc in self.accounts.values()]
        if self.mqtt_cfg.heartbeat:
            tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        tasks.append(asyncio.create_task(self._freeze_after_startup(), name="gc-freeze"))
        try:
            await stop.wait()
        finally:
            _LOGGER.info("Stopping")
            await self.mqtt.publish_offline_and_close()
            for task in tasks + list(self._tasks):
                task.cancel()
            await asyncio.gather(*tasks, *self._tasks, return_exceptions=True)
            self.store.close()

    async def _freeze_after_startup(self, limit: float = 300.0) -> None:
        """Once every account has polled (or given up), move what exists to the garbage collector's
        permanent generation: devices, discovery and retained payloads live as long as the bridge,
        and full collections then only walk what came later (they are what a 50k fleet's loop
        stalls on). Reference counting still frees frozen objects."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while loop.time() < end and not all(
                a.polls or (a.ready.is_set() and a.status not in ("ok", "starting")) for a in self.accounts.values()):
            await asyncio.sleep(1.0)
        gc.collect()
        gc.freeze()
        _LOGGER.debug("Start-up objects frozen for the garbage collector: %d", gc.get_freeze_count())

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.mqtt_cfg.heartbeat)
            self.mqtt.republish(lambda t: t.endswith("/state") or t.endswith("/availability"))

    # -- bridge topics ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "started_at": _iso(self.started_at),
            "platforms": {name: cls.title for name, cls in sorted(self.registry.platforms.items())},
            "unavailable_plugins": dict(self.registry.unavailable),
            "accounts": {aid: acc.info() for aid, acc in self.accounts.items()},
            "device_count": sum(len(a.devices) for a in self.accounts.values()),
            "discovery_mode": self.mqtt_cfg.discovery_mode,
            "event_ledger": self.ledger.status if self.ledger else "off",
        }

    def _publish_info(self) -> None:
        self.mqtt.set_retained(self.topics.bridge("info"), redact.redact(_json(self.info()).decode()))

    def info_changed(self, soon: bool = False) -> None:
        """Publish bridge/info: at once (debounced) for a status change, within ``INFO_PERIOD`` for
        routine counters (``soon``), so that a quiet fleet stays quiet on the broker."""
        delay = INFO_PERIOD if soon else INFO_DEBOUNCE
        task = self._info_task
        if task is not None and not task.done():
            if delay >= self._info_delay:
                return
            task.cancel()

        async def later() -> None:
            await asyncio.sleep(delay)
            self._publish_info()

        try:
            self._info_task = asyncio.get_running_loop().create_task(later())
            self._info_delay = delay
        except RuntimeError:
            self._publish_info()

    async def discovery_settled(self, timeout: float = 30.0) -> None:
        """Wait until discovery is on the broker and Home Assistant had a moment to subscribe, so
        that the first events find their entities. With the broker away there is nothing to wait
        for: events are fetched into the outbox meanwhile (their cursor would otherwise stand still)."""
        if self.mqtt_cfg.discovery and await self.mqtt.flush(timeout, discovery_only=True):
            await asyncio.sleep(DISCOVERY_SETTLE)

    def _publish_devices_list(self) -> None:
        rows = []
        for acc in self.accounts.values():
            for dev in acc.devices.values():
                info = dev.info
                rows.append({
                    "account": acc.id, "id": dev.slug, "vendor_id": info.id, "name": info.name,
                    "platform": acc.config.platform, "model": info.model, "identifiers": info.identifiers,
                    "entities": sorted(info.keys), "services": list(dev.services),
                    "state_topic": self.topics.device(acc.id, dev.slug, "state"),
                })
        self.mqtt.set_retained(self.topics.bridge("devices"), _json(rows))

    def _publish_bridge_discovery(self) -> None:
        if not self.mqtt_cfg.discovery:
            return
        comps = discovery.bridge_components(self.topics, self.bridge_id, list(self.accounts))
        block = {"ids": [self.bridge_id], "name": f"fleetbridge ({self.mqtt_cfg.base_topic})",
                 "mf": "fleetbridge", "mdl": "Bridge", "sw": __version__}
        configs = discovery.build_configs(self.mqtt_cfg.discovery_mode, self.topics, self.bridge_id, block, comps,
                                          [self.topics.bridge("state")])
        self._set_discovery(("", "bridge"), configs)

    def _set_discovery(self, key: tuple[str, str], configs: dict[str, dict[str, Any]]) -> None:
        old = self._discovery_topics.get(key, set())
        for topic in old - configs.keys():
            self.mqtt.clear(topic)
        for topic, payload in configs.items():
            self.mqtt.set_retained(topic, _json(payload), discovery=True)
        self._discovery_topics[key] = set(configs)

    def _owns_discovery(self, topic: str, payload: bytes) -> bool:
        try:
            data = json.loads(payload)
        except ValueError:
            return False
        return isinstance(data, dict) and discovery.owned_by(data, self.bridge_id)

    # -- called by accounts -------------------------------------------------------------------
    def device_discovery(self, acc: Account, dev: Device) -> dict[str, dict[str, Any]]:
        node = f"{acc.id}_{dev.slug}"
        info = dev.info
        event_types = acc.platform_cls.EVENT_TYPES if (acc.platform_cls and info.has_events) else ()
        comps = discovery.device_components(self.topics, acc.id, dev.slug, info.keys, dev.services, event_types,
                                            triggers=self.mqtt_cfg.device_triggers)
        block = discovery.device_block(node, {
            "name": info.name, "manufacturer": info.manufacturer or acc.platform_cls.manufacturer
            or acc.platform_cls.title, "model": info.model, "sw_version": info.sw_version,
            "hw_version": info.hw_version, "serial_number": info.serial_number,
            "suggested_area": info.suggested_area,
        }, self.bridge_id)
        return discovery.build_configs(self.mqtt_cfg.discovery_mode, self.topics, node, block, comps,
                                       [self.topics.bridge("state"), self.topics.device(acc.id, dev.slug,
                                                                                         "availability")])

    def devices_changed(self, acc: Account, removed: set[str]) -> None:
        for slug in removed:
            self._set_discovery((acc.id, slug), {})
            for leaf in ("state", "availability"):
                self.mqtt.clear(self.topics.device(acc.id, slug, leaf))
        available = "online" if acc.available else "offline"
        for dev in acc.devices.values():
            if self.mqtt_cfg.discovery:
                self._set_discovery((acc.id, dev.slug), self.device_discovery(acc, dev))
            self.mqtt.set_retained(self.topics.device(acc.id, dev.slug, "availability"), available)
            if dev.state:
                self.mqtt.set_retained(self.topics.device(acc.id, dev.slug, "state"), _json(dev.state))
        self._publish_devices_list()
        self.info_changed()

    def availability_changed(self, acc: Account) -> None:
        value = "online" if acc.available else "offline"
        for dev in acc.devices.values():
            self.mqtt.set_retained(self.topics.device(acc.id, dev.slug, "availability"), value)

    def state_changed(self, acc: Account, dev: Device, old: dict[str, Any]) -> bytes:
        """Publish a device's new state (``old`` was the one before); return the encoded JSON (the
        store keeps the same bytes). Observers get the changed keys, computed only if there are any."""
        state = dev.state
        payload = _json(state)
        self.mqtt.set_retained(self.topics.device(acc.id, dev.slug, "state"), payload)
        if self._state_observers:
            changed = {k: state.get(k) for k in state.keys() | old.keys() if state.get(k) != old.get(k)}
            self.registry.notify("fleetbridge_state_changed", account=acc.id, device=dev.slug,
                                 state=dict(state), changed=changed)
        return payload

    def event_message(self, acc: Account, dev: Device, ev: Event) -> tuple[str, bytes, dict[str, Any]]:
        """An event's topic, encoded payload and payload (no side effect: it may be a repeat)."""
        at = ev.at if ev.at.tzinfo else ev.at.replace(tzinfo=timezone.utc)
        payload = {**ev.data, "event_type": ev.event_type, "at": at.astimezone(timezone.utc).isoformat()
                   .replace("+00:00", "Z"), "device": dev.slug, "account": acc.id,
                   "id": hashlib.sha1(f"{acc.id}/{ev.uid}".encode()).hexdigest()[:16]}
        return self.topics.device(acc.id, dev.slug, "event"), _json(payload), payload

    def event_recorded(self, acc: Account, dev: Device, payload: dict[str, Any]) -> None:
        """A new event was stored for delivery: count it, show it, tell the observers (once per uid)."""
        self.stats["events"] += 1
        self.recent_events.append(payload)
        self.registry.notify("fleetbridge_event", account=acc.id, device=dev.slug, event=payload)

    def flush_outbox(self) -> None:
        """Queue stored, not yet acknowledged events (after a fetch, a restart or a reconnect), the
        oldest ``OUTBOX_PAGE`` of them: the next ones follow as these are delivered. A first fetch
        stores an hour of the fleet's alarms (25,000 at 10k devices); queued all at once, their
        transient objects left the bridge 45 MB larger for good (fragmentation)."""
        rows = self.store.outbox(OUTBOX_PAGE)
        self._outbox_more = len(rows) == OUTBOX_PAGE
        for outbox_id, topic, payload, qos in rows:
            if outbox_id in self._outbox_queued:
                continue
            self._outbox_queued.add(outbox_id)

            def done(outbox_id: int = outbox_id) -> None:
                self.store.outbox_done(outbox_id)
                self._outbox_delivered(outbox_id)

            self.mqtt.publish(topic, payload, qos=max(qos, 1), on_done=done,
                              wanted=lambda outbox_id=outbox_id: outbox_id in self._outbox_queued)

    def _outbox_delivered(self, outbox_id: int) -> None:
        self._outbox_queued.discard(outbox_id)
        if self._outbox_more and len(self._outbox_queued) <= OUTBOX_PAGE // 2:
            self.flush_outbox()

    def _event_seen(self, topic: str, payload: bytes) -> None:
        """The event ledger read an event back from the broker: it is delivered, never send it again."""
        for outbox_id in self.store.outbox_seen(topic, payload):
            self._outbox_delivered(outbox_id)

    def service_result(self, acc: Account, dev: Device, service: str, status: str, detail: str) -> None:
        self._result(acc.id, dev.slug, service, status, detail)

    def _result(self, account: str, device: str, service: str, status: str, detail: str) -> None:
        result = {"service": service, "status": status, "detail": redact.redact(detail),
                  "at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")}
        self.mqtt.publish(self.topics.device(account, device, f"{service}/result"), _json(result))
        self.stats["results"][status] = self.stats["results"].get(status, 0) + 1
        self.registry.notify("fleetbridge_service_result", account=account, device=device, result=result)

    # -- MQTT in ------------------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, retained: bool = False) -> None:
        if topic == f"{self.mqtt_cfg.discovery_prefix}/status":
            if payload.strip().lower() == b"online":
                self._spawn(self._rediscover())
            return
        parts = topic.split("/")
        base_len = len(self.topics.base.split("/"))
        if len(parts) != base_len + 4 or parts[-1] != "set":
            return
        account, device, service = parts[base_len:base_len + 3]
        if retained:  # a retained command would run again at every reconnect: never act on one
            _LOGGER.warning("Ignored a retained command on %s: publish commands without the retain flag", topic)
            return
        self.handle_command(account, device, service, payload, source=topic)

    async def _rediscover(self) -> None:
        """Home Assistant came online: discovery again after a small random delay, then states."""
        await asyncio.sleep(random.uniform(*BIRTH_DELAY))
        self.mqtt.republish(lambda t: t.startswith(self.mqtt_cfg.discovery_prefix + "/"))
        await asyncio.sleep(0.5)
        self.mqtt.republish(lambda t: t.startswith(self.topics.base + "/"))

    def handle_command(self, account: str, device: str, service: str, payload: bytes, source: str) -> None:
        """Validate a command; start it, or answer ``rejected`` without touching the vendor.
        ``source`` (the MQTT topic, or ``cli``) goes into the journal."""
        self.stats["commands"] += 1
        if not (SLUG_RE.match(account) and SLUG_RE.match(device) and SLUG_RE.match(service)):
            _LOGGER.warning("Ignored a command on a malformed topic")
            return
        try:
            acc, dev, name, params = self.validate_command(account, device, service, payload)
        except Rejected as err:
            _LOGGER.info("%s/%s: %s rejected: %s", account, device, service, err)
            preview = redact.redact(payload[:200].decode("utf-8", "replace"))
            entry = self.store.journal_open(account, device, service, {"payload": preview}, source)
            self.store.journal_update(entry, "rejected", redact.redact(str(err)))
            self._result(account, device, service, "rejected", str(err))
            return
        self._spawn(acc.call(dev, name, params, source))

    def validate_command(self, account: str, device: str, service: str,
                         payload: bytes) -> tuple[Account, Device, str, dict[str, Any]]:
        acc = self.accounts.get(account)
        if acc is None:
            raise Rejected(f"unknown account '{account}'")
        if acc.platform is None or acc.status == "disabled":
            raise Rejected(f"account '{account}' is not running ({acc.status})")
        dev = acc.devices.get(device)
        if dev is None:
            raise Rejected(f"unknown device '{device}'")
        control = CONTROL_BY_KEY.get(service)
        if control is not None:
            value = decode_payload(payload)
            command = value.upper() if isinstance(value, str) else None
            if command not in control.commands:
                raise Rejected(f"{service} takes {' or '.join(control.commands)}")
            service, payload = control.commands[command], b"PRESS"
        desc = SERVICE_BY_NAME.get(service)
        if desc is None or service not in dev.info.services:
            raise Rejected(f"service '{service}' is not supported by this device")
        if service not in dev.services:
            raise Rejected(f"service '{service}' is disabled; enable it under services: in the account's config")
        params = parse_payload(desc, payload)
        if desc.confirm and params.get("confirm") not in (dev.slug, dev.info.id, dev.info.name):
            raise Rejected(f"{service} is irreversible: repeat the device's name or id as the payload to confirm")
        return acc, dev, service, params
