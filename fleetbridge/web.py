"""The bridge's status web server (``http:`` in the config; loopback by default).

``/`` a self-contained status page (no network fetches: the map is an inline SVG), ``/api/status``
the JSON it renders, ``/health`` for container health checks and ``/metrics`` in the Prometheus text
exposition format. Nothing here shows a secret: every string goes through :func:`redact.redact`.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import __version__, redact
from .errors import ConfigError

if TYPE_CHECKING:
    from .account import Account
    from .bridge import Bridge
    from .config import HttpConfig

_LOGGER = logging.getLogger(__name__)

BRIDGE_KEY: web.AppKey[Bridge] = web.AppKey("bridge")
DEVICE_ROWS = 1000  # devices listed in one snapshot (the map and the table)
JOURNAL_ROWS = 25
EVENT_ROWS = 25
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# -- the snapshot (shared with the terminal status) ---------------------------------------------
def scrub(value: Any) -> Any:
    """``value`` with every string (keys too) passed through :func:`redact.redact`."""
    if isinstance(value, str):
        return redact.redact(value)
    if isinstance(value, Mapping):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def _pending_commands(bridge: Bridge, account: str) -> int:
    try:
        return len(bridge.store.journal_pending(account))
    except sqlite3.ProgrammingError:  # the store closed while stopping
        return 0


def _journal(bridge: Bridge, limit: int) -> list[dict[str, Any]]:
    try:
        rows = bridge.store.journal(limit)
    except sqlite3.ProgrammingError:
        return []
    keep = ("id", "account", "device", "service", "source", "status", "detail", "requested_at", "updated_at")
    return [{**{k: row[k] for k in keep}, "params": str(row["params"])[:200]} for row in rows]


def account_snapshot(acc: Account, now: float) -> dict[str, Any]:
    """One account's health, counters and rate budget use."""
    with_state = sum(1 for d in acc.devices.values() if d.state)
    return {
        "id": acc.id, "name": acc.config.name, "platform": acc.config.platform, "status": acc.status,
        "detail": acc.detail, "available": acc.available, "devices": len(acc.devices), "with_state": with_state,
        "last_poll": acc.last_poll, "last_poll_age": None if acc.last_poll is None else round(now - acc.last_poll, 1),
        "polls": acc.polls, "requests": dict(acc.requests), "errors": dict(acc.errors),
        "warnings": dict(acc.warnings), "budget": acc.budget.usage(),
        "pending_commands": _pending_commands(acc.bridge, acc.id),
    }


def device_rows(bridge: Bridge, now: float, limit: int = DEVICE_ROWS) -> list[dict[str, Any]]:
    """Devices with their last state and its age, at most ``limit``."""
    rows: list[dict[str, Any]] = []
    for acc in bridge.accounts.values():
        for dev in acc.devices.values():
            if len(rows) >= limit:
                return rows
            state = {k: v for k, v in dev.state.items() if k != "attributes"}
            rows.append({
                "account": acc.id, "id": dev.slug, "vendor_id": dev.info.id, "name": dev.info.name,
                "model": dev.info.model, "available": acc.available, "state": state, "state_at": dev.state_at,
                "age": None if dev.state_at is None else round(now - dev.state_at, 1),
            })
    return rows


def health(bridge: Bridge) -> dict[str, Any]:
    """``ok`` when the MQTT link is up and no enabled account is failing past its grace."""
    mqtt = bridge.mqtt
    problems = []
    if not mqtt.connected.is_set():
        problems.append(f"MQTT broker {bridge.mqtt_cfg.host}:{bridge.mqtt_cfg.port} not connected")
    for acc in bridge.accounts.values():
        if acc.status != "disabled" and not acc.available:
            problems.append(f"account {acc.id}: {acc.status}" + (f" ({acc.detail})" if acc.detail else ""))
    return scrub({
        "status": "unhealthy" if problems else "ok", "problems": problems,
        "mqtt": "connected" if mqtt.connected.is_set() else "disconnected",
        "accounts": {aid: acc.status for aid, acc in bridge.accounts.items()},
    })


