"""The pure helpers of tools/soak.py and tools/memory_probe.py (the soak itself is not a test)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(TOOLS))  # soak.py imports its sibling
    try:
        spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(TOOLS))
    return module


soak = _load("soak")
probe = _load("memory_probe")


@pytest.mark.parametrize(("published", "polls", "expected"), [
    # equal to the poll before or the one after: explained
    ({"ignition": True, "speed": 3}, [{"ignition": True, "speed": 9}, {"ignition": False}], []),
    ({"ignition": False}, [{"ignition": True}, {"ignition": False}], []),
    # a door open for less than the gap between the polls: neither poll saw it
    ({"door_open": True, "armed": True}, [{"door_open": False, "armed": True}, {"door_open": False}], ["door_open"]),
    # a key the broker lacks, and one it keeps after the vendor dropped it
    ({}, [{"online": True}, {"online": True}], ["online"]),
    ({"fuel_cut": True, "name": "x"}, [{"name": "x"}, {"name": "x"}], []),  # fuel_cut's type is unknown: not compared
    # volatile keys and numbers are never compared
    ({"gps_time": "a", "last_seen": "b", "speed": 1}, [{"gps_time": "c", "last_seen": "d", "speed": 2}], []),
])
def test_unexplained(published: dict, polls: list[dict], expected: list[str]) -> None:
    assert soak.unexplained(published, polls) == expected


def test_account_of() -> None:
    assert soak.account_of("soak/soak_opengps/358899051025339/state") == "soak_opengps"


def test_rss_mb_of_this_process_and_of_a_gone_one() -> None:
    assert probe.rss_mb() > 1
    assert probe.rss_mb(2**22 + 12345) == 0.0


def test_probe_without_tracemalloc_reports_the_allocators(tmp_path: Path) -> None:
    probe.Probe(tmp_path)()
    row = json.loads((tmp_path / "memory.jsonl").read_text())
    assert row["pymalloc"]["arenas"] > 0 and row["glibc"]["in_use"] > 0 and "traced_mb" not in row


def test_probe_reports_growth_after_the_baseline(tmp_path: Path) -> None:
    import tracemalloc

    tracemalloc.start(5)
    try:
        take = probe.Probe(tmp_path)
        take()
        grown = [bytearray(1000) for _ in range(2000)]
        take()
    finally:
        tracemalloc.stop()
    rows = [json.loads(line) for line in (tmp_path / "memory.jsonl").read_text().splitlines()]
    assert [r["n"] for r in rows] == [0, 1] and "top" not in rows[0] and rows[1]["traced_mb"] > 1
    site, kib, blocks = rows[1]["top"][0]
    line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1) if "grown = [" in text)
    assert site == f"{__file__}:{line}" and kib > 1500 and blocks >= 2000 and len(grown) == 2000
    assert "top 30 sites by growth" in (tmp_path / "top-001.txt").read_text()


async def test_the_tracker_truth_equals_the_bridge_poll_of_a_distributor(tmp_path: Path) -> None:
    """The soak reads the tracker simulator's /_sim/devices (its own login would void the bridge's
    token); that must give exactly the states the bridge's poll gives, for every sub-account's device."""
    from dataclasses import replace

    import aiohttp
    import yaml
    from aiohttp.test_utils import TestServer

    from fleetbridge.bridge import Bridge
    from fleetbridge.config import MqttConfig, load_config
    from fleetbridge.plugins import load_plugins, unavailable_platforms
    from fleetbridge_plugins.opengps.simulator import create_app

    sims = _load("soak_sims")
    app = create_app(accounts={"soak": "pw"}, devices=1200, tick=None, subaccounts=True)
    served = sims.opengps({"account": "soak", "password": "pw"}, 1200, 1)["sim"]  # what the soak serves
    assert served.accounts.keys() == app["sim"].accounts.keys() == {"soak", "soak_sub1", "soak_sub2", "soak_sub3"}
    async with TestServer(app, host="127.0.0.1") as server:
        config_file = tmp_path / "config.yaml"
        account = {"platform": "opengps", "name": "Soak opengps", "base_url": f"http://127.0.0.1:{server.port}",
                   "account": "soak", "password": "pw", "include_subaccounts": True,
                   "rate_limits": {"auth": 0, "device_list": 0, "track": 0}}
        config_file.write_text(yaml.safe_dump({"mqtt": {"host": "127.0.0.1"}, "storage": str(tmp_path / "db"),
                                               "accounts": [account]}))
        registry = load_plugins()
        config = load_config(config_file, registry.platforms, unavailable_platforms(registry))
        bridge = Bridge(replace(config, mqtt=MqttConfig()), registry)
        account = bridge.accounts["soak_opengps"]
        await account.open(retry=False)
        try:
            await account.discover_once()
            await account.poll()
        finally:
            await account.close()
            bridge.store.close()
        polled = {f"soak/soak_opengps/{d.slug}/state": d.state for d in account.devices.values()}
        async with aiohttp.ClientSession() as session:
            truth = await soak.opengps_truth(session, server.port, "soak_opengps")
    assert len(polled) == 1200 and truth == polled
