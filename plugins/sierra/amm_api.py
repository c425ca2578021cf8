"""AMM (AirLink Mobility Manager) endpoints and the shapes of their answers.

* ``GET /api/v1/systems/groups`` (AMM 2.17.4+): the group tree, ``{name: {id, subgroups: [{name: node}]}}``.
* ``GET /api/v1/systems``: every gateway, nested by group name; a list mixes gateways (``uid``) and
  groups (one-key objects holding a list).
* ``GET /api/v1/systems/groups/{id}/data?ids=..``: latest values of every gateway of the group and its
  subgroups, nested by group name down to ``{uid, data: [{<id>: [{value, timestamp}]}]}``.
* ``GET /api/v1/systems/{uid}/data?ids=..``: ``{<id>: [{value, timestamp}]}`` (unknown ids omitted).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetbridge.errors import BadResponse, VendorError

from .rest import ApiError, RestClient

GROUPS_PATH = "/api/v1/systems/groups"
SYSTEMS_PATH = "/api/v1/systems"
INVALID_ID = "system.invalid.data.param"
TOO_MANY_TARGETS = "aggregation.too.many.targets"

MESSAGES: dict[str, tuple[type[VendorError], str]] = {
    INVALID_ID: (VendorError, "a requested data id is unknown to this AMM"),
    TOO_MANY_TARGETS: (VendorError, "the group holds more gateways than one request may cover"),
    "aggregation.too.many.data": (VendorError, "too many data ids for one request"),
    "lastdata.incompatible.parameters": (VendorError, "ids and idPrefix cannot be combined"),
    "lastdata.empty.parameters": (VendorError, "no data id given"),
}


@dataclass(slots=True)
class Group:
    """A node of the group tree. ``path`` holds the names from the top group down to this one."""

    id: str | None
    name: str
    path: tuple[str, ...]
    children: list[Group] = field(default_factory=list)

    def walk(self) -> Iterator[Group]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True, slots=True)
class Gateway:
    """A gateway of the systems list: its uid (the ESN), name and the group names above it."""

    uid: str
    name: str
    path: tuple[str, ...]
    platform: str | None = None


def _named(value: Any) -> list[tuple[str, Any]]:
    """``{name: node}`` or ``[{name: node}, ...]`` as (name, node) pairs."""
    if isinstance(value, dict):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, list):
        return [(str(k), v) for item in value if isinstance(item, dict) for k, v in item.items()]
    return []


def parse_group_tree(payload: Any) -> list[Group]:
    """The top groups of a ``/api/v1/systems/groups`` answer (walked to any depth)."""
    if not isinstance(payload, (dict, list)):
        raise BadResponse(f"GET {GROUPS_PATH}: expected a JSON object, got {type(payload).__name__}")
    return [_group(name, node, ()) for name, node in _named(payload) if isinstance(node, dict)]


def _group(name: str, node: dict[str, Any], parent: tuple[str, ...]) -> Group:
    path = (*parent, name)
    gid = node.get("id")
    children = [_group(n, sub, path) for n, sub in _named(node.get("subgroups")) if isinstance(sub, dict)]
    return Group(id=None if gid in (None, "") else str(gid), name=name, path=path, children=children)


def _walk(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """(group path, gateway dict) of a nested answer: a dict with ``uid`` is a gateway, a
    one-key object holding a list (or object) is a group."""
    if isinstance(value, list):
        for item in value:
            yield from _walk(item, path)
    elif isinstance(value, dict):
        if "uid" in value:
            yield path, value
            return
        for name, sub in value.items():
            if isinstance(sub, (list, dict)):
                yield from _walk(sub, (*path, str(name)))


def parse_systems(payload: Any) -> list[Gateway]:
    """Every gateway of a nested ``/api/v1/systems`` answer, each once."""
    if not isinstance(payload, (dict, list)):
        raise BadResponse(f"GET {SYSTEMS_PATH}: expected JSON, got {type(payload).__name__}")
    seen: dict[str, Gateway] = {}
    for path, item in _walk(payload, ()):
        uid = str(item.get("uid") or "").strip()
        if not uid or uid in seen:
            continue
        platform = item.get("platform") or item.get("type")
        seen[uid] = Gateway(uid=uid, name=str(item.get("name") or uid), path=path,
                            platform=str(platform) if platform else None)
    return list(seen.values())


def parse_group_data(payload: Any) -> dict[str, Any]:
    """uid -> that gateway's ``data`` from a group data answer."""
    if not isinstance(payload, (dict, list)):
        raise BadResponse(f"group data: expected JSON, got {type(payload).__name__}")
    return {str(item["uid"]): item.get("data") for _, item in _walk(payload, ()) if item.get("uid")}


class AmmApi:
    """The AMM endpoints the platform uses (all GET: the API is read-only)."""

    def __init__(self, rest: RestClient) -> None:
        self.rest = rest

    async def group_tree(self) -> list[Group] | None:
        """The group tree; None when the server lacks the endpoint (AMM before 2.17.4)."""
        try:
            payload = await self.rest.request("GET", GROUPS_PATH)
        except ApiError as err:
            if err.status in (404, 405, 501):
                return None
            raise
        return parse_group_tree(payload)

    async def systems(self) -> list[Gateway]:
        return parse_systems(await self.rest.request("GET", SYSTEMS_PATH))

    async def group_data(self, group_id: str, ids: Sequence[str]) -> dict[str, Any]:
        """uid -> data of every gateway in group ``group_id`` (and its subgroups)."""
        payload = await self.rest.request("GET", f"{GROUPS_PATH}/{group_id}/data", params={"ids": list(ids)})
        return parse_group_data(payload)

    async def system_data(self, uid: str, ids: Sequence[str]) -> Any:
        """``{id: [{value, timestamp}]}`` of one gateway."""
        payload = await self.rest.request("GET", f"{SYSTEMS_PATH}/{uid}/data", params={"ids": list(ids)})
        if payload is not None and not isinstance(payload, dict):
            raise BadResponse(f"GET {SYSTEMS_PATH}/{{uid}}/data: expected a JSON object")
        return payload or {}
