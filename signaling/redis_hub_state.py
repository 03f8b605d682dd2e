"""The hub's shared state in Redis: any process serves any participant, and a process may die.

Keys (after the prefix, the same one as the hall's :class:`~rooms.redis_store.RedisStore`):

=======================  ==========  =============================================================
key                      type        contents
=======================  ==========  =============================================================
``part:<participant>``   hash        role, subject, name, sp (its principal), seq (last number
                                     given), owner + sid (process and socket holding it; absent
                                     while away), ticket, last_ticket, resume (newest token
                                     digest), resumed (digest of the token its connection
                                     resumed with, good until the newest is redeemed)
``out:<participant>``    list        its numbered messages, ``<seq> <event> <payload JSON>``,
                                     the last 2,000 (what a resume can replay)
``parts``                set         every participant id
``resume``               hash        resume token digest -> participant (both good ones)
``graces``               sorted set  participant -> end of its resume grace (POSIX time)
``procs``                sorted set  process id -> heartbeat expiry (POSIX time)
``owned:<process>``      set         participants whose socket that process holds
``sess:<ticket>``        hash        resident, clerk (participant ids), announced
``sessmon:<ticket>``     set         monitoring supervisors
``chat:<ticket>``        list        chat messages (JSON), the last 500
``notes:<ticket>``       list        the clerk's notes (JSON), the last 200
``callq:<ticket>``       hash        side -> its call-quality summary (JSON), while live
``sessions``             set         live session ids
``psess:<participant>``  set         sessions it is in (resident, clerk or monitor)
``owners``               hash        ticket -> participant who took it
``kiosks``               hash        service point -> presence and last health report (JSON)
``view:<name>``          string      a view one process built for all (the hall snapshot), ~1 s
channel ``proc:<id>``    pub/sub     messages for the sockets of that process
=======================  ==========  =============================================================

Sending is one script: number (HINCRBY), append to the outbox (RPUSH + LTRIM), and PUBLISH to
the channel of the process holding the socket, if that is another process. One message goes to
one process, whatever the number of processes; python-socketio's AsyncRedisManager would publish
every emit to every process (bench/cluster.py measures both). A message published while the
owner's subscription is down is not lost: it is in the outbox, the owner fills the gap when the
next message overtakes it, and re-reads every outbox after re-subscribing (``on_resync``).

Every read-check-write (attach, detach, claiming a dead process's participants, opening and
closing a session, redeeming a resume token) is a script, so two processes never both win.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis

from rooms.errors import ForbiddenError, NotFoundError
from rooms.redis_link import RedisLink
from signaling.hub_state import (
    CHAT_LIMIT,
    KEPT_CHAT_S,
    NOTES_LIMIT,
    OUTBOX_LIMIT,
    Attached,
    Entry,
    HubState,
    Record,
    ResumeError,
    check_gap,
    digest,
)
from signaling.identity import Principal, Role
from signaling.kiosks import DeviceReport, KioskStatus
from signaling.sessions import MediaSession

logger = logging.getLogger("hall.signaling.redis")

T = TypeVar("T")

_ATTACH = """
local prev_owner = redis.call('HGET', KEYS[1], 'owner')
local prev_sid = redis.call('HGET', KEYS[1], 'sid')
redis.call('HSET', KEYS[1], 'role', ARGV[1], 'subject', ARGV[2], 'name', ARGV[3], 'sp', ARGV[4],
           'owner', ARGV[5], 'sid', ARGV[6])
