#!/usr/bin/env python3
"""Check discovery against a real Home Assistant with ../shared/tools/ha_probe (not part of the
test run: the probe installs 1.7 GB on first use).

    python3 tools/ha_check.py                 # HA 2026.11 (device discovery) and 2024.3 (entity discovery)
    python3 tools/ha_check.py --ha latest

Runs the bridge on config.example.yaml (every platform on its bundled simulator) against the probe's
broker, checks each platform's entities in Home Assistant, presses one control of each kind per
platform, and fails on any MQTT warning or error Home Assistant logged, a missing entity, or a press
without a result message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(os.environ.get("HA_PROBE", ROOT.parent / "shared" / "tools" / "ha_probe" / "probe.sh"))

#: account id -> entity keys Home Assistant must show for that platform
EXPECTED = {
    "demo_trackers": {"location": "device_tracker", "battery": "sensor", "ignition": "binary_sensor",
                      "odometer": "sensor", "engine_stop": "button", "engine_resume": "button",
                      "door_lock": "lock", "alarm": "event"},
    "demo_sims": {"online": "binary_sensor", "data_used": "sensor", "sim_state": "sensor", "sim": "switch",
                  "send_sms": "text"},
    "demo_gateways": {"location": "device_tracker", "signal": "sensor", "network_operator": "sensor",
                      "ip_address": "sensor"},
    "demo_inventory": {"lifecycle_state": "sensor", "add_label": "text", "set_note": "text"},
    "demo_handsets": {"line_status": "sensor", "assigned_to": "sensor", "plan": "sensor"},
}
#: controls to press: account id -> (entity key, probe press suffix)
PRESSES = {
    "demo_trackers": [("reboot", ""), ("door_lock", ":lock"), ("set_odometer", "=1234")],
    "demo_sims": [("sim", ":turn_off"), ("send_sms", "=hello from ha")],
    "demo_inventory": [("add_label", "=ha-probe")],
    "demo_handsets": [("sim", ":turn_off")],
}


def bridge_script(workdir: Path, mode: str) -> str:
    config = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    config["mqtt"] = {"host": "127.0.0.1", "port": "PORT", "discovery_mode": mode}
    config["storage"] = str(workdir / f"fb-{mode}.db")
    path = workdir / f"config-{mode}.yaml"
    path.write_text(yaml.safe_dump(config).replace("'PORT'", "PORT"))
    return (f"rm -f {workdir}/fb-{mode}.db*; sed s/PORT/$MQTT_PORT/ {path} > {path}.run && cd {ROOT} && "
            f"{sys.executable} -m fleetbridge run --no-live -c {path}.run > {workdir}/bridge-{mode}.log 2>&1 & "
            f"echo $! > {workdir}/bridge-{mode}.pid")


def probe(ha: str, mode: str, workdir: Path, press: list[str]) -> dict:
    cmd = [str(PROBE), "--ha", ha, "--wait", "25", "--press-window", "5", "--exec", bridge_script(workdir, mode)]
    if press:
        cmd += ["--press", *press]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    pid = workdir / f"bridge-{mode}.pid"
    if pid.exists():
        subprocess.run(["kill", pid.read_text().strip()], check=False)
    return json.loads(out.stdout)


def entities_of(ids: dict[str, str], account: str) -> dict[str, list[tuple[str, str]]]:
    """key -> [(device slug, entity id)] for one account, from HA's unique_id map."""
    out: dict[str, list[tuple[str, str]]] = {}
    prefix = f"fleetbridge_{account}_"
    for unique_id, entity_id in ids.items():
        if unique_id.startswith(prefix):
            rest = unique_id[len(prefix):]
            for key in sorted(set(EXPECTED.get(account, {})) | {k for k, _ in PRESSES.get(account, [])}, key=len,
                              reverse=True):
                if rest.endswith("_" + key):
                    out.setdefault(key, []).append((rest[:-len(key) - 1], entity_id))
                    break
    return out


def check(ha: str, mode: str) -> list[str]:
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        first = probe(ha, mode, workdir, [])
        press = []
        for account, controls in PRESSES.items():
            found = entities_of(first["unique_id_to_entity_id"], account)
            for key, suffix in controls:
                if found.get(key):
                    press.append(found[key][0][1] + suffix)
        result = probe(ha, mode, workdir, press)
    print(f"HA {result['ha_version']} ({mode} discovery): {len(result['entities'])} entities, "
          f"{len(result['devices'])} devices")
    problems += [f"HA logged {e['level']}: {e['message'][:300]}" for e in result["log"]]
    ids = result["unique_id_to_entity_id"]
    states = {e["entity_id"]: e for e in result["entities"]}
    for account, keys in EXPECTED.items():
        found = entities_of(ids, account)
        for key, component in keys.items():
            entity = next((e for _, e in found.get(key, []) if e.startswith(component + ".")), None)
            if entity is None:
                problems.append(f"{account}: no {component} for {key}")
            elif component == "device_tracker" and not states.get(entity, {}).get("attributes", {}).get("latitude"):
                problems.append(f"{account}: {entity} has no position")
            elif states.get(entity, {}).get("state") in ("unavailable", None):
                problems.append(f"{account}: {entity} is {states.get(entity, {}).get('state')}")
        print(f"  {account}: {len(found)} kinds of entity")
    for entry in result.get("presses", []):
        commands = [m for m in entry.get("mqtt_messages", []) if m["topic"].endswith("/set")]
        results = [(lambda r: f"{r['status']}: {r['detail'][:60]}")(json.loads(m["payload"]))
                   for m in entry.get("mqtt_messages", []) if m["topic"].endswith("/result")]
        print(f"  press {entry['entity_id']}: {[m['payload'] for m in commands]} -> {results}")
        if not entry["ok"] or not commands or not results:
            problems.append(f"press {entry['entity_id']}: no command or no result message")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ha", choices=["latest", "2024.3", "both"], default="both")
    args = parser.parse_args()
    runs = {"latest": ("latest", "device"), "2024.3": ("2024.3", "entity")}
    problems = []
    for name in (["latest", "2024.3"] if args.ha == "both" else [args.ha]):
        problems += check(*runs[name])
    for problem in problems:
        print("PROBLEM:", problem)
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
