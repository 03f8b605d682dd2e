"""Issue 11: the attacker's fuzzer. One live hall, one participant of each role, a seeded,
bounded storm of hostile events; every answer must be a documented refusal or a success, the
log must stay free of errors and tracebacks, and the other session must not notice."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from server import keys
from signaling import protocol as p
from signaling.identity import Role
from tests.signalkit import Client, LiveHall, clients, hall_backend, live_hall
from tests.test_harden_events import RawSocket, resident_raw_socket

MATTER = "flexible_employment_registration"  # served by clerk01 and clerk02 (hrss)
DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
SEED = int(os.environ.get("HALL_FUZZ_SEED", "20261204"))  # a fixed seed; override to explore
PER_FUZZER = 600  # five fuzzers: 3,000 events
RAW_EVENTS = 300  # and hand-written frames on a raw socket
STORM_BUDGET_S = 40.0


def documented_codes() -> frozenset[str]:
    """The codes of docs/protocol.md's "Error codes" table (a row may name several)."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Error codes\n", 1)[1].split("\n## ", 1)[0]
    codes: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            codes.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return frozenset(codes)


CODES = documented_codes()


def test_the_error_code_table_is_parsed() -> None:
    assert {"invalid_payload", "not_found", "too_many_requests", "queue_full",
            "internal_error"} <= CODES


# -- payloads -----------------------------------------------------------------------------------

# A valid payload per event; the fuzzer then swaps ids and mutates fields. ``{id}`` marks a
# ticket/session id, ``{case}`` a case id, ``{matter}`` a matter, ``{clerk}`` a clerk.
SAMPLES: dict[str, dict[str, Any]] = {
    "hello": {"token": "x" * 40},
    "auth.refresh": {},
    "ticket.take": {"matter_id": "{matter}", "when_unstaffed": "wait"},
    "ticket.leave": {"ticket_id": "{id}"},
    "ticket.callback": {"ticket_id": "{id}", "contact": "13800000000"},
    "ticket.position": {"ticket_id": "{id}"},
    "clerk.available": {},
    "clerk.break": {"reason": "lunch"},
    "clerk.logout": {},
    "offer.accept": {"ticket_id": "{id}"},
    "offer.decline": {"ticket_id": "{id}"},
    "session.end": {"session_id": "{id}"},
    "session.transfer": {"session_id": "{id}", "to_matter": "{matter}", "to_clerk": "{clerk}",
                         "allow_wait": True, "note": "over to you"},
    "wrapup.outcome": {"outcome": "unresolved", "reason": "no"},
    "wrapup.finish": {"outcome": "resolved"},
    "wrapup.extend": {"seconds": 30},
    "rtc.signal": {"session_id": "{id}", "to": "{to}",
                   "description": {"type": "offer", "sdp": "v=0\r\n"},
                   "candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host",
                                 "sdpMid": "0", "sdpMLineIndex": 0}},
    "media.screen": {"session_id": "{id}", "active": True, "stream_id": "s1"},
    "call.report": {"session_id": "{id}", "stage": "failed", "at_ms": 10,
                    "failure": "ice_failed", "stats": {"rtt_ms": 10.5, "freezes": 1}},
    "chat.send": {"session_id": "{id}", "text": "hello"},
    "session.note": {"session_id": "{id}", "text": "note"},
    "kiosk.health": {"camera": "ok", "microphone": "failed", "speaker": "absent",
                     "document_camera": "ok", "detail": "d", "agent": "a"},
    "session.rate": {"ticket_id": "{id}", "score": 5, "comment": "ok"},
    "case.file": {"matter_id": "{matter}", "description": "could not", "ticket_id": "{id}"},
    "case.mine": {},
    "case.lookup": {"claim_code": "ABCD-1234"},
    "case.act": {"case_id": "{case}", "action": "{action}", "to": "{clerk}", "note": "n"},
    "case.overdue": {},
    "case.list": {"state": "open", "limit": 10},
    "prereview.start": {"session_id": "{id}"},
    "prereview.mark": {"session_id": "{id}", "material_id": "{material}",
                       "mark": "needs_correction", "note": "fix", "file_ids": ["f1"]},
    "prereview.finish": {"session_id": "{id}"},
    "monitor.join": {"session_id": "{id}"},
    "monitor.leave": {"session_id": "{id}"},
    "wall.snapshot": {},
}

