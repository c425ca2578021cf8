"""AMM refresh planning: batches by group, the interval the budget allows, the ledger, spreading."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from fleetbridge_plugins.sierra.amm_api import Gateway, Group, parse_group_data, parse_group_tree, parse_systems
from fleetbridge_plugins.sierra.amm_plan import (
    Batch,
    RefreshScheduler,
    RequestLedger,
    plan_batches,
    refresh_interval,
    usable_per_hour,
)
from fleetbridge_plugins.sierra.amm_sim import AmmSimulator
from fleetbridge_plugins.sierra.clock import ManualClock
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetbridge.errors import AuthFailed, Unreachable

from .conftest import NOW


def tree(spec: dict[str, Any], path: tuple[str, ...] = (), ids: list[int] | None = None) -> Group:
    """``{"name": {"gw": n, "sub": {...}}}`` -> a Group (ids 1, 2, ... in walk order)."""
    ids = ids if ids is not None else [0]
    [(name, node)] = spec.items()
    ids[0] += 1
    group = Group(id=str(ids[0]), name=name, path=(*path, name))
    group.children = [tree({n: s}, group.path, ids) for n, s in (node.get("sub") or {}).items()]
    return group


def members(root: Group, spec: dict[str, Any]) -> list[Gateway]:
    out: list[Gateway] = []

    def add(group: Group, node: dict[str, Any]) -> None:
        uids = [f"{'/'.join(group.path)}-{i}" for i in range(node.get("gw", 0))]
        out.extend(Gateway(uid=uid, name=uid, path=group.path) for uid in uids)
        for child, (_, sub) in zip(group.children, (node.get("sub") or {}).items()):
            add(child, sub)

    [(_, node)] = spec.items()
    add(root, node)
    return out


SPEC = {"All": {"gw": 2, "sub": {
    "North": {"gw": 0, "sub": {"N1": {"gw": 70}, "N2": {"gw": 60, "sub": {"Workshop": {"gw": 10}}}}},
    "South": {"gw": 40, "sub": {"S1": {"gw": 30}}},
    "Empty": {},
}}}


def test_batches_split_by_subgroup_under_the_cap() -> None:
    root = tree(SPEC)
    gateways = members(root, SPEC)
    batches = plan_batches([root], gateways, 100)
    assert [(b.label, len(b.uids), b.group_id is not None) for b in batches] == [
        ("All/North/N1", 70, True), ("All/North/N2", 70, True), ("All/South", 70, True),
        ("All-0", 1, False), ("All-1", 1, False)]
    assert sorted(u for b in batches for u in b.uids) == sorted(g.uid for g in gateways)  # each exactly once


def test_small_fleet_is_one_request_and_no_groups_is_one_per_gateway() -> None:
    root = tree(SPEC)
    gateways = members(root, SPEC)
    assert [b.label for b in plan_batches([root], gateways, 1000)] == ["All"]
    assert len(plan_batches(None, gateways, 100)) == len(gateways)


def test_gateways_outside_the_tree_or_in_id_less_groups_go_alone() -> None:
    root = tree({"All": {"sub": {"A": {"gw": 3}}}})
    root.children[0].id = None
    gateways = members(root, {"All": {"sub": {"A": {"gw": 3}}}}) + [Gateway("x", "x", ("Elsewhere",))]
    batches = plan_batches([root], gateways, 100)
    assert [b.label for b in batches] == ["All", "x"]  # the top group still covers A; x is outside
    root.id = None
    assert [b.group_id for b in plan_batches([root], gateways, 100)] == [None] * 4


def test_group_paths_match_case_insensitively() -> None:
    root = tree({"All Gateways": {"sub": {"Vans": {"gw": 2}}}})
    gateways = [Gateway("a", "a", ("All gateways", "VANS")), Gateway("b", "b", ("all gateways", "vans"))]
    assert [(b.label, b.uids) for b in plan_batches([root], gateways, 100)] == [("All Gateways", ("a", "b"))]


def test_sibling_groups_differing_only_in_case_are_never_asked_by_id() -> None:
    spec = {"All": {"sub": {"Vans": {"gw": 2}, "VANS": {"gw": 1}}}}
    root = tree(spec)
    gateways = members(root, spec)
    assert [b.label for b in plan_batches([root], gateways, 100)] == ["All"]
    batches = plan_batches([root], gateways, 2)  # the top no longer fits: which group holds a gateway is unknown
    assert [b.group_id for b in batches] == [None] * 3
    assert sorted(u for b in batches for u in b.uids) == sorted(g.uid for g in gateways)


# --- the plan is the fewest requests the API allows -----------------------------------------------

def size(node: dict[str, Any]) -> int:
    return node.get("gw", 0) + sum(size(s) for s in (node.get("sub") or {}).values())


def fewest(group: Group, node: dict[str, Any], cap: int) -> int:
    """The optimum by exhaustive choice at every group: one request for its subtree (if it fits and has an
    id), or its subgroups' optima plus one request per gateway directly in it."""
    if size(node) == 0:
        return 0
    subs = zip(group.children, (node.get("sub") or {}).values())
    split = node.get("gw", 0) + sum(fewest(child, sub, cap) for child, sub in subs)
    return min(split, 1) if group.id is not None and size(node) <= cap else split


