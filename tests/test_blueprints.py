"""The Home Assistant blueprints in blueprints/automation/fleetbridge: structure, inputs, templates and
the fleetbridge entities they select; and, where Home Assistant 2024.3 is installed (/opt/ha-venv, as
ha_probe sets it up), Home Assistant's own check of automations made from every blueprint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from fleetbridge.entities import STATE_KEY_BY_NAME
from fleetbridge.events import EVENT_TYPES
from fleetbridge.services import CONTROL_BY_KEY

FOLDER = Path(__file__).parent.parent / "blueprints" / "automation" / "fleetbridge"
HA_VENV = Path(os.environ.get("HA_VENV", "/opt/ha-venv"))
EXPECTED = {"theft_alert", "low_battery", "device_offline", "data_usage", "geofence_alarm"}
SELECTORS = {"entity", "number", "boolean", "time", "duration", "select", "action", "text"}
OUR_DOMAINS = {"device_tracker", "binary_sensor", "sensor", "event", "switch"}

#: Inputs for an automation from each blueprint, as a user would pick them (entity ids as fleetbridge's
#: discovery suggests them: <component>.<account>_<device>_<key>). Required inputs only, then all.
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "theft_alert": [{"tracker": "device_tracker.vans_358899_location"},
                    {"tracker": "device_tracker.vans_358899_location", "ignition": ["binary_sensor.vans_358899_ignition"],
                     "armed": ["binary_sensor.vans_358899_armed"], "night_start": "22:00:00",
                     "night_end": "05:30:00", "min_distance": 300, "cooldown": {"minutes": 5},
                     "notify": [{"service": "notify.notify", "data": {"message": "{{ message }}"}}]}],
    "low_battery": [{"batteries": ["sensor.vans_358899_battery"]},
                    {"batteries": ["sensor.vans_358899_battery"], "threshold": 10, "duration": {"hours": 1}}],
    "device_offline": [{"online_sensors": ["binary_sensor.vans_358899_online"]},
                       {"online_sensors": ["binary_sensor.vans_358899_online"], "offline_for": {"minutes": 30},
                        "notify_recovery": True}],
    "data_usage": [{"usage_sensors": ["sensor.sims_8901_data_allowance_used"]},
                   {"usage_sensors": ["sensor.sims_8901_data_allowance_used"], "share": 80, "suspend_sim": True}],
    "geofence_alarm": [{"alarms": ["event.vans_358899_alarm"]},
                       {"alarms": ["event.vans_358899_alarm"], "event_types": ["geofenceExit"]}],
}


class Input(str):
    """A ``!input name`` reference."""


class BlueprintLoader(yaml.SafeLoader):
    """YAML loader that knows Home Assistant's ``!input``."""


BlueprintLoader.add_constructor("!input", lambda loader, node: Input(loader.construct_scalar(node)))


def load(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=BlueprintLoader)  # noqa: S506 (a SafeLoader subclass)


def walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def blueprints() -> dict[str, dict[str, Any]]:
    return {path.stem: load(path) for path in sorted(FOLDER.glob("*.yaml"))}


