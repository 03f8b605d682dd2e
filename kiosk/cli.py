"""``hall-kiosk``: run a service point's agent until SIGINT or SIGTERM.

    hall-kiosk --url https://hall.example --point XH-001 --secret-file /etc/hall/kiosk.secret

Exit codes: 0 after a clean shutdown (a signal), 2 when the configuration or the device
secret is refused (restarting cannot help: fix it first), 3 when another instance of the
same service point took over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from kiosk.agent import KioskAgent
from kiosk.config import (
    KioskConfig,
    KioskConfigError,
    MediaConfig,
    SourceSpec,
    SyntheticMedia,
    load_secret,
)
from kiosk.errors import KioskAuthError, KioskError
from kiosk.events import KioskEvent

log = logging.getLogger("kiosk.cli")

EXIT_OK, EXIT_CONFIG, EXIT_REPLACED = 0, 2, 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hall-kiosk",
        description="The device agent of a remote-assistance point (远程帮办服务点): "
                    "connects to the hall, reports device health, reconnects by itself.")
    p.add_argument("--url", required=True, help="the hall, e.g. https://hall.example")
    p.add_argument("--point", required=True, metavar="ID", help="service point id (XH-001)")
    p.add_argument("--secret-file", metavar="PATH",
                   help="file holding the device secret (default: $HALL_KIOSK_SECRET)")
    p.add_argument("--camera", metavar="FILE|DEVICE",
                   help="camera: a video file (looped) or a device (with --camera-format)")
    p.add_argument("--camera-format", metavar="FMT", help="FFmpeg input format, e.g. v4l2")
    p.add_argument("--microphone", metavar="FILE|DEVICE", help="microphone source")
    p.add_argument("--microphone-format", metavar="FMT", help="FFmpeg format, e.g. alsa")
    p.add_argument("--speaker", metavar="PATH", help="speaker device (checked, for health)")
    p.add_argument("--document-camera", metavar="FILE|DEVICE", help="document camera source")
    p.add_argument("--document-camera-format", metavar="FMT", help="FFmpeg input format")
    p.add_argument("--synthetic-size", default="320x240", metavar="WxH",
                   help="size of the synthetic video sent without a camera (320x240)")
    p.add_argument("--synthetic-fps", type=int, default=15, metavar="N")
    p.add_argument("--health-interval", type=float, default=300.0, metavar="SECONDS",
                   help="seconds between health reports (300)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--demo-ticket", metavar="MATTER",
                   help="take one ticket for MATTER and answer the session (to try it out)")
    return p


def _source(path: str | None, fmt: str | None) -> SourceSpec | None:
    return SourceSpec(path, fmt) if path else None


def config_from(args: argparse.Namespace) -> KioskConfig:
    """KioskConfigError for anything unusable (the message says what)."""
    try:
        width, height = (int(v) for v in args.synthetic_size.lower().split("x"))
    except ValueError:
        raise KioskConfigError(f"--synthetic-size: expected WxH, got {args.synthetic_size!r}"
                               ) from None
    media = MediaConfig(
        camera=_source(args.camera, args.camera_format),
        microphone=_source(args.microphone, args.microphone_format),
        speaker=args.speaker,
        document_camera=_source(args.document_camera, args.document_camera_format),
        synthetic=SyntheticMedia(width=width, height=height, fps=args.synthetic_fps),
    )
    return KioskConfig(url=args.url, service_point_id=args.point,
                       secret=load_secret(args.secret_file), media=media,
                       health_interval_s=args.health_interval)


async def _demo_ticket(agent: KioskAgent, matter_id: str) -> None:
    """Take one ticket and report how it goes; the agent answers the session by itself."""
    try:
        ticket = await agent.take_ticket(matter_id, when_unstaffed="wait")
    except KioskError as exc:
        log.error("demo ticket refused: %s", exc)
        return
    log.info("demo ticket %s taken for %s: waiting for a clerk", ticket.get("number"),
             matter_id)


async def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except KioskConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    agent = KioskAgent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def on_chat(event: KioskEvent) -> None:
        message = event.payload.get("message") or {}
        log.info("chat from %s: %s", message.get("name"), message.get("text"))

    agent.events.on("chat.message", on_chat)
    demo: asyncio.Task[None] | None = None
    try:
        starting = asyncio.ensure_future(agent.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("stopping before the first connection")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, KioskError):
                await starting
            stopping.cancel()
            return EXIT_OK
        stopping.cancel()
        try:
            starting.result()
        except KioskAuthError:
            return EXIT_CONFIG
        if args.demo_ticket:
            demo = asyncio.ensure_future(_demo_ticket(agent, args.demo_ticket))
        waiting = asyncio.ensure_future(agent.wait_stopped())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiting, signalled):
            task.cancel()
        if agent.stop_reason == "replaced":
            return EXIT_REPLACED
        if isinstance(agent.stop_error, KioskAuthError):
            return EXIT_CONFIG
        if agent.ticket is not None and agent.ticket.get("state") in ("waiting", "transferred"):
            with contextlib.suppress(KioskError):
                await agent.leave()  # a demo ticket must not stay in the queue without us
        log.info("shutting down")
        return EXIT_OK
    finally:
        if demo is not None:
            demo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await demo
        await agent.close("shutdown")
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "socketio", "engineio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    code: Any = asyncio.run(run(args))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