def check_plan(root: Group, gateways: list[Gateway], cap: int) -> list[Batch]:
    """Every gateway exactly once, no request over the cap, a group request's uids = its whole subtree."""
    batches = plan_batches([root], gateways, cap)
    assert sorted(u for b in batches for u in b.uids) == sorted(g.uid for g in gateways)
    groups = {g.id: g.path for g in root.walk()}
    for b in batches:
        assert 1 <= len(b.uids) <= (cap if b.group_id else 1)
        if b.group_id is not None:
            path = groups[b.group_id]
            assert set(b.uids) == {g.uid for g in gateways if g.path[:len(path)] == path}
    assert len(batches) >= math.ceil(len(gateways) / cap)
    return batches


def spec_of(node: dict[str, Any]) -> dict[str, Any]:
    return {"All": node}


nodes = st.recursive(
    st.builds(lambda n: {"gw": n}, st.integers(0, 130)),
    lambda kids: st.builds(lambda n, subs: {"gw": n, "sub": {f"G{i}": s for i, s in enumerate(subs)}},
                           st.integers(0, 40), st.lists(kids, max_size=4)),
    max_leaves=16)


@settings(max_examples=300, deadline=None)
@given(node=nodes, cap=st.sampled_from([1, 7, 50, 100, 150]), id_less=st.sets(st.integers(1, 30), max_size=3))
def test_plan_covers_each_gateway_once_with_the_fewest_requests(node: dict[str, Any], cap: int,
                                                                 id_less: set[int]) -> None:
    root = tree(spec_of(node))
    for group in root.walk():
        group.id = None if int(group.id or 0) in id_less else group.id
    batches = check_plan(root, members(root, spec_of(node)), cap)
    assert len(batches) == fewest(root, node, cap)


@pytest.mark.parametrize(("node", "requests"), [
    ({"sub": {f"Depot {i}": {"gw": 100} for i in range(5)} | {"Spare": {"gw": 37}}}, 6),  # flat, full groups
    ({"gw": 1, "sub": {"A": {"gw": 30, "sub": {"B": {"gw": 30, "sub": {"C": {"gw": 39}}}}}}}, 1),  # deep
    ({"sub": {"Buses": {"sub": {"North": {"gw": 100}, "South": {"gw": 100}, "Spare": {"gw": 50}}}}}, 3),  # > cap
    ({"sub": {"Region": {"sub": {"A": {"gw": 20}, "B": {"gw": 30}, "C": {"gw": 50}}}, "D": {"gw": 100}}}, 2),
])
def test_plan_reaches_ceil_n_over_cap_where_the_tree_allows(node: dict[str, Any], requests: int) -> None:
    root = tree(spec_of(node))
    gateways = members(root, spec_of(node))
    assert len(check_plan(root, gateways, 100)) == requests == math.ceil(len(gateways) / 100)


def test_a_flat_group_over_the_cap_can_only_be_asked_gateway_by_gateway() -> None:
    """The API has no request by a list of uids: the README's advice is subgroups of at most 100."""
    spec = spec_of({"sub": {"Buses": {"gw": 250}}})
    root = tree(spec)
    batches = check_plan(root, members(root, spec), 100)
    assert len(batches) == 250 and all(b.group_id is None for b in batches)


async def answer(handler: Any, path: str, **match: str) -> Any:
    return json.loads((await handler(make_mocked_request("GET", path, match_info=match))).body)


@pytest.mark.parametrize("devices", [500, 2500])
async def test_simulator_fleet_plan_is_optimal_and_each_group_request_answers_its_batch(devices: int) -> None:
    sim = AmmSimulator(clients={}, users={}, devices=devices, seed=1)
    [root] = parse_group_tree(await answer(sim.groups_tree, "/api/v1/systems/groups"))
    gateways = parse_systems(await answer(sim.systems, "/api/v1/systems"))
    batches = check_plan(root, gateways, 100)
    depots = [g for g in sim.root.walk() if g.name.startswith("Depot")]
    assert all(40 <= g.size() <= 80 for g in depots[:-1]) and len(sim.root.gateways) == 1
    assert len(batches) == sum(1 + (r.size() > 100) for r in sim.root.children) + 1  # a region, or its 2 depots
    for b in [b for b in batches if b.group_id is not None]:
        data = await answer(sim.group_data, f"/api/v1/systems/groups/{b.group_id}/data?ids=CellLink-RSSI",
                            group=b.group_id)
        assert sorted(parse_group_data(data)) == sorted(b.uids)


