#!/usr/bin/env python3
"""Simulators the soak serves with options that ``fleetbridge simulate`` does not offer.

* ``opengps``: the tracker API lists at most 500 devices per account, so the first account is a
  distributor whose devices are spread over sub-accounts of at most 500 (the bridge reads them with
  ``include_subaccounts: true``);
* ``amm``: the owner group's hourly request limit (360 by default) raised to ``AMM_RATE_LIMIT``, the
  ``group_rate_limit`` the soak gives the bridge, so that a long soak is not throttled for the hour.

    python3 tools/soak_sims.py opengps --devices 2000 --port 8080 --credential account=soak --credential password=pw
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

AMM_RATE_LIMIT = 99_999


def opengps(creds: Mapping[str, str], devices: int, seed: int) -> web.Application:
    from fleetbridge_plugins.opengps.simulator import create_app

    return create_app(accounts={creds["account"]: creds["password"]}, devices=devices, seed=seed, subaccounts=True)


def amm(creds: Mapping[str, str], devices: int, seed: int) -> web.Application:
    from fleetbridge_plugins.sierra.amm_sim import create_app
    from fleetbridge_plugins.sierra.common import sim_credentials

    return create_app(**sim_credentials(creds), devices=devices, seed=seed, rate_limit=AMM_RATE_LIMIT)


SIMULATORS: dict[str, Callable[[Mapping[str, str], int, int], web.Application]] = {"opengps": opengps, "amm": amm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("platform", choices=sorted(SIMULATORS))
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--credential", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    creds = dict(kv.split("=", 1) for kv in args.credential)
    app = SIMULATORS[args.platform](creds, args.devices, args.seed)
    print(f"{args.platform} simulator: {args.devices} devices on port {args.port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