UNKNOWN_NAMES = ["", " ", "ticket.take ", "TICKET.TAKE", "ticket", "x\nFAKE LOG LINE",
                 "\x00", "\u202eevil", "a" * 2000, "connect", "disconnect", "message", "*",
                 "__proto__", "constructor", "welcome", "ticket.update", "session.ended"]

# Events that would end or move the fuzzer's own live ticket or session (the storm is about
# hostile input, not a participant legitimately ending its own call).
DESTRUCTIVE = {"ticket.leave", "ticket.callback", "session.end", "session.transfer",
               "offer.decline"}


def _deep(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


HOSTILE_VALUES: list[Callable[[random.Random], Any]] = [
    lambda r: None, lambda r: True, lambda r: False, lambda r: 0, lambda r: -1,
    lambda r: -(2**63), lambda r: 2**63, lambda r: 2**70, lambda r: 1e308, lambda r: -1e308,
    lambda r: 0.5, lambda r: float("nan"), lambda r: float("inf"), lambda r: float("-inf"),
    lambda r: "", lambda r: " ", lambda r: "\x00", lambda r: "\n\r\t", lambda r: "\ud800",
    lambda r: "x" * r.choice([65, 129, 501, 1001, 2001, 4097, 8193]),
    lambda r: "y" * 70_000,  # over the 64 KiB event limit, under Engine.IO's 128 KiB
    lambda r: "居" * 20_000,
    lambda r: "\u202e" + "a" * 10, lambda r: "../../etc/passwd", lambda r: "%s%n{0}",
    lambda r: {}, lambda r: [], lambda r: [1, 2], lambda r: {"$gt": ""},
    lambda r: _deep(r.choice([5, 31, 33, 40, 300])),
    lambda r: ["ticket_id"], lambda r: {"ticket_id": "A001"},
]


class Fuzzer:
    def __init__(self, role: Role | None, client: Client, seed: int, ids: list[str],
                 own_live: set[str], never: set[str]) -> None:
        self.name = role.value if role is not None else "anonymous"
        # Mostly the events the role may send, so the storm reaches the handlers (a socket
        # not yet authenticated: hello, mostly).
        self.mine = (sorted(e for e, spec in p.EVENTS.items() if role in spec.roles)
                     if role is not None else ["hello"])
        self.client = client
        self.rng = random.Random(seed)
        self.ids = ids  # shared pool: everybody's ids, made-up ones, ended sessions
        self.core = len(ids)  # the seeded ones; the ids acks hand out are appended
        self.own_live = own_live
        self.never = never  # events only ever sent with an invalid payload
        self.extra: dict[str, list[str]] = {"departments": [], "materials": []}
        self.sent = 0
        self.codes: dict[str, int] = {}

    def _fill(self, value: Any, event: str) -> Any:
        r = self.rng
        if value == "{id}":
            # The seeded ids (everybody's tickets, made-up ones) mostly; harvested ones too.
            choice = r.choice(self.ids[:self.core] if r.random() < 0.7 else self.ids)
            if event in DESTRUCTIVE and choice in self.own_live:
                return "made-up-" + choice
            return choice
        if value == "{case}":
            return r.choice([*self.ids, "C-000001", "c1"])
        if value == "{matter}":
            return r.choice([MATTER, "birth_registration", "nope", "../x", MATTER.upper()])
        if value == "{clerk}":
            return r.choice(["clerk01", "clerk02", "clerk:clerk02", "supervisor", "hrss", "x",
                             *self.extra["departments"]])
        if value == "{material}":
            return r.choice([*self.extra["materials"], "m1", ""])
        if value == "{to}":
            return r.choice(["peer", "peer", "clerk:clerk01", "supervisor:supervisor",
                             "resident:r-partner", "resident:r-wait", "kiosk:XH-001", "x"])
        if value == "{action}":
            return r.choice(["assign", "start", "resolve", "confirm", "reopen"])
        if isinstance(value, dict):
            return {k: self._fill(v, event) for k, v in value.items()}
        return value

    def payload(self, event: str) -> Any:
        r = self.rng
        sample = self._fill(SAMPLES.get(event, {"ticket_id": "{id}"}), event)
        mode = r.randrange(8)
        if event in self.never and not sample:
            # An empty schema: anything but {} is refused before it acts.
            return r.choice([{"x": 1}, [], [{}], "x", 1, None, _deep(40), {"": None}])
        if event in self.never:
            sample.pop(r.choice(list(sample)))  # a required field missing
            return sample
        if mode < 3 or not sample:
            return sample  # valid for the schema, with somebody's (or nobody's) ids
        if mode == 3:
            sample.pop(r.choice(list(sample)))
            return sample
        if mode == 4:
            sample[r.choice(["extra", "__proto__", "seq", "ok", "sid", "Ticket_Id"])] = 1
            return sample
        if mode == 5:
            sample[r.choice(list(sample))] = r.choice(HOSTILE_VALUES)(r)
            return sample
        if mode == 6:
            return r.choice(HOSTILE_VALUES)(r)
        return [sample]

    def event(self) -> str:
        r = self.rng
        roll = r.random()
        if roll < 0.08:
            return r.choice(UNKNOWN_NAMES)
        if roll < 0.3:
            return r.choice(sorted(SAMPLES))
        return r.choice(self.mine)

    def check(self, event: str, payload: Any, reply: Any) -> None:
        where = f"{self.name}: {event!r} {repr(payload)[:300]} -> {reply!r}"
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), where
        if reply["ok"]:
            code = "ok"
        else:
            error = reply.get("error")
            assert isinstance(error, dict) and isinstance(error.get("message"), str), where
            code = str(error.get("code"))
            assert code in CODES, f"undocumented code: {where}"
            assert code != "internal_error", where
        self.codes[code] = self.codes.get(code, 0) + 1

    async def storm(self, count: int) -> None:
        while self.sent < count:
            # Up to 8 events in flight at once: races between one participant's own events
            # (a take and a leave, two accepts) are where half-checked state shows.
            batch = [(event, self.payload(event)) for event in
                     (self.event() for _ in range(min(self.rng.randint(1, 8),
                                                      count - self.sent)))]
            replies = await asyncio.gather(*(self.client.sio.call(event, data, timeout=10)
                                             for event, data in batch))
            self.sent += len(batch)
            for (event, data), reply in zip(batch, replies, strict=True):
                self.check(event, data, reply)
                if isinstance(reply, dict) and reply.get("ok"):
                    self._harvest(reply)

    def _harvest(self, reply: dict[str, Any]) -> None:
        """Ids the hall handed out (a kiosk's new ticket, a filed case) join the pool."""
        stack: list[Any] = [reply]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                for key, value in item.items():
                    if key in {"id", "ticket_id", "session_id", "case_id", "claim_code"} \
                            and isinstance(value, str) and value not in self.ids:
                        self.ids.append(value)
                    stack.append(value)
            elif isinstance(item, list):
                stack.extend(item)


