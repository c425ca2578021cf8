"""fleetbridge.history exporters."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fleetbridge.history import FORMATS, GPX_NS, TPX_NS, to_csv, to_geojson, to_gpx

T0 = datetime(2026, 12, 2, 6, 15, tzinfo=UTC)
POINTS = [
    {"time": T0, "latitude": 22.583197, "longitude": 113.909813, "speed": 36.0, "heading": 195},
    {"time": T0 + timedelta(seconds=20), "latitude": 22.5841, "longitude": 113.9101, "speed": None,
     "heading": None},
]
NAME = 'Van <1> & "co"'
NS = {"g": GPX_NS, "x": TPX_NS}


def test_gpx_is_valid_xml_with_escaped_name_times_and_extensions() -> None:
    text = to_gpx(POINTS, NAME)
    root = ET.fromstring(text.encode())
    assert root.tag == f"{{{GPX_NS}}}gpx" and root.get("version") == "1.1"
    assert root.find("g:trk/g:name", NS).text == NAME
    first, second = root.findall("g:trk/g:trkseg/g:trkpt", NS)
    assert (first.get("lat"), first.get("lon")) == ("22.583197", "113.909813")
    assert first.find("g:time", NS).text == "2026-12-02T06:15:00Z"
    assert first.find("g:extensions/x:TrackPointExtension/x:speed", NS).text == "10.00"  # m/s
    assert first.find("g:extensions/x:TrackPointExtension/x:course", NS).text == "195"
    assert second.find("g:extensions", NS) is None


def test_gpx_drops_characters_xml_cannot_hold() -> None:
    root = ET.fromstring(to_gpx([], "bad\x01name").encode())
    assert root.find("g:trk/g:name", NS).text == "badname"


def test_geojson_is_a_linestring_feature_with_times() -> None:
    feature = json.loads(to_geojson(POINTS, NAME))
    assert feature["type"] == "Feature"
    assert feature["geometry"] == {"type": "LineString",
                                   "coordinates": [[113.909813, 22.583197], [113.9101, 22.5841]]}
    props = feature["properties"]
    assert props["name"] == NAME
    assert props["coordTimes"] == ["2026-12-02T06:15:00Z", "2026-12-02T06:15:20Z"]
    assert (props["start"], props["end"]) == ("2026-12-02T06:15:00Z", "2026-12-02T06:15:20Z")
    assert props["speeds"] == [36.0, None]


@pytest.mark.parametrize(("points", "geometry"), [
    ([], None), (POINTS[:1], {"type": "Point", "coordinates": [113.909813, 22.583197]})])
def test_geojson_with_fewer_than_two_points(points, geometry) -> None:
    assert json.loads(to_geojson(points, "x"))["geometry"] == geometry


def test_csv_has_a_header_and_iso_times_in_utc() -> None:
    local = [{**POINTS[0], "time": T0.astimezone(timezone(timedelta(hours=2)))}, POINTS[1]]
    rows = list(csv.reader(io.StringIO(to_csv(local))))
    assert rows == [
        ["time", "latitude", "longitude", "speed", "heading"],
        ["2026-12-02T06:15:00Z", "22.583197", "113.909813", "36.0", "195"],
        ["2026-12-02T06:15:20Z", "22.5841", "113.9101", "", ""],
    ]


def test_formats_share_one_signature() -> None:
    assert set(FORMATS) == {"gpx", "geojson", "csv"}
    for export in FORMATS.values():
        assert isinstance(export(POINTS, NAME), str)
