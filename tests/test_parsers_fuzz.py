"""Property-based tests of the vendor response parsers that had none: for any JSON-like input they
return data or raise the one typed error (BadResponse), never anything else."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleetbridge.errors import BadResponse
from fleetbridge_plugins.sierra.airvantage_api import metadata_dict, parse_operation
from fleetbridge_plugins.sierra.rest import decode_json, error_key, retry_after
from fleetbridge_plugins.tangoe.api import items_of, unwrap, vendor_error
from fleetbridge_plugins.tangoe.mapping import imei_of, merge, model_of

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=6)), max_leaves=30)
# payloads shaped like the vendors' answers, with every field of any type
tangoe_pages = st.fixed_dictionaries({}, optional={
    "devices": st.one_of(json_values, st.lists(st.dictionaries(st.sampled_from(
        ["id", "imei", "model", "status", "employee", "_meta", "serialNumber"]), json_values, max_size=7), max_size=4)),
    "_meta": st.dictionaries(st.sampled_from(["hrefNext", "offset", "limit", "total", "href"]), json_values),
    "errors": json_values, "errorCode": json_values, "id": json_values, "message": json_values})
operations = st.fixed_dictionaries({}, optional={
    "state": json_values, "uid": json_values, "total": json_values,
    "counters": st.one_of(json_values, st.lists(st.dictionaries(st.sampled_from(["state", "count"]), json_values)))})


def only_bad_response(func: Any, *args: Any) -> None:
    try:
        func(*args)
    except BadResponse:
        pass


@settings(max_examples=200, deadline=None)
@given(st.one_of(tangoe_pages, json_values))
def test_tangoe_collection_and_error_parsers(payload: Any) -> None:
    only_bad_response(items_of, payload, "devices")
    only_bad_response(unwrap, payload, "device")
    code, ident, message = vendor_error(payload)
    assert isinstance(message, str) and (code is None or isinstance(code, str))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["id", "imei", "model", "manufacturer", "status", "employee", "device",
                                        "serialNumber", "name", "deviceModel"]), json_values, max_size=8),
       st.one_of(st.none(), st.dictionaries(st.text(max_size=8), json_values, max_size=4)))
def test_tangoe_device_mapping_tolerates_any_field_types(listed: dict[str, Any], detail: Any) -> None:
    imei_of(listed)
    model_of(listed)
    merge(listed, detail)


@settings(max_examples=200, deadline=None)
@given(st.one_of(operations, json_values), st.text(min_size=1, max_size=8))
@example({"state": True, "counters": [{"count": float("inf")}]}, "0")  # int(inf): OverflowError, found in CI
@example({"state": 1, "counters": [], "total": float("inf")}, "0")
def test_airvantage_operation_parser(payload: Any, uid: str) -> None:
    try:
        op = parse_operation(payload, uid)
    except BadResponse:
        return
    assert all(isinstance(v, int) for v in op.counters.values())


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_sierra_error_bodies_and_metadata(payload: Any) -> None:
    key, params = error_key(payload)
    assert key is None or isinstance(key, str)
    assert isinstance(metadata_dict(payload), dict)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_sierra_body_decoding(body: bytes) -> None:
    only_bad_response(decode_json, body, "GET /api/x", 200)


@given(st.dictionaries(st.sampled_from(["X-Rate-Limit-Retry-After-Seconds", "Retry-After"]), st.text(max_size=12)))
def test_sierra_retry_after_headers(headers: dict[str, str]) -> None:
    value = retry_after(headers)
    assert value is None or value >= 0