# Hand-written frames for a raw socket (``{n}``: the ack id): what no client library sends.
RAW_FRAMES = [
    '42{n}[]', '42{n}[1,{{}}]', '42{n}[null,{{}}]', '42{n}[{{}},{{}}]', '42{n}"name"',
    '42{n}null', '42{n}{{}}', '42{n}', '42{n}[', '42{n}["ticket.position"]',
    '42{n}["ticket.position",{{}},{{}}]', '42{n}["hello",1,2]', '42{n}["nope",1,2]',
    '42{n}["chat.send",{{"session_id":"x","text":Infinity}}]',
    '42{n}["wrapup.extend",{{"seconds":-Infinity}}]', '42{n}["wrapup.extend",{{"seconds":NaN}}]',
    '42{n}["call.report",{{"session_id":"x","stats":{{"rtt_ms":1e400}}}}]',
    '42{n}["session.rate",{{"ticket_id":"x","score":' + "9" * 30 + '}}]',
    '42{n}["ticket.position",{{"ticket_id":"a","ticket_id":"b"}}]',
    '42{n}["ticket.position",{{"ticket_id":"\\ud800"}}]', '42{n}["\\ud800",{{}}]',
    '42{n}["ticket.position",{{"ticket_id":"a"}}]]', '42{n}["x",' + "[" * 40 + "]" * 40 + "]",
]


