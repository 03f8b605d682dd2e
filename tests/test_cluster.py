"""Two hall processes in Redis mode, end to end: one hall to every participant, whichever
process its socket is on, through a process crash and a Redis outage.

Each test starts its own cluster (tests/clusterkit.py): two ``python -m server.cli serve
--demo`` processes, ``hall-a`` and ``hall-b``, on a private redis-server under a key prefix of
their own, sharing one SQLite records file. Participants are real Socket.IO clients and aiortc
peers (tests/rtcpeer.py), which check the protocol's numbering on every message. When a test
fails, the tail of each process's log is printed with it ("Captured stdout teardown").
Timings are printed with the ``[timing]`` prefix (``pytest -s``).
"""

# ruff: noqa: ASYNC109  (explicit ``timeout`` arguments, as in tests/rtcpeer.py)

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis

from tests.clusterkit import (
    CLERK,
    CLERK2,
    MATTER,
    TIMEOUT,
    Cluster,
    HallProc,
    persistent_redis,
    running_cluster,
)
from tests.redisproc import RedisServer, own_redis
from tests.rtcpeer import HallClient, HallConnectError, MediaPeer, Payload
from tests.test_webrtc_e2e import Session, media_both_ways

OUTAGE_S = 6.5  # longer than the hub's heartbeat TTL (5 s)
SWEEP_SETTLE_S = 7.0  # a heartbeat TTL plus a few sweeps, after Redis is back


