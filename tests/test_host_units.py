"""Unit tests of the host's pure parts: payload validation, discovery shapes, store, rate budget."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetbridge import discovery, hookspecs
from fleetbridge.entities import STATE_KEYS, coerce_state
from fleetbridge.errors import Rejected
from fleetbridge.platform import RateLimit, slugify
from fleetbridge.ratelimit import RateBudget
from fleetbridge.redact import add_secret, redact
from fleetbridge.services import SERVICE_BY_NAME, SERVICES, parse_payload
from fleetbridge.storage import Store

DOCS = Path(__file__).parent.parent / "docs"


@pytest.mark.parametrize("payload, expected", [
    (b"PRESS", {}), (b"", {}), (b"{}", {}), (b"press", {}),
])
def test_press_payloads(payload: bytes, expected: dict) -> None:
    assert parse_payload(SERVICE_BY_NAME["reboot"], payload) == expected


def test_dangerous_and_billed_services_are_off_unless_enabled() -> None:
    off = {s.name for s in SERVICES if s.dangerous}
    assert off == {"engine_stop", "unlock_doors", "sim_suspend", "terminate", "locate"}


def test_value_payloads() -> None:
    assert parse_payload(SERVICE_BY_NAME["set_odometer"], b"1234.5") == {"odometer": 1234.5}
    assert parse_payload(SERVICE_BY_NAME["set_odometer"], b'{"odometer": "12"}') == {"odometer": 12.0}
    geofence = parse_payload(SERVICE_BY_NAME["create_geofence"],
                             b'{"name": "depot", "latitude": 52.3, "longitude": 4.9, "radius": 300}')
    assert geofence["alarm"] == "both" and geofence["radius"] == 300


@pytest.mark.parametrize("service, payload, words", [
    ("reboot", b"\xff\xfe", "UTF-8"),
    ("reboot", b"x" * 5000, "too large"),
    ("reboot", b"{oops", "JSON"),
    ("reboot", b"[1]", "object"),
    ("reboot", b"STOP", "PRESS"),
    ("set_odometer", b"abc", "odometer"),
    ("set_odometer", b"-5", "odometer"),
    ("set_odometer", b"nan", "odometer"),
    ("create_geofence", b'{"name": "x", "latitude": 1, "longitude": 2, "radius": 50}', "radius"),
    ("create_geofence", b'{"name": "x", "latitude": 1, "longitude": 2, "radius": 300, "alarm": "sideways"}',
     "alarm"),
    ("reboot", b'{"unexpected": 1}', "unexpected"),
])
def test_bad_payloads_rejected(service: str, payload: bytes, words: str) -> None:
    with pytest.raises(Rejected, match=words):
        parse_payload(SERVICE_BY_NAME[service], payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=6000), st.sampled_from([s.name for s in SERVICES]))
def test_any_payload_gives_params_or_rejected(payload: bytes, service: str) -> None:
    try:
        params = parse_payload(SERVICE_BY_NAME[service], payload)
    except Rejected:
        return
    assert isinstance(params, dict)


def test_coerce_state_drops_unknown_none_and_bad_values() -> None:
    state = coerce_state({"battery": "87", "speed": "nan", "online": "yes", "nope": 1, "latitude": None,
                         "odometer": 12.3456789, "ignition": False})
    assert state == {"battery": 87, "odometer": 12.345679, "ignition": False}


def test_device_discovery_shape() -> None:
    topics = discovery.Topics(base="fb", prefix="homeassistant")
    keys = frozenset({"latitude", "longitude", "battery", "ignition", "odometer"})
    comps = discovery.device_components(topics, "vans", "123", keys, ("engine_stop", "set_odometer", "lock_doors"),
                                        ("sos", "overspeed"))
    assert comps["location"]["p"] == "device_tracker" and "stat_t" not in comps["location"]
    assert comps["battery"]["val_tpl"] == "{{ value_json.get('battery') }}"
    assert comps["battery"]["uniq_id"] == "fleetbridge_vans_123_battery"
    assert comps["battery"]["default_entity_id"] == "sensor.vans_123_battery"
    assert comps["ignition"]["pl_on"] == "True"
    assert comps["door_lock"]["cmd_t"] == "fb/vans/123/door_lock/set"
    assert comps["set_odometer"]["p"] == "number" and comps["set_odometer"]["unit_of_meas"] == "km"
    assert comps["alarm"]["evt_typ"] == ["sos", "overspeed"]
    assert comps["trigger_sos"]["p"] == "device_automation"
    block = discovery.device_block("vans_123", {"name": "Van", "model": "GT06"}, "fleetbridge_bridge_x")
    configs = discovery.build_configs("device", topics, "vans_123", block, comps, ["fb/bridge/state"])
    (topic, payload), = configs.items()
    assert topic == "homeassistant/device/vans_123/config"
    assert set(payload) == {"dev", "o", "avty", "avty_mode", "qos", "cmps"}
    entity = discovery.build_configs("entity", topics, "vans_123", block, comps, ["fb/bridge/state"])
    assert "homeassistant/sensor/vans_123/battery/config" in entity
    trigger = entity["homeassistant/device_automation/vans_123/trigger_sos/config"]
    assert "avty" not in trigger and trigger["dev"] == block
    assert discovery.owned_by(payload, "fleetbridge_bridge_x")
    assert not discovery.owned_by({"dev": {"ids": ["other"]}}, "fleetbridge_bridge_x")


def test_templates_tolerate_missing_keys() -> None:
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    topics = discovery.Topics(base="fb", prefix="ha")
    comps = discovery.device_components(topics, "a", "d", frozenset(k.key for k in STATE_KEYS), (), ())
    for comp in comps.values():
        for field in ("val_tpl", "json_attr_tpl"):
            if field in comp:
                out = env.from_string(comp[field]).render(value_json={})
                assert out in ("None", "{}"), (field, out)
    loc = env.from_string(comps["location"]["json_attr_tpl"]).render(value_json={"latitude": 1.5, "longitude": 2})
    assert json.loads(loc.replace("'", '"')) == {"latitude": 1.5, "longitude": 2, "gps_accuracy": 0}


def test_store_events_dedupe_and_outbox(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    ids = store.record_events("a", [("u1", "t", b"1"), ("u2", "t", b"2")], {"x": 1})
    assert list(ids) == ["u1", "u2"] and ids["u2"] > ids["u1"]
    assert store.record_events("a", [("u2", "t", b"2"), ("u3", "t", b"3"), ("u3", "t", b"3")], {"x": 2}) \
        == {"u3": ids["u2"] + 1}
    assert store.event_cursor("a") == {"x": 2}
    store.outbox_done(ids["u1"])
    assert [row[2] for row in store.outbox()] == [b"2", b"3"]
    entry = store.journal_open("a", "d", "reboot", {}, "mqtt")
    store.journal_update(entry, "pending", "sent", "CMD1")
    assert store.journal_pending("a")[0]["vendor_ref"] == "CMD1"
    store.journal_update(entry, "success", "ok")
    assert store.journal_pending("a") == []
    store.close()


def _open_store(path: Path, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        Store(path).close()
        results.put("ok")
    except Exception as err:  # noqa: BLE001 - the test reports it
        results.put(f"{type(err).__name__}: {err}")


def test_processes_opening_one_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """``fleetbridge call`` beside ``run``, or two calls at once (a CI failure): the switch to WAL
    raised "database is locked" in a few rounds in a hundred before it was retried."""
    ctx = multiprocessing.get_context("fork")
    for n in range(100):
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_store, args=(tmp_path / f"s{n}.db", barrier, results)) for _ in range(4)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * 4, n


async def test_rate_budget_keeps_min_interval() -> None:
    budget = RateBudget({"track": RateLimit(min_interval=0.2)}, {"auth": 0})
    start = time.monotonic()
    for _ in range(3):
        await budget.wait("track")
    assert time.monotonic() - start >= 0.39
    assert budget.usage()["track"]["last_hour"] == 3
    overridden = RateBudget({"track": RateLimit(min_interval=10)}, {"track": 0})
    await asyncio.wait_for(asyncio.gather(*(overridden.wait("track") for _ in range(5))), 1)


def test_redact() -> None:
    add_secret("hunter2-secret")
    assert redact("token=hunter2-secret&x=1") == "token=***&x=1"
    assert redact("nothing here") == "nothing here"


def test_slugify() -> None:
    assert slugify("Delivery vans #2") == "delivery_vans_2"
    assert re.match(r"^[a-z0-9_-]+$", slugify("ÄÖ/+#"))


def test_docs_cover_every_key_service_and_hook() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("devices_doc", DOCS.parent / "tools" / "devices_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "devices.md").read_text() == module.render(), "run python3 tools/devices_doc.py"
    plugins = (DOCS / "plugins.md").read_text()
    for name in dir(hookspecs):
        if name.startswith("fleetbridge_"):
            assert name in plugins, name


def test_configuration_reference_is_generated_and_complete() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_doc", DOCS.parent / "tools" / "config_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.missing_descriptions() == []
    assert (DOCS / "configuration.md").read_text() == module.render(), "run python3 tools/config_doc.py"
