"""Typed errors shared by the host and the vendor plugins.

A plugin raises these; the host turns them into account status, back-off and result messages.
Messages must never contain a secret (password, key, token, signature).
"""

from __future__ import annotations


class FleetbridgeError(Exception):
    """Base of every error fleetbridge raises on purpose."""


class ConfigError(FleetbridgeError):
    """The configuration is invalid; ``str()`` names file, line, key and problem."""


class VendorError(FleetbridgeError):
    """A vendor call failed. ``status`` is the account status it implies."""

    status = "unreachable"
    retryable = True

    def __init__(self, message: str, *, code: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code


class AuthFailed(VendorError):
    """Credentials were refused; retrying soon will not help."""

    status = "auth_failed"
    retryable = False


class TokenInvalid(VendorError):
    """The session token was refused (expired, unknown or voided by another login)."""

    status = "auth_failed"


class RateLimited(VendorError):
    """The vendor asked us to slow down; ``retry_after`` in seconds when it said."""

    status = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | int | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unreachable(VendorError):
    """Timeout, connection error, HTTP 5xx."""


class BadResponse(VendorError):
    """The answer could not be parsed (HTML page, malformed JSON, missing fields)."""


class CommandFailed(VendorError):
    """A device command was delivered and answered, or refused, with a failure."""

    status = "ok"
    retryable = False


class Rejected(FleetbridgeError):
    """A service call is refused before any vendor call (bad payload, disabled, unsafe)."""