redis.call('HSETNX', KEYS[1], 'seq', 0)
redis.call('HDEL', KEYS[1], 'away_since')
redis.call('SADD', KEYS[2], ARGV[8])
redis.call('SADD', ARGV[7] .. 'owned:' .. ARGV[5], ARGV[8])
local away = redis.call('ZREM', KEYS[3], ARGV[8])
if prev_owner and prev_owner ~= ARGV[5] then
  redis.call('SREM', ARGV[7] .. 'owned:' .. prev_owner, ARGV[8])
  redis.call('PUBLISH', ARGV[7] .. 'proc:' .. prev_owner,
             'k ' .. #ARGV[8] .. ' ' .. ARGV[8] .. (prev_sid or ''))
end
return {tonumber(redis.call('HGET', KEYS[1], 'seq')), prev_owner or '', prev_sid or '', away}
"""

_DETACH = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'sid') ~= ARGV[2]
then return false end
redis.call('HDEL', KEYS[1], 'owner', 'sid')
redis.call('HSET', KEYS[1], 'away_since', ARGV[3])
redis.call('SREM', ARGV[5] .. 'owned:' .. ARGV[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
return 1
"""

_SEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local body = ARGV[2]
local stamped
if body == '{}' then stamped = '{"seq":' .. seq .. '}'
else stamped = '{"seq":' .. seq .. ',' .. string.sub(body, 2) end
local entry = seq .. ' ' .. ARGV[1] .. ' ' .. stamped
redis.call('RPUSH', KEYS[2], entry)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[4] then
  redis.call('PUBLISH', ARGV[5] .. 'proc:' .. owner, 'm ' .. #ARGV[6] .. ' ' .. ARGV[6] .. entry)
end
return {seq, owner or ''}
"""

_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do redis.call('ZREM', KEYS[1], member) end
return due
"""

_ORPHANS = """
local dead
if ARGV[4] ~= '' then dead = {ARGV[4]}
else dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 16) end
local out = {}
for _, proc in ipairs(dead) do
  redis.call('ZREM', KEYS[1], proc)
  local owned = ARGV[3] .. 'owned:' .. proc
  for _, pid in ipairs(redis.call('SMEMBERS', owned)) do
    local part = ARGV[3] .. 'part:' .. pid
    if redis.call('HGET', part, 'owner') == proc then
      redis.call('HDEL', part, 'owner', 'sid')
      redis.call('HSET', part, 'away_since', ARGV[1])
      redis.call('ZADD', KEYS[2], ARGV[2], pid)
      table.insert(out, pid)
    end
  end
  redis.call('DEL', owned)
end
return out
"""

_ISSUE_RESUME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local old = redis.call('HGET', KEYS[1], 'resume')
if old then redis.call('HDEL', KEYS[2], old) end
if ARGV[3] ~= '1' then
  local used = redis.call('HGET', KEYS[1], 'resumed')
  if used then
    redis.call('HDEL', KEYS[2], used)
    redis.call('HDEL', KEYS[1], 'resumed')
  end
end
redis.call('HSET', KEYS[1], 'resume', ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: resume, part; ARGV: digest, participant. See HubState: the newest token ('resume')
# or the one its connection resumed with ('resumed'); redeeming one retires the other.
_REDEEM = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return false end
local newest = redis.call('HGET', KEYS[2], 'resume')
local used = redis.call('HGET', KEYS[2], 'resumed')
if newest == ARGV[1] then
  if used then redis.call('HDEL', KEYS[1], used) end
  redis.call('HSET', KEYS[2], 'resumed', ARGV[1])
  redis.call('HDEL', KEYS[2], 'resume')
  return 1
end
if used == ARGV[1] then
  if newest then
    redis.call('HDEL', KEYS[1], newest)
    redis.call('HDEL', KEYS[2], 'resume')
  end
  return 1
end
return false
"""

# KEYS: part, resume; ARGV: digest of the token the client acknowledged.
_RESUME_RECEIVED = """
if redis.call('HGET', KEYS[1], 'resume') ~= ARGV[1] then return 0 end
local used = redis.call('HGET', KEYS[1], 'resumed')
if used then
  redis.call('HDEL', KEYS[2], used)
  redis.call('HDEL', KEYS[1], 'resumed')
end
return 1
"""

_FORGET = """
local old = redis.call('HGET', KEYS[1], 'resume')
if old then redis.call('HDEL', KEYS[3], old) end
local used = redis.call('HGET', KEYS[1], 'resumed')
if used then redis.call('HDEL', KEYS[3], used) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return 1
"""

_SET_TICKET = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'ticket', ARGV[1], 'last_ticket', ARGV[1])
return 1
"""

_CLEAR_TICKET = """
if redis.call('HGET', KEYS[1], 'ticket') == ARGV[1] then redis.call('HDEL', KEYS[1], 'ticket') end
return 1
"""

_SESSION_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'resident', ARGV[2], 'clerk', ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('SADD', ARGV[4] .. 'psess:' .. ARGV[2], ARGV[1])
  redis.call('SADD', ARGV[4] .. 'psess:' .. ARGV[3], ARGV[1])
  redis.call('PERSIST', KEYS[4])
end
return {redis.call('HGET', KEYS[1], 'resident'), redis.call('HGET', KEYS[1], 'clerk'),
        redis.call('SMEMBERS', KEYS[3])}
"""

_SESSION_CLOSE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local resident = redis.call('HGET', KEYS[1], 'resident')
local clerk = redis.call('HGET', KEYS[1], 'clerk')
local monitors = redis.call('SMEMBERS', KEYS[2])
redis.call('SREM', ARGV[2] .. 'psess:' .. resident, ARGV[1])
redis.call('SREM', ARGV[2] .. 'psess:' .. clerk, ARGV[1])
for _, m in ipairs(monitors) do redis.call('SREM', ARGV[2] .. 'psess:' .. m, ARGV[1]) end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
else
  -- a transfer: the chat waits for the next session of the same ticket (the same keys)
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
redis.call('SREM', KEYS[5], ARGV[1])
return {resident, clerk, monitors}
"""

# A side's call-quality summary, only while the session is live (KEYS: sess, callq); kept a
# day at most should the session's close never drop it.
_QUALITY_PUT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], 86400)
return 1
"""

_SESSION_FIND = """
local people = redis.call('HMGET', KEYS[1], 'resident', 'clerk')
if not people[1] then return false end
return {people[1], people[2], redis.call('SMEMBERS', KEYS[2])}
"""

_SESSION_ANNOUNCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'announced', 1)
"""

_MONITOR = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local changed
if ARGV[3] == '1' then changed = redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('SADD', ARGV[2] .. 'psess:' .. ARGV[1], ARGV[4])
else changed = redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('SREM', ARGV[2] .. 'psess:' .. ARGV[1], ARGV[4]) end
return changed
"""

_PUSH_CAPPED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
return 1
"""

_KIOSK_ONLINE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local status = {}
if raw then status = cjson.decode(raw) end
local online = ARGV[2] == '1'
if (status['online'] == true) == online then return 0 end
status['online'] = online
status['since'] = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(status))
return 1
"""

_KIOSK_REPORT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local status = {}
if raw then status = cjson.decode(raw) end
status['health'] = cjson.decode(ARGV[2])
status['health_at'] = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(status))
return 1
"""


