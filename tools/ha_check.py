#!/usr/bin/env python3
"""Check discovery against a real Home Assistant with ../shared/tools/ha_probe (not part of the
test run: the probe installs 1.7 GB on first use).

    python3 tools/ha_check.py                 # HA 2026.11 (device discovery) and 2024.3 (entity discovery)
    python3 tools/ha_check.py --ha latest

Runs the bridge on the bundled tracker simulator against the probe's broker, presses the engine,
reboot, door-lock and odometer controls, and fails on any MQTT warning or error Home Assistant
logged, a missing entity, or a press without a result message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(os.environ.get("HA_PROBE", ROOT.parent / "shared" / "tools" / "ha_probe" / "probe.sh"))
DEVICE = "351732065615943"  # a vehicle of the simulator's seed-3 fleet that answers commands
CONTROLS = {"button": "reboot", "lock": "door_lock", "number": "set_odometer"}
EXPECTED = ("device_tracker", "location"), ("sensor", "battery"), ("binary_sensor", "ignition"), \
    ("sensor", "odometer"), ("button", "engine_stop"), ("button", "engine_resume"), ("lock", "door_lock"), \
    ("event", "alarm")


def bridge_script(workdir: Path, mode: str) -> str:
    config = workdir / f"config-{mode}.yaml"
    config.write_text(f"""
mqtt: {{host: 127.0.0.1, port: PORT, discovery_mode: {mode}}}
storage: {workdir}/fb-{mode}.db
accounts:
  - platform: opengps
    name: Vans
    simulator: {{devices: 3, seed: 3}}
    account: demo
    password: demo-password
    scan_interval: 5
    event_interval: 5
    rate_limits: {{auth: 0, track: 0}}
    command_poll_interval: 0.2
    services: {{engine_stop: true, unlock_doors: true}}
""")
    return (f"sed s/PORT/$MQTT_PORT/ {config} > {config}.run && cd {ROOT} && "
            f"{sys.executable} -m fleetbridge run -c {config}.run > {workdir}/bridge-{mode}.log 2>&1 & "
            f"echo $! > {workdir}/bridge-{mode}.pid")


def probe(ha: str, mode: str, workdir: Path, press: list[str]) -> dict:
    cmd = [str(PROBE), "--ha", ha, "--wait", "10", "--press-window", "4",
           "--exec", bridge_script(workdir, mode)]
    if press:
        cmd += ["--press", *press]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    pid = (workdir / f"bridge-{mode}.pid")
    if pid.exists():
        subprocess.run(["kill", pid.read_text().strip()], check=False)
    return json.loads(out.stdout)


def check(ha: str, mode: str) -> list[str]:
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        first = probe(ha, mode, workdir, [])
        ids = first["unique_id_to_entity_id"]
        press = []
        for component, key in CONTROLS.items():
            entity = ids.get(f"fleetbridge_vans_{DEVICE}_{key}")
            if entity:
                press.append(entity + (":lock" if component == "lock" else "=1234" if component == "number" else ""))
        result = probe(ha, mode, workdir, press)
    print(f"HA {result['ha_version']} ({mode} discovery): {len(result['entities'])} entities, "
          f"{len(result['devices'])} devices")
    for entry in result["log"]:
        problems.append(f"HA logged {entry['level']}: {entry['message'][:300]}")
    ids = result["unique_id_to_entity_id"]
    for component, key in EXPECTED:
        entity = ids.get(f"fleetbridge_vans_{DEVICE}_{key}")
        if not entity or not entity.startswith(component + "."):
            problems.append(f"missing {component} {key}")
    states = {e["entity_id"]: e for e in result["entities"]}
    tracker = states.get(ids.get(f"fleetbridge_vans_{DEVICE}_location", ""), {})
    if not tracker.get("attributes", {}).get("latitude"):
        problems.append("device_tracker has no position")
    for entry in result.get("presses", []):
        results = [m for m in entry.get("mqtt_messages", []) if m["topic"].endswith("/result")]
        print(f"  press {entry['entity_id']}: {[json.loads(m['payload'])['status'] for m in results]}")
        if not entry["ok"] or not results:
            problems.append(f"press {entry['entity_id']} gave no result message")
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
