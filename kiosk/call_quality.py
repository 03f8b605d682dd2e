"""The kiosk's ``call.report`` (docs/protocol.md): the call funnel and a stats summary, from aiortc.

The same stages the pages report (web/static/js/call-quality.js), timed from the moment the
kiosk learnt of the session (``session.started``, when its :class:`~kiosk.media.MediaLink` is
made): ``signaling`` (the first description set on the connection: the clerk's offer, or the
kiosk's own after a resume), ``ice_connected`` (aiortc's connection ``connected``),
``first_frame`` (the first video frame received on a track), or ``failed`` with
``ice_failed`` / ``timeout`` / ``no_frames``. Once the call is up, a stats summary is sent at
once and then every :data:`STATS_INTERVAL_S`.

What aiortc 1.x provides in ``RTCPeerConnection.getStats()``: ``inbound-rtp`` (packets
received and lost, jitter in RTP timestamp units), ``remote-inbound-rtp`` (round-trip time
from the clerk's receiver reports) and ``transport`` (bytes received). It has no candidate
pair statistics: the selected local candidate's type is read from aioice's nominated pair, and
freezes are not measured (not reported). ``frames_decoded`` is the video frames received.

Reporting is best effort: a refused or lost report is logged at debug level and never
disturbs the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiortc import RTCPeerConnection

from kiosk.errors import KioskError

log = logging.getLogger("kiosk.call_quality")

Payload = dict[str, Any]
Call = Callable[[str, Payload], Awaitable[Payload]]

STATS_INTERVAL_S = 5.0
TICK_S = 0.25  # how often the stages are looked at until the call is up
ICE_TIMEOUT_S = 30.0  # no ICE connection this long after the accept: failed (timeout)
FRAME_TIMEOUT_S = 15.0  # connected but no video frame this long after: failed (no_frames)
# RTP clock rates: aiortc's jitter is in timestamp units (video 90 kHz, Opus 48 kHz).
_CLOCK_RATE = {"video": 90_000, "audio": 48_000}


class _Received(Protocol):
    @property
    def video_frames(self) -> int: ...


class Link(Protocol):
    """What the reporter reads of the session's media (:class:`kiosk.media.MediaLink`)."""

    @property
    def session_id(self) -> str: ...
    @property
    def pc(self) -> RTCPeerConnection | None: ...
    @property
    def received(self) -> _Received: ...


@dataclass(slots=True)
class _Totals:
    at: float
    bytes_received: int
    packets_received: int
    packets_lost: int


def candidate_type(pc: RTCPeerConnection) -> str | None:
    """The type of the local candidate of aioice's nominated pair (None: not known)."""
    try:
        for transceiver in pc.getTransceivers():
            ice = transceiver.receiver.transport.transport
            pairs = getattr(ice._connection, "_nominated", {})  # aioice: no public accessor
            for pair in pairs.values():
                kind = str(pair.local_candidate.type)
                if kind in ("host", "srflx", "prflx", "relay"):
                    return kind
    except AttributeError:
        return None
    return None


def summarize(report: dict[str, Any], previous: _Totals | None,
              now: float) -> tuple[Payload, _Totals]:
    """A ``call.report`` stats object from one ``getStats()`` report, with the totals to
    compare the next one with (loss and bitrate are over the interval since ``previous``)."""
    received = lost = bytes_received = 0
    jitters: list[float] = []
    rtts: list[float] = []
    for stats in report.values():
        kind = getattr(stats, "type", None)
        if kind == "inbound-rtp":
            received += int(stats.packetsReceived)
            lost += max(0, int(stats.packetsLost))
            rate = _CLOCK_RATE.get(str(getattr(stats, "kind", "")), 90_000)
            jitters.append(float(stats.jitter) / rate * 1000)
        elif kind == "remote-inbound-rtp" and getattr(stats, "roundTripTime", None) is not None:
            rtts.append(float(stats.roundTripTime) * 1000)
        elif kind == "transport":
            bytes_received += int(stats.bytesReceived)
    totals = _Totals(now, bytes_received, received, lost)
    out: Payload = {}
    if rtts:
        out["rtt_ms"] = round(min(60_000.0, max(rtts)), 1)
    if jitters:
        out["jitter_ms"] = round(min(60_000.0, max(jitters)), 1)
    base = previous or _Totals(now, 0, 0, 0)
    got = max(0, received - base.packets_received)
    missed = max(0, lost - base.packets_lost)
    if got + missed > 0:
        out["loss_ratio"] = round(missed / (got + missed), 4)
    if previous is not None and now > previous.at:
        kbps = max(0, bytes_received - previous.bytes_received) * 8 / (now - previous.at) / 1000
        out["bitrate_kbps"] = round(min(1_000_000.0, kbps), 1)
    return out, totals