def default_process_id() -> str:
    # The random part: in a container the hostname and pid (1) survive a restart.
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else raw


def _entry(raw: bytes | str) -> Entry:
    text = raw.decode() if isinstance(raw, bytes) else raw
    seq, event, body = text.split(" ", 2)
    return int(seq), event, orjson.loads(body)


def _record(pid: str, fields: dict[Any, Any]) -> Record | None:
    if not fields:
        return None
    f = {_text(k) or "": _text(v) or "" for k, v in fields.items()}
    if "role" not in f:
        return None
    principal = Principal(Role(f["role"]), f["subject"], f.get("name", ""),
                          f.get("sp") or None)
    return Record(principal, seq=int(f.get("seq", "0")), owner=f.get("owner"),
                  sid=f.get("sid"), ticket_id=f.get("ticket"),
                  last_ticket_id=f.get("last_ticket"))


def _report_json(report: DeviceReport) -> bytes:
    return orjson.dumps({"camera": report.camera, "microphone": report.microphone,
                         "speaker": report.speaker, "document_camera": report.document_camera,
                         "detail": report.detail, "agent": report.agent})


def _kiosk(kiosk_id: str, raw: bytes | str | None) -> KioskStatus:
    status = KioskStatus(kiosk_id)
    if raw is None:
        return status
    data = orjson.loads(raw)
    status.online = bool(data.get("online", False))
    status.since = data.get("since")
    health = data.get("health")
    if isinstance(health, dict):
        status.health = DeviceReport(
            health["camera"], health["microphone"], health["speaker"],
            health["document_camera"], detail=health.get("detail") or None,
            agent=health.get("agent") or None)
        status.health_at = data.get("health_at")
    return status


