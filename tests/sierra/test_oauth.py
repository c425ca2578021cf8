"""The shared OAuth 2 client and REST layer against a scripted server (aioresponses)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from fleetbridge_plugins.sierra.amm_api import MESSAGES
from fleetbridge_plugins.sierra.clock import ManualClock
from fleetbridge_plugins.sierra.oauth import KV_KEY, Credentials, OAuthClient
from fleetbridge_plugins.sierra.rest import ApiError, RestClient

from fleetbridge.errors import (
    AuthFailed,
    BadResponse,
    RateLimited,
    TokenInvalid,
    Unreachable,
)

from .conftest import (
    BASE,
    CLIENT_ID,
    CLIENT_SECRET,
    PASSWORD,
    USERNAME,
    FakeContext,
    Reply,
    Vendor,
    amm_config,
    basic_header,
)

TOKEN = "/api/oauth/token"
SYSTEMS = "/api/v1/systems"
CREDS = Credentials(CLIENT_ID, CLIENT_SECRET, USERNAME, PASSWORD)


@pytest.fixture
def ctx(session: aiohttp.ClientSession) -> FakeContext:
    return FakeContext(session, amm_config())


def make_client(ctx: FakeContext, clock: ManualClock) -> tuple[OAuthClient, RestClient]:
    oauth = OAuthClient(ctx, BASE, CREDS, clock=clock)
    rest = RestClient(ctx, BASE, oauth, messages=MESSAGES, kind_of=lambda method, path: "api")
    return oauth, rest


@pytest.fixture
def client(ctx: FakeContext, clock: ManualClock) -> tuple[OAuthClient, RestClient]:
    return make_client(ctx, clock)


# --- the token request ---------------------------------------------------------------------

async def test_password_grant_request_shape(client, vendor: Vendor, ctx: FakeContext) -> None:
    oauth, _ = client
    assert await oauth.token() == "access-1-7f3a9c"
    [call] = vendor.token_calls
    assert call.method == "POST" and call.query == {}
    assert call.headers["Authorization"] == basic_header()
    assert call.form == {"grant_type": "password", "username": USERNAME, "password": PASSWORD}
    assert {"access-1-7f3a9c", "refresh-1-b81d2e"} <= ctx.secrets
    assert ctx.rates == ["auth"]
    stored = ctx.kv[KV_KEY]
    assert stored["refresh_token"] == "refresh-1-b81d2e" and stored["owner"] and stored["issued_at"]


async def test_token_only_in_the_authorization_header(client, vendor: Vendor, ctx: FakeContext) -> None:
    _, rest = client
    vendor.on(SYSTEMS, {"All gateways": []})
    assert await rest.request("GET", SYSTEMS, params={"heartbeat": 1440}) == {"All gateways": []}
    call = vendor.calls_to(SYSTEMS)[0]
    assert call.headers["Authorization"] == "Bearer access-1-7f3a9c"
    assert call.query == {"heartbeat": "1440"}
    assert not any("access-1" in v for v in call.query.values())
    assert ctx.rates == ["auth", "api"]


# --- refresh and rotation ------------------------------------------------------------------

async def test_refresh_before_expiry_with_rotation(client, vendor: Vendor, ctx: FakeContext, clock) -> None:
    oauth, rest = client
    vendor.expires_in = 1000
    vendor.on(SYSTEMS, {})
    await rest.request("GET", SYSTEMS)
    clock.advance(799)
    await rest.request("GET", SYSTEMS)
    assert len(vendor.token_calls) == 1
    clock.advance(2)  # past 80 % of expires_in
    await rest.request("GET", SYSTEMS)
    refresh = vendor.token_calls[1]
    assert refresh.headers["Authorization"] == basic_header()
    assert refresh.form == {"grant_type": "refresh_token", "refresh_token": "refresh-1-b81d2e"}
    assert vendor.calls_to(SYSTEMS)[-1].headers["Authorization"] == "Bearer access-2-7f3a9c"
    assert ctx.kv[KV_KEY]["refresh_token"] == "refresh-2-b81d2e"
    clock.advance(801)
    await rest.request("GET", SYSTEMS)
    assert vendor.token_calls[2].form["refresh_token"] == "refresh-2-b81d2e"  # each one used once
    assert oauth.grants == {"password": 1, "refresh_token": 2}


async def test_new_refresh_token_is_stored_before_the_access_token_is_used(
        client, vendor: Vendor, ctx: FakeContext, clock, monkeypatch: pytest.MonkeyPatch) -> None:
    _, rest = client
    vendor.expires_in = 100
    vendor.on(SYSTEMS, {})
    await rest.request("GET", SYSTEMS)
    clock.advance(90)

    def crash(*args: Any) -> None:
        raise RuntimeError("killed between refresh and use")

    monkeypatch.setattr(OAuthClient, "_adopt", crash)
    with pytest.raises(RuntimeError):
        await rest.request("GET", SYSTEMS)
    assert len(vendor.calls_to(SYSTEMS)) == 1  # the new access token was never used
    assert ctx.kv[KV_KEY]["refresh_token"] == "refresh-2-b81d2e"  # ... but its refresh token is stored
    monkeypatch.undo()
    # a restart: a new client on the same store refreshes with the stored token, no password
    restarted, rest2 = make_client(FakeContext(ctx.session, ctx.config, kv=ctx.kv), clock)
    await rest2.request("GET", SYSTEMS)
    assert vendor.token_calls[-1].form == {"grant_type": "refresh_token", "refresh_token": "refresh-2-b81d2e"}
    assert restarted.grants == {"password": 0, "refresh_token": 1}


async def test_refused_refresh_falls_back_to_the_password_grant(vendor: Vendor, ctx: FakeContext, clock) -> None:
    oauth, _ = make_client(ctx, clock)
    ctx.kv[KV_KEY] = {"owner": oauth._owner, "refresh_token": "stale-refresh", "issued_at": clock.time() - 60}
    vendor.on(TOKEN, Reply({"error": "invalid_grant", "error_description": "used"}, 400),
              lambda call: vendor._token(call), method="POST")
    assert await oauth.token() == "access-1-7f3a9c"
    assert [c.form["grant_type"] for c in vendor.token_calls] == ["refresh_token", "password"]
    assert ctx.kv[KV_KEY]["refresh_token"] == "refresh-1-b81d2e"


@pytest.mark.parametrize("stored", [
    {"owner": "someone-else", "refresh_token": "other-user-token", "issued_at": 1_800_000_000.0},
    {"owner": None, "refresh_token": "ancient-token", "issued_at": 1_800_000_000.0 - 31 * 86400},
])
async def test_foreign_or_old_stored_refresh_token_is_not_used(vendor: Vendor, ctx: FakeContext, clock,
                                                                stored: dict[str, Any]) -> None:
    oauth, _ = make_client(ctx, clock)
    ctx.kv[KV_KEY] = {**stored, "owner": stored["owner"] or oauth._owner}
    await oauth.token()
    assert [c.form["grant_type"] for c in vendor.token_calls] == ["password"]


async def test_concurrent_requests_share_one_auth_flow(client, vendor: Vendor) -> None:
    _, rest = client
    vendor.on(SYSTEMS, {})
    await asyncio.gather(*(rest.request("GET", SYSTEMS) for _ in range(5)))
    assert len(vendor.token_calls) == 1


async def test_401_renews_the_token_once_and_retries(client, vendor: Vendor) -> None:
    _, rest = client
    vendor.on(SYSTEMS, Reply({"error": "unauthorized"}, 401), {"ok": True})
    assert await rest.request("GET", SYSTEMS) == {"ok": True}
    assert [c.headers["Authorization"] for c in vendor.calls_to(SYSTEMS)] == [
        "Bearer access-1-7f3a9c", "Bearer access-2-7f3a9c"]
    assert vendor.token_calls[1].form["grant_type"] == "refresh_token"


async def test_a_second_401_is_token_invalid(client, vendor: Vendor) -> None:
    _, rest = client
    vendor.on(SYSTEMS, Reply({"error": "unauthorized"}, 401))
    with pytest.raises(TokenInvalid):
        await rest.request("GET", SYSTEMS)
    assert len(vendor.calls_to(SYSTEMS)) == 2


@pytest.mark.parametrize("reply", [Reply({"error": "invalid_grant"}, 400), Reply({"error": "invalid_client"}, 401),
                                   Reply("", 401)])
async def test_refused_credentials_are_auth_failed_without_secrets(client, vendor: Vendor, reply: Reply) -> None:
    oauth, _ = client
    vendor.on(TOKEN, reply, method="POST")
    with pytest.raises(AuthFailed) as err:
        await oauth.token()
    assert PASSWORD not in str(err.value) and CLIENT_SECRET not in str(err.value)


async def test_unreachable_refresh_does_not_burn_the_password_grant(client, vendor: Vendor, clock) -> None:
    oauth, _ = client
    vendor.expires_in = 100
    await oauth.token()
    clock.advance(90)
    vendor.on(TOKEN, Reply("<html>bad gateway</html>", 502, content_type="text/html"), method="POST")
    with pytest.raises(Unreachable):
        await oauth.token()
    assert [c.form["grant_type"] for c in vendor.token_calls] == ["password", "refresh_token"]


# --- answers and errors ------------------------------------------------------------------

@pytest.mark.parametrize(("reply", "error"), [
    (Reply({"error": "too_many_requests"}, 429, {"X-Rate-Limit-Retry-After-Seconds": "120"}), RateLimited),
    (Reply("<html><body>502 Bad Gateway</body></html>", 200, content_type="text/html"), BadResponse),
    (Reply('{"All gateways": [', 200), BadResponse),
    (Reply("Internal Server Error", 500, content_type="text/plain"), Unreachable),
    (Reply({"error": "api.request.timeout"}, 408), Unreachable),
    (Reply({"error": "access_denied"}, 403), AuthFailed),
])
async def test_answers_map_to_typed_errors(client, vendor: Vendor, reply: Reply, error: type) -> None:
    _, rest = client
    vendor.on(SYSTEMS, reply)
    with pytest.raises(error) as err:
        await rest.request("GET", SYSTEMS)
    assert "access-1" not in str(err.value)
    if error is RateLimited:
        assert err.value.retry_after == 120


async def test_error_body_with_parameters_is_readable(client, vendor: Vendor) -> None:
    _, rest = client
    vendor.on(SYSTEMS, Reply({"error": "system.invalid.data.param", "errorParameters": ["Bogus"]}, 400))
    with pytest.raises(ApiError) as err:
        await rest.request("GET", SYSTEMS)
    assert err.value.key == "system.invalid.data.param" and err.value.params == ["Bogus"]
    assert str(err.value) == ("GET /api/v1/systems: a requested data id is unknown to this AMM "
                              "(system.invalid.data.param): Bogus")
    assert not err.value.retryable


async def test_empty_error_body(client, vendor: Vendor) -> None:
    _, rest = client
    vendor.on(SYSTEMS, Reply("", 404))
    with pytest.raises(ApiError) as err:
        await rest.request("GET", SYSTEMS)
    assert err.value.key is None and err.value.status == 404
    assert str(err.value) == "GET /api/v1/systems: HTTP 404"
