"""AMM data ids: the configurable table, conversions, per-value timestamps and staleness."""

from __future__ import annotations

import pytest
import voluptuous as vol
from fleetbridge_plugins.sierra.amm_data import (
    DATA_IDS_SCHEMA,
    DEFAULT_STATS,
    MPH_TO_KMH,
    Stat,
    build_stats,
    convert,
    gateway_state,
    latest_values,
    parse_duration,
    state_keys,
)
from hypothesis import given
from hypothesis import strategies as st

from fleetbridge.entities import coerce_state

NOW = 1_800_000_000.0
MS = int(NOW * 1000)


@pytest.mark.parametrize(("text", "seconds"), [
    ("2796808", 2796808), ("57 days 0 hour", 57 * 86400), ("1 day 2 hours", 93600),
    ("3 hours 5 minutes 7 seconds", 3 * 3600 + 5 * 60 + 7), ("0 day 1 hour", 3600), ("12.0", 12),
    ("-1", None), ("unknown", None), ("5 parsecs", None), ("", None),
])
def test_idle_time_numeric_or_prose(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=23))
def test_idle_time_prose_round_trip(days: int, hours: int) -> None:
    assert parse_duration(f"{days} days {hours} hour") == days * 86400 + hours * 3600


def test_default_table_covers_the_issue_ids() -> None:
    table = build_stats(None)
    assert [s.id for s in DEFAULT_STATS] == list(table)
    assert table["GPS Location-speedmph"] == Stat("GPS Location-speedmph", "speed", MPH_TO_KMH)
    assert table["CellLink-RSRQ"].target == "rsrq" and table["CPU-Temperature"].target == "cpu_temperature"
    assert state_keys(table) >= {"latitude", "longitude", "gps_time", "last_seen", "speed", "idle_time", "signal",
                                 "rsrp", "rsrq", "sinr", "data_sent", "data_received", "ip_address", "iccid",
                                 "network_operator", "network_type", "reset_count", "cpu_temperature", "attributes"}


def test_config_mapping_overrides_adds_and_removes() -> None:
    overrides = DATA_IDS_SCHEMA({"CPU-Temperature": None, "PowerIn": {"key": "voltage", "scale": 0.001},
                                 "Platform": "attributes.platform", "GPS Location-speedmph": "speed"})
    table = build_stats(overrides)
    assert "CPU-Temperature" not in table
    assert table["PowerIn"] == Stat("PowerIn", "voltage", 0.001)
    assert table["GPS Location-speedmph"].scale is None  # now taken as km/h
    assert convert(table["PowerIn"], "12600") == pytest.approx(12.6)


@pytest.mark.parametrize("bad", [{"X": "no_such_key"}, {"X": "attributes"}, {"X": "attributes."}, {"X": 5}])
def test_config_mapping_rejects_unknown_targets(bad: dict) -> None:
    with pytest.raises(vol.Invalid):
        DATA_IDS_SCHEMA(bad)


def test_latest_value_per_id_from_either_shape() -> None:
    grouped = [{"CellLink-RSSI": [{"value": "-80", "timestamp": MS - 5000}, {"value": "-70", "timestamp": MS}]},
               {"ResetCount": [{"value": "", "timestamp": MS}]}]
    assert latest_values(grouped) == {"CellLink-RSSI": ("-70", MS)}
    single = {"CellLink-RSSI": [{"value": "-70", "timestamp": str(MS)}]}
    assert latest_values(single) == {"CellLink-RSSI": ("-70", MS)}
    assert latest_values("garbage") == {} and latest_values(None) == {}


def test_state_keeps_own_timestamps_and_leaves_stale_live_values_out() -> None:
    table = build_stats(None)
    old = MS - 10 * 86400 * 1000
    values = {"GPS Location-latitude": ("49.2", old), "GPS Location-longitude": ("-123.1", old),
              "CellLink-RSSI": ("-71", MS - 60_000), "CellLink-ICCID": ("8930000000000000001", old),
              "SoftwareVersion": ("4.9.3", old), "ReportIdleTime": ("sometime", MS)}
    result = gateway_state(values, table, now=NOW, staleness=86400, attributes={"group": "North"})
    state = coerce_state(result.state)
    assert "latitude" not in state and "gps_time" not in state  # 10 days old: not fresh
    assert state["signal"] == -71 and state["iccid"] == "8930000000000000001"  # identity never goes stale
    assert state["last_seen"] == "2027-01-15T08:00:00Z"
    assert state["attributes"] == {"group": "North", "software_version": "4.9.3", "idle_time_text": "sometime"}
    assert result.sw_version == "4.9.3"
    fresh = gateway_state(values, table, now=NOW, staleness=None, attributes={}).state
    assert fresh["latitude"] == 49.2 and fresh["gps_time"] == "2027-01-05T08:00:00Z"


def test_half_a_position_is_no_position() -> None:
    values = {"GPS Location-latitude": ("49.2", MS)}
    state = gateway_state(values, build_stats(None), now=NOW, staleness=None, attributes={}).state
    assert "latitude" not in state and "gps_time" not in state
