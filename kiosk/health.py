"""What the kiosk reports about its devices: ``kiosk.health``.

``{camera, microphone, speaker, document_camera: "ok"|"failed"|"absent", detail?, agent?}``.
A :class:`DeviceProbe` decides the values. The default, :class:`SourceProbe`, checks the
configured sources: a camera that aiortc's MediaPlayer can open and that has a video stream is
``ok``, one that is configured but cannot be opened is ``failed``, and one that is not
configured is ``absent`` (the agent then sends synthetic video, which the hall should know).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Literal, Protocol

from aiortc.contrib.media import MediaPlayer

from kiosk.config import MediaConfig, SourceSpec

log = logging.getLogger("kiosk.health")

State = Literal["ok", "failed", "absent"]
DEVICES = ("camera", "microphone", "speaker", "document_camera")
MAX_DETAIL_CHARS = 300  # what the hall accepts


def agent_version() -> str:
    """``hall-kiosk/<version>``, the ``agent`` field of every report."""
    try:
        version = metadata.version("virtual-hall")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"hall-kiosk/{version}"


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    camera: State = "absent"
    microphone: State = "absent"
    speaker: State = "absent"
    document_camera: State = "absent"
    detail: str | None = None

    def payload(self, agent: str | None = None) -> dict[str, str]:
        """The ``kiosk.health`` event payload."""
        body: dict[str, str] = {"camera": self.camera, "microphone": self.microphone,
                                "speaker": self.speaker, "document_camera": self.document_camera}
        if self.detail:
            body["detail"] = self.detail[:MAX_DETAIL_CHARS]
        if agent:
            body["agent"] = agent
        return body

    @property
    def failed(self) -> list[str]:
        return [d for d in DEVICES if getattr(self, d) == "failed"]


class DeviceProbe(Protocol):
    """Decides the health of the kiosk's devices. Called on connect and every
    ``health_interval_s``; it may take a while (the agent bounds it with a timeout)."""

    async def probe(self) -> DeviceHealth: ...


def _open(spec: SourceSpec, kind: Literal["audio", "video"]) -> str | None:
    """Open ``spec`` with MediaPlayer and close it again; None if it has a ``kind`` stream,
    else why not. Blocking (FFmpeg opens the device): run it in a thread."""
    try:
        player = MediaPlayer(spec.path, format=spec.format, options=dict(spec.options) or None,
                             timeout=5)
    except Exception as exc:  # FFmpeg raises many kinds (av.error.*, OSError, ValueError)
        return f"{type(exc).__name__}: {exc}"
    tracks = [t for t in (player.audio, player.video) if t is not None]
    found = (player.audio if kind == "audio" else player.video) is not None
    for track in tracks:
        track.stop()  # the last stop closes the container (and the device)
    return None if found else f"no {kind} stream"


def _writable(path: str) -> bool:
    return os.path.exists(path) and os.access(path, os.W_OK)


class SourceProbe:
    """The default probe: opens each configured source (see the module's doc).

    The speaker is only checked for presence: a configured path must exist and be writable.
    """

    def __init__(self, media: MediaConfig) -> None:
        self.media = media

    async def probe(self) -> DeviceHealth:
        results: dict[str, State] = {}
        problems: list[str] = []
        checks: list[tuple[str, SourceSpec | None, Literal["audio", "video"]]] = [
            ("camera", self.media.camera, "video"),
            ("microphone", self.media.microphone, "audio"),
            ("document_camera", self.media.document_camera, "video"),
        ]
        for device, spec, kind in checks:
            if spec is None:
                results[device] = "absent"
                continue
            problem = await asyncio.to_thread(_open, spec, kind)
            results[device] = "ok" if problem is None else "failed"
            if problem is not None:
                problems.append(f"{device} {spec.path}: {problem}")
        speaker = self.media.speaker
        if speaker is None:
            results["speaker"] = "absent"
        elif await asyncio.to_thread(_writable, speaker):
            results["speaker"] = "ok"
        else:
            results["speaker"] = "failed"
            problems.append(f"speaker {speaker}: missing or not writable")
        return DeviceHealth(camera=results["camera"], microphone=results["microphone"],
                            speaker=results["speaker"],
                            document_camera=results["document_camera"],
                            detail="; ".join(problems) or None)