@pytest.fixture
async def cluster(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Two halls on the session's private Redis, under a prefix of their own."""
    async with running_cluster(redis_server, tmp_path) as running:
        yield running


@pytest.fixture
async def empty_redis_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Two halls on a Redis of their own without persistence, to be restarted empty."""
    with own_redis() as server:
        async with running_cluster(server, tmp_path) as running:
            yield running


@pytest.fixture
async def outage_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Two halls on a Redis of their own, persistent (append-only file), to be stopped and
    started again by the test."""
    with persistent_redis(tmp_path / "redis") as server:
        async with running_cluster(server, tmp_path / "cluster") as running:
            yield running


# -- helpers -----------------------------------------------------------------------------------


async def take(resident: HallClient, state: str = "waiting") -> Payload:
    """Take a ticket for MATTER (waiting even when nobody serves it); returns the ticket,
    checked to be in ``state`` (``offered`` when a clerk was free)."""
    ack = await resident.ok("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
    ticket: Payload = ack["ticket"]
    assert ticket["state"] == state, ticket
    return ticket


async def start_session(c: Cluster, clerk: HallClient, resident_hall: HallProc,
                        resident_id: str, name: str) -> Session:
    """A resident connects to ``resident_hall`` and takes a ticket; ``clerk`` (available,
    possibly on the other process) gets the offer and accepts it."""
    resident = await c.resident(resident_hall, resident_id, name)
    ticket_id = (await take(resident, "offered"))["id"]
    offer = await clerk.wait_for("offer.new", lambda p: p["ticket_id"] == ticket_id)
    assert offer["matter_id"] == MATTER, offer
    accepted = await clerk.ok("offer.accept", {"ticket_id": ticket_id})
    clerk_view = (await clerk.wait_for("session.started"))["session"]
    resident_view = (await resident.wait_for("session.started"))["session"]
    await resident.wait_for("ticket.update", lambda p: p["ticket"]["state"] == "in_session")
    assert accepted["session"]["id"] == clerk_view["id"] == resident_view["id"] == ticket_id
    assert (clerk_view["role"], resident_view["role"]) == ("clerk", "resident")
    assert clerk_view["initiator"] is True and resident_view["initiator"] is False
    assert clerk_view["peer"] == {"role": "resident", "name": name}
    assert resident_view["peer"] == {"role": "clerk", "name": clerk.welcomes[0]["name"]}
    return Session(clerk, resident, clerk_view, resident_view)


async def start_media(c: Cluster, s: Session, label: str) -> tuple[MediaPeer, MediaPeer]:
    """The clerk offers, the resident answers (each through its own process); media and data
    flow both ways."""
    clerk_peer = c.peer("clerk-media", s.clerk_view, tag=1)
    resident_peer = c.peer("resident-media", s.resident_view, tag=2)
    t0 = time.monotonic()
    await asyncio.gather(clerk_peer.negotiate(s.clerk, initiator=True, timeout=TIMEOUT),
                         resident_peer.negotiate(s.resident, initiator=False, timeout=TIMEOUT))
    print(f"[timing] {label}: offer/answer across processes {time.monotonic() - t0:.3f} s")
    await media_both_ways(clerk_peer, resident_peer, label)
    return clerk_peer, resident_peer


async def chat(sender: HallClient, receiver: HallClient, session_id: str, text: str,
               from_role: str) -> Payload:
    """``chat.send`` from one side; the other side's ``chat.message``."""
    ack = await sender.ok("chat.send", {"session_id": session_id, "text": text})
    assert ack["message"]["text"] == text, ack
    got = await receiver.wait_for("chat.message", lambda p: p["message"]["text"] == text)
    assert got["session_id"] == session_id and got["message"]["from_role"] == from_role, got
    assert got["message"]["id"] == ack["message"]["id"], (got, ack)
    return got


async def finish(s: Session) -> None:
    """The clerk ends the session and finishes wrap-up; both sides are told."""
    ended = await s.clerk.ok("session.end", {"session_id": s.id})
    assert ended["ticket"]["state"] == "wrap_up", ended
    for side in (s.resident, s.clerk):
        got = await side.wait_for("session.ended")
        assert (got["session_id"], got["reason"]) == (s.id, "clerk"), got
    await s.resident.wait_for("ticket.update", lambda p: p["ticket"]["state"] == "wrap_up")
    await s.clerk.ok("wrapup.finish", {"outcome": "resolved"})
    done = await s.resident.wait_for("ticket.update", lambda p: p["ticket"]["state"] == "done")
    assert done["ticket"]["outcome"] == "resolved", done
    await s.clerk.wait_for("clerk.state", lambda p: p["clerk"]["state"] == "available")


async def until_disconnected(client: HallClient, timeout: float = 5.0) -> None:
    """Wait until the hall's end of the connection is gone, then forget the socket."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while client.connected:
        assert loop.time() < deadline, f"{client.name}: still connected after {timeout} s"
        await asyncio.sleep(0.02)
    await client.close()


async def caught_up(client: HallClient, welcome: Payload, timeout: float = TIMEOUT) -> None:
    """Wait until the replay after a resumed ``welcome`` has arrived in full."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while client.last_seq < int(welcome["last_seq"]):
        client.check()
        assert loop.time() < deadline, (
            f"{client.name}: replay stopped at seq {client.last_seq}, "
            f"welcome said {welcome['last_seq']}")
        await asyncio.sleep(0.02)
    client.check()


def at(ticket_id: str, position: int) -> Callable[[Payload], bool]:
    """Matches a ``ticket.position`` of that ticket at that position."""
    return lambda p: p["ticket_id"] == ticket_id and p["position"] == position


def graces_of(c: Cluster) -> set[str]:
    """The participants whose resume grace runs (the hub's ``graces`` sorted set in Redis;
    white-box: no protocol event says it without waiting the grace out)."""
    client = redis.Redis.from_url(c.redis.url, decode_responses=True)
    try:
        return {str(m) for m in client.zrange(c.prefix + "graces", 0, -1)}
    finally:
        client.close()


def replayed(client: HallClient, connection: int) -> list[tuple[int, str]]:
    """``(seq, event)`` of the numbered messages of one connection, in arrival order."""
    return [(r.payload["seq"], r.event) for r in client.events
            if r.connection == connection and "seq" in r.payload]


# -- tests -------------------------------------------------------------------------------------


async def test_a_session_across_two_processes_with_media(cluster: Cluster) -> None:
    """Resident on A, clerk on B: offer, session, media and chat both ways, wrap-up; the
    shared event log has each of the ticket's events once."""
    c = cluster
    clerk = await c.staff(c.b, CLERK)
    assert clerk.welcomes[0]["clerk"]["state"] == "available", clerk.welcomes[0]
    s = await start_session(c, clerk, c.a, "r-cl-1", "张三")
    await start_media(c, s, "A-B")

    await chat(s.clerk, s.resident, s.id, "您好，请问办理什么业务？", "clerk")
    await chat(s.resident, s.clerk, s.id, "查询社保缴费记录", "resident")

    await finish(s)
    s.resident.check()
    s.clerk.check()

    events = await c.wait_event(s.id, "done")
    kinds = Counter(kind for _, kind, _ in events)
    print(f"[events] ticket {s.id}: {events}")
    expected = ("enter_queue", "offer", "accept", "session_start", "session_end",
                "wrapup_start", "wrapup_end", "done")
    assert {k: kinds[k] for k in expected} == dict.fromkeys(expected, 1), events
    assert set(kinds) <= set(expected), events
    seqs = [seq for seq, _, _ in events]
    assert len(set(seqs)) == len(seqs), events
    assert [k for _, k, _ in events] == [k for k in expected if k in kinds], events
    assert {clerk for _, kind, clerk in events if kind != "enter_queue"} == {CLERK}, events


async def test_one_queue_whatever_process_a_ticket_was_taken_on(cluster: Cluster) -> None:
    """Tickets taken alternately on A and B get positions 1..n in join order, and a clerk on
    B is offered the oldest (taken on A) first; positions then move up on both processes."""
    c = cluster
    residents: list[HallClient] = []
    tickets: list[str] = []
    for i, hall in enumerate((c.a, c.b, c.a, c.b)):
        resident = await c.resident(hall, f"r-q-{i + 1}", f"居民{i + 1}")
        ticket = await take(resident)
        assert ticket["position"] == i + 1, (hall.name, ticket)
        residents.append(resident)
        tickets.append(ticket["id"])
    for i, (resident, ticket_id) in enumerate(zip(residents, tickets, strict=True)):
        ack = await resident.ok("ticket.position", {"ticket_id": ticket_id})
        assert ack["position"]["position"] == i + 1, (resident.name, ack)
    for hall in c.halls:
        status, snapshot = await c.request(hall, "GET", "/api/queues")
        assert status == 200, (hall.name, snapshot)
        queued = {m["id"]: m["queued"] for m in snapshot["matters"]}
        assert queued[MATTER] == 4, (hall.name, queued)

    clerk = await c.staff(c.b, CLERK)
    offer = await clerk.wait_for("offer.new")
    assert offer["ticket_id"] == tickets[0], (offer, tickets)
    await clerk.ok("offer.accept", {"ticket_id": tickets[0]})
    await residents[0].wait_for("session.started")
    for i in (1, 2, 3):  # on B, A, B: the pushes reach whichever process holds the socket
        moved = await residents[i].wait_for("ticket.position", at(tickets[i], i))
        assert moved["position"] == i

    clerk2 = await c.staff(c.a, CLERK2)  # on A: the next oldest, taken on B
    offer2 = await clerk2.wait_for("offer.new")
    assert offer2["ticket_id"] == tickets[1], (offer2, tickets)
    assert clerk.pending("offer.new") == [], clerk.pending("offer.new")
    for client in (*residents, clerk, clerk2):
        client.check()


async def test_a_process_killed_mid_session_loses_nothing(cluster: Cluster) -> None:
    """SIGKILL of the process holding a resident in session and a waiting resident: both
    resume on the other process with their session/ticket, chat and every numbered message
    (also one sent while they were away); the clerk sees reconnecting then back; media
    renegotiates; the session finishes and the waiting resident is served next."""
    c = cluster
    clerk = await c.staff(c.b, CLERK)
    s = await start_session(c, clerk, c.a, "r-kill-1", "张三")
    clerk_peer, resident_peer = await start_media(c, s, "before the kill")
    await chat(s.clerk, s.resident, s.id, "请出示身份证", "clerk")
    await chat(s.resident, s.clerk, s.id, "好的，马上", "resident")

    waiting = await c.resident(c.a, "r-kill-2", "李四")
    waiting_ticket = await take(waiting)
    assert waiting_ticket["position"] == 1, waiting_ticket
    resident_seq, waiting_seq = s.resident.last_seq, waiting.last_seq

    c.a.kill()
    killed = time.monotonic()
    await asyncio.gather(until_disconnected(s.resident), until_disconnected(waiting))
    # Sent while the resident's process is dead and nobody holds its socket: kept for it.
    sent_away = await s.clerk.ok("chat.send", {"session_id": s.id, "text": "您还在吗？"})

    # The waiting resident comes back at once, before anyone noticed that A died.
    welcome = await waiting.resume(c.b.url, timeout=TIMEOUT)
    await caught_up(waiting, welcome)
    assert welcome["ticket"] is not None and welcome["ticket"]["id"] == waiting_ticket["id"]
    assert welcome["ticket"]["state"] == "waiting", welcome["ticket"]
    assert welcome["ticket"]["position"] == waiting_ticket["position"], welcome["ticket"]
    assert welcome["session"] is None
    assert waiting.last_seq >= waiting_seq

    # The clerk is told once the heartbeat of A has expired (TTL 5 s) and B's sweep ran.
    away = await s.clerk.wait_for("session.peer", lambda p: p["state"] == "reconnecting",
                                  timeout=12)
    noticed = time.monotonic() - killed
    print(f"[timing] clerk told 'reconnecting' {noticed:.1f} s after the SIGKILL")
    assert away["session_id"] == s.id
    assert noticed < 9.0, noticed
    in_grace = graces_of(c)
    assert s.resident.welcomes[0]["participant"] in in_grace, in_grace
    assert welcome["participant"] not in in_grace, ("resumed on B, yet in resume grace",
                                                    in_grace)

    welcome = await s.resident.resume(c.b.url, timeout=TIMEOUT)
    await caught_up(s.resident, welcome)
    assert welcome["session"] is not None and welcome["session"]["id"] == s.id, welcome
    assert welcome["ticket"]["state"] == "in_session", welcome["ticket"]
    assert [m["text"] for m in welcome["session"]["chat"]] == [
        "请出示身份证", "好的，马上", "您还在吗？"], welcome["session"]["chat"]
    again = replayed(s.resident, 2)
    assert again and again[0][0] == resident_seq + 1, (resident_seq, again)
    assert [seq for seq, _ in again] == list(range(resident_seq + 1, again[-1][0] + 1))
    missed = s.resident.received("chat.message")[-1]
    assert missed["message"]["id"] == sent_away["message"]["id"], missed
    assert missed["seq"] > resident_seq, (missed, resident_seq)
    back = await s.clerk.wait_for("session.peer", lambda p: p["state"] == "back")
    assert back["session_id"] == s.id

    # aiortc cannot restart ICE: the resident offers from a fresh connection, through B.
    await resident_peer.renew()
    await asyncio.gather(resident_peer.send_offer(s.resident, timeout=TIMEOUT),
                         clerk_peer.answer_offer(s.clerk, timeout=TIMEOUT))
    await resident_peer.receive_answer(s.resident, timeout=TIMEOUT)
    await media_both_ways(clerk_peer, resident_peer, "after the kill")
    await chat(s.resident, s.clerk, s.id, "在的", "resident")

    await finish(s)
    offer = await s.clerk.wait_for("offer.new")
    assert offer["ticket_id"] == waiting_ticket["id"], offer
    for client in (s.resident, s.clerk, waiting):
        client.check()
    assert c.b.alive()


async def test_redis_outage_makes_halls_unready_then_they_recover(
        outage_cluster: Cluster) -> None:
    """Redis stopped for longer than a heartbeat TTL: /readyz 503 (store failed) on both,
    events refused with store_unavailable, /healthz 200; Redis back (persistent): both ready
    again by themselves, no connection dropped, nobody put in resume grace, the waiting
    ticket still first, and new tickets are taken and offered."""
    c = outage_cluster
    clerk = await c.staff(c.b, CLERK)
    await clerk.ok("clerk.break", {"reason": "午休"})
    first = await c.resident(c.a, "r-out-1", "周一")
    first_ticket = await take(first)
    second = await c.resident(c.b, "r-out-2", "周二")
    late_token = await c.resident_token(c.a, "r-out-3", "周三")

    c.redis.stop()
    stopped = time.monotonic()
    for hall in c.halls:
        body = await c.wait_readyz(hall, 503, timeout=5)
        assert body["status"] == "not_ready" and body["checks"]["store"] == "failed", body
    print(f"[timing] both halls not ready {time.monotonic() - stopped:.1f} s after Redis stopped")
    ack = await second.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
    assert ack["ok"] is False and ack["error"]["code"] == "store_unavailable", ack
    assert "unavailable" in ack["error"]["message"].lower(), ack
    ack = await first.call("ticket.position", {"ticket_id": first_ticket["id"]})
    assert ack["ok"] is False and ack["error"]["code"] == "store_unavailable", ack
    with pytest.raises(HallConnectError) as refused:
        await c.client("late@hall-a").connect(c.a.url, {"id_token": late_token},
                                              timeout=TIMEOUT)
    assert refused.value.code == "store_unavailable", refused.value.data
    # Longer than the heartbeat TTL (5 s): when Redis is back, every process's last
    # heartbeat has expired, and none may take the others for dead.
    while time.monotonic() - stopped < OUTAGE_S:
        for hall in c.halls:
            assert await c.status(hall, "/healthz") == 200, hall.name
            assert hall.alive(), hall.name
        await asyncio.sleep(0.5)

    c.redis.start()
    restarted = time.monotonic()
    for hall in c.halls:
        seen: list[Payload] = []
        await c.wait_readyz(hall, 200, timeout=15, seen=seen)
        print(f"[readyz] {hall.name} after the restart: {[b['checks'] for b in seen]}")
    print(f"[timing] both halls ready {time.monotonic() - restarted:.1f} s after Redis "
          f"restarted ({restarted - stopped:.1f} s outage)")

    # Redis kept its data (append-only file): the waiting ticket is where it was, and the
    # connections that lived through the outage still work.
    ack = await first.ok("ticket.position", {"ticket_id": first_ticket["id"]})
    assert ack["position"]["position"] == 1, ack
    second_ticket = await take(second)
    assert second_ticket["position"] == 2, second_ticket
    await clerk.ok("clerk.available", {})
    offer = await clerk.wait_for("offer.new")
    assert offer["ticket_id"] == first_ticket["id"], offer
    await clerk.ok("offer.accept", {"ticket_id": first_ticket["id"]})
    await first.wait_for("session.started", timeout=TIMEOUT)  # on A, through Redis pub/sub

    clerk2 = await c.staff(c.a, CLERK2)
    offer2 = await clerk2.wait_for("offer.new")
    assert offer2["ticket_id"] == second_ticket["id"], offer2
    await clerk2.ok("offer.accept", {"ticket_id": second_ticket["id"]})
    await second.wait_for("session.started", timeout=TIMEOUT)  # on B

    # Once the sweeps run again (a heartbeat TTL after the restart), nobody is taken for
    # gone: no socket dropped, no resume grace, no "reconnecting" told to a clerk.
    await asyncio.sleep(max(0.0, restarted + SWEEP_SETTLE_S - time.monotonic()))
    for client in (first, second, clerk):
        assert client.connected and client.connection == 1, (client.name,
                                                             client.disconnect_reasons)
        client.check()
    clerk2.check()
    assert clerk.received("session.peer") == [] and clerk2.received("session.peer") == []
    assert graces_of(c) == set()
    assert all(hall.alive() for hall in c.halls)


async def test_an_emptied_redis_comes_back_and_the_halls_serve_again(
        empty_redis_cluster: Cluster) -> None:
    """Redis restarted WITHOUT its data (no persistence): live state is gone by design, but
    both halls become ready by themselves, drop their sockets (a resume is refused with
    resume_invalid), and fresh connections take tickets that are offered to clerks."""
    c = empty_redis_cluster
    clerk = await c.staff(c.b, CLERK)
    await clerk.ok("clerk.break", {"reason": "午休"})
    resident = await c.resident(c.a, "r-empty-1", "周一")
    await take(resident)

    c.redis.stop()
    for hall in c.halls:
        await c.wait_readyz(hall, 503, timeout=5)
    c.redis.start()  # same port, empty
    restarted = time.monotonic()
    for hall in c.halls:
        await c.wait_readyz(hall, 200, timeout=15)
    print(f"[timing] both halls ready {time.monotonic() - restarted:.1f} s after an empty "
          f"Redis restarted")

    # The halls notice the empty Redis and drop the sockets of participants it forgot.
    await asyncio.gather(until_disconnected(resident, timeout=10),
                         until_disconnected(clerk, timeout=10))
    with pytest.raises(HallConnectError) as refused:
        await resident.resume(c.a.url, timeout=TIMEOUT)
    assert refused.value.code == "resume_invalid", refused.value.data

    fresh = await c.resident(c.a, "r-empty-1", "周一")
    assert fresh.welcomes[0]["ticket"] is None, fresh.welcomes[0]
    ticket = await take(fresh)
    assert ticket["position"] == 1, ticket
    clerk_again = await c.staff(c.b, CLERK)
    offer = await clerk_again.wait_for("offer.new")
    assert offer["ticket_id"] == ticket["id"], offer
    await clerk_again.ok("offer.accept", {"ticket_id": ticket["id"]})
    await fresh.wait_for("session.started")
    for client in (fresh, clerk_again):
        client.check()
    assert all(hall.alive() for hall in c.halls)


async def test_a_resume_token_from_one_process_works_once_on_the_other(
        cluster: Cluster) -> None:
    """A resume token issued by A resumes on B once; once the welcome is acknowledged, using
    it again (on B or A) is refused with resume_invalid, and B's new token resumes on A."""
    c = cluster
    resident = await c.resident(c.a, "r-once", "王五")
    token_a = resident.resume_token
    await resident.drop()
    welcome = await resident.resume(c.b.url, timeout=TIMEOUT)
    assert welcome["resumed"] is True and welcome["resume_token"] != token_a
    # The fence: an event sent after the welcome's ack is handled after the ack retired the
    # token it came with (docs/protocol.md, "Resume").
    await resident.ok("case.mine", {})
    for hall in (c.b, c.a):
        with pytest.raises(HallConnectError) as refused:
            await c.client(f"replayer@{hall.name}").connect(
                hall.url, {**resident.credential, "resume": token_a, "last_seq": 0},
                timeout=TIMEOUT)
        assert refused.value.code == "resume_invalid", (hall.name, refused.value.data)

    ticket = await take(resident)  # the participant works on B
    await resident.drop()
    welcome = await resident.resume(c.a.url, timeout=TIMEOUT)
    await caught_up(resident, welcome)
    assert welcome["ticket"] is not None and welcome["ticket"]["id"] == ticket["id"], welcome
    resident.check()


async def test_a_position_push_due_during_an_outage_is_sent_after_it(
        outage_cluster: Cluster) -> None:
    """A position change whose (throttled) push falls in a Redis outage still reaches the
    resident once Redis is back: ``ticket.position`` must not stay stale."""
    c = outage_cluster
    first = await c.resident(c.a, "r-push-1", "周一")
    second = await c.resident(c.b, "r-push-2", "周二")
    first_ticket = await take(first)  # A pushes this queue's positions now (throttle: 1 s)
    pushed_at = time.monotonic()
    second_ticket = await take(second)
    assert second_ticket["position"] == 2, second_ticket
    await second.wait_for("ticket.position", at(second_ticket["id"], 2))  # B's push is out
    await first.ok("ticket.leave", {"ticket_id": first_ticket["id"]})
    if time.monotonic() - pushed_at > 0.7:
        pytest.skip("too slow to put A's next position push inside the outage")
    c.redis.stop()  # ...so A's next push (second: 2 -> 1) is due within the outage
    for hall in c.halls:
        await c.wait_readyz(hall, 503, timeout=5)
    await asyncio.sleep(1.5)
    c.redis.start()
    for hall in c.halls:  # the store answers again (readiness as a whole is another test's)
        await c.wait_check(hall, "store", "ok", timeout=15)
    ack = await second.ok("ticket.position", {"ticket_id": second_ticket["id"]})
    assert ack["position"]["position"] == 1, ack
    pushed = await second.wait_for("ticket.position", at(second_ticket["id"], 1), timeout=3)
    assert pushed["position"] == 1
    second.check()
