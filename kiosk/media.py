"""The kiosk's side of a session's WebRTC: answering the clerk, with aiortc.

The clerk is the initiator: it offers, the kiosk answers (docs/protocol.md, "WebRTC"). The
kiosk's side is *polite*: when both offer at once it gives its own offer up. aiortc has no
rollback and cannot restart ICE, so "giving up" and "restarting" both mean a fresh
RTCPeerConnection (a new *generation*): for an offer with new ICE credentials or a new DTLS
certificate, after an offer collision, after a resume (then the kiosk offers), and when the
connection failed and the clerk did not restart it.

Everything that touches the connection runs in one task, in order: the hall's ``rtc.signal``
messages and the agent's requests go through one queue. A browser clerk trickles its
candidates (``rtc.signal {candidate}``); aiortc gathers before it answers, so the kiosk's
descriptions carry all of its own candidates and it sends none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from kiosk.backoff import Backoff
from kiosk.call_quality import CallReporter
from kiosk.errors import KioskError
from kiosk.sources import MediaSources, OutputTrack
from kiosk.tasks import TaskSet

log = logging.getLogger("kiosk.media")

Payload = dict[str, Any]
Call = Callable[[str, Payload], Awaitable[Payload]]  # (event, payload) -> ack fields
Publish = Callable[[str, Payload], None]

DATA_CHANNEL = "hall"
RECOVER_AFTER_S = 3.0  # a failed connection: first let the clerk restart it


def ice_servers_from(session: Mapping[str, Any]) -> list[RTCIceServer]:
    """The session's ``ice_servers`` (RTCIceServer dicts, TURN credentials included)."""
    servers = []
    for server in session.get("ice_servers") or []:
        if isinstance(server, dict) and server.get("urls"):
            servers.append(RTCIceServer(urls=server["urls"], username=server.get("username"),
                                        credential=server.get("credential")))
    return servers


def _sdp_attribute(sdp: str | None, name: str) -> str | None:
    prefix = f"a={name}:"
    for line in (sdp or "").splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip().lower()
    return None


def ice_ufrag(sdp: str | None) -> str | None:
    return _sdp_attribute(sdp, "ice-ufrag")


def dtls_fingerprint(sdp: str | None) -> str | None:
    return _sdp_attribute(sdp, "fingerprint")


def aiortc_candidate(init: Mapping[str, Any]) -> RTCIceCandidate | None:
    """A browser's RTCIceCandidateInit as aiortc's RTCIceCandidate (None: nothing to add)."""
    text = str(init.get("candidate") or "")
    if not text:
        return None
    candidate = candidate_from_sdp(text.removeprefix("candidate:"))
    candidate.sdpMid = init.get("sdpMid")
    candidate.sdpMLineIndex = init.get("sdpMLineIndex")
    return candidate


@dataclass
class ReceivedCounters:
    video_frames: int = 0
    audio_frames: int = 0
    messages: int = 0