def test_every_event_of_the_table_has_a_sample() -> None:
    assert set(SAMPLES) == set(p.EVENTS) | {"hello"}
    # python-socketio's client encodes with the stdlib: NaN and Infinity go out as raw,
    # non-strict JSON frames, which is what the storm means to send.
    assert json.dumps([float("nan"), float("inf")]) == "[NaN, Infinity]"


async def _connect(hall: LiveHall, client: Client, auth: dict[str, Any]) -> Any:
    await client.connect(hall.url, auth)
    return await client.next("welcome")


async def _serve(clerk: Client, resident: Client, kind: str = "consultation") -> str:
    """The resident takes a ticket, the (available) clerk accepts it: the session's id."""
    took = await resident.call("ticket.take", {"matter_id": MATTER, "kind": kind})
    assert took["ok"], took
    offer = await clerk.next("offer.new")
    accepted = await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]})
    assert accepted["ok"], accepted
    await resident.next("session.started")
    return str(accepted["session"]["id"])


async def _raw_storm(raw: RawSocket, rng: random.Random, count: int,
                     codes: dict[str, int]) -> None:
    """Hand-written frames: each one that asks for an ack gets a documented refusal; the
    packets no client sends (FOREIGN_PACKETS) are dropped, the next ack is the fence."""
    for n in range(1, count + 1):
        if rng.random() < 0.25:
            await raw.send(rng.choice(FOREIGN_PACKETS))
        frame = rng.choice(RAW_FRAMES).format(n=n)
        await raw.send(frame)
        reply = await raw.ack(n)
        assert isinstance(reply, dict) and reply["ok"] is False, (frame, reply)
        code = reply["error"]["code"]
        assert code in CODES and code != "internal_error", (frame, reply)
        codes[code] = codes.get(code, 0) + 1