@pytest.mark.parametrize(("requests", "per_hour", "wanted", "expected"), [
    (5, 322, 300, (56.0, 300.0)), (5, 322, 10, (56.0, 56.0)), (300, 322, 300, (3355.0, 3355.0)), (0, 322, 60, (0, 60)),
])
def test_refresh_interval(requests: int, per_hour: int, wanted: float, expected: tuple[float, float]) -> None:
    assert refresh_interval(requests, per_hour, wanted) == expected


def test_usable_budget() -> None:
    assert usable_per_hour(360, 0.9, 2) == 322
    assert usable_per_hour(1, 0.1, 5) == 1


class KV:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def get(self, key: str) -> Any:
        return self.data.get(key)

    async def set(self, key: str, value: Any) -> None:
        self.data[key] = value


async def test_ledger_caps_every_rolling_hour_and_survives_a_restart() -> None:
    clock, kv = ManualClock(NOW), KV()
    ledger = RequestLedger(clock, 3, kv.get, kv.set)
    await ledger.load()
    for _ in range(3):
        await ledger.acquire()
        clock.advance(10)
    fourth = asyncio.create_task(ledger.acquire())
    await asyncio.sleep(0)
    assert not fourth.done()
    fourth.cancel()
    restarted = RequestLedger(clock, 3, kv.get, kv.set)
    await restarted.load()
    assert restarted.count() == 3
    waiter = asyncio.create_task(restarted.acquire())
    await clock.run_until(NOW + 3599)
    assert not waiter.done()
    await clock.run_until(NOW + 3601)
    await waiter
    assert restarted.count() == 3  # the first left the window, the fourth entered


async def test_ledger_holds_requests_after_a_429() -> None:
    clock, kv = ManualClock(NOW), KV()
    ledger = RequestLedger(clock, 100, kv.get, kv.set)
    await ledger.load()
    ledger.block(120)
    waiter = asyncio.create_task(ledger.acquire())
    await clock.run_until(NOW + 119)
    assert not waiter.done()
    await clock.run_until(NOW + 121)
    await waiter
    assert kv.data["amm_requests"]["blocked_until"] == NOW + 120


async def test_scheduler_spreads_requests_over_the_interval() -> None:
    clock, kv = ManualClock(NOW), KV()
    ledger = RequestLedger(clock, 1000, kv.get, kv.set)
    await ledger.load()
    sent: list[tuple[float, str]] = []

    async def fetch(batch: Batch) -> dict[str, dict[str, Any]]:
        await ledger.acquire()
        sent.append((clock.time() - NOW, batch.label))
        return {batch.label: {"ok": True}}

    scheduler = RefreshScheduler(clock, ledger, fetch)
    scheduler.update([Batch("1", "a", ()), Batch("2", "b", ()), Batch("3", "c", ()), Batch(None, "d", ())], 120.0)
    scheduler.start()
    await scheduler.wait()
    assert scheduler.drain() == ({"a": {"ok": True}}, None)
    await clock.run_until(NOW + 250)
    assert sent == [(0, "a"), (30, "b"), (60, "c"), (90, "d"), (120, "a"), (150, "b"), (180, "c"), (210, "d"),
                    (240, "a")]
    assert set(scheduler.drain()[0]) == {"a", "b", "c", "d"}
    # a restart continues the spacing instead of bursting
    await scheduler.stop()
    again = RefreshScheduler(clock, RequestLedger(clock, 1000, kv.get, kv.set), fetch)
    await again.ledger.load()
    again.update(scheduler.batches, 120.0)
    again.start()
    await clock.run_until(NOW + 265)
    assert sent[-1] == (240, "a")
    await clock.run_until(NOW + 271)
    assert sent[-1] == (270, "a")
    await again.stop()


async def test_scheduler_reports_errors_and_stops_on_refused_credentials() -> None:
    clock, kv = ManualClock(NOW), KV()
    outcomes: list[Any] = [Unreachable("down"), {"b": {}}, AuthFailed("refused")]

    async def fetch(batch: Batch) -> dict[str, dict[str, Any]]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    scheduler = RefreshScheduler(clock, RequestLedger(clock, 100, kv.get, kv.set), fetch)
    scheduler.update([Batch("1", "a", ()), Batch("2", "b", ())], 60.0)
    scheduler.start()
    await scheduler.wait()
    results, error = scheduler.drain()
    assert results == {} and isinstance(error, Unreachable)
    await clock.run_until(NOW + 61)
    results, error = scheduler.drain()
    assert results == {"b": {}} and isinstance(error, AuthFailed)
    assert scheduler._task is None  # stopped; start() resumes it
