"""Track history export: GPX 1.1, GeoJSON and CSV from a platform's ``async_history`` points.

A point is a dict with ``time`` (datetime, UTC), ``latitude``, ``longitude`` and optionally
``speed`` (km/h) and ``heading`` (degrees). Every exporter takes ``(points, name)``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

Point = Mapping[str, Any]

GPX_NS = "http://www.topografix.com/GPX/1/1"
TPX_NS = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"
CSV_FIELDS = ("time", "latitude", "longitude", "speed", "heading")
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def iso_time(moment: Any) -> str | None:
    """A datetime (naive = UTC) -> ``2026-12-02T06:15:00Z``; None stays None."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        return str(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _number(value: Any) -> str:
    """Shortest exact text of a number (113.909813 stays 113.909813)."""
    return str(float(value)) if isinstance(value, float) else str(int(value))


def _xml_text(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold (escaping is ElementTree's job)."""
    return _XML_ILLEGAL.sub("", str(text))


def to_gpx(points: Iterable[Point], name: str) -> str:
    """One GPX 1.1 track; speed (m/s) and course in Garmin's TrackPointExtension v2."""
    ET.register_namespace("", GPX_NS)
    ET.register_namespace("gpxtpx", TPX_NS)
    gpx = ET.Element(f"{{{GPX_NS}}}gpx", {"version": "1.1", "creator": "fleetbridge"})
    metadata = ET.SubElement(gpx, f"{{{GPX_NS}}}metadata")
    ET.SubElement(metadata, f"{{{GPX_NS}}}name").text = _xml_text(name)
    trk = ET.SubElement(gpx, f"{{{GPX_NS}}}trk")
    ET.SubElement(trk, f"{{{GPX_NS}}}name").text = _xml_text(name)
    segment = ET.SubElement(trk, f"{{{GPX_NS}}}trkseg")
    for point in points:
        _gpx_point(segment, point)
    ET.indent(gpx)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(gpx, encoding="unicode") + "\n"


def _gpx_point(segment: ET.Element, point: Point) -> None:
    trkpt = ET.SubElement(segment, f"{{{GPX_NS}}}trkpt",
                          {"lat": _number(point["latitude"]), "lon": _number(point["longitude"])})
    when = iso_time(point.get("time"))
    if when:
        ET.SubElement(trkpt, f"{{{GPX_NS}}}time").text = when
    extras = {"speed": point.get("speed"), "course": point.get("heading")}
    if all(v is None for v in extras.values()):
        return
    ext = ET.SubElement(ET.SubElement(trkpt, f"{{{GPX_NS}}}extensions"), f"{{{TPX_NS}}}TrackPointExtension")
    if extras["speed"] is not None:
        ET.SubElement(ext, f"{{{TPX_NS}}}speed").text = f"{float(extras['speed']) / 3.6:.2f}"
    if extras["course"] is not None:
        ET.SubElement(ext, f"{{{TPX_NS}}}course").text = _number(extras["course"])


def to_geojson(points: Iterable[Point], name: str) -> str:
    """A GeoJSON Feature: a LineString (a Point for one fix, null for none) with ``coordTimes``."""
    items = list(points)
    coordinates = [[float(p["longitude"]), float(p["latitude"])] for p in items]
    if len(coordinates) >= 2:
        geometry: dict[str, Any] | None = {"type": "LineString", "coordinates": coordinates}
    elif coordinates:
        geometry = {"type": "Point", "coordinates": coordinates[0]}
    else:
        geometry = None
    times = [iso_time(p.get("time")) for p in items]
    properties = {
        "name": name,
        "start": times[0] if times else None,
        "end": times[-1] if times else None,
        "coordTimes": times,  # the de-facto convention (togeojson, Strava, Mapbox)
        "speeds": [p.get("speed") for p in items],
        "headings": [p.get("heading") for p in items],
    }
    return json.dumps({"type": "Feature", "geometry": geometry, "properties": properties})


def to_csv(points: Iterable[Point], name: str | None = None) -> str:
    """CSV with a header row: time, latitude, longitude, speed, heading (``name`` is unused)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for point in points:
        writer.writerow([
            iso_time(point.get("time")) or "",
            *("" if point.get(key) is None else point[key] for key in CSV_FIELDS[1:]),
        ])
    return out.getvalue()


FORMATS: dict[str, Callable[..., str]] = {"gpx": to_gpx, "geojson": to_geojson, "csv": to_csv}
