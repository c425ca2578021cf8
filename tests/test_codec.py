"""``codec.loads_exact``: the stdlib's JSON value through orjson, and long numeric ids kept exact on
the platforms that decode with it (Lattigo, Tangoe, AMM and AirVantage)."""

from __future__ import annotations

import json
from typing import Any

from fleetbridge_plugins.lattigo import api as lattigo_api
from fleetbridge_plugins.lattigo.mapping import device_state
from fleetbridge_plugins.sierra.airvantage import gateway_state
from fleetbridge_plugins.sierra.rest import decode_json
from fleetbridge_plugins.tangoe import api as tangoe_api
from fleetbridge_plugins.tangoe.mapping import Handset, handset_state
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetbridge.codec import loads_exact, may_hold_long_integer

ICCID = 89310410106543789301  # 20 digits: beyond 64 bits

scalars = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=12),
                    st.integers(), st.integers(min_value=-(10**25), max_value=10**25),
                    st.integers(min_value=10**18, max_value=10**21), st.integers(min_value=-(10**21), max_value=-(10**18)))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)


def outcome(func: Any, data: Any) -> tuple[str, str]:
    try:
        return "ok", repr(func(data))  # repr: 1 and 1.0 differ, NaN equals itself
    except (ValueError, RecursionError) as err:
        return "error", type(err).__name__


@settings(max_examples=300, deadline=None)
@given(values, st.sampled_from([None, 0, 2]), st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " :\n ")]))
def test_loads_exact_gives_the_stdlib_value(value: Any, indent: int | None, separators: tuple[str, str]) -> None:
    text = json.dumps(value, indent=indent, separators=separators)
    assert repr(loads_exact(text)) == repr(json.loads(text))
    assert repr(loads_exact(text.encode())) == repr(json.loads(text.encode()))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=60), st.sampled_from([
    b"NaN", b"[Infinity, -Infinity]", b"[1e400]", b'"\\ud800"', b"\xef\xbb\xbf{\"a\": 1}", b"12345678901234567890",
    b" -12345678901234567890 ", b"[1,]", b"{\"a\":1}x", '{"a": 1}'.encode("utf-16")])))
def test_loads_exact_accepts_and_refuses_what_the_stdlib_does(raw: bytes) -> None:
    assert outcome(loads_exact, raw) == outcome(json.loads, raw)
    text = raw.decode("utf-8", "replace")
    assert outcome(loads_exact, text) == outcome(json.loads, text)


def test_long_integers_are_found_where_numbers_may_stand() -> None:
    for text in ('{"iccid": 89310410106543789301}', "[1,\n  -8931041010654378930]", "[8931041010654378930]"):
        assert may_hold_long_integer(text.encode())
    assert not may_hold_long_integer(b'{"iccid": "89310410106543789301", "imei": 359053117979266}')
    assert loads_exact(f'{{"iccid": {ICCID}}}')["iccid"] == ICCID


def test_lattigo_keeps_a_bare_numeric_iccid_exact() -> None:
    raw = json.dumps({"devices": [{"device_name": ICCID, "iccid": ICCID, "imei": 359053117979266}]}).encode()
    record = lattigo_api._decode(raw)["devices"][0]
    assert device_state(record)["iccid"] == str(ICCID)
    assert device_state({"device_name": ICCID})["iccid"] == str(ICCID)


def test_tangoe_keeps_a_bare_numeric_sim_id_exact() -> None:
    raw = json.dumps({"services": [{"id": "1", "simId": ICCID, "serviceNumber": 3125558205}]}).encode()
    line = tangoe_api._decode(raw)["services"][0]
    state = handset_state(Handset({"id": "5100001"}, line))
    assert (state["iccid"], state["msisdn"]) == (str(ICCID), "3125558205")


def test_sierra_keeps_a_bare_numeric_imei_exact() -> None:
    gateway = decode_json(json.dumps({"uid": "g1", "imei": ICCID}).encode(), "GET /api/v1/gateways", 200)
    assert gateway_state(gateway, "note")["imei"] == str(ICCID)