def snapshot(bridge: Bridge, now: float | None = None) -> dict[str, Any]:
    """Everything the status page and the terminal show, JSON-ready and redacted."""
    now = time.time() if now is None else now
    cfg = bridge.mqtt_cfg
    total = sum(len(a.devices) for a in bridge.accounts.values())
    return scrub({
        "version": __version__, "now": now, "started_at": bridge.started_at,
        "uptime": round(now - bridge.started_at, 1), "health": health(bridge),
        "mqtt": {"host": cfg.host, "port": cfg.port, "base_topic": cfg.base_topic,
                 "connected": bridge.mqtt.connected.is_set(), "pending": bridge.mqtt.pending,
                 **bridge.mqtt.stats},
        "stats": {"commands": bridge.stats["commands"], "events": bridge.stats["events"],
                  "results": dict(bridge.stats["results"])},
        "accounts": [account_snapshot(acc, now) for acc in bridge.accounts.values()],
        "device_count": total, "devices": device_rows(bridge, now),
        "journal": _journal(bridge, JOURNAL_ROWS),
        "events": list(bridge.recent_events)[-EVENT_ROWS:][::-1],
    })


# -- Prometheus text exposition -------------------------------------------------------------------
Sample = tuple[Mapping[str, str], float]


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value) if isinstance(value, int) else repr(float(value))


class Exposition:
    """Builds the text format: ``# HELP``, ``# TYPE`` and samples per family."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            text = ",".join(f'{k}="{_label_value(redact.redact(str(v)))}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _per_account(bridge: Bridge, value) -> list[Sample]:
    return [({"account": a.id, "platform": a.config.platform}, value(a)) for a in bridge.accounts.values()]


def _per_kind(bridge: Bridge, table) -> list[Sample]:
    return [({"account": a.id, "platform": a.config.platform, "kind": kind}, count)
            for a in bridge.accounts.values() for kind, count in sorted(table(a).items())]


def metrics(bridge: Bridge, now: float | None = None) -> str:
    """The bridge's counters and gauges in the Prometheus text format (version 0.0.4)."""
    now = time.time() if now is None else now
    mqtt, out = bridge.mqtt, Exposition()
    budgets = {a.id: a.budget.usage() for a in bridge.accounts.values()}
    out.family("fleetbridge_info", "gauge", "Bridge version.", [({"version": __version__}, 1)])
    out.family("fleetbridge_uptime_seconds", "gauge", "Seconds since the bridge started.",
               [({}, round(now - bridge.started_at, 3))])
    out.family("fleetbridge_mqtt_connected", "gauge", "1 while the MQTT link is connected.",
               [({}, mqtt.connected.is_set())])
    out.family("fleetbridge_mqtt_messages_published_total", "counter", "MQTT messages the broker acknowledged.",
               [({}, mqtt.stats["published"])])
    out.family("fleetbridge_mqtt_connects_total", "counter", "MQTT connections made.", [({}, mqtt.stats["connects"])])
    out.family("fleetbridge_mqtt_queued_messages", "gauge", "MQTT messages waiting to be sent.", [({}, mqtt.pending)])
    out.family("fleetbridge_account_up", "gauge", "1 when the account's last poll succeeded.",
               _per_account(bridge, lambda a: a.status == "ok"))
    out.family("fleetbridge_account_available", "gauge", "1 while the account's devices are available.",
               _per_account(bridge, lambda a: a.available))
    out.family("fleetbridge_account_status", "gauge", "The account's status (label), always 1.",
               [({"account": a.id, "platform": a.config.platform, "status": a.status}, 1)
                for a in bridge.accounts.values()])
    out.family("fleetbridge_account_last_poll_timestamp_seconds", "gauge", "Time of the last successful poll.",
               [s for s in _per_account(bridge, lambda a: a.last_poll) if s[1] is not None])
    out.family("fleetbridge_polls_total", "counter", "Successful polls.", _per_account(bridge, lambda a: a.polls))
    out.family("fleetbridge_errors_total", "counter", "Vendor and plugin errors by kind.",
               _per_kind(bridge, lambda a: a.errors))
    out.family("fleetbridge_vendor_requests_total", "counter", "Requests to the vendor by kind.",
               _per_kind(bridge, lambda a: a.requests))
    out.family("fleetbridge_rate_budget_requests", "gauge", "Requests of a kind in the last hour.",
               _per_kind(bridge, lambda a: {k: v["last_hour"] for k, v in budgets[a.id].items()}))
    out.family("fleetbridge_rate_budget_used_ratio", "gauge", "Share of the hourly rate budget used (0-1).",
               _per_kind(bridge, lambda a: {k: v["share"] for k, v in budgets[a.id].items()
                                            if v["share"] is not None}))
    out.family("fleetbridge_devices", "gauge", "Devices found.", _per_account(bridge, lambda a: len(a.devices)))
    out.family("fleetbridge_devices_online", "gauge", "Devices the vendor reports online.",
               _per_account(bridge, lambda a: sum(1 for d in a.devices.values() if d.state.get("online") is True)))
    out.family("fleetbridge_pending_commands", "gauge", "Service calls waiting for their outcome.",
               _per_account(bridge, lambda a: _pending_commands(bridge, a.id)))
    out.family("fleetbridge_commands_total", "counter", "Commands received (MQTT and CLI).",
               [({}, bridge.stats["commands"])])
    out.family("fleetbridge_command_results_total", "counter", "Service call results published, by status.",
               [({"status": status}, n) for status, n in sorted(bridge.stats["results"].items())])
    out.family("fleetbridge_events_total", "counter", "Device events (alarms) published.",
               [({}, bridge.stats["events"])])
    return out.text()