class MediaLink:
    """One session's media on the kiosk. :meth:`handle` takes the hall's ``rtc.signal`` and
    ``media.screen`` messages; :meth:`renegotiate` and :meth:`share_document` are the
    agent's requests. Counters add up over every generation of the session."""

    def __init__(self, session: Payload, sources: MediaSources, call: Call, publish: Publish,
                 *, owner: str = "kiosk") -> None:
        self.session_id = str(session["id"])
        self.polite = bool(session.get("polite", True))
        self.ice_servers = ice_servers_from(session)
        self.sources = sources
        self.received = ReceivedCounters()
        self.generation = 0
        self.pc: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        self.messages: list[str] = []  # the last data-channel messages (at most 100)
        self.remote_screen: Payload | None = None  # the clerk's media.screen, if sharing
        self._call = call
        self._publish = publish
        self._ops: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._tasks = TaskSet(f"{owner}-media")
        self._track_tasks = TaskSet(f"{owner}-tracks")
        self._pump: asyncio.Task[Any] | None = None
        self._outputs: list[OutputTrack] = []
        self._making_offer = False
        self._ended_candidates: set[int] = set()
        self._document: tuple[str, OutputTrack, RTCRtpSender] | None = None
        self._document_stream: str | None = None  # shared: re-added to every generation
        self._recovery = Backoff(RECOVER_AFTER_S, 60.0)
        self._closed = False
        self.quality = CallReporter(self, call)  # call.report: funnel and stats

    # ---- the agent's side

    def start(self) -> None:
        if self._pump is None:
            self._pump = self._tasks.spawn(self._run(), f"pump-{self.session_id}")
            self._tasks.spawn(self.quality.run(), f"quality-{self.session_id}")

    def handle(self, event: str, payload: Payload) -> None:
        """A hall message for this session (``rtc.signal``, ``media.screen``), in order."""
        if not self._closed:
            self._ops.put_nowait((event, payload))

    def renegotiate(self, reason: str, *, unless_renewed_since: int | None = None) -> None:
        """Offer from a fresh connection (after a resume). Skipped if a fresh connection was
        made since generation ``unless_renewed_since`` (an offer from the clerk won)."""
        if not self._closed:
            self._ops.put_nowait(("renegotiate", (reason, unless_renewed_since)))

    def share_document(self, active: bool) -> None:
        """Start or stop sharing the document camera as a screen share."""
        if not self._closed:
            self._ops.put_nowait(("document", active))

    def send_message(self, text: str) -> None:
        """Send a text on the ``hall`` data channel."""
        if self.channel is None or self.channel.readyState != "open":
            raise KioskError("the hall data channel is not open")
        self.channel.send(text)

    @property
    def connection_state(self) -> str:
        return "new" if self.pc is None else str(self.pc.connectionState)

    async def close(self) -> None:
        """Close the connection and stop the pump; idempotent."""
        self._closed = True
        await self._tasks.cancel_all()
        await self._close_pc()

    # ---- the pump

    async def _run(self) -> None:
        while True:
            event, payload = await self._ops.get()
            try:
                await self._step(event, payload)
            except asyncio.CancelledError:
                raise
            except KioskError as exc:
                log.warning("session %s: %s failed: %s", self.session_id, event, exc)
            except Exception:
                log.exception("session %s: %s failed", self.session_id, event)

    async def _step(self, event: str, payload: Any) -> None:
        if event == "rtc.signal":
            await self._on_signal(payload)
        elif event == "media.screen":
            self.remote_screen = payload if payload.get("active") else None
        elif event == "renegotiate":
            reason, since = payload
            if since is not None and self.generation != since:
                log.info("session %s: no fresh offer (%s): renewed meanwhile",
                         self.session_id, reason)
                return
            await self._fresh_offer(reason)
        elif event == "document":
            await self._document_share(bool(payload))
        elif event == "recover":
            await self._recover(int(payload))

    async def _on_signal(self, signal: Payload) -> None:
        if signal.get("from", "peer") != "peer":
            return  # the kiosk is never monitored directly: nothing else is for it
        description = signal.get("description")
        if isinstance(description, dict):
            kind = description.get("type")
            if kind == "offer":
                await self._on_offer(description)
            elif kind == "answer":
                await self._on_answer(description)
            return  # "rollback": the clerk gave its offer up; nothing of ours to undo
        if "candidate" in signal:
            await self._on_candidate(signal["candidate"])

    async def _on_offer(self, offer: Payload) -> None:
        pc = self.pc
        collision = pc is not None and (self._making_offer or pc.signalingState != "stable")
        if collision and not self.polite:
            log.info("session %s: ignoring the clerk's offer (collision, impolite)",
                     self.session_id)
            return
        if pc is None or collision or self._needs_fresh(pc, offer):
            why = ("first offer" if pc is None else "offer collision" if collision
                   else "new ICE or DTLS credentials")
            pc = await self._renew(why)
        self._making_offer = False
        await pc.setRemoteDescription(RTCSessionDescription(sdp=str(offer["sdp"]),
                                                            type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self._signal({"description": self._local(pc)})
        if self._document is not None and self._document[2] not in [
                t.sender for t in pc.getTransceivers() if t.mid is not None]:
            # An answer cannot add a track the offer had no place for: offer it ourselves.
            await self._offer(pc)

    @staticmethod
    def _needs_fresh(pc: RTCPeerConnection, offer: Payload) -> bool:
        """aiortc cannot restart ICE in place, nor take a new DTLS peer on one connection."""
        if pc.connectionState in ("failed", "closed"):
            return True
        remote = pc.remoteDescription
        if remote is None:
            return False
        sdp = str(offer.get("sdp") or "")
        return (ice_ufrag(remote.sdp) != ice_ufrag(sdp)
                or dtls_fingerprint(remote.sdp) != dtls_fingerprint(sdp))

    async def _on_answer(self, answer: Payload) -> None:
        pc = self.pc
        if pc is None or pc.signalingState != "have-local-offer":
            log.debug("session %s: an answer nobody waits for", self.session_id)
            return
        self._making_offer = False
        await pc.setRemoteDescription(RTCSessionDescription(sdp=str(answer["sdp"]),
                                                            type="answer"))

    async def _on_candidate(self, init: Any) -> None:
        pc = self.pc
        remote = None if pc is None else pc.remoteDescription
        if pc is None or remote is None:
            return
        if init is None:
            if self.generation not in self._ended_candidates:
                self._ended_candidates.add(self.generation)
                await pc.addIceCandidate(None)
            return
        if not isinstance(init, dict):
            return
        ufrag = init.get("usernameFragment")
        if ufrag is not None and str(ufrag).lower() != ice_ufrag(remote.sdp):
            return  # a candidate of an ICE generation this connection does not have
        candidate = aiortc_candidate(init)
        if candidate is None:
            return
        try:
            await pc.addIceCandidate(candidate)
        except ValueError as exc:  # aioice: after end-of-candidates, or a malformed one
            log.debug("session %s: candidate dropped: %s", self.session_id, exc)

    async def _fresh_offer(self, reason: str) -> None:
        pc = await self._renew(reason)
        self.channel = None
        self._wire_channel(pc.createDataChannel(DATA_CHANNEL), self.generation)
        await self._offer(pc)

    async def _offer(self, pc: RTCPeerConnection) -> None:
        self._making_offer = True
        await pc.setLocalDescription(await pc.createOffer())
        await self._signal({"description": self._local(pc)})

    async def _recover(self, generation: int) -> None:
        pc = self.pc
        if generation != self.generation or pc is None or pc.connectionState != "failed":
            return
        await self._fresh_offer("the connection failed")

    # ---- document camera as a screen share

    async def _document_share(self, active: bool) -> None:
        pc = self.pc
        if active and self._document_stream is None:
            stream_id = f"kiosk-document-{secrets.token_hex(6)}"
            # The receiver tells camera from screen by the stream id: announce it first.
            await self._call("media.screen", {"session_id": self.session_id, "active": True,
                                              "stream_id": stream_id})
            self._document_stream = stream_id
            if pc is not None and pc.signalingState != "closed":
                await self._add_document(pc)
                await self._offer(pc)
        elif not active and self._document_stream is not None:
            self._document_stream = None
            await self._call("media.screen", {"session_id": self.session_id, "active": False})
            document, self._document = self._document, None
            if document is not None and pc is not None and pc.signalingState != "closed":
                _, track, sender = document
                sender.replaceTrack(None)
                track.stop()
                for transceiver in pc.getTransceivers():
                    if transceiver.sender is sender:
                        transceiver.direction = "recvonly"
                await self._offer(pc)

    async def _add_document(self, pc: RTCPeerConnection) -> None:
        stream_id = self._document_stream
        if stream_id is None:
            return
        track = await self.sources.document_track()
        # aiortc gives every sender the connection's one stream id; the contract needs the
        # screen in a stream of its own (the id announced in media.screen).
        transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.sender._stream_id = stream_id
        self._document = (stream_id, track, transceiver.sender)

    # ---- connections

    async def _renew(self, reason: str) -> RTCPeerConnection:
        """Close the current connection (if any) and make the next generation's."""
        had = self.pc is not None
        await self._close_pc()
        await self.sources.open()
        self.generation += 1
        generation = self.generation
        if had:
            log.info("session %s: fresh RTCPeerConnection #%d (%s)", self.session_id,
                     generation, reason)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice_servers)))
        self.pc = pc
        self._making_offer = False

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if generation == self.generation:
                self._track_tasks.spawn(self._consume(track, generation),
                                        f"consume-{track.kind}-{generation}")

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if generation == self.generation and channel.label == DATA_CHANNEL:
                self._wire_channel(channel, generation)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if generation != self.generation:
                return
            state = pc.connectionState
            log.info("session %s: media %s (#%d)", self.session_id, state, generation)
            self._publish("agent.media", {"session_id": self.session_id, "state": state,
                                          "generation": generation})
            if state == "connected":
                self._recovery.reset()
            elif state == "failed":
                self._tasks.spawn(self._recover_later(generation), f"recover-{generation}")

        for track in self.sources.camera_tracks():
            self._outputs.append(track)
            pc.addTrack(track)
        if self._document_stream is not None:
            await self._add_document(pc)
        return pc

    async def _recover_later(self, generation: int) -> None:
        await asyncio.sleep(self._recovery.next_delay())
        self._ops.put_nowait(("recover", generation))

    def _wire_channel(self, channel: RTCDataChannel, generation: int) -> None:
        self.channel = channel

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            if generation != self.generation:
                return
            text = message if isinstance(message, str) else message.hex()
            self.received.messages += 1
            self.messages.append(text)
            del self.messages[:-100]
            self._publish("agent.message", {"session_id": self.session_id, "text": text})

    async def _consume(self, track: MediaStreamTrack, generation: int) -> None:
        with contextlib.suppress(MediaStreamError):
            while generation == self.generation:
                await track.recv()
                if track.kind == "video":
                    self.received.video_frames += 1
                else:
                    self.received.audio_frames += 1

    async def _close_pc(self) -> None:
        pc, self.pc = self.pc, None
        outputs, self._outputs = self._outputs, []
        document, self._document = self._document, None
        self.channel = None
        await self._track_tasks.cancel_all()
        if pc is not None:
            await pc.close()
        for track in outputs:
            track.stop()
        if document is not None:
            document[1].stop()

    async def _signal(self, fields: Payload) -> None:
        await self._call("rtc.signal", {"session_id": self.session_id, **fields})

    @staticmethod
    def _local(pc: RTCPeerConnection) -> Payload:
        local = pc.localDescription
        return {"type": local.type, "sdp": local.sdp}
