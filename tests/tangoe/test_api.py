"""TangoeClient and TokenManager against a scripted vendor: headers, tokens, errors, paging."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from fleetbridge_plugins.tangoe.api import Context, RequestRefused, TangoeClient
from fleetbridge_plugins.tangoe.auth import KV_KEY, Credentials, TokenManager

from fleetbridge.errors import AuthFailed, BadResponse, TokenInvalid, Unreachable

from .conftest import (
    BASE,
    CLIENT_ID,
    CLIENT_SECRET,
    PASSWORD,
    TENANT,
    TOKEN_URL,
    USERNAME,
    FakeContext,
    Reply,
    error,
    load_fixture,
    make_config,
    page,
)

DEVICES = "/assets/devices"


@pytest.fixture
def ctx(session) -> FakeContext:
    return FakeContext(session, make_config())


NO_CONTEXT = Context()


def make_client(session, ctx: FakeContext, clock, *, context: Context = NO_CONTEXT, page_size: int = 2,
                max_pages: int = 50, username: str = USERNAME) -> TangoeClient:
    creds = Credentials(token_url=TOKEN_URL, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, username=username,
                        password=PASSWORD)
    tokens = TokenManager(session, creds, kv_get=ctx.kv_get, kv_set=ctx.kv_set, add_secret=ctx.add_secret,
                          rate=ctx.rate, clock=clock)
    return TangoeClient(session, BASE, tokens, tenant=TENANT, client_id=CLIENT_ID, context=context, rate=ctx.rate,
                        page_size=page_size, max_pages=max_pages)


@pytest.fixture
def client(session, ctx, clock) -> TangoeClient:
    return make_client(session, ctx, clock)


def devices(*ids: int) -> list[dict[str, Any]]:
    return [{"id": str(i), "status": "ACTIVE"} for i in ids]


# --- headers ------------------------------------------------------------------------------------------

async def test_every_request_carries_token_tenant_client_id_and_trace_ids(client, vendor) -> None:
    vendor.on("GET", "/me", load_fixture("me.json"))
    client.start_activity("poll")
    await client.me()
    await client.me()
    first, second = vendor.to("/me")
    for call in (first, second):
        assert call.headers["Authorization"] == f"Bearer {vendor.tokens[0]}"
        assert call.headers["X-TNGO-TENANT"] == TENANT
        assert call.headers["client_id"] == CLIENT_ID
        assert call.headers["Accept"] == "application/json"
        assert not any(h.startswith("X-TNGO-CONTEXT-") and h not in (
            "X-TNGO-CONTEXT-ACTIVITYID", "X-TNGO-CONTEXT-CORRELATIONID") for h in call.headers)
    assert first.headers["X-TNGO-CONTEXT-ACTIVITYID"] == second.headers["X-TNGO-CONTEXT-ACTIVITYID"]
    assert first.headers["X-TNGO-CONTEXT-ACTIVITYID"].startswith("fb-poll-")
    assert first.headers["X-TNGO-CONTEXT-CORRELATIONID"] != second.headers["X-TNGO-CONTEXT-CORRELATIONID"]
    client.start_activity("poll")
    await client.me()
    assert vendor.to("/me")[-1].headers["X-TNGO-CONTEXT-ACTIVITYID"] != first.headers["X-TNGO-CONTEXT-ACTIVITYID"]


@pytest.mark.parametrize(("context", "expected"), [
    (Context(employee_id="48068931", company_employee_id="barbara@example.com"),
     {"X-TNGO-CONTEXT-EMPLOYEEID": "48068931"}),
    (Context(company_employee_id="barbara@example.com", hierarchy_id="77"),
     {"X-TNGO-CONTEXT-COMPANYEMPLOYEEID": "barbara@example.com", "X-TNGO-CONTEXT-HIERARCHYID": "77"}),
    (Context(employee_id="", company_employee_id="barbara@example.com"),
     {"X-TNGO-CONTEXT-COMPANYEMPLOYEEID": "barbara@example.com"}),
])
async def test_context_headers_employee_id_wins(session, ctx, clock, vendor, context, expected) -> None:
    vendor.on("GET", "/me", load_fixture("me.json"))
    await make_client(session, ctx, clock, context=context).me()
    [call] = vendor.to("/me")
    sent = {k: v for k, v in call.headers.items() if k.startswith("X-TNGO-CONTEXT-")
            and k not in ("X-TNGO-CONTEXT-ACTIVITYID", "X-TNGO-CONTEXT-CORRELATIONID")}
    assert sent == expected


# --- tokens --------------------------------------------------------------------------------------------

async def test_password_grant_is_a_form_post_with_client_secret_and_scope(client, vendor, ctx) -> None:
    vendor.on("GET", "/me", {})
    await client.me()
    [grant] = vendor.grants
    assert grant == {"grant_type": "password", "username": USERNAME, "password": PASSWORD,
                     "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scope": "MOBPROC"}
    token_call = vendor.calls[0]
    assert token_call.method == "POST" and not token_call.url.query  # no secret in a URL
    assert {vendor.tokens[0], vendor.refresh_tokens[0]} <= ctx.secrets
    assert ctx.rates[0] == "token"


async def test_refresh_grant_before_expiry_trusting_expires_in(client, vendor, ctx, clock) -> None:
    vendor.on("POST", "/as/token.oauth2", lambda c: vendor.new_token(expires_in=7199))
    vendor.on("GET", "/me", {})
    await client.me()
    clock.advance(7199 * 0.8 - 1)
    await client.me()
    assert len(vendor.grants) == 1
    clock.advance(2)
    await client.me()
    grant = vendor.grants[1]
    assert grant == {"grant_type": "refresh_token", "refresh_token": vendor.refresh_tokens[0],
                     "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scope": "MOBPROC"}
    assert vendor.to("/me")[-1].headers["Authorization"] == f"Bearer {vendor.tokens[1]}"
    assert client.tokens.grants == {"password": 1, "refresh_token": 1}


async def test_rotated_refresh_token_is_stored_before_it_is_used(client, vendor, ctx, clock) -> None:
    order: list[str] = []
    store = ctx.kv_set

    async def kv_set(key: str, value: Any) -> None:
        order.append(f"kv:{value['refresh_token']}")
        await store(key, value)

    ctx.kv_set = kv_set
    client.tokens._kv_set = kv_set
    vendor.on("GET", "/me", lambda c: order.append(f"api:{c.headers['Authorization'][7:]}") or {})
    await client.me()
    clock.advance(3600)
    await client.me()
    assert order == [f"kv:{vendor.refresh_tokens[0]}", f"api:{vendor.tokens[0]}",
                     f"kv:{vendor.refresh_tokens[1]}", f"api:{vendor.tokens[1]}"]
    assert ctx.kv[KV_KEY]["refresh_token"] == vendor.refresh_tokens[1]


async def test_stored_refresh_token_is_used_after_a_restart(session, ctx, clock, vendor) -> None:
    vendor.on("GET", "/me", {})
    await make_client(session, ctx, clock).me()
    await make_client(session, ctx, clock).me()  # a new process: refresh, no password grant
    assert [g["grant_type"] for g in vendor.grants] == ["password", "refresh_token"]
    assert vendor.grants[1]["refresh_token"] == vendor.refresh_tokens[0]


async def test_stored_token_of_other_credentials_is_ignored(session, ctx, clock, vendor) -> None:
    vendor.on("GET", "/me", {})
    await make_client(session, ctx, clock).me()
    await make_client(session, ctx, clock, username="rivermine://someone.else").me()
    assert [g["grant_type"] for g in vendor.grants] == ["password", "password"]


async def test_refused_refresh_falls_back_to_one_password_grant(client, vendor, clock) -> None:
    vendor.on("POST", "/as/token.oauth2", lambda c: vendor.new_token(),
              Reply({"error": "invalid_grant", "error_description": "unknown, invalid, or expired refresh token"},
                    status=400),
              lambda c: vendor.new_token())
    vendor.on("GET", "/me", {})
    await client.me()
    clock.advance(3600)
    await client.me()
    assert [g["grant_type"] for g in vendor.grants] == ["password", "refresh_token", "password"]
    assert vendor.to("/me")[-1].headers["Authorization"] == f"Bearer {vendor.tokens[-1]}"


async def test_refused_password_is_auth_failed_without_secrets(client, vendor, caplog) -> None:
    vendor.on("POST", "/as/token.oauth2", Reply({"error": "invalid_grant",
                                                 "error_description": "Invalid resource owner credentials"},
                                                status=400))
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthFailed) as err:
        await client.me()
    assert "invalid_grant" in str(err.value)
    for secret in (PASSWORD, CLIENT_SECRET):
        assert secret not in str(err.value) and secret not in caplog.text
    assert vendor.api_calls == []


@pytest.mark.parametrize(("reply", "kind"), [(Reply("oops", status=503, content_type="text/plain"), Unreachable),
                                             (Reply("<html>login</html>", content_type="text/html"), BadResponse)])
async def test_token_service_outage_and_garbage(client, vendor, reply, kind) -> None:
    vendor.on("POST", "/as/token.oauth2", reply)
    with pytest.raises(kind):
        await client.me()


async def test_401_renews_once_and_repeats_the_request(client, vendor) -> None:
    vendor.on("GET", "/me", error(401, "The access token is missing, invalid or expired.", "401-invalid-token"), {})
    assert await client.me() == {}
    assert [g["grant_type"] for g in vendor.grants] == ["password", "refresh_token"]
    first, second = vendor.to("/me")
    assert first.headers["Authorization"] != second.headers["Authorization"]


async def test_401_twice_is_token_invalid_not_a_loop(client, vendor) -> None:
    vendor.on("GET", "/me", error(401, "expired", "401-invalid-token"))
    with pytest.raises(TokenInvalid):
        await client.me()
    assert len(vendor.to("/me")) == 2
    assert len(vendor.grants) == 2


async def test_concurrent_401s_share_one_renewal(client, vendor) -> None:
    await client.tokens.token()
    stale = vendor.tokens[0]
    vendor.on("GET", "/me", lambda c: error(401, "expired") if c.headers["Authorization"] == f"Bearer {stale}" else {})
    await asyncio.gather(client.me(), client.me(), client.me())
    assert len(vendor.grants) == 2


# --- errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [400, 403, 404])
async def test_4xx_is_refused_once_with_message_and_trace_ids(client, vendor, caplog, status) -> None:
    vendor.on("GET", "/me", error(status, "Region ID or Service ID must be passed in.", f"{status}-x", "tghwn"))
    with caplog.at_level(logging.WARNING), pytest.raises(RequestRefused) as err:
        await client.me()
    assert len(vendor.to("/me")) == 1  # never retried blindly
    message = str(err.value)
    correlation = vendor.to("/me")[0].headers["X-TNGO-CONTEXT-CORRELATIONID"]
    activity = vendor.to("/me")[0].headers["X-TNGO-CONTEXT-ACTIVITYID"]
    assert "Region ID or Service ID must be passed in." in message
    assert all(part in message for part in ("error id tghwn", activity, correlation, f"{status}-x"))
    assert err.value.http_status == status and err.value.error_id == "tghwn"
    assert all(part in caplog.text for part in ("tghwn", activity, correlation))


async def test_missing_tenant_fixture_reads_as_a_clear_error(client, vendor) -> None:
    vendor.on("GET", "/me", Reply(load_fixture("error_missing_tenant.json"), status=400))
    with pytest.raises(RequestRefused, match="X-TNGO-TENANT header is required"):
        await client.me()


@pytest.mark.parametrize(("reply", "kind", "text"), [
    (error(500, "An unexpected error occurred.", "500-internal"), Unreachable, "unexpected error"),
    (Reply("<html><h1>502 Bad Gateway</h1></html>", status=502, content_type="text/html"), Unreachable, "502"),
    (Reply("<html>Maintenance</html>", content_type="text/html"), BadResponse, "Maintenance"),
    (Reply('{"devices": [{"id": "51', content_type="application/json"), BadResponse, "not a JSON answer"),
])
async def test_5xx_html_and_malformed_answers(client, vendor, reply, kind, text) -> None:
    vendor.on("GET", "/me", reply)
    with pytest.raises(kind, match=text) as err:
        await client.me()
    assert type(err.value) is kind
    assert len(vendor.to("/me")) == 1


async def test_no_secret_in_any_error_or_log(client, vendor, caplog) -> None:
    await client.tokens.token()
    token = vendor.tokens[0]
    vendor.on("GET", "/me", Reply(f"<html>bad {token} {PASSWORD} {CLIENT_SECRET}</html>", content_type="text/html"))
    client.scrub = lambda text: text.replace(token, "***").replace(PASSWORD, "***").replace(CLIENT_SECRET, "***")
    with caplog.at_level(logging.DEBUG), pytest.raises(BadResponse) as err:
        await client.me()
    for secret in (token, PASSWORD, CLIENT_SECRET, vendor.refresh_tokens[0]):
        assert secret not in str(err.value) and secret not in caplog.text


# --- paging --------------------------------------------------------------------------------------------

async def test_standard_paging_follows_href_next_until_absent(client, vendor) -> None:
    vendor.on("GET", DEVICES, page("devices", devices(1, 2), next_offset=2, total=5),
              page("devices", devices(3, 4), next_offset=4, total=5), page("devices", devices(5), total=5))
    assert [d["id"] for d in await client.devices()] == ["1", "2", "3", "4", "5"]
    assert [c.query for c in vendor.to(DEVICES)] == [{"limit": "2", "offset": str(o)} for o in (0, 2, 4)]
    activities = {c.headers["X-TNGO-CONTEXT-ACTIVITYID"] for c in vendor.to(DEVICES)}
    assert len(activities) == 1


@pytest.mark.parametrize(("mode", "offsets"), [("standard", ["0", "3", "6"]),
                                                ("premium", ["0", "3", "6", "9"])])
async def test_both_offset_behaviours_give_every_record_once(session, ctx, clock, vendor, mode, offsets) -> None:
    """Links that step by less than a page (offset + 3, limit 4). Standard servers start at the
    offset; Command (Premium Mobile) returns the page holding it, so offset 3 repeats items 0-3 and
    offset 6 returns 4-7. Either way every record comes once, none is missed."""
    items = [str(i) for i in range(10)]

    def server(call) -> dict[str, Any]:
        limit, offset = int(call.query["limit"]), int(call.query["offset"])
        start = offset if mode == "standard" else offset // limit * limit
        nxt = offset + 3 if start + limit < len(items) else None
        return page("devices", [{"id": i} for i in items[start:start + limit]], next_offset=nxt, limit=limit,
                    total=len(items))

    vendor.on("GET", DEVICES, server)
    found = [d["id"] for d in await make_client(session, ctx, clock, page_size=4).devices()]
    assert sorted(found, key=int) == items
    assert len(found) == len(set(found))
    assert [c.query["offset"] for c in vendor.to(DEVICES)] == offsets


async def test_premium_snapped_offset_from_our_own_step(session, ctx, clock, vendor) -> None:
    """A foreign link makes the client step by itself: by the server's ``_meta.limit`` (3, not the 4
    asked for), so a snapping server neither skips nor repeats records."""
    items = [str(i) for i in range(8)]

    def server(call) -> dict[str, Any]:
        offset = int(call.query["offset"])
        start = offset // 3 * 3
        nxt = start + 3 if start + 3 < len(items) else None
        return page("devices", [{"id": i} for i in items[start:start + 3]], next_offset=nxt, limit=3,
                    host="elsewhere.example.test")

    vendor.on("GET", DEVICES, server)
    found = [d["id"] for d in await make_client(session, ctx, clock, page_size=4).devices()]
    assert found == items
    assert [c.query["offset"] for c in vendor.to(DEVICES)] == ["0", "3", "6"]


async def test_pages_shifting_under_the_sweep_give_no_duplicates(client, vendor) -> None:
    vendor.on("GET", DEVICES, page("devices", devices(1, 2), next_offset=2),
              page("devices", devices(2, 3), next_offset=4),  # an insertion at the front shifted one item
              page("devices", devices(4)))
    assert [d["id"] for d in await client.devices()] == ["1", "2", "3", "4"]


async def test_link_to_another_host_is_not_followed(client, vendor, caplog) -> None:
    vendor.on("GET", DEVICES, page("devices", devices(1, 2), next_offset=2, host="elsewhere.example.test"),
              page("devices", devices(3)))
    with caplog.at_level(logging.WARNING):
        assert [d["id"] for d in await client.devices()] == ["1", "2", "3"]
    assert all(c.url.host == "tngo-mobproc.example.test" for c in vendor.api_calls)
    assert vendor.to(DEVICES)[1].query == {"limit": "2", "offset": "2"}
    assert "elsewhere.example.test" in caplog.text


async def test_link_without_its_query_is_replaced_by_our_own_offset(client, vendor) -> None:
    first = page("devices", devices(1, 2))
    first["_meta"]["hrefNext"] = "https://tngo-mobproc.example.test/mobproc/v1/assets/devices"
    vendor.on("GET", DEVICES, first, page("devices", devices(3)))
    assert [d["id"] for d in await client.devices()] == ["1", "2", "3"]
    assert vendor.to(DEVICES)[1].query == {"limit": "2", "offset": "2"}


async def test_an_empty_page_ends_the_sweep(client, vendor) -> None:
    vendor.on("GET", DEVICES, page("devices", devices(1, 2), next_offset=2), page("devices", [], next_offset=4))
    assert [d["id"] for d in await client.devices()] == ["1", "2"]
    assert len(vendor.to(DEVICES)) == 2


async def test_repeated_pages_end_the_sweep(client, vendor) -> None:
    vendor.on("GET", DEVICES, lambda c: page("devices", devices(1, 2), next_offset=int(c.query["offset"]) + 2))
    assert [d["id"] for d in await client.devices()] == ["1", "2"]
    assert len(vendor.to(DEVICES)) == 4  # the first page, then three bringing nothing new


async def test_a_link_back_to_a_page_already_read_ends_the_sweep(client, vendor) -> None:
    vendor.on("GET", DEVICES, page("devices", devices(1, 2), next_offset=2), page("devices", devices(3, 4),
                                                                                 next_offset=0))
    assert [d["id"] for d in await client.devices()] == ["1", "2", "3", "4"]
    assert len(vendor.to(DEVICES)) == 2


async def test_pages_are_capped(session, ctx, clock, vendor) -> None:
    client = make_client(session, ctx, clock, max_pages=3)
    vendor.on("GET", DEVICES, lambda c: page("devices", devices(int(c.query["offset"]), int(c.query["offset"]) + 1),
                                             next_offset=int(c.query["offset"]) + 2))
    assert len(await client.devices()) == 6
    assert len(vendor.to(DEVICES)) == 3


async def test_detail_follows_meta_href_only_on_our_host(client, vendor) -> None:
    vendor.on("GET", "/assets/devices/5100002", load_fixture("device_detail.json"))
    record = {"id": "5100002", "_meta": {"href": f"{BASE}/assets/devices/5100002"}}
    assert (await client.detail(record, "/assets/devices/5100002", "device"))["id"] == "5100002"
    foreign = {"id": "5100002", "_meta": {"href": "https://elsewhere.example.test/mobproc/v1/assets/devices/5100002"}}
    await client.detail(foreign, "/assets/devices/5100002", "device")
    assert all(c.url.host == "tngo-mobproc.example.test" for c in vendor.api_calls)