# -- the aiohttp app ------------------------------------------------------------------------------
def _bridge(request: web.Request) -> Bridge:
    return request.app[BRIDGE_KEY]


def _json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


async def handle_status(request: web.Request) -> web.Response:
    return _json_response(snapshot(_bridge(request)))


async def handle_health(request: web.Request) -> web.Response:
    data = health(_bridge(request))
    return _json_response(data, 200 if data["status"] == "ok" else 503)


async def handle_metrics(request: web.Request) -> web.Response:
    return web.Response(body=metrics(_bridge(request)).encode(), headers={"Content-Type": METRICS_TYPE})


async def handle_page(request: web.Request) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    data = json.dumps(snapshot(_bridge(request)), separators=(",", ":")).replace("<", "\\u003c")
    html = PAGE.replace("{nonce}", nonce).replace("{initial}", data)
    csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return web.Response(text=html, content_type="text/html", headers={
        "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


def create_app(bridge: Bridge) -> web.Application:
    app = web.Application()
    app[BRIDGE_KEY] = bridge
    app.router.add_get("/", handle_page)
    app.router.add_get("/api/status", handle_status)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    return app


async def start_web(bridge: Bridge, http: HttpConfig, stack: AsyncExitStack) -> str:
    """Serve the status page until ``stack`` closes; returns its URL."""
    runner = web.AppRunner(create_app(bridge), access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await web.TCPSite(runner, http.host, http.port).start()
    except OSError as err:
        raise ConfigError(f"http: cannot listen on {http.host}:{http.port} ({err.strerror or err}): choose "
                          "another http.port or stop what uses it") from err
    port = runner.addresses[0][1]
    host = f"[{http.host}]" if ":" in http.host else http.host
    url = f"http://{host}:{port}/"
    _LOGGER.info("Status page on %s (/health, /metrics)", url)
    return url


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fleetbridge status</title>
<style nonce="{nonce}">
:root{--ok:#1b873f;--warn:#b7791f;--bad:#c53030;--mute:#6b7280;--line:#e5e7eb;font-family:system-ui,sans-serif}
body{margin:0;background:#f6f7f9;color:#111827;font-size:14px}
header{background:#1f2937;color:#fff;padding:10px 18px;display:flex;gap:18px;align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
main{padding:12px 18px;display:grid;gap:14px;grid-template-columns:minmax(0,1fr) minmax(0,1fr)}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:10px 12px;overflow:auto}
section.wide{grid-column:1/-1}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid var(--line);white-space:nowrap}
th{color:var(--mute);font-weight:600}
td.detail{white-space:normal;max-width:420px}
.badge{display:inline-block;border-radius:9px;padding:1px 8px;color:#fff;font-size:12px}
.st-ok,.st-success,.st-connected{background:var(--ok)}
.st-starting,.st-pending,.st-received,.st-rate_limited{background:var(--warn)}
.st-unhealthy,.st-disconnected,.st-error,.st-failed,.st-timeout,.st-rejected,.st-unreachable,
.st-auth_failed{background:var(--bad)}
.st-disabled,.st-unknown{background:var(--mute)}
.bar{display:inline-block;width:60px;height:8px;background:var(--line);border-radius:4px;vertical-align:middle}
.bar i{display:block;height:8px;border-radius:4px;background:var(--ok)}
.mute{color:var(--mute)}
#map{width:100%;height:auto;background:#eef2f7;border-radius:4px}
#map .grid{stroke:#c7d0dc;stroke-width:1}
#map .label{fill:#6b7280;font-size:11px}
#map .marker{stroke:#fff;stroke-width:1.5}
#map .name{font-size:11px;fill:#111827}
.legend b{font-size:16px}.k-on{color:#1b873f}.k-park{color:#2563eb}.k-off{color:#c53030}.k-na{color:#6b7280}
#lost{display:none;background:var(--bad);color:#fff;padding:4px 18px}
</style></head>
<body>
<header><h1>fleetbridge</h1><span id="hdr-health"></span><span id="hdr-mqtt"></span>
<span id="hdr-info" class="mute"></span></header>
<div id="lost">connection to the bridge lost; retrying</div>
<main>
<section class="wide"><h2>Accounts</h2><div id="problems"></div><table id="accounts"></table></section>
<section><h2>Map</h2><svg id="map" viewBox="0 0 640 420" role="img" aria-label="device positions"></svg>
<div class="mute legend"><b class="k-on">&#9679;</b> ignition on <b class="k-park">&#9679;</b> parked
<b class="k-off">&#9679;</b> offline <b class="k-na">&#9679;</b> no data (account down)</div></section>
<section><h2>Recent events</h2><table id="events"></table></section>
<section class="wide"><h2>Devices <span id="device-count" class="mute"></span></h2><table id="devices"></table>
</section>
<section class="wide"><h2>Command journal</h2><table id="journal"></table></section>
</main>
<script id="initial" type="application/json">{initial}</script>
<script nonce="{nonce}">
"use strict";
const SVG = "http://www.w3.org/2000/svg";
function el(tag, attrs, ...kids) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const kid of kids) if (kid !== undefined && kid !== null)
    node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return node;
}
function ago(s) {
  if (s === null || s === undefined) return "-";
  s = Math.max(0, s);
  if (s < 60) return Math.round(s) + "s";
  if (s < 3600) return Math.round(s / 60) + "m";
  if (s < 86400) return Math.round(s / 3600) + "h";
  return Math.round(s / 86400) + "d";
}
function clock(t) { return t ? new Date(t * 1000).toLocaleString() : "-"; }
function badge(status) { return el("span", {class: "badge st-" + status}, status); }
function bar(share) {
  const pct = Math.min(100, Math.round((share || 0) * 100));
  return el("span", {}, el("span", {class: "bar"}, el("i", {"data-w": pct})), " " + pct + "%");
}
function table(node, columns, rows, empty) {
  node.replaceChildren(el("tr", {}, ...columns.map(c => el("th", {}, c[0]))));
  for (const row of rows) {
    const tr = el("tr", row._attrs || {});
    for (const [, cell, cls] of columns) tr.append(el("td", cls ? {class: cls} : {}, cell(row)));
    node.append(tr);
  }
  if (!rows.length) node.append(el("tr", {}, el("td", {colspan: columns.length, class: "mute"}, empty)));
  node.querySelectorAll(".bar i").forEach(i => { i.style.width = i.dataset.w + "%"; });
}
function budget(acc) {
  const kinds = Object.entries(acc.budget).filter(([, v]) => v.share !== null);
  if (!kinds.length) return "-";
  return el("span", {}, ...kinds.map(([k, v]) => el("div", {}, k + " ", bar(v.share))));
}
function summary(state) {
  const skip = new Set(["latitude", "longitude", "online", "speed", "battery", "ignition"]);
  return Object.entries(state).filter(([k]) => !skip.has(k)).slice(0, 6).map(([k, v]) => k + "=" + v).join(" ");
}
function yesno(v) { return v === true ? "on" : v === false ? "off" : "-"; }
function niceStep(span) {
  const raw = span / 5, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}
function drawMap(svg, devices) {
  const W = 640, H = 420, pad = 30;
  const pts = devices.filter(d => typeof d.state.latitude === "number" && typeof d.state.longitude === "number");
  svg.replaceChildren();
  if (!pts.length) {
    svg.append(el("svg:text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "label"}, "no positions yet"));
    return;
  }
  let minLat = Math.min(...pts.map(d => d.state.latitude)), maxLat = Math.max(...pts.map(d => d.state.latitude));
  let minLon = Math.min(...pts.map(d => d.state.longitude)), maxLon = Math.max(...pts.map(d => d.state.longitude));
  const k = Math.max(0.05, Math.cos((minLat + maxLat) / 2 * Math.PI / 180));
  let spanLat = Math.max(maxLat - minLat, 0.01) * 1.15, spanLon = Math.max(maxLon - minLon, 0.01 / k) * 1.15;
  const scale = Math.min((W - 2 * pad) / (spanLon * k), (H - 2 * pad) / spanLat);
  spanLon = (W - 2 * pad) / scale / k; spanLat = (H - 2 * pad) / scale;
  const cLat = (minLat + maxLat) / 2, cLon = (minLon + maxLon) / 2;
  const x = lon => pad + (lon - (cLon - spanLon / 2)) * k * scale;
  const y = lat => H - pad - (lat - (cLat - spanLat / 2)) * scale;
  const grid = el("svg:g", {class: "grid-lines"});
  const step = niceStep(Math.max(spanLat, spanLon * k)), digits = Math.max(0, -Math.floor(Math.log10(step)));
  for (let lat = Math.ceil((cLat - spanLat / 2) / step) * step; lat <= cLat + spanLat / 2; lat += step) {
    grid.append(el("svg:line", {x1: pad, x2: W - pad, y1: y(lat), y2: y(lat), class: "grid"}),
                el("svg:text", {x: 2, y: y(lat) + 4, class: "label"}, lat.toFixed(digits)));
  }
  for (let lon = Math.ceil((cLon - spanLon / 2) / step) * step; lon <= cLon + spanLon / 2; lon += step) {
    grid.append(el("svg:line", {y1: pad, y2: H - pad, x1: x(lon), x2: x(lon), class: "grid"}),
                el("svg:text", {x: x(lon), y: H - 8, "text-anchor": "middle", class: "label"}, lon.toFixed(digits)));
  }
  svg.append(grid);
  const named = pts.length <= 25;
  for (const d of pts) {
    const color = !d.available ? "#6b7280" : d.state.online === false ? "#c53030" : d.state.ignition ? "#1b873f"
      : "#2563eb";
    const g = el("svg:g", {class: "device", "data-device": d.account + "/" + d.id},
      el("svg:circle", {cx: x(d.state.longitude), cy: y(d.state.latitude), r: 6, fill: color, class: "marker"},
        el("svg:title", {}, d.name + " (" + d.state.latitude + ", " + d.state.longitude + ")")));
    const left = x(d.state.longitude) > W - 120;
    if (named) g.append(el("svg:text", {x: x(d.state.longitude) + (left ? -8 : 8), y: y(d.state.latitude) + 4,
                                        "text-anchor": left ? "end" : "start", class: "name"}, d.name));
    svg.append(g);
  }
}
function render(s) {
  document.getElementById("hdr-health").replaceChildren("health ", badge(s.health.status));
  document.getElementById("hdr-mqtt").replaceChildren("MQTT " + s.mqtt.host + ":" + s.mqtt.port + " ",
    badge(s.mqtt.connected ? "connected" : "disconnected"));
  document.getElementById("hdr-info").textContent = "v" + s.version + " · up " + ago(s.uptime) + " · " +
    s.mqtt.published + " messages sent · " + s.mqtt.pending + " queued · " + s.stats.commands + " commands · " +
    s.stats.events + " events";
  document.getElementById("problems").replaceChildren(...s.health.problems.map(p => el("div", {class: "mute"}, p)));
  table(document.getElementById("accounts"), [
    ["account", a => a.name + " (" + a.id + ")"], ["platform", a => a.platform], ["status", a => badge(a.status)],
    ["devices", a => a.with_state + "/" + a.devices], ["last poll", a => a.last_poll_age === null ? "-"
      : ago(a.last_poll_age) + " ago"], ["polls", a => a.polls],
    ["errors", a => Object.entries(a.errors).map(([k, v]) => k + " " + v).join(", ") || "0"],
    ["rate budget (hour)", budget], ["pending", a => a.pending_commands],
    ["detail", a => [a.detail, ...Object.values(a.warnings)].filter(Boolean).join("; "), "detail"],
  ], s.accounts.map(a => ({...a, _attrs: {"data-account": a.id}})), "no accounts");
  document.getElementById("device-count").textContent = s.devices.length < s.device_count
    ? "(first " + s.devices.length + " of " + s.device_count + ")" : "(" + s.device_count + ")";
  table(document.getElementById("devices"), [
    ["device", d => d.name], ["account", d => d.account], ["online", d => yesno(d.state.online)],
    ["position", d => typeof d.state.latitude === "number"
      ? d.state.latitude.toFixed(5) + ", " + d.state.longitude.toFixed(5) : "-"],
    ["speed", d => d.state.speed ?? "-"], ["battery", d => d.state.battery ?? "-"],
    ["ignition", d => yesno(d.state.ignition)], ["age", d => ago(d.age)], ["state", d => summary(d.state), "detail"],
  ], s.devices.map(d => ({...d, _attrs: {class: "device-row", "data-device": d.account + "/" + d.id}})),
  "no devices yet");
  const names = new Map(s.devices.map(d => [d.account + "/" + d.id, d.name]));
  const who = r => names.get(r.account + "/" + r.device) || r.account + "/" + r.device;
  table(document.getElementById("events"), [
    ["time", e => e.at ? new Date(e.at).toLocaleString() : "-"], ["device", who], ["event", e => e.event_type],
    ["detail", e => e.vendor_name || "", "detail"],
  ], s.events, "no events yet");
  table(document.getElementById("journal"), [
    ["time", j => clock(j.requested_at)], ["device", who], ["service", j => j.service],
    ["params", j => j.params === "{}" ? "" : j.params], ["source", j => j.source], ["status", j => badge(j.status)],
    ["detail", j => j.detail, "detail"],
  ], s.journal, "no commands yet");
  drawMap(document.getElementById("map"), s.devices);
  document.body.dataset.rendered = String(s.now);
}
render(JSON.parse(document.getElementById("initial").textContent));
async function refresh() {
  try {
    const resp = await fetch("api/status", {cache: "no-store"});
    render(await resp.json());
    document.getElementById("lost").style.display = "none";
  } catch (err) {
    document.getElementById("lost").style.display = "block";
  }
}
setInterval(refresh, 5000);
</script>
</body></html>
"""
