"""Shared builders for engine tests: a small catalog, a hall on a manual clock, a notice log.

The engine tests run on every store backend: ``store_kind`` is ``memory`` or ``redis`` (a
private redis-server, each store under its own key prefix), ``store_factory`` makes unopened
stores of that kind, and ``new_rig`` builds rigs on them and closes them after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import pytest

from rooms.catalog import (
    Catalog,
    ClerkProfile,
    Department,
    Material,
    Matter,
    ServiceHours,
    ServiceKind,
    ServicePoint,
    Street,
    SupervisorProfile,
)
from rooms.clock import ManualClock
from rooms.events import EventKind, HallEvent
from rooms.hall import Hall
from rooms.memory_store import MemoryStore
from rooms.notices import Notice, NoticeKind
from rooms.policy import QueuePolicy
from rooms.redis_store import RedisStore
from rooms.store import Store
from tests.redisproc import RedisServer, drop_prefix, new_prefix

BOTH = frozenset({ServiceKind.CONSULTATION, ServiceKind.PRE_REVIEW})
CONSULT = frozenset({ServiceKind.CONSULTATION})


def _matter(mid: str, dept: str, **extra: object) -> Matter:
    materials = (Material("id_card", "身份证", "ID card"),)
    return Matter(id=mid, name=f"事项{mid}", name_en=mid, department_id=dept, kinds=BOTH,
                  materials=materials, typical_handle_s=600, **extra)  # type: ignore[arg-type]


def small_catalog(hours: ServiceHours | None = None) -> Catalog:
    """hr: residence (widens after 300 s to med clerks), employment; med: medical (max 3),
    orphan (nobody serves it). Clerks: c1 residence; c2 all hr; c3 med + secondary hr;
    c4 medical only."""
    departments = {
        "hr": Department("hr", "人社局", "HR", "A"),
        "med": Department("med", "医保局", "Medical insurance", "B"),
    }
    matters = {
        "residence": _matter("residence", "hr", widen_after_s=300.0),
        "employment": _matter("employment", "hr"),
        "medical": _matter("medical", "med", max_queue=3),
        "orphan": _matter("orphan", "med"),
    }
    clerks = {
        "c1": ClerkProfile("c1", "一号", matters=frozenset({"residence"})),
        "c2": ClerkProfile("c2", "二号", departments=frozenset({"hr"})),
        "c3": ClerkProfile("c3", "三号", matters=frozenset({"medical"}),
                           secondary_departments=frozenset({"hr"})),
        "c4": ClerkProfile("c4", "四号", matters=frozenset({"medical"})),
    }
    return Catalog(
        hall_name="测试大厅",
        hours=hours or ServiceHours.always(),
        departments=MappingProxyType(departments),
        matters=MappingProxyType(matters),
        streets=MappingProxyType({"xjh": Street("xjh", "徐家汇街道", "Xujiahui")}),
        service_points=MappingProxyType(
            {"XH-001": ServicePoint("XH-001", "汇站居委会", "上海市徐汇区虹桥路1号", "xjh",
                                    "change-me")}
        ),
        clerks=MappingProxyType(clerks),
        supervisors=MappingProxyType({"sup": SupervisorProfile("sup", "主管")}),
    )


@dataclass
class Rig:
    hall: Hall
    store: Store
    clock: ManualClock
    notices: list[Notice] = field(default_factory=list)

    def of_kind(self, kind: NoticeKind) -> list[Notice]:
        return [n for n in self.notices if n.kind == kind]

    async def events(self) -> list[HallEvent]:
        return await self.store.outbox_peek(1_000_000)

    async def kinds_for(self, ticket_id: str) -> list[EventKind]:
        return [e.kind for e in await self.events() if e.ticket_id == ticket_id]

    async def advance(self, seconds: float) -> int:
        self.clock.advance(seconds)
        return await self.hall.tick()


StoreFactory = Callable[[], Store]


class RigMaker(Protocol):
    def __call__(
        self, policy: QueuePolicy | None = None, catalog: Catalog | None = None
    ) -> Awaitable[Rig]: ...


async def make_rig(
    policy: QueuePolicy | None = None,
    catalog: Catalog | None = None,
    store_factory: StoreFactory = MemoryStore,
) -> Rig:
    """A started hall on a fresh store from ``store_factory`` (opened here; the caller closes
    it with ``rig.store.close()``)."""
    store = store_factory()
    await store.open()
    clock = ManualClock()
    hall = Hall(catalog or small_catalog(), store, clock=clock, policy=policy or QueuePolicy())
    await hall.start()
    rig = Rig(hall, store, clock)

    def collect(batch: Sequence[Notice]) -> None:
        rig.notices.extend(batch)

    hall.subscribe(collect)
    return rig


# -- fixtures (registered in tests/conftest.py) -------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(store_kind: str, request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Unopened stores of the test's kind; Redis ones each get a key prefix of their own, and
    every key under those prefixes is deleted after the test."""
    if store_kind == "memory":
        yield MemoryStore
        return
    # Looked up only here, so a run of the memory tests alone never starts redis-server.
    server: RedisServer = request.getfixturevalue("redis_server")
    prefixes: list[str] = []

    def make() -> Store:
        prefixes.append(new_prefix())
        return RedisStore(server.url, prefix=prefixes[-1])

    yield make
    for prefix in prefixes:
        drop_prefix(server.url, prefix)


@pytest.fixture
async def new_rig(store_factory: StoreFactory) -> AsyncIterator[RigMaker]:
    """``await new_rig(policy=None, catalog=None)``: a rig on the test's store kind."""
    rigs: list[Rig] = []

    async def make(policy: QueuePolicy | None = None, catalog: Catalog | None = None) -> Rig:
        rigs.append(await make_rig(policy, catalog, store_factory))
        return rigs[-1]

    yield make
    for rig in rigs:
        await rig.store.close()
