"""AMM refresh planning: batches by group, the interval the budget allows, the ledger, spreading."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fleetbridge_plugins.sierra.amm_api import Gateway, Group
from fleetbridge_plugins.sierra.amm_plan import (
    Batch,
    RefreshScheduler,
    RequestLedger,
    plan_batches,
    refresh_interval,
    usable_per_hour,
)
from fleetbridge_plugins.sierra.clock import ManualClock

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
        out.extend(Gateway(uid=f"{group.name}-{i}", name=f"{group.name}-{i}", path=group.path)
                   for i in range(node.get("gw", 0)))
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