class RedisHubState(HubState):
    """Participants, sessions, owners and kiosks in Redis, shared by every hall process."""

    def __init__(
        self,
        url: str,
        service_point_ids: Iterable[str],
        *,
        prefix: str = "hall:",
        process_id: str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__(process_id or default_process_id())
        self._link = RedisLink(url, timeout_s, "Redis signaling state")
        self._p = prefix
        self._points = tuple(service_point_ids)
        self._point_set = frozenset(self._points)
        self._scripts: dict[str, Any] = {}
        self._listener: asyncio.Task[None] | None = None
        self._beaten = False

    # ------------------------------------------------------------------ plumbing
    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    async def open(self) -> None:
        if self._link.is_open:
            return
        client = self._link.connect()
        for name, source in (("attach", _ATTACH), ("detach", _DETACH), ("send", _SEND),
                             ("claim_due", _CLAIM_DUE), ("orphans", _ORPHANS),
                             ("issue_resume", _ISSUE_RESUME), ("redeem", _REDEEM),
                             ("resume_received", _RESUME_RECEIVED),
                             ("forget", _FORGET), ("set_ticket", _SET_TICKET),
                             ("clear_ticket", _CLEAR_TICKET), ("session_open", _SESSION_OPEN),
                             ("session_close", _SESSION_CLOSE),
                             ("session_announce", _SESSION_ANNOUNCE), ("monitor", _MONITOR),
                             ("session_find", _SESSION_FIND), ("quality_put", _QUALITY_PUT),
                             ("push_capped", _PUSH_CAPPED), ("kiosk_online", _KIOSK_ONLINE),
                             ("kiosk_report", _KIOSK_REPORT)):
            self._scripts[name] = client.register_script(source)
        # Not waiting for Redis here: a process started while Redis is away comes up not
        # ready and recovers by itself (the listener and the heartbeat retry).
        self._listener = asyncio.create_task(self._listen(), name="hub-state-listener")

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        # Leaving: let the other processes take over this one's participants at once rather
        # than after the heartbeat expires.
        await self._link.close(
            listener, lambda client: client.zadd(self._k("procs"), {self.process_id: 0}))

    async def ping(self) -> bool:
        return await self._link.ping()

    @property
    def link(self) -> RedisLink:
        """The connection to Redis (server/metrics.py times its requests)."""
        return self._link

    def _client(self) -> aioredis.Redis:
        return self._link.client

    async def _io(self, request: Awaitable[T]) -> T:
        return await self._link.io(request)

    async def _run(self, name: str, keys: list[str], args: list[Any], *,
                   urgent: bool = False) -> Any:
        """Run a script; ``urgent`` (liveness work) on the link's own small pool, so a burst
        of requests queued for the main pool cannot delay it (rooms/redis_link.py)."""
        client = self._link.urgent if urgent else self._client()
        return await self._io(self._scripts[name](keys=keys, args=args, client=client))

    async def _listen(self) -> None:
        """Deliver what other processes publish for this process's sockets; after each
        (re)subscription, anything published meanwhile is re-read from the outboxes."""
        async def resync() -> None:
            if self.on_resync is not None:
                await self.on_resync()

        await self._link.subscribe_forever(self._k("proc", self.process_id), self._dispatch,
                                           logger=logger, what="signaling channel",
                                           on_subscribed=resync)

    async def _dispatch(self, data: bytes) -> None:
        """``m <n> <participant><entry>`` (a message) or ``k <n> <participant><sid>`` (a
        kick), n the participant id's length in bytes: plain text, so neither Lua nor Python
        encodes the entry twice, and any participant id goes through."""
        try:
            kind, size, rest_bytes = data.split(b" ", 2)
            pid = rest_bytes[:int(size)].decode()
            rest = rest_bytes[int(size):].decode()
            kind_text = kind.decode()
            if kind_text == "m" and self.on_remote is not None:
                seq, event, payload = _entry(rest)
                await self.on_remote(pid, seq, event, payload)
            elif kind_text == "k" and self.on_kick is not None and rest:
                await self.on_kick(pid, rest)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("could not deliver a message from another process")

    # ------------------------------------------------------------------ processes
    async def heartbeat(self, ttl_s: float, now: float) -> bool:
        added = await self._io(self._link.urgent.zadd(self._k("procs"),
                                                      {self.process_id: now + ttl_s}))
        first, self._beaten = not self._beaten, True
        return first or not added

    async def orphans(self, now: float, grace_until: float) -> list[Record]:
        return await self._claim(now, grace_until, "")

    async def release_own(self, now: float, grace_until: float) -> list[Record]:
        # A process restarted under the same id finds its predecessor's participants listed
        # as its own: they are away (their sockets died with it), not connected here.
        return await self._claim(now, grace_until, self.process_id)

    async def _claim(self, now: float, grace_until: float, process: str) -> list[Record]:
        pids = await self._run("orphans", [self._k("procs"), self._k("graces")],
                               [repr(now), repr(grace_until), self._p, process], urgent=True)
        records = []
        for raw in pids or []:
            record = await self.record(_text(raw) or "")
            if record is not None:
                records.append(record)
        return records

    async def shared_view(self, name: str) -> bytes | None:
        data = await self._io(self._client().get(self._k("view", name)))
        return data.encode() if isinstance(data, str) else data

    async def put_shared_view(self, name: str, data: bytes, ttl_s: float) -> None:
        await self._io(self._client().set(self._k("view", name), data,
                                          px=max(1, round(ttl_s * 1000))))

    # ------------------------------------------------------------------ participants
    async def attach(self, principal: Principal, sid: str) -> Attached:
        pid = principal.participant_id
        seq, prev_owner, prev_sid, away = await self._run(
            "attach", [self._k("part", pid), self._k("parts"), self._k("graces")],
            [principal.role.value, principal.subject, principal.name,
             principal.service_point_id or "", self.process_id, sid, self._p, pid])
        owner, old_sid = _text(prev_owner), _text(prev_sid)
        replaced = (owner, old_sid) if owner and old_sid else None
        return Attached(int(seq), replaced, bool(away))

    async def detach(self, participant_id: str, sid: str, now: float,
                     grace_until: float) -> Record | None:
        done = await self._run("detach", [self._k("part", participant_id), self._k("graces")],
                               [self.process_id, sid, repr(now), repr(grace_until), self._p,
                                participant_id])
        return await self.record(participant_id) if done else None

    async def record(self, participant_id: str) -> Record | None:
        fields = await self._io(self._client().hgetall(self._k("part", participant_id)))
        return _record(participant_id, fields)

    async def participant_ids(self) -> list[str]:
        members = await self._io(self._client().smembers(self._k("parts")))
        return sorted(_text(m) or "" for m in members)

    async def set_ticket(self, participant_id: str, ticket_id: str) -> None:
        await self._run("set_ticket", [self._k("part", participant_id)], [ticket_id])

    async def clear_ticket(self, participant_id: str, ticket_id: str) -> None:
        await self._run("clear_ticket", [self._k("part", participant_id)], [ticket_id])

    async def forget(self, participant_id: str) -> None:
        await self._run("forget", [self._k("part", participant_id),
                                   self._k("out", participant_id), self._k("resume"),
                                   self._k("parts"), self._k("graces")], [participant_id])

    async def issue_resume(self, participant_id: str, *, resumed: bool = False) -> str:
        token = secrets.token_urlsafe(32)
        done = await self._run("issue_resume",
                               [self._k("part", participant_id), self._k("resume")],
                               [digest(token), participant_id, "1" if resumed else "0"])
        if not done:
            raise NotFoundError(f'participant "{participant_id}" is not known')
        return token

    async def redeem(self, token: str, participant_id: str) -> None:
        done = await self._run("redeem", [self._k("resume"), self._k("part", participant_id)],
                               [digest(token), participant_id])
        if not done:
            raise ResumeError("unknown, used or expired resume token")

    async def resume_received(self, participant_id: str, token: str) -> None:
        await self._run("resume_received",
                        [self._k("part", participant_id), self._k("resume")], [digest(token)])

    async def send(self, participant_id: str, event: str,
                   payload: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        result = await self._run(
            "send", [self._k("part", participant_id), self._k("out", participant_id)],
            [event, orjson.dumps(payload), OUTBOX_LIMIT, self.process_id, self._p,
             participant_id])
        if not result:
            return None
        seq, owner = int(result[0]), _text(result[1])
        if owner != self.process_id:
            return None
        return seq, {"seq": seq, **payload}

    async def since(self, participant_id: str, last_seq: int) -> list[Entry]:
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.hget(self._k("part", participant_id), "seq")
            pipe.lrange(self._k("out", participant_id), 0, -1)
            seq_raw, raw_entries = await self._io(pipe.execute())
        if seq_raw is None:
            raise ResumeError("unknown participant")
        return check_gap([_entry(e) for e in raw_entries], int(seq_raw), last_seq)

    async def graces_due(self, now: float) -> list[str]:
        due = await self._run("claim_due", [self._k("graces")], [repr(now)], urgent=True)
        return sorted(_text(d) or "" for d in due or [])

    # ------------------------------------------------------------------ sessions
    def _session_keys(self, session_id: str) -> tuple[str, str, str, str]:
        return (self._k("sess", session_id), self._k("sessmon", session_id),
                self._k("chat", session_id), self._k("notes", session_id))

    @staticmethod
    def _session(session_id: str, resident: Any, clerk: Any, monitors: Any) -> MediaSession:
        return MediaSession(session_id, _text(resident) or "", _text(clerk) or "",
                            {_text(m) or "" for m in monitors or []})

    async def session_open(self, session_id: str, resident: str, clerk: str) -> MediaSession:
        sess, mon, chat, _ = self._session_keys(session_id)
        got = await self._run("session_open", [sess, self._k("sessions"), mon, chat],
                              [session_id, resident, clerk, self._p])
        return self._session(session_id, *got)

    async def session_find(self, session_id: str) -> MediaSession | None:
        sess, mon, _, _ = self._session_keys(session_id)
        got = await self._run("session_find", [sess, mon], [])
        return None if not got else self._session(session_id, *got)

    async def session_close(self, session_id: str, *,
                            keep_chat: bool = False) -> MediaSession | None:
        got = await self._run("session_close",
                              [*self._session_keys(session_id), self._k("sessions")],
                              [session_id, self._p, KEPT_CHAT_S if keep_chat else 0])
        return None if not got else self._session(session_id, *got)

    async def session_announce(self, session_id: str) -> bool:
        return bool(await self._run("session_announce", [self._k("sess", session_id)], []))

    async def _sessions(self, ids: Iterable[str]) -> list[MediaSession]:
        found = []
        for session_id in sorted(ids):
            live = await self.session_find(session_id)
            if live is not None:
                found.append(live)
        return found

    async def sessions_all(self) -> list[MediaSession]:
        ids = await self._io(self._client().smembers(self._k("sessions")))
        return await self._sessions(_text(m) or "" for m in ids)

    async def sessions_of(self, participant_id: str) -> list[MediaSession]:
        ids = await self._io(self._client().smembers(self._k("psess", participant_id)))
        return await self._sessions(_text(m) or "" for m in ids)

    async def _monitor(self, session_id: str, participant_id: str, add: bool) -> MediaSession:
        sess, mon, _, _ = self._session_keys(session_id)
        changed = await self._run("monitor", [sess, mon],
                                  [participant_id, self._p, "1" if add else "0", session_id])
        if changed == -1:
            raise NotFoundError(f'no live session "{session_id}"')
        if not add and changed == 0:
            raise ForbiddenError(f"not monitoring session {session_id}")
        return await self.session_get(session_id)

    async def monitor_add(self, session_id: str, participant_id: str) -> MediaSession:
        return await self._monitor(session_id, participant_id, True)

    async def monitor_remove(self, session_id: str, participant_id: str) -> MediaSession:
        return await self._monitor(session_id, participant_id, False)

    async def _push(self, session_id: str, key: str, item: dict[str, Any], limit: int) -> None:
        done = await self._run("push_capped", [self._k("sess", session_id), key],
                               [orjson.dumps(item), limit])
        if not done:
            raise NotFoundError(f'no live session "{session_id}"')

    async def _items(self, key: str) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in await self._io(self._client().lrange(key, 0, -1))]

    async def chat_add(self, session_id: str, message: dict[str, Any]) -> None:
        await self._push(session_id, self._k("chat", session_id), message, CHAT_LIMIT)

    async def chat(self, session_id: str) -> list[dict[str, Any]]:
        return await self._items(self._k("chat", session_id))

    async def note_add(self, session_id: str, note: dict[str, Any]) -> None:
        await self._push(session_id, self._k("notes", session_id), note, NOTES_LIMIT)

    async def notes(self, session_id: str) -> list[dict[str, Any]]:
        return await self._items(self._k("notes", session_id))

    async def quality_put(self, session_id: str, side: str, summary: dict[str, Any]) -> bool:
        return bool(await self._run("quality_put",
                                    [self._k("sess", session_id), self._k("callq", session_id)],
                                    [side, orjson.dumps(summary)]))

    async def quality_get(self, session_id: str) -> dict[str, dict[str, Any]]:
        raw = await self._io(self._client().hgetall(self._k("callq", session_id)))
        return {_text(side) or "": orjson.loads(value) for side, value in raw.items()}

    async def quality_drop(self, session_id: str) -> None:
        await self._io(self._client().delete(self._k("callq", session_id)))

    # ------------------------------------------------------------------ ticket owners
    async def owner_set(self, ticket_id: str, participant_id: str) -> None:
        await self._io(self._client().hset(self._k("owners"), ticket_id, participant_id))

    async def owners(self, ticket_ids: Iterable[str]) -> dict[str, str]:
        ids = list(ticket_ids)
        if not ids:
            return {}
        values = await self._io(self._client().hmget(self._k("owners"), ids))
        return {t: _text(v) or "" for t, v in zip(ids, values, strict=True) if v is not None}

    async def owner_drop(self, ticket_id: str) -> None:
        await self._io(self._client().hdel(self._k("owners"), ticket_id))

    # ------------------------------------------------------------------ kiosks
    async def kiosk_online(self, kiosk_id: str, online: bool, now: float) -> bool:
        if kiosk_id not in self._point_set:
            return False  # a point no longer in the catalog: nothing to show it on
        return bool(await self._run("kiosk_online", [self._k("kiosks")],
                                    [kiosk_id, "1" if online else "0", repr(now)]))

    async def kiosk_changes(self, kiosk_id: str, report: DeviceReport) -> bool:
        if kiosk_id not in self._point_set:
            raise NotFoundError(f'service point "{kiosk_id}" does not exist')
        raw = await self._io(self._client().hget(self._k("kiosks"), kiosk_id))
        health = _kiosk(kiosk_id, raw).health
        return health is None or health.states != report.states

    async def kiosk_report(self, kiosk_id: str, report: DeviceReport, now: float) -> None:
        if kiosk_id not in self._point_set:
            raise NotFoundError(f'service point "{kiosk_id}" does not exist')
        await self._run("kiosk_report", [self._k("kiosks")],
                        [kiosk_id, _report_json(report), repr(now)])

    async def kiosks_all(self) -> list[KioskStatus]:
        raw = await self._io(self._client().hgetall(self._k("kiosks")))
        known = {_text(k) or "": v for k, v in raw.items()}
        return [_kiosk(point, known.get(point)) for point in self._points]
