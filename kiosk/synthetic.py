"""Media made up on the spot, so the agent works on a box with no camera or microphone.

Video is a pattern of diagonal stripes that moves every frame (an encoder that sees a still
picture sends almost nothing, which would hide a broken path); audio is a quiet tone or
silence. Both pace themselves in real time and cost little: a frame is built by slicing one
precomputed row, so a load test can run many agents on one machine.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from array import array

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
AUDIO_PTIME_S = 0.020


class _Pacer:
    """Real-time pacing for a track: wait until frame ``n`` is due, give its pts."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.count = 0
        self._start: float | None = None

    async def next(self) -> int:
        """Sleep until the next frame is due; return its index (0, 1, 2...)."""
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + self.count / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        index = self.count
        self.count += 1
        return index


class PatternVideoTrack(MediaStreamTrack):
    """Moving diagonal stripes, ``width`` x ``height`` at ``fps``, in yuv420p."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15,
                 hue: int = 0) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._pacer = _Pacer(fps)
        # Two periods of a soft stripe pattern: row y at frame n is a width-long slice of it.
        period = 64
        ramp = bytes(int(128 + 100 * math.sin(2 * math.pi * x / period)) for x in range(period))
        self._row = ramp * ((2 * width) // period + 2)
        self._period = period
        # The chroma planes carry a constant tint, so two agents' pictures tell apart.
        self._tint = ((128 + hue) % 256, (128 - hue) % 256)

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        frame = VideoFrame(width=self.width, height=self.height, format="yuv420p")
        shift = (index * 4) % self._period
        luma = frame.planes[0]
        rows = []
        for y in range(self.height):
            start = (shift + y) % self._period
            rows.append(self._row[start:start + self.width].ljust(luma.line_size, b"\x80"))
        luma.update(b"".join(rows))
        for plane, value in zip(frame.planes[1:], self._tint, strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        frame.pts = int(index * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A quiet sine tone (``tone_hz``; 0 is silence), mono s16 at 48 kHz in 20 ms frames."""

    kind = "audio"

    def __init__(self, tone_hz: float = 440.0, level: float = 0.05) -> None:
        super().__init__()
        self._samples = int(AUDIO_RATE * AUDIO_PTIME_S)
        self._pacer = _Pacer(1 / AUDIO_PTIME_S)
        # One second of signal: a whole number of cycles for any whole-Hz tone, so slicing
        # it in 20 ms steps repeats seamlessly.
        amplitude = int(32767 * level)
        second = array("h", (int(amplitude * math.sin(2 * math.pi * tone_hz * i / AUDIO_RATE))
                             for i in range(AUDIO_RATE))) if tone_hz else array("h",
                                                                                 [0] * AUDIO_RATE)
        self._pcm = second.tobytes() * 2

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        frame = AudioFrame(format="s16", layout="mono", samples=self._samples)
        size = self._samples * 2
        offset = (index * size) % (AUDIO_RATE * 2)
        frame.planes[0].update(self._pcm[offset:offset + size])
        frame.pts = index * self._samples
        frame.sample_rate = AUDIO_RATE
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame
