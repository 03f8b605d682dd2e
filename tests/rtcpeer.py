"""Test participants for the hall: a Socket.IO client that checks the protocol's numbering
(:class:`HallClient`) and an aiortc peer with synthetic, countable media (:class:`MediaPeer`).

Both follow docs/protocol.md, not the server's code, so a test written with them checks the
server against the contract. Notes on this machine (see /work/shared/STACK-NOTES.md): aioice
offers no loopback candidates, so peers in one process meet over the machine's own interface
address; aiortc gathers every candidate before ``setLocalDescription`` returns (half-trickle),
and cannot restart ICE, so a peer recovers media with a fresh ``RTCPeerConnection``.
"""

# The API takes explicit ``timeout`` arguments on purpose (tests read best with their deadline
# at the call), so ruff's ASYNC109 ("use asyncio.timeout instead") does not apply here.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import socketio
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

log = logging.getLogger(__name__)

Payload = dict[str, Any]
# Server→client events that carry no seq (docs/protocol.md, "Conventions"): the connection's
# own messages, and the state pushes that each supersede the previous one.
UNNUMBERED = frozenset({"welcome", "replaced", "wall.update", "queues.update"})
Predicate = Callable[[Payload], bool]


class ProtocolViolation(AssertionError):
    """The server broke a rule of docs/protocol.md that the client can see."""


class HallConnectError(Exception):
    """The hall refused the handshake (``connect_error``); ``data`` is its ``{code, message}``."""

    def __init__(self, message: str, data: Any) -> None:
        super().__init__(message)
        self.data = data

    @property
    def code(self) -> str | None:
        """The contract's error code: ``data["code"]``, or ``data["data"]["code"]`` (what
        python-socketio sends for ``ConnectionRefusedError(message, {code, message})``, and
        what socket.io-client shows as ``err.data.code``)."""
        for where in (self.data, self.data.get("data") if isinstance(self.data, dict) else None):
            if isinstance(where, dict) and isinstance(where.get("code"), str):
                return str(where["code"])
        return None


@dataclass(frozen=True, slots=True)
class Received:
    """One server→client event, in arrival order."""

    index: int
    event: str
    payload: Payload
    connection: int  # 1 for the first connection, 2 after the first resume...
    at: float  # time.monotonic() on arrival


# -- Socket.IO side --------------------------------------------------------------------------


class HallClient:
    """A hall participant's Socket.IO connection(s), with every event recorded in order.

    Numbering is checked against the contract: every event except ``welcome`` and
    ``replaced`` has a ``seq``, one more than the previous, continued across reconnects.
    ``welcome`` has no ``seq`` but ``last_seq``, the highest number the server has used so
    far: after a fresh connect the next event is ``last_seq + 1``; after a resume (``auth``
    ``{resume, last_seq}``) the server replays from the client's ``last_seq + 1`` up to the
    welcome's ``last_seq`` and carries on from there. Violations are kept in
    :attr:`violations` and raised by :meth:`wait_for` and :meth:`check`.

    A new ``socketio.AsyncClient`` is made for every connection, with automatic reconnection
    off: python-socketio would otherwise reconnect with the original credentials, which is a
    fresh login, not a resume.
    """

    def __init__(self, name: str = "client") -> None:
        self.name = name
        self.sio: socketio.AsyncClient | None = None
        self.events: list[Received] = []
        self.violations: list[str] = []
        self.welcomes: list[Payload] = []
        self.resume_token: str | None = None
        # The credential of the last connect ({token} or {id_token}): a resume presents it too.
        self.credential: dict[str, Any] = {}
        self.last_seq = 0  # the last seq received (what a resume counts from)
        self.connection = 0
        self.disconnect_reasons: list[Any] = []
        self._consumed: set[int] = set()
        self._waiters: set[asyncio.Future[None]] = set()
        self._expect: int | None = None  # next seq due; None before the first welcome
        self._resume_from: int | None = None
        self._connect_error: Any = None
        self._disconnected = asyncio.Event()

    # ---- connecting

    async def connect(self, url: str, auth: Mapping[str, Any], *, timeout: float = 10.0) -> Payload:
        """Connect (websocket only) with Socket.IO ``auth``; return the ``welcome`` payload."""
        if self.sio is not None and self.sio.connected:
            raise RuntimeError(f"{self.name}: already connected")
        sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        connection = self.connection + 1
        sio.on("*", lambda event, *args: self._record(connection, event, args))
        sio.on("connect_error", self._on_connect_error)
        sio.on("disconnect", self._on_disconnect)
        self._connect_error = None
        self._disconnected = asyncio.Event()
        self._resume_from = int(auth.get("last_seq", 0)) if "resume" in auth else None
        self.credential = {k: auth[k] for k in ("token", "id_token") if k in auth} or (
            self.credential)
        self.connection = connection
        try:
            await sio.connect(url, auth=dict(auth), transports=["websocket"],
                              wait_timeout=timeout)
        except socketio.exceptions.ConnectionError as exc:
            with contextlib.suppress(Exception):
                await sio.disconnect()
            raise HallConnectError(f"{self.name}: connect refused: {exc}",
                                   self._connect_error) from exc
        self.sio = sio
        return await self.wait_for("welcome", lambda p: True, timeout=timeout)

    async def resume(self, url: str, *, timeout: float = 10.0) -> Payload:
        """Reconnect with the last ``welcome``'s token, ``last_seq`` and the credential."""
        if self.resume_token is None:
            raise RuntimeError(f"{self.name}: no resume token yet")
        return await self.connect(
            url, {**self.credential, "resume": self.resume_token, "last_seq": self.last_seq},
            timeout=timeout,
        )

    async def drop(self, *, timeout: float = 5.0) -> None:
        """Lose the connection the way a network does: abort the TCP connection under the
        websocket, so neither a Socket.IO DISCONNECT nor an Engine.IO CLOSE packet (nor a
        websocket close frame) is sent.

        python-socketio 5.18 has no public "drop": ``AsyncClient.disconnect()`` sends a
        Socket.IO DISCONNECT and ``eio.disconnect(abort=True)`` still sends an Engine.IO
        CLOSE packet and a websocket close frame (``abort`` only skips waiting for the read
        loop). So this reaches the aiohttp websocket's transport (a private attribute) and
        aborts it; the server sees a transport error. If that attribute ever moves, it falls
        back to ``eio.disconnect(abort=True)`` and logs a warning.
        """
        sio = self._require()
        transport = _ws_transport(getattr(sio.eio, "ws", None))
        if transport is not None:
            transport.abort()
        else:
            log.warning("%s: cannot reach the websocket transport; closing cleanly", self.name)
            await sio.eio.disconnect(abort=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._disconnected.wait(), timeout)
        with contextlib.suppress(Exception):
            await sio.disconnect()
        self.sio = None

    async def close(self) -> None:
        """Disconnect cleanly (Socket.IO DISCONNECT), if connected."""
        if self.sio is not None:
            with contextlib.suppress(Exception):
                await self.sio.disconnect()
            self.sio = None

    @property
    def connected(self) -> bool:
        return self.sio is not None and bool(self.sio.connected)

    # ---- sending

    async def call(self, event: str, payload: Mapping[str, Any], *,
                   timeout: float = 10.0) -> Payload:
        """Emit with an ack and return the ack (a dict with ``ok``, per the contract)."""
        ack = await self._require().call(event, dict(payload), timeout=timeout)
        if not isinstance(ack, dict) or not isinstance(ack.get("ok"), bool):
            raise ProtocolViolation(f"{self.name}: ack to {event} is not {{ok, ...}}: {ack!r}")
        return ack

    async def ok(self, event: str, payload: Mapping[str, Any], *,
                 timeout: float = 10.0) -> Payload:
        """:meth:`call`, asserting the ack is ``ok: true``."""
        ack = await self.call(event, payload, timeout=timeout)
        assert ack["ok"] is True, f"{self.name}: {event} {dict(payload)!r} refused: {ack!r}"
        return ack

    # ---- receiving

    async def wait_for(self, event: str, predicate: Predicate | None = None, *,
                       timeout: float = 10.0) -> Payload:
        """The next not yet consumed ``event`` whose payload matches; marks it consumed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.check()
            for r in self.events:
                if r.index in self._consumed or r.event != event:
                    continue
                if predicate is None or predicate(r.payload):
                    self._consumed.add(r.index)
                    return r.payload
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [(r.event, r.payload.get("seq")) for r in self.events[-15:]]
                raise TimeoutError(
                    f"{self.name}: no matching {event!r} within {timeout} s; last events: {seen}"
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)

    def pending(self, event: str | None = None) -> list[Received]:
        """Events received but not consumed by :meth:`wait_for` (of one kind, if given)."""
        return [r for r in self.events
                if r.index not in self._consumed and (event is None or r.event == event)]

    def received(self, event: str) -> list[Payload]:
        """Every payload of ``event`` received so far, consumed or not."""
        return [r.payload for r in self.events if r.event == event]

    def check(self) -> None:
        """Raise if the server broke the numbering rules so far."""
        if self.violations:
            raise ProtocolViolation(f"{self.name}: " + "; ".join(self.violations))

    # ---- internals

    def _require(self) -> socketio.AsyncClient:
        if self.sio is None or not self.sio.connected:
            raise RuntimeError(f"{self.name}: not connected")
        return self.sio

    def _on_connect_error(self, data: Any = None) -> None:
        self._connect_error = data

    def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnect_reasons.append(reason)
        self._disconnected.set()

    def _record(self, connection: int, event: str, args: tuple[Any, ...]) -> None:
        # A plain function, so python-socketio runs it without a suspension point and events
        # are recorded in the order the server sent them.
        payload = args[0] if len(args) == 1 else None
        if not isinstance(payload, dict):
            self.violations.append(f"{event}: payload is not one JSON object: {args!r}")
            payload = {"_args": list(args)}
        self._check_seq(event, payload)
        self.events.append(Received(len(self.events), event, payload, connection,
                                    time.monotonic()))
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _check_seq(self, event: str, payload: Payload) -> None:
        if event == "welcome":
            self._check_welcome(payload)
            return
        if event in UNNUMBERED:
            if "seq" in payload:
                self.violations.append(f"{event} is not numbered but has seq: {payload!r}")
            return
        seq = payload.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            self.violations.append(f"{event}: no integer seq in {payload!r}")
            return
        if self._expect is None:
            self.violations.append(f"{event} (seq {seq}) arrived before welcome")
        elif seq != self._expect:
            self.violations.append(f"{event} has seq {seq}, expected {self._expect}")
        self._expect = seq + 1
        self.last_seq = seq

    def _check_welcome(self, payload: Payload) -> None:
        self.welcomes.append(payload)
        if "seq" in payload:
            self.violations.append(f"welcome is not numbered but has seq: {payload!r}")
        token = payload.get("resume_token")
        if isinstance(token, str):
            self.resume_token = token
        else:
            self.violations.append(f"welcome without a resume_token: {payload!r}")
        server_last = payload.get("last_seq")
        if not isinstance(server_last, int) or isinstance(server_last, bool):
            self.violations.append(f"welcome without an integer last_seq: {payload!r}")
            server_last = self.last_seq
        if self._resume_from is not None:
            if payload.get("resumed") is not True:
                self.violations.append(f"welcome after a resume has resumed != true: "
                                       f"{payload!r}")
            if server_last < self._resume_from:
                self.violations.append(f"resumed welcome's last_seq {server_last} is behind "
                                       f"the client's {self._resume_from}")
            # The replay (seq > the client's last_seq) follows, in order.
            self._expect = self._resume_from + 1
            self.last_seq = self._resume_from
        else:
            if payload.get("resumed") is not False:
                self.violations.append(f"fresh welcome has resumed != false: {payload!r}")
            # Nothing is replayed on a fresh connection: numbering goes on from the server's.
            self._expect = server_last + 1
            self.last_seq = server_last


class _Abortable(Protocol):
    def abort(self) -> None: ...


def _ws_transport(ws: Any) -> _Abortable | None:
    """The TCP transport under an aiohttp ``ClientWebSocketResponse`` (private attributes)."""
    conn = getattr(ws, "_conn", None) or getattr(getattr(ws, "_response", None), "connection",
                                                  None)
    transport = getattr(conn, "transport", None)
    return transport if callable(getattr(transport, "abort", None)) else None


# -- media side ------------------------------------------------------------------------------

WIDTH, HEIGHT = 160, 120
_COUNTER_BITS = 16  # frame number, in 16 blocks of 10 x 40 px across the top
_TAG_BITS = 8  # sender's tag, in 8 blocks of 20 x 40 px across the bottom
_HI, _LO, _MID = 235, 16, 128


def _bits_row(value: int, bits: int, line_size: int) -> bytes:
    width = WIDTH // bits
    row = bytearray([_MID]) * line_size
    for i in range(bits):
        level = _HI if (value >> (bits - 1 - i)) & 1 else _LO
        row[i * width:(i + 1) * width] = bytes([level]) * width
    return bytes(row)


def stamped_frame(number: int, tag: int) -> VideoFrame:
    """A 160x120 yuv420p frame showing ``number`` (16 bits) and ``tag`` (8 bits) as blocks
    large enough to survive VP8 at any bitrate aiortc picks."""
    frame = VideoFrame(width=WIDTH, height=HEIGHT, format="yuv420p")
    luma = frame.planes[0]
    top = _bits_row(number & 0xFFFF, _COUNTER_BITS, luma.line_size)
    middle = bytes([_MID]) * luma.line_size
    bottom = _bits_row(tag & 0xFF, _TAG_BITS, luma.line_size)
    rows = [top] * 40 + [middle] * 40 + [bottom] * 40
    luma.update(b"".join(rows))
    for chroma in frame.planes[1:]:
        chroma.update(bytes([128]) * chroma.buffer_size)
    return frame


def _read_bits(plane: bytes, line_size: int, y0: int, bits: int) -> int:
    width = WIDTH // bits
    value = 0
    for i in range(bits):
        x0 = i * width
        total = count = 0
        for y in range(y0 + 12, y0 + 28, 4):
            row = y * line_size
            for x in range(x0 + width // 4, x0 + width - width // 4):
                total += plane[row + x]
                count += 1
        value = (value << 1) | (1 if total / count > _MID else 0)
    return value


def read_stamp(frame: VideoFrame) -> tuple[int, int] | None:
    """The ``(number, tag)`` drawn by :func:`stamped_frame`, or None for another picture."""
    if (frame.width, frame.height) != (WIDTH, HEIGHT):
        return None
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    luma = frame.planes[0]
    data = bytes(luma)
    return (_read_bits(data, luma.line_size, 0, _COUNTER_BITS),
            _read_bits(data, luma.line_size, 80, _TAG_BITS))


class StampedVideoTrack(VideoStreamTrack):
    """30 fps of small frames, each stamped with its number and the sender's tag."""

    def __init__(self, tag: int) -> None:
        super().__init__()
        self.tag = tag
        self.sent = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = stamped_frame(self.sent, self.tag)
        frame.pts = pts
        frame.time_base = time_base
        self.sent += 1
        return frame


