"""What a kiosk agent is told: which hall, which service point, its secret, its devices.

The device secret is held in :class:`Secret`, whose ``repr`` and ``str`` never show it, so a
config object can be logged or shown in a traceback without leaking the secret.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("kiosk.config")

SECRET_ENV = "HALL_KIOSK_SECRET"
_MAX_SECRET_CHARS = 256  # what POST /api/auth/kiosk accepts


class KioskConfigError(ValueError):
    """The agent cannot start with this configuration (a missing secret, a bad URL...)."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A device secret; its value is only reachable through :meth:`reveal`."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "Secret(***)"

    def __repr__(self) -> str:
        return "Secret(***)"


def load_secret(secret_file: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Secret:
    """The device secret from ``secret_file`` if given, else from ``HALL_KIOSK_SECRET``.

    Surrounding whitespace (the file's trailing newline) is not part of the secret. A file that
    others may read is accepted with a warning: the box's installer decides, but should know.
    """
    if secret_file is not None:
        path = Path(secret_file)
        try:
            mode = path.stat().st_mode
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KioskConfigError(f"cannot read the secret file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise KioskConfigError(f"the secret file {path} is not UTF-8 text") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the secret file %s is readable by other users (chmod 600 it)", path)
        where = f"the secret file {path}"
    else:
        raw = (os.environ if env is None else env).get(SECRET_ENV, "")
        where = SECRET_ENV
    value = raw.strip()
    if not value:
        raise KioskConfigError(f"no device secret: {where} is empty"
                               + ("" if secret_file is not None
                                  else f" (use --secret-file or set {SECRET_ENV})"))
    if len(value) > _MAX_SECRET_CHARS:
        raise KioskConfigError(f"{where} holds more than {_MAX_SECRET_CHARS} characters")
    return Secret(value)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A media source for aiortc's MediaPlayer: a file, or a device with an FFmpeg format.

    ``/dev/video0`` with ``format="v4l2"`` is a Linux camera; ``hw:1`` with ``format="alsa"``
    a microphone; a plain video file is played in a loop (a camera stand-in for tests).
    """

    path: str
    format: str | None = None
    # Not part of the hash (a dict has none); still compared. Sources are keyed by spec.
    options: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def is_file(self) -> bool:
        """A regular file (played in a loop), not a device or a stream."""
        return self.format is None and Path(self.path).is_file()


@dataclass(frozen=True, slots=True)
class SyntheticMedia:
    """Media the agent makes up when no camera or microphone is configured: a moving pattern
    and a tone (or silence). Small and slow by default, so that a load test can run many
    agents on one machine."""

    width: int = 320
    height: int = 240
    fps: int = 15
    tone_hz: float = 440.0  # 0: silence

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise KioskConfigError("synthetic video needs an even size of at least 16x16")
        if not 1 <= self.fps <= 60:
            raise KioskConfigError("synthetic video runs at 1 to 60 frames a second")
        if not 0 <= self.tone_hz <= 4000:
            raise KioskConfigError("the synthetic tone is 0 (silence) to 4000 Hz")


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """The kiosk's devices. Unset camera/microphone: synthetic media is sent instead (and
    health says ``absent``); the speaker is only checked, received audio is not played."""

    camera: SourceSpec | None = None
    microphone: SourceSpec | None = None
    speaker: str | None = None  # a device path, e.g. /dev/snd/pcmC0D0p
    document_camera: SourceSpec | None = None
    synthetic: SyntheticMedia = field(default_factory=SyntheticMedia)
    answer_sessions: bool = True  # False: no WebRTC at all (signaling-only load)


@dataclass(frozen=True, slots=True)
class KioskConfig:
    """Everything a :class:`~kiosk.agent.KioskAgent` needs."""

    url: str
    service_point_id: str
    secret: Secret
    media: MediaConfig = field(default_factory=MediaConfig)
    health_interval_s: float = 300.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    request_timeout_s: float = 10.0
    probe_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise KioskConfigError(f"the hall URL must start with http:// or https://: "
                                   f"{self.url!r}")
        if not 1 <= len(self.service_point_id) <= 128:
            raise KioskConfigError("the service point id is 1 to 128 characters")
        if self.health_interval_s <= 0:
            raise KioskConfigError("the health interval must be positive")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise KioskConfigError("backoff: 0 < initial <= max")
        if self.request_timeout_s <= 0 or self.probe_timeout_s <= 0:
            raise KioskConfigError("timeouts must be positive")

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")