class CallReporter:
    """Reports one session's call from the kiosk; :meth:`run` until cancelled."""

    def __init__(self, link: Link, call: Call, *, clock: Callable[[], float] = time.monotonic,
                 stats_interval_s: float = STATS_INTERVAL_S) -> None:
        self.link = link
        self._call = call
        self._clock = clock
        self.started = clock()
        self.stats_interval_s = stats_interval_s
        self.reached: dict[str, int] = {}
        self.failure: str | None = None
        self.reports = 0  # accepted by the hall
        self._totals: _Totals | None = None
        self._ice_failed = False
        self._connected_at: float | None = None

    def _ms(self) -> int:
        return max(0, min(3_600_000, round((self._clock() - self.started) * 1000)))

    async def run(self) -> None:
        while "first_frame" not in self.reached and self.failure is None:
            await self._look()
            await asyncio.sleep(TICK_S)
        while True:  # the call is up (or failed): its stats while it lasts
            if self.link.pc is not None and self.link.pc.connectionState == "connected":
                await self.send_stats()
            await asyncio.sleep(self.stats_interval_s)

    async def _look(self) -> None:
        pc = self.link.pc
        if pc is None:
            return
        if "signaling" not in self.reached and (
                pc.remoteDescription is not None or pc.localDescription is not None):
            await self._stage("signaling")
        state = pc.connectionState
        if state == "failed":
            self._ice_failed = True
        if "ice_connected" not in self.reached and state == "connected":
            self._connected_at = self._clock()
            await self._stage("ice_connected")
        if "ice_connected" in self.reached and self.link.received.video_frames > 0:
            await self._stage("first_frame")
            await self.send_stats()
            return
        waited = self._clock() - self.started
        if "ice_connected" not in self.reached and waited > ICE_TIMEOUT_S:
            await self._fail("ice_failed" if self._ice_failed else "timeout")
        elif (self._connected_at is not None
              and self._clock() - self._connected_at > FRAME_TIMEOUT_S):
            await self._fail("no_frames")

    async def _stage(self, stage: str) -> None:
        self.reached[stage] = self._ms()
        await self._send({"stage": stage, "at_ms": self.reached[stage]})

    async def _fail(self, code: str) -> None:
        self.failure = code
        await self._send({"stage": "failed", "failure": code, "at_ms": self._ms()})

    async def send_stats(self) -> None:
        pc = self.link.pc
        if pc is None:
            return
        try:
            report = await pc.getStats()
        except Exception as exc:  # a connection closing under it
            log.debug("session %s: getStats failed: %r", self.link.session_id, exc)
            return
        stats, self._totals = summarize(dict(report), self._totals, self._clock())
        kind = candidate_type(pc)
        if kind is not None:
            stats["candidate_type"] = kind
        stats["frames_decoded"] = min(1_000_000_000, self.link.received.video_frames)
        await self._send({"stats": stats})

    async def _send(self, fields: Payload) -> None:
        try:
            await self._call("call.report", {"session_id": self.link.session_id, **fields})
            self.reports += 1
        except KioskError as exc:
            log.debug("session %s: call.report not taken: %s", self.link.session_id, exc)