def entity_filters(bp: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Input name -> the entity selector's (single) filter."""
    out = {}
    for name, spec in bp["blueprint"]["input"].items():
        entity = spec["selector"].get("entity")
        if entity is not None:
            (out[name],) = entity["filter"]
    return out


def test_the_five_blueprints_are_there() -> None:
    assert set(blueprints()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_structure_and_inputs(name: str) -> None:
    bp = load(FOLDER / f"{name}.yaml")
    meta = bp["blueprint"]
    assert meta["domain"] == "automation" and meta["name"].startswith("fleetbridge: ") and meta["description"]
    assert re.fullmatch(r"\d{4}\.\d+\.\d+", meta["homeassistant"]["min_version"])
    assert set(bp) <= {"blueprint", "mode", "max", "max_exceeded", "trigger", "variables", "condition", "action"}
    assert bp["trigger"] and bp["action"]
    declared = meta["input"]
    for key, spec in declared.items():
        assert spec.get("name"), key
        (kind,) = spec["selector"]
        assert kind in SELECTORS, (key, kind)
    used = {node for node in walk({k: v for k, v in bp.items() if k != "blueprint"}) if isinstance(node, Input)}
    assert used <= set(declared), f"undeclared inputs: {used - set(declared)}"
    assert used == set(declared), f"declared but unused inputs: {set(declared) - used}"
    assert not [n for n in walk(meta) if isinstance(n, Input)], "!input inside the blueprint metadata"
    required = {k for k, spec in declared.items() if "default" not in spec}
    assert required == set(SAMPLES[name][0]), "the samples cover exactly the required inputs"
    assert set(SAMPLES[name][-1]) <= set(declared)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_templates_compile(name: str) -> None:
    env = jinja2.Environment()
    for test in ("is_state", "match", "search", "number"):  # Home Assistant's own tests
        env.tests.setdefault(test, lambda *_: True)
    texts = [n for n in walk(load(FOLDER / f"{name}.yaml")) if isinstance(n, str) and ("{{" in n or "{%" in n)]
    assert texts
    for text in texts:
        env.parse(text)


def test_they_select_fleetbridge_entities() -> None:
    """Every entity input filters on MQTT entities of a domain (and device class) fleetbridge discovers."""
    for name, bp in blueprints().items():
        for key, flt in entity_filters(bp).items():
            assert flt["integration"] == "mqtt" and flt["domain"] in OUR_DOMAINS, (name, key)
    theft = entity_filters(blueprints()["theft_alert"])
    assert theft["ignition"]["device_class"] == STATE_KEY_BY_NAME["ignition"].device_class
    assert STATE_KEY_BY_NAME["armed"].component == theft["armed"]["domain"]
    assert entity_filters(blueprints()["low_battery"])["batteries"]["device_class"] == \
        STATE_KEY_BY_NAME["battery"].device_class
    assert entity_filters(blueprints()["device_offline"])["online_sensors"]["device_class"] == \
        STATE_KEY_BY_NAME["online"].device_class
    assert STATE_KEY_BY_NAME["data_allowance_used"].unit == "%"
    assert CONTROL_BY_KEY["sim"].component == "switch" and CONTROL_BY_KEY["sim"].commands["OFF"] == "sim_suspend"
    assert "switch.turn_off" in (FOLDER / "data_usage.yaml").read_text()
    options = blueprints()["geofence_alarm"]["blueprint"]["input"]["event_types"]["selector"]["select"]["options"]
    assert {o["value"] for o in options} == {"geofenceEnter", "geofenceExit"} <= set(EVENT_TYPES)


def ha_config(folder: Path, automations: list[dict[str, Any]]) -> Path:
    """A Home Assistant config dir with our blueprints and ``automations`` made from them."""
    shutil.copytree(FOLDER, folder / "blueprints" / "automation" / "fleetbridge")
    (folder / "configuration.yaml").write_text(yaml.safe_dump({
        "homeassistant": {"name": "blueprint check", "latitude": 52.37, "longitude": 4.89, "elevation": 0,
                          "unit_system": "metric", "time_zone": "UTC"},
        "automation": automations}, sort_keys=False))
    return folder


def use(name: str, alias: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return {"id": alias, "alias": alias, "use_blueprint": {"path": f"fleetbridge/{name}.yaml", "input": inputs}}


#: The scenario run in Home Assistant: one automation per blueprint on these entities (short delays).
TRACKER, BATTERY, ONLINE = "device_tracker.vans_1_location", "sensor.vans_1_battery", "binary_sensor.vans_1_online"
USAGE, ALARM = "sensor.sims_1_data_allowance_used", "event.vans_1_alarm"
SCENARIO = [
    use("theft_alert", "theft", {"tracker": TRACKER, "ignition": ["binary_sensor.vans_1_ignition"],
                                 "armed": ["binary_sensor.vans_1_armed"], "cooldown": {"seconds": 0}}),
    use("low_battery", "battery", {"batteries": [BATTERY], "duration": {"seconds": 1}}),
    use("device_offline", "offline", {"online_sensors": [ONLINE], "offline_for": {"seconds": 1},
                                      "notify_recovery": True}),
    use("data_usage", "data", {"usage_sensors": [USAGE], "suspend_sim": True}),
    use("geofence_alarm", "geo", {"alarms": [ALARM]}),
]

#: Runs in Home Assistant's own Python: its config check on one dir, then the scenario on another
#: (states set as fleetbridge's MQTT entities would set them). Prints JSON.
HA_SCRIPT = r"""
import asyncio, inspect, json, logging, sys
from datetime import datetime, timezone

from homeassistant import bootstrap, runner
from homeassistant.components import persistent_notification
from homeassistant.config_entries import ConfigEntry
from homeassistant.helpers import device_registry as dr, entity_registry as er
from homeassistant.scripts.check_config import async_check_config

log = []


class Keep(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING and "deprecated" not in record.getMessage():
            log.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:1500])


async def check(folder):
    result = await async_check_config(folder)
    return {"errors": [str(e.message) for e in result.errors],
            "automations": [a.get("alias") for a in result.get("automation", [])]}


async def scenario(folder):
    hass = await bootstrap.async_setup_hass(runner.RuntimeConfig(config_dir=folder, skip_pip=True))
    await hass.async_start()
    suspended = []

    async def turn_off(call):
        suspended.extend(call.data["entity_id"])

    hass.services.async_register("switch", "turn_off", turn_off)
    # the SIM's device with its usage sensor and SIM switch, as MQTT discovery registers them
    newer = {"discovery_keys": {}, "subentries_data": None, "unique_id": None}  # required by later versions
    params = inspect.signature(ConfigEntry).parameters
    entry = ConfigEntry(version=1, minor_version=1, domain="fleetbridge_test", title="t", data={}, source="user",
                        options={}, **{k: v for k, v in newer.items() if k in params})
    hass.config_entries._entries[entry.entry_id] = entry
    device = dr.async_get(hass).async_get_or_create(config_entry_id=entry.entry_id, identifiers={("mqtt", "s1")},
                                                    name="SIM 8901")
    for domain, key in (("sensor", "data_allowance_used"), ("switch", "sim")):
        er.async_get(hass).async_get_or_create(domain, "mqtt", f"sims_1_{key}", suggested_object_id=f"sims_1_{key}",
                                               device_id=device.id)
    now = datetime.now(timezone.utc).isoformat()
    tracker, battery, online, usage, alarm = sys.argv[3:8]
    steps = [  # (states, then seconds to wait: the `for:` of the battery and offline triggers is 1 s)
        ([("switch.sims_1_sim", "on", {}), ("binary_sensor.vans_1_armed", "on", {}),
          ("binary_sensor.vans_1_ignition", "off", {}), (tracker, "not_home", {"latitude": 52.37, "longitude": 4.89}),
          (battery, "50", {}), (online, "on", {}), (usage, "10", {}),
          (alarm, "unknown", {"event_types": ["geofenceEnter", "geofenceExit"]})], 0),
        ([(tracker, "not_home", {"latitude": 52.37004, "longitude": 4.89})], 0),  # 4 m: GPS drift
        ([(tracker, "not_home", {"latitude": 52.38, "longitude": 4.89}),  # 1.1 km while armed
          (battery, "12", {}), (online, "off", {}), (usage, "95", {}),
          (alarm, now, {"event_types": ["geofenceEnter", "geofenceExit"], "event_type": "geofenceExit",
                        "geofence_id": "depot", "latitude": 52.38, "longitude": 4.9})], 1.2),
        ([(online, "on", {})], 0),
    ]
    for states, wait in steps:
        for entity_id, state, attributes in states:
            hass.states.async_set(entity_id, state, {"friendly_name": entity_id.split(".")[1], **attributes})
        await hass.async_block_till_done()
        await asyncio.sleep(wait)
    await hass.async_block_till_done()
    notes = persistent_notification._async_get_or_create_notifications(hass).values()
    out = {"notifications": [n["title"] + " | " + n["message"] for n in notes], "suspended": suspended,
           "automations": {s.entity_id: s.state for s in hass.states.async_all("automation")}}
    await hass.async_stop(force=True)
    return out


logging.basicConfig(level=logging.WARNING, handlers=[Keep()])
checked = asyncio.run(check(sys.argv[1]))
ran = asyncio.run(scenario(sys.argv[2]))
print(json.dumps({"check": checked, "run": ran, "log": log}))
"""


@pytest.fixture(scope="module")
def home_assistant(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Home Assistant 2024.3's verdict on the blueprints (its check and the scenario run)."""
    python = HA_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no Home Assistant at {HA_VENV} (ha_probe --ha 2024.3 --setup installs it)")
    base = tmp_path_factory.mktemp("ha")
    samples = [use(name, f"{name}_{i}", inputs) for name, all_inputs in SAMPLES.items()
               for i, inputs in enumerate(all_inputs)]
    check_dir, run_dir = ha_config(base / "check", samples), ha_config(base / "run", SCENARIO)
    (base / "ha_script.py").write_text(HA_SCRIPT)
    proc = subprocess.run([str(python), str(base / "ha_script.py"), str(check_dir), str(run_dir), TRACKER, BATTERY,
                           ONLINE, USAGE, ALARM], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_home_assistant_accepts_every_blueprint(home_assistant: dict[str, Any]) -> None:
    """Home Assistant's config check loads each blueprint, substitutes the inputs and validates the
    triggers, conditions, templates and actions, as at its start."""
    check = home_assistant["check"]
    assert check["errors"] == [] and [line for line in home_assistant["log"] if "blueprint" in line.lower()] == []
    assert check["automations"] == [f"{name}_{i}" for name, inputs in SAMPLES.items() for i in range(len(inputs))]


def test_blueprints_run_in_home_assistant(home_assistant: dict[str, Any]) -> None:
    """The scenario fires every blueprint once, with its text, and suspends the SIM of the same device."""
    run = home_assistant["run"]
    assert set(run["automations"].values()) == {"on"}
    notes = sorted(run["notifications"])
    assert len(notes) == 6, notes
    assert any(re.match(r"Theft alert: .* \| Moved 11\d\d m while armed", n) for n in notes), notes  # not the drift
    assert any(n.startswith("Low tracker battery") and "12 %" in n for n in notes), notes
    assert any(" offline | " in n for n in notes) and any("back online" in n for n in notes), notes
    assert any("95 % of its data allowance. Its SIM is being suspended." in n for n in notes), notes
    assert any("left geofence depot (52.38, 4.9)" in n for n in notes), notes
    assert run["suspended"] == ["switch.sims_1_sim"]
    assert [line for line in home_assistant["log"] if line.startswith("ERROR")] == []