@dataclass(slots=True)
class RemoteVideo:
    """What arrived on one remote video track."""

    track_id: str
    frames: int = 0
    stamps: set[int] = field(default_factory=set)
    tags: Counter[int] = field(default_factory=Counter)
    first_at: float | None = None  # time.monotonic()


def ice_servers_from(session: Mapping[str, Any]) -> list[RTCIceServer]:
    """The session's ``ice_servers`` (RTCIceServer dicts) as aiortc objects."""
    servers = []
    for s in session.get("ice_servers") or []:
        servers.append(RTCIceServer(urls=s["urls"], username=s.get("username"),
                                    credential=s.get("credential")))
    return servers


def _ice_ufrag(sdp: str) -> str | None:
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line.split(":", 1)[1].strip()
    return None


class MediaPeer:
    """One side of a session's media: audio, a stamped camera track and the ``hall`` data
    channel on an ``RTCPeerConnection``, with counters of what arrives.

    The peer that offers creates the data channel; the answerer takes it from
    ``ondatachannel``. :meth:`renew` replaces the connection with a fresh one (new tracks,
    new ICE and DTLS), which is how aiortc recovers after a resume; counters restart with it.
    """

    def __init__(self, name: str, *, tag: int, ice_servers: list[RTCIceServer] | None = None,
                 session_id: str | None = None, remote: str = "peer",
                 send_media: bool = True, relay_only: bool = False) -> None:
        self.name = name
        self.tag = tag
        self.ice_servers = list(ice_servers or [])
        self.session_id = session_id
        # Who is at the other end: "peer" (the session's other participant) or a
        # participant id (the silent monitor leg between a clerk and a supervisor). It is
        # the ``to`` of what this peer sends and the ``from`` it accepts.
        self.remote = remote
        self.send_media = send_media  # False: receive-only (a monitoring supervisor)
        # True: iceTransportPolicy "relay", only TURN-relayed candidates (tests/test_turn.py).
        self.relay_only = relay_only
        self.generation = 0
        self.pc = self._new_pc()
        self.video_track = StampedVideoTrack(tag)
        self.audio_track = AudioStreamTrack()
        self.channel: RTCDataChannel | None = None
        self.remote_video: dict[str, RemoteVideo] = {}
        self.audio_frames = 0
        self.messages: list[str] = []
        self.started_at: float | None = None  # offer or answer began (this generation)
        self.ice_connected_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._add_tracks()

    @classmethod
    def for_session(cls, name: str, session: Mapping[str, Any], *, tag: int,
                    remote: str = "peer", send_media: bool = True,
                    relay_only: bool = False) -> MediaPeer:
        """A peer for a ``session.started`` session object (its id and ``ice_servers``)."""
        return cls(name, tag=tag, ice_servers=ice_servers_from(session),
                   session_id=str(session["id"]), remote=remote, send_media=send_media,
                   relay_only=relay_only)

    # ---- SDP

    async def offer(self) -> Payload:
        """Create the data channel if needed, then an offer; returns ``{type, sdp}``."""
        self._start_clock()
        if self.channel is None:
            self._wire_channel(self.pc.createDataChannel("hall"))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self._local()

    async def answer(self, offer: Mapping[str, Any]) -> Payload:
        """Apply a remote offer and return the answer ``{type, sdp}``."""
        self._start_clock()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=str(offer["sdp"]),
                                                                 type=str(offer["type"])))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self._local()

    async def accept_answer(self, answer: Mapping[str, Any]) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=str(answer["sdp"]),
                                                                 type=str(answer["type"])))

    def needs_fresh_connection(self, offer: Mapping[str, Any]) -> bool:
        """Whether answering ``offer`` takes a new RTCPeerConnection: it restarts ICE (new
        ufrag), which aiortc cannot do in place, or this connection is already dead."""
        remote = self.pc.remoteDescription
        if self.pc.connectionState in ("failed", "closed"):
            return True
        return remote is not None and _ice_ufrag(remote.sdp) != _ice_ufrag(str(offer["sdp"]))

    # ---- signaling through the hall (rtc.signal, half-trickle: no candidate events)

    async def send_offer(self, client: HallClient, *, timeout: float = 10.0) -> Payload:
        """Offer to the session peer over ``rtc.signal``; returns the ack."""
        description = await self.offer()
        return await client.ok("rtc.signal", self._signal(description), timeout=timeout)

    async def receive_answer(self, client: HallClient, *, timeout: float = 10.0) -> Payload:
        """Wait for the peer's answer on ``rtc.signal`` and apply it; returns the event."""
        signal = await client.wait_for("rtc.signal", self._is("answer"), timeout=timeout)
        await self.accept_answer(signal["description"])
        return signal

    async def answer_offer(self, client: HallClient, *, timeout: float = 10.0) -> Payload:
        """Wait for the peer's offer, renew the connection if it restarts ICE, answer it."""
        signal = await client.wait_for("rtc.signal", self._is("offer"), timeout=timeout)
        if self.needs_fresh_connection(signal["description"]):
            await self.renew()
        description = await self.answer(signal["description"])
        await client.ok("rtc.signal", self._signal(description), timeout=timeout)
        return signal

    async def negotiate(self, client: HallClient, *, initiator: bool,
                        timeout: float = 10.0) -> None:
        """The initial exchange: the initiator offers, the other side answers."""
        if initiator:
            await self.send_offer(client, timeout=timeout)
            await self.receive_answer(client, timeout=timeout)
        else:
            await self.answer_offer(client, timeout=timeout)

    # ---- data channel

    def send(self, text: str) -> None:
        if self.channel is None or self.channel.readyState != "open":
            raise RuntimeError(f"{self.name}: the hall data channel is not open")
        self.channel.send(text)

    async def wait_channel_open(self, timeout: float = 10.0) -> None:
        await self._until(lambda: self.channel is not None and self.channel.readyState == "open",
                          timeout, "the data channel to open")

    async def wait_messages(self, n: int, timeout: float = 10.0) -> list[str]:
        await self._until(lambda: len(self.messages) >= n, timeout, f"{n} data-channel messages")
        return list(self.messages)

    # ---- media

    @property
    def frames_received(self) -> int:
        """Distinct stamped frames on the best remote video track (0 if none yet)."""
        return max((len(v.stamps) for v in self.remote_video.values()), default=0)

    async def wait_connected(self, timeout: float = 10.0) -> float:
        """Wait for ICE+DTLS to connect; returns seconds since the offer/answer began."""
        await self._until(lambda: self.pc.connectionState == "connected", timeout,
                          "the connection to connect")
        assert self.started_at is not None
        return (self.ice_connected_at or time.monotonic()) - self.started_at

    async def wait_frames(self, n: int, timeout: float = 10.0) -> int:
        """Wait until one remote video track has brought ``n`` distinct frames."""
        await self._until(lambda: self.frames_received >= n, timeout,
                          f"{n} distinct video frames")
        return self.frames_received

    @property
    def first_frame_after_s(self) -> float | None:
        """Seconds from the offer/answer to the first remote video frame."""
        firsts = [v.first_at for v in self.remote_video.values() if v.first_at is not None]
        if not firsts or self.started_at is None:
            return None
        return min(firsts) - self.started_at

    def remote_tags(self) -> set[int]:
        """The sender tags seen on remote video (the majority tag of each track)."""
        return {v.tags.most_common(1)[0][0] for v in self.remote_video.values() if v.tags}

    # ---- lifecycle

    async def renew(self) -> None:
        """Close this connection and start a fresh one (new tracks, ICE, DTLS, counters)."""
        await self._close_pc()
        self.generation += 1
        self.pc = self._new_pc()
        self.video_track = StampedVideoTrack(self.tag)
        self.audio_track = AudioStreamTrack()
        self.channel = None
        self.remote_video = {}
        self.audio_frames = 0
        self.messages = []
        self.started_at = None
        self.ice_connected_at = None
        self._add_tracks()

    async def close(self) -> None:
        await self._close_pc()

    # ---- internals

    def _sid(self) -> str:
        if self.session_id is None:
            raise RuntimeError(f"{self.name}: no session id")
        return self.session_id

    def _signal(self, description: Payload) -> Payload:
        signal: Payload = {"session_id": self._sid(), "description": description}
        if self.remote != "peer":
            signal["to"] = self.remote
        return signal

    def _is(self, kind: str) -> Predicate:
        sid, remote = self.session_id, self.remote

        def match(p: Payload) -> bool:
            d = p.get("description")
            return (isinstance(d, dict) and d.get("type") == kind
                    and p.get("from") == remote
                    and (sid is None or p.get("session_id") == sid))

        return match

    def _local(self) -> Payload:
        local = self.pc.localDescription
        return {"type": local.type, "sdp": local.sdp}

    def _start_clock(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()

    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(
            iceServers=list(self.ice_servers),
            iceTransportPolicy=(RTCIceTransportPolicy.RELAY if self.relay_only
                                else RTCIceTransportPolicy.ALL)))
        generation = self.generation

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._spawn(self._consume(track, generation))

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if generation == self.generation and channel.label == "hall":
                self._wire_channel(channel)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if (generation == self.generation and pc.connectionState == "connected"
                    and self.ice_connected_at is None):
                self.ice_connected_at = time.monotonic()

        return pc

    def _add_tracks(self) -> None:
        if not self.send_media:
            return
        self.pc.addTrack(self.audio_track)
        self.pc.addTrack(self.video_track)

    def _wire_channel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        generation = self.generation

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            if generation == self.generation:
                self.messages.append(message if isinstance(message, str) else message.hex())

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume(self, track: MediaStreamTrack, generation: int) -> None:
        video = RemoteVideo(track.id) if track.kind == "video" else None
        if video is not None and generation == self.generation:
            self.remote_video[track.id] = video
        with contextlib.suppress(MediaStreamError):
            while generation == self.generation:
                frame = await track.recv()
                if video is None:
                    self.audio_frames += 1
                    continue
                video.frames += 1
                if video.first_at is None:
                    video.first_at = time.monotonic()
                stamp = read_stamp(frame) if isinstance(frame, VideoFrame) else None
                if stamp is not None:
                    video.stamps.add(stamp[0])
                    video.tags[stamp[1]] += 1

    async def _close_pc(self) -> None:
        pc = self.pc
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await pc.close()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await task

    async def _until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() >= deadline:
                raise TimeoutError(f"{self.name}: no {what} within {timeout} s "
                                   f"(connection {self.pc.connectionState}, "
                                   f"frames {self.frames_received}, "
                                   f"messages {len(self.messages)})")
            await asyncio.sleep(0.02)
