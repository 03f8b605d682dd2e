"""The kiosk's outgoing media for one session: camera and microphone, document camera.

A source (a MediaPlayer track of a file or device, or a synthetic track) is opened once per
session and read by one task of ours, which hands each frame to the output tracks of the
current RTCPeerConnection. aiortc recovers a connection by replacing it (it cannot restart
ICE), and a device cannot be opened twice: the fan-out lets each new connection take fresh
output tracks from the same open device. Output queues are short and drop the oldest frame,
so a connection that stalls never makes the box buffer video.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError

from kiosk.config import MediaConfig, SourceSpec
from kiosk.synthetic import PatternVideoTrack, ToneAudioTrack
from kiosk.tasks import TaskSet

log = logging.getLogger("kiosk.sources")

_QUEUE = {"video": 2, "audio": 10}  # frames an output may lag behind: latency, not smoothness


class OutputTrack(MediaStreamTrack):
    """One RTCPeerConnection's view of a source: the frames the fan-out hands it."""

    def __init__(self, fanout: SourceFanout, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._fanout: SourceFanout | None = fanout
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=_QUEUE.get(kind, 4))

    def _offer(self, frame: Any) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(frame)

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        if self._fanout is not None:
            self._fanout.sent(frame)
        return frame

    def stop(self) -> None:
        super().stop()
        if self._fanout is not None:
            self._fanout.unsubscribe(self)
            self._fanout = None


class SourceFanout:
    """Reads ``source`` in a task of ``tasks`` (started on the first subscription) and gives
    every frame to each subscribed :class:`OutputTrack`; ``on_sent`` counts frames that an
    output handed to its encoder."""

    def __init__(self, name: str, source: MediaStreamTrack, tasks: TaskSet,
                 on_sent: Callable[[], None] | None = None) -> None:
        self.name = name
        self.source = source
        self._tasks = tasks
        self._on_sent = on_sent
        self._outputs: list[OutputTrack] = []
        self._reader: asyncio.Task[Any] | None = None
        self._ended = False

    def start(self) -> None:
        """Start reading (also with no output: a player's unused track must be drained, or
        its queue grows for as long as the player runs)."""
        if self._reader is None and not self._ended:
            self._reader = self._tasks.spawn(self._read(), f"read-{self.name}")

    def subscribe(self) -> OutputTrack:
        output = OutputTrack(self, self.source.kind)
        if self._ended:
            output._offer(None)
            return output
        self._outputs.append(output)
        self.start()
        return output

    def unsubscribe(self, output: OutputTrack) -> None:
        with contextlib.suppress(ValueError):
            self._outputs.remove(output)

    def sent(self, frame: Any) -> None:
        if self._on_sent is not None:
            self._on_sent()

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.source.recv()
                for output in list(self._outputs):
                    output._offer(frame)
        except MediaStreamError:
            log.info("media source %s ended", self.name)
        finally:
            self._ended = True
            for output in list(self._outputs):
                output._offer(None)

    async def close(self) -> None:
        await self._tasks.cancel(self._reader)
        self._ended = True
        for output in list(self._outputs):
            output._offer(None)
        self._outputs.clear()
        self.source.stop()


@dataclass
class SentCounters:
    video_frames: int = 0
    audio_frames: int = 0
    document_frames: int = 0


def _open_player(spec: SourceSpec) -> MediaPlayer:
    """Blocking (FFmpeg opens the file or device): run in a thread."""
    return MediaPlayer(spec.path, format=spec.format, options=dict(spec.options) or None,
                       timeout=5, loop=spec.is_file)


class MediaSources:
    """What the kiosk sends during one session. :meth:`open` opens the configured devices
    (falling back to synthetic media, with a warning, when one cannot be opened: the
    session goes on, and the health report says ``failed``); :meth:`camera_tracks` and
    :meth:`document_track` give fresh output tracks for each RTCPeerConnection."""

    def __init__(self, media: MediaConfig, *, owner: str = "kiosk", hue: int = 40) -> None:
        self.media = media
        self.hue = hue
        self.sent = SentCounters()
        self._tasks = TaskSet(f"{owner}-sources")
        self._players: list[MediaPlayer] = []
        self._video: SourceFanout | None = None
        self._audio: SourceFanout | None = None
        self._document: SourceFanout | None = None
        self._drains: list[SourceFanout] = []
        self._opened = False

    async def _player(self, spec: SourceSpec, cache: dict[SourceSpec, MediaPlayer],
                      what: str) -> MediaPlayer | None:
        if spec in cache:
            return cache[spec]
        try:
            player = await asyncio.to_thread(_open_player, spec)
        except Exception as exc:  # FFmpeg's errors are many kinds
            log.warning("cannot open the %s %s (%s: %s): sending synthetic media instead",
                        what, spec.path, type(exc).__name__, exc)
            return None
        cache[spec] = player
        self._players.append(player)
        return player

    async def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        media = self.media
        players: dict[SourceSpec, MediaPlayer] = {}
        video: MediaStreamTrack | None = None
        audio: MediaStreamTrack | None = None
        if media.camera is not None:
            player = await self._player(media.camera, players, "camera")
            video = player.video if player is not None else None
        if media.microphone is not None:
            player = await self._player(media.microphone, players, "microphone")
            audio = player.audio if player is not None else None
        synthetic = media.synthetic
        if video is None:
            video = PatternVideoTrack(synthetic.width, synthetic.height, synthetic.fps,
                                      hue=self.hue)
        if audio is None:
            audio = ToneAudioTrack(synthetic.tone_hz)
        self._video = SourceFanout("camera", video, self._tasks, self._count_video)
        self._audio = SourceFanout("microphone", audio, self._tasks, self._count_audio)
        for player in self._players:
            for unused in (player.audio, player.video):
                if unused is not None and unused not in (video, audio):
                    drain = SourceFanout(f"unused-{unused.kind}", unused, self._tasks)
                    self._drains.append(drain)
                    drain.start()

    def _count_video(self) -> None:
        self.sent.video_frames += 1

    def _count_audio(self) -> None:
        self.sent.audio_frames += 1

    def _count_document(self) -> None:
        self.sent.document_frames += 1

    def camera_tracks(self) -> list[OutputTrack]:
        """Fresh audio and camera video outputs, for one RTCPeerConnection."""
        if self._video is None or self._audio is None:
            raise RuntimeError("MediaSources.open() first")
        return [self._audio.subscribe(), self._video.subscribe()]

    async def document_track(self) -> OutputTrack:
        """A fresh output of the document camera (opened on first use; synthetic, with
        another tint, when none is configured or it cannot be opened)."""
        if self._document is None:
            source: MediaStreamTrack | None = None
            spec = self.media.document_camera
            if spec is not None:
                player = await self._player(spec, {}, "document camera")
                source = player.video if player is not None else None
            if source is None:
                synthetic = self.media.synthetic
                source = PatternVideoTrack(synthetic.width, synthetic.height, synthetic.fps,
                                           hue=-self.hue)
            self._document = SourceFanout("document-camera", source, self._tasks,
                                          self._count_document)
        return self._document.subscribe()

    async def close(self) -> None:
        """Stop reading every source and release the devices; idempotent."""
        for fanout in (self._document, self._video, self._audio, *self._drains):
            if fanout is not None:
                await fanout.close()
        self._document = self._video = self._audio = None
        self._drains.clear()
        await self._tasks.cancel_all()
        players, self._players = self._players, []
        for player in players:
            for track in (player.audio, player.video):
                if track is not None:
                    track.stop()  # the player's last track stops its thread and container
