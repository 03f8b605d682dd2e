"""Typed keys for everything the application object holds.

Components live on the ``web.Application`` (not in module globals) so that several apps, e.g.
one per test, can run in one process without sharing state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import jinja2
from aiohttp import web

from rooms.catalog import Catalog
from rooms.files import SessionFiles
from rooms.hall import Hall
from rooms.prereview_book import PreReviewBook
from rooms.records import RecordsDB
from rooms.records_writer import RecordsWriter
from rooms.runner import HallRunner
from rooms.store import Store
from server.config import Settings
from signaling.accounts import AccountBook, KioskKeys
from signaling.hub import SignalingHub
from signaling.identity import AppIdentityVerifier, DevIdentitySigner, TokenService
from signaling.throttle import AuthThrottle

SETTINGS = web.AppKey("settings", Settings)
CATALOG = web.AppKey("catalog", Catalog)
STORE = web.AppKey("store", Store)
RECORDS = web.AppKey("records", RecordsDB)
HALL = web.AppKey("hall", Hall)
RUNNER = web.AppKey("runner", HallRunner)
WRITER = web.AppKey("writer", RecordsWriter)
# The task running ``WRITER.run()``: readiness fails if it died, whatever ``healthy`` says.
WRITER_TASK = web.AppKey[asyncio.Task[None]]("writer_task")
# None outside demo mode: there are no demo accounts then.
DEMO_PASSWORD = web.AppKey[str | None]("demo_password")
TEMPLATES = web.AppKey("templates", jinja2.Environment)
# Authentication (set up by server.auth_routes.setup_auth).
TOKENS = web.AppKey("tokens", TokenService)
ACCOUNTS = web.AppKey("accounts", AccountBook)
KIOSK_KEYS = web.AppKey("kiosk_keys", KioskKeys)
# None when no app identity key resolves: residents cannot connect from the app then.
APP_IDENTITY = web.AppKey[AppIdentityVerifier | None]("app_identity")
# Demo mode only: the stand-in for the app's identity provider.
DEV_SIGNER = web.AppKey[DevIdentitySigner | None]("dev_signer")
THROTTLE = web.AppKey("throttle", AuthThrottle)
# The Socket.IO hub (signaling); attached to the app when it is created.
HUB = web.AppKey[SignalingHub]("hub")
# A ticket's shared files (uploads and snapshots).
FILES = web.AppKey("files", SessionFiles)
# Finished pre-reviews (the correction-list page reads them).
PREREVIEWS = web.AppKey("prereviews", PreReviewBook)

# Where the pages' npm packages (socket.io-client, pdf.js) are served from.
VENDOR_DIR = web.AppKey("vendor_dir", Path)
