"""The ``fleetbridge`` command: run, check-config, plugins, devices, call, history, simulate."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import __version__, hookimpl
from .errors import ConfigError, FleetbridgeError

EXIT_CONFIG = 2
DEFAULT_CONFIG = "config.yaml"
T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop where it is installed (a dependency on Linux and macOS: about 10 % less
    CPU per device update, benchmarks/README.md), else on asyncio's own loop, which
    ``FLEETBRIDGE_EVENT_LOOP=asyncio`` also forces."""
    if os.environ.get("FLEETBRIDGE_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def _load(args: argparse.Namespace):
    from .config import load_config
    from .plugins import load_plugins, unavailable_platforms

    registry = load_plugins()
    config = load_config(args.config, registry.platforms, unavailable_platforms(registry))
    return config, registry


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime import run_bridge

    config, registry = _load(args)
    if args.log_level is None and config.log_level:
        logging.getLogger().setLevel(config.log_level.upper())
    live = args.log_format == "text" and not args.no_live and sys.stderr.isatty()
    return run_loop(run_bridge(config, registry, live=live))


def cmd_check_config(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    print(f"{args.config}: OK: {len(config.accounts)} account(s)")
    for acc in config.accounts:
        state = f"disabled ({acc.disabled_reason})" if acc.disabled_reason else "enabled"
        print(f"  {acc.id}: platform {acc.platform}, {state}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import load_plugins
    from .services import SERVICE_BY_NAME

    registry = load_plugins()
    out: dict[str, Any] = {}
    for name, cls in sorted(registry.platforms.items()):
        keys = sorted(str(getattr(k, "schema", k)) for k in cls.CONFIG_SCHEMA.schema)
        out[name] = {
            "title": cls.title, "plugin": registry.plugin_of[name], "config_keys": keys,
            "services": {s: ("dangerous: off unless enabled" if SERVICE_BY_NAME[s].dangerous else "on")
                         for s in cls.SERVICES},
            "events": list(cls.EVENT_TYPES),
            "rate_limits": {k: {"min_interval": v.min_interval, "per_hour": v.per_hour}
                            for k, v in cls.RATE_LIMITS.items()},
        }
    if args.json:
        print(json.dumps({"platforms": out, "unavailable": registry.unavailable}, indent=2))
        return 0
    for name, data in out.items():
        print(f"{name}: {data['title']} (plugin {data['plugin']})")
        print(f"  config keys: {', '.join(data['config_keys'])}")
        print(f"  services:    {', '.join(f'{s} ({v})' for s, v in data['services'].items()) or '-'}")
        print(f"  events:      {len(data['events'])} types")
    for name, reason in registry.unavailable.items():
        print(f"{name}: UNAVAILABLE: {reason}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from .storage import Store

    config, _ = _load(args)
    if not config.storage.exists():
        print(f"no store yet at {config.storage}: run the bridge first")
        return 1
    rows = Store(config.storage).load_devices()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    now = time.time()
    table = [("ACCOUNT", "DEVICE", "NAME", "MODEL", "AGE", "STATE")]
    for r in rows:
        state = r["state"] or {}
        age = f"{int(now - r['state_at'])}s" if r["state_at"] else "-"
        summary = " ".join(f"{k}={state[k]}" for k in ("online", "latitude", "longitude", "speed", "ignition",
                                                        "battery", "odometer") if k in state)
        table.append((r["account"], r["device"], r["info"].get("name", ""), r["info"].get("model") or "", age,
                      summary))
    widths = [max(len(str(row[i])) for row in table) for i in range(5)]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5])
    return 0


class _Printer:
    """Observer plugin that prints service results (the ``call`` command)."""

    def __init__(self) -> None:
        self.final: dict[str, Any] | None = None

    @hookimpl
    def fleetbridge_service_result(self, result: dict[str, Any]) -> None:
        print(json.dumps(result), flush=True)
        if result["status"] != "pending":
            self.final = result


async def _open_account(args: argparse.Namespace, *, poll: bool):
    """Load config and plugins, start simulators, and open one account without MQTT."""
    from contextlib import AsyncExitStack

    from .bridge import Bridge
    from .config import MqttConfig
    from .runtime import register_secrets, start_simulators

    config, registry = _load(args)
    register_secrets(config)
    stack = AsyncExitStack()
    await start_simulators(config, registry, stack)
    if config.mqtt is None:
        from dataclasses import replace

        config = replace(config, mqtt=MqttConfig())
    bridge = Bridge(config, registry)
    acc = bridge.accounts.get(args.account)
    if acc is None:
        await stack.aclose()
        raise FleetbridgeError(f"no account '{args.account}' (have: {', '.join(bridge.accounts)})")
    try:
        await acc.open(retry=False)
        await acc.discover_once()
        if poll:
            await acc.poll()
    except BaseException:
        await acc.close()
        bridge.store.close()
        await stack.aclose()
        raise
    return bridge, acc, stack, registry


def cmd_call(args: argparse.Namespace) -> int:
    async def go() -> int:
        bridge, acc, stack, registry = await _open_account(args, poll=True)
        printer = _Printer()
        registry.pm.register(printer)
        try:
            payload = (args.value if args.value is not None else "PRESS").encode()
            bridge.handle_command(acc.id, args.device, args.service, payload, source="cli")
            while printer.final is None:
                await asyncio.sleep(0.1)
            return 0 if printer.final["status"] == "success" else 1
        finally:
            await acc.close()
            bridge.store.close()
            await stack.aclose()

    return run_loop(go())


def _when(text: str) -> datetime:
    """ISO 8601 date/time (UTC if no zone) or a relative '2h' / '3d' before now."""
    text = text.strip()
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(timezone.utc) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def cmd_history(args: argparse.Namespace) -> int:
    from .history import FORMATS

    async def go() -> int:
        bridge, acc, stack, _ = await _open_account(args, poll=False)
        try:
            dev = acc.devices.get(args.device) or acc.by_vendor_id.get(args.device)
            if dev is None:
                raise FleetbridgeError(f"no device '{args.device}' in account '{acc.id}'")
            history = getattr(acc.platform, "async_history", None)
            if history is None:
                raise FleetbridgeError(f"platform {acc.config.platform} has no history")
            since, until = _when(args.since), _when(args.until) if args.until else datetime.now(timezone.utc)
            points = await history(dev.info, since, until)
            text = FORMATS[args.format](points, dev.info.name)
            if args.output:
                Path(args.output).write_text(text)
            else:
                sys.stdout.write(text)
            distance = getattr(acc.platform, "async_distance", None)
            if args.distance and distance is not None:
                km = await distance(dev.info, since, until)
                print(f"distance: {km:.2f} km", file=sys.stderr)
            print(f"{len(points)} points", file=sys.stderr)
            return 0
        finally:
            await acc.close()
            bridge.store.close()
            await stack.aclose()

    return run_loop(go())


def cmd_simulate(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .plugins import load_plugins

    registry = load_plugins()
    cls = registry.platforms.get(args.platform)
    if cls is None:
        print(f"unknown platform {args.platform!r} (installed: {', '.join(registry.platforms)})", file=sys.stderr)
        return EXIT_CONFIG
    creds = dict(kv.split("=", 1) for kv in args.credential)
    config = {"account": "demo", "password": "demo-password", "key_name": "demo", "api_key": "demo-key",
              "client_id": "demo", "client_secret": "demo-secret", "username": "demo", "tenant": "demo", **creds}
    app = cls.create_simulator(config, args.devices, args.seed)
    if app is None:
        print(f"platform {args.platform} has no simulator", file=sys.stderr)
        return EXIT_CONFIG
    keys = {str(marker.schema) for marker in cls.CONFIG_SCHEMA.schema}
    shown = ", ".join(f"{k}={v}" for k, v in config.items() if k in keys)
    print(f"{cls.title} simulator: {args.devices} devices on http://{args.host}:{args.port} (credentials: {shown})",
          flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetbridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fleetbridge {__version__}")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                        help="log level (default: the config's log_level, else info)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="log line format")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "run the bridge")
    p.add_argument("--no-live", action="store_true",
                   help="plain log lines even on a terminal (no live status block)")
    add("check-config", cmd_check_config, "validate the config and exit (2 on errors)")
    p = add("plugins", cmd_plugins, "list installed platforms, their config keys and services", config=False)
    p.add_argument("--json", action="store_true")
    p = add("devices", cmd_devices, "table of known devices and their last state (from the store)")
    p.add_argument("--json", action="store_true")
    p = add("call", cmd_call, "call a service once and print its results")
    p.add_argument("account")
    p.add_argument("device", help="device id (topic slug) or vendor id")
    p.add_argument("service")
    p.add_argument("value", nargs="?", help="payload: a value or JSON parameters (default PRESS)")
    p = add("history", cmd_history, "export a device's track (gpx, geojson or csv)")
    p.add_argument("account")
    p.add_argument("device")
    p.add_argument("--since", required=True, help="ISO 8601 time (UTC if no zone) or e.g. 6h, 2d")
    p.add_argument("--until", help="ISO 8601 time or e.g. 1h (default now)")
    p.add_argument("--format", default="gpx", choices=["gpx", "geojson", "csv"])
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.add_argument("--distance", action="store_true", help="also print the distance report (stderr)")
    p = add("simulate", cmd_simulate, "run a platform's simulator standalone", config=False)
    p.add_argument("platform")
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--credential", action="append", default=[], metavar="KEY=VALUE",
                   help="credentials the simulator accepts, e.g. account=demo password=secret")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .runtime import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level or "info", args.log_format)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except FleetbridgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        logging.shutdown()