async def _settled(client: Client, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The answer once the participant's rate budget (drained by the storm) allows it."""
    for _ in range(5):
        reply = await client.call(event, payload)
        if reply["ok"] or reply["error"]["code"] != "too_many_requests":
            return reply
        await asyncio.sleep(min(float(reply["error"]["retry_after_s"]), 2.0) + 0.05)
    raise AssertionError(f"{event} still rate-limited after the storm")


@pytest.mark.usefixtures(hall_backend.__name__)  # an embedded hall, then a Redis-mode one
# Budgets off, the storm reaches the handlers; on, it mostly meets the rate limiter.
@pytest.mark.parametrize("limits", ["off", "on"])
async def test_a_seeded_storm_of_hostile_events_gets_documented_answers(
        caplog: pytest.LogCaptureFixture, limits: str) -> None:
    caplog.set_level(logging.INFO)
    async with live_hall({"HALL_RATE_LIMITS": limits}) as hall, \
            clients(7) as (clerk, partner, waiting, sup, kiosk, gone, anon), \
            resident_raw_socket(hall, "r-raw") as raw:
        await _connect(hall, clerk, {"token": await hall.clerk_token("clerk01")})
        # An ended session first (the clerk's, now finished), then the live one.
        await _connect(hall, gone, {"id_token": await hall.resident_id_token("r-gone")})
        ended = await _serve(clerk, gone)
        assert (await clerk.call("session.end", {"session_id": ended}))["ok"]
        assert (await clerk.call("wrapup.finish", {"outcome": "resolved"}))["ok"]
        await _connect(hall, partner, {"id_token": await hall.resident_id_token("r-partner")})
        live = await _serve(clerk, partner, kind="pre_review")
        await _connect(hall, waiting, {"id_token": await hall.resident_id_token("r-wait")})
        took = await waiting.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
        assert took["ok"] and took["ticket"]["state"] == "waiting", took
        ticket = str(took["ticket"]["id"])
        before = await waiting.call("ticket.position", {"ticket_id": ticket})
        assert before["ok"], before
        await _connect(hall, sup, {"token": await hall.clerk_token("supervisor")})
        await _connect(hall, kiosk, {"token": await hall.kiosk_token()})
        hub = hall.app[keys.HUB]
        hub.config = replace(hub.config, auth_timeout_s=120.0)  # outlive the storm
        await anon.connect(hall.url)

        # The real ids weigh more: the storm should reach the handlers past the id check.
        ids = [ticket, live, ended, ticket, live, live, ended, "A001", "B002", "nope",
               "x" * 64, "made-up-" + ended, ticket.lower(), live + " ", "0"]
        fuzzers = [
            Fuzzer(Role.RESIDENT, waiting, SEED + 1, ids, {ticket}, set()),
            Fuzzer(Role.CLERK, clerk, SEED + 2, ids, {live}, {"clerk.logout"}),
            Fuzzer(Role.SUPERVISOR, sup, SEED + 3, ids, set(), set()),
            Fuzzer(Role.KIOSK, kiosk, SEED + 4, ids, set(), set()),
            Fuzzer(None, anon, SEED + 5, ids, set(), set()),
        ]
        catalog = hall.app[keys.CATALOG]
        for fuzzer in fuzzers:
            fuzzer.extra["departments"] = sorted(catalog.departments)
            fuzzer.extra["materials"] = [m.id for m in catalog.matters[MATTER].materials]
        started = time.monotonic()
        raw_codes: dict[str, int] = {}
        await asyncio.gather(_raw_storm(raw, random.Random(SEED + 6), RAW_EVENTS, raw_codes),
                             *(f.storm(PER_FUZZER) for f in fuzzers))
        elapsed = time.monotonic() - started
        total = sum(f.sent for f in fuzzers)
        print(f"\nfuzz: {total} events and {RAW_EVENTS} raw frames in {elapsed:.1f}s;",
              {f.name: f.codes for f in fuzzers}, {"raw": raw_codes})
        assert total == len(fuzzers) * PER_FUZZER and elapsed < STORM_BUDGET_S

        # The connections are still up and answering.
        for client in (clerk, partner, waiting, sup, kiosk, anon):
            assert client.sio.connected
            assert not {"replaced", "session.expired"} & set(client.names())
        after = await _settled(waiting, "ticket.position", {"ticket_id": ticket})
        assert after["ok"] and after["position"]["position"] <= before["position"]["position"], (
            before, after)
        assert (await _settled(sup, "wall.snapshot", {}))["ok"]
        assert (await _settled(kiosk, "ticket.position", {"ticket_id": "nope"}))["error"][
            "code"] == "not_found"
        assert (await _settled(clerk, "ticket.position", {"ticket_id": ticket}))["error"][
            "code"] == "forbidden"
        assert (await _settled(anon, "wall.snapshot", {}))["error"][
            "code"] == "unauthenticated"
        fence = await raw.call(RAW_EVENTS + 1, "ticket.position", {"ticket_id": "nope"})
        assert fence["error"]["code"] in {"not_found", "too_many_requests"}, fence
        # The live session still relays chat both ways.
        sent = await _settled(clerk, "chat.send", {"session_id": live, "text": "still here?"})
        assert sent["ok"], sent
        await partner.next("chat.message", lambda d: d["message"]["text"] == "still here?")
        sent = await _settled(partner, "chat.send", {"session_id": live, "text": "yes"})
        assert sent["ok"], sent
        await clerk.next("chat.message", lambda d: d["message"]["text"] == "yes")
        assert not [n for n in partner.names() if n == "session.ended"]

    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info is not None]
    assert not bad, [(r.levelname, r.getMessage()) for r in bad]


# Socket.IO packets no client of the protocol sends. python-socketio raised on each inside
# Engine.IO's message task: an ERROR with a traceback per frame (a log flood at will), and an
# ACK without arguments called the hub's own welcome-ack callback with ``*None``.
FOREIGN_PACKETS = ["430", "431", "431null", "432", "44", '44{"message":"x"}', "47", "49",
                   "4/x,9"]


async def test_packets_a_client_does_not_send_are_dropped_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with live_hall() as hall, resident_raw_socket(hall, "r-raw") as raw:
        stats = hall.app[keys.HUB].stats
        before = stats["undecodable"]
        for frame in FOREIGN_PACKETS:
            await raw.send(frame)
        # The fence: answered after every frame above was handled, on the same socket.
        reply = await raw.call(1, "ticket.position", {"ticket_id": "nope"})
        assert reply["error"]["code"] == "not_found", reply
        assert stats["undecodable"] == before + len(FOREIGN_PACKETS)
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info is not None]
    assert not bad, [(r.name, r.getMessage(), r.exc_info) for r in bad]
