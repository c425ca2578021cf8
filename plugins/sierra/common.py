"""Pieces both Sierra platforms share: credential config, transport warnings, time conversion."""

from __future__ import annotations

import ipaddress
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import voluptuous as vol

from fleetbridge.errors import AuthFailed

from .clock import Clock
from .oauth import Credentials, OAuthClient
from .rest import Messages, RestClient

if TYPE_CHECKING:
    from fleetbridge.platform import AccountContext

_LOGGER = logging.getLogger(__name__)

MANUFACTURER = "Sierra Wireless"


def url(value: Any) -> str:
    """Voluptuous validator: an http(s) URL without query or fragment."""
    if not isinstance(value, str):
        raise vol.Invalid("expected a URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise vol.Invalid("expected an http(s) URL such as https://amm.example.com")
    return value.strip().rstrip("/")


Text = vol.All(str, vol.Length(min=1))

#: The OAuth keys of design.md, shared by both platforms.
CREDENTIAL_SCHEMA: dict[Any, Any] = {
    vol.Required("client_id", description="the OAuth API client's id (created in AMM / AirVantage)"): Text,
    vol.Required("client_secret", description="the API client's secret (use !secret)"): Text,
    vol.Required("username", description="the API user (give it only the privileges it needs)"): Text,
    vol.Required("password", description="its password (use !secret)"): Text,
}
SECRET_KEYS = ("client_secret", "password")


def credentials(config: Any) -> Credentials:
    return Credentials(client_id=config["client_id"], client_secret=config["client_secret"],
                       username=config["username"], password=config["password"])


def sim_credentials(config: Any) -> dict[str, dict[str, str]]:
    """The credentials a bundled simulator accepts: the account's own."""
    return {"clients": {config["client_id"]: config["client_secret"]}, "users": {config["username"]: config["password"]}}


def connect(ctx: AccountContext, clock: Clock, messages: Messages, **options: Any) -> tuple[OAuthClient, RestClient]:
    """The OAuth client and REST client of an account (after the transport warnings).

    Every API request is of rate kind ``api``; ``options`` go to :class:`RestClient` (gate, on_answer).
    """
    base = base_url(ctx.config)
    transport_warnings(ctx, base)
    oauth = OAuthClient(ctx, base, credentials(ctx.config), clock=clock)
    return oauth, RestClient(ctx, base, oauth, messages=messages, kind_of=lambda method, path: "api", **options)


def base_url(config: Any) -> str:
    """The configured ``base_url``; AuthFailed when missing (it is optional only for ``simulator:``)."""
    value = config.get("base_url")
    if not value:
        raise AuthFailed("no base_url configured (required unless simulator: is set)")
    return str(value).rstrip("/")


def transport_warnings(ctx: AccountContext, base: str) -> None:
    """Warn in ``bridge/info`` (and the log) about TLS verification off or plain HTTP to a remote host."""
    if not ctx.config.get("verify_tls", True):
        ctx.warn("tls", "TLS verification is OFF (verify_tls: false): the server's identity is not checked; "
                        "prefer ca_file with the server's CA")
    else:
        ctx.warn("tls", None)
    parts = urlsplit(base)
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        ctx.warn("plain_http", "base_url uses plain HTTP: the password and tokens travel unencrypted, and a proxy "
                               "may strip the Authorization header; use https")
    else:
        ctx.warn("plain_http", None)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ms_to_iso(value: Any) -> str | None:
    """Epoch milliseconds (a number or a numeric string) -> ISO 8601 UTC, or None."""
    seconds = ms_to_seconds(value)
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def ms_to_seconds(value: Any) -> float | None:
    """Epoch milliseconds (number or numeric string) -> epoch seconds; None when not a sane time."""
    if isinstance(value, bool) or value in (None, ""):
        return None
    try:
        ms = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not 0 < ms < 1e14:  # before 1970 or a µs/ns value
        return None
    return ms / 1000.0
