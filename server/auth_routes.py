"""Authentication: builds the credential components and serves the HTTP login routes.

* ``POST /api/auth/login`` ``{"username", "password"}``: a clerk's or supervisor's hall token;
* ``POST /api/auth/kiosk`` ``{"service_point_id", "secret"}``: a kiosk's hall token;
* ``POST /api/dev/resident-token`` ``{"resident_id", "name"?}``: demo mode only, an identity
  token as the app's identity provider would sign it.

Answers are ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}`` with
400 ``invalid_payload``, 401 ``unauthenticated`` or 429 ``too_many_attempts`` (with a
``Retry-After`` header and ``retry_after_s`` in the error). Failed credentials count against
the account and the client's address (:class:`~signaling.throttle.AuthThrottle`, its counters
in the :class:`~signaling.auth_state.AuthState` that every process shares); the check comes
before the (argon2) verification, so a throttled attempt costs the hall no CPU. Content-Type
and Origin are checked before any of this, by :mod:`server.csrf`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from rooms.catalog import Catalog
from rooms.errors import AuthError, ThrottledError
from rooms.logsafe import safe_log
from server import keys
from server.config import Settings
from signaling.accounts import AccountBook, KioskKeys
from signaling.auth_state import AuthState, MemoryAuthState, RedisAuthState
from signaling.identity import (
    AppIdentityVerifier,
    DevIdentitySigner,
    Principal,
    TokenService,
)
from signaling.throttle import AuthThrottle

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024
_NO_STORE = {"Cache-Control": "no-store"}
_dumps = functools.partial(json.dumps, ensure_ascii=False)

_M = TypeVar("_M", bound=BaseModel)

Id = Annotated[str, Field(min_length=1, max_length=128)]
Secret = Annotated[str, Field(min_length=1, max_length=256)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class LoginBody(_Body):
    username: Id
    password: Secret


class KioskBody(_Body):
    service_point_id: Id
    secret: Secret


class ResidentTokenBody(_Body):
    resident_id: Id
    name: Annotated[str, Field(max_length=128)] = ""


def setup_auth(
    app: web.Application,
    settings: Settings,
    catalog: Catalog,
    *,
    demo: bool,
    demo_password: str | None,
) -> None:
    """Build the credential components onto ``app`` and register the auth routes.

    ``settings`` must be resolved (:meth:`Settings.resolve`), so the secret key is set.
    """
    secret_key = settings.secret_key
    if secret_key is None:
        raise ValueError("setup_auth needs resolved settings (HALL_SECRET_KEY)")

    # Revoked tokens and throttle counters: one process's memory, or Redis shared by all.
    auth_state: AuthState = (
        MemoryAuthState() if settings.redis_url is None
        else RedisAuthState(settings.redis_url, prefix=settings.redis_prefix))

    async def close_auth_state(app: web.Application) -> None:
        await auth_state.close()

    app.on_cleanup.append(close_auth_state)
    app[keys.TOKENS] = TokenService(secret_key, ttl_s=settings.token_ttl_s,
                                    revocations=auth_state)

    if settings.accounts_file is not None:
        accounts = AccountBook.from_file(settings.accounts_file, catalog)
    elif demo and demo_password is not None:
        accounts = AccountBook.for_demo(catalog, demo_password)
    else:
        accounts = AccountBook({})
        log.warning(
            "HALL_ACCOUNTS_FILE is not set: no clerk or supervisor can log in "
            "(run `hall serve --demo` for demo accounts)"
        )
    app[keys.ACCOUNTS] = accounts

    if settings.kiosk_secrets_file is not None:
        kiosks = KioskKeys.from_file(settings.kiosk_secrets_file, catalog)
    elif demo:
        kiosks = KioskKeys.for_demo(catalog, secret_key)
    else:
        kiosks = KioskKeys(catalog, {})
        log.warning("HALL_KIOSK_SECRETS_FILE is not set: no kiosk can log in")
    app[keys.KIOSK_KEYS] = kiosks

    idp_key = settings.app_idp_key_resolved(demo)
    if idp_key is None:
        log.warning("HALL_APP_IDP_KEY is not set: residents cannot connect from the app")
    app[keys.APP_IDENTITY] = (
        AppIdentityVerifier(idp_key, issuer=settings.app_idp_issuer) if idp_key else None
    )
    dev_signer: DevIdentitySigner | None = None
    if demo and idp_key is not None and not idp_key.lstrip().startswith("-----BEGIN"):
        dev_signer = DevIdentitySigner(idp_key, issuer=settings.app_idp_issuer)
    app[keys.DEV_SIGNER] = dev_signer

    app[keys.THROTTLE] = AuthThrottle(
        auth_state, limit=settings.login_failure_limit,
        window_s=settings.login_failure_window_s,
    )

    app.router.add_post("/api/auth/login", login, name="auth_login")
    app.router.add_post("/api/auth/kiosk", kiosk_login, name="auth_kiosk")
    if dev_signer is not None:
        app.router.add_post("/api/dev/resident-token", dev_resident_token, name="dev_resident")


# -- helpers ---------------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None
               ) -> web.Response:
    """The hall's one JSON error answer, ``{"ok": false, "error": {code, message}}``, never
    cached (also for server/csrf.py, server/file_routes.py, server/http_limits.py)."""
    return web.json_response(
        {"ok": False, "error": {"code": code, "message": message}},
        status=status,
        dumps=_dumps,
        headers={**_NO_STORE, **(headers or {})},
    )


def _ok(**data: Any) -> web.Response:
    return web.json_response({"ok": True, **data}, dumps=_dumps, headers=_NO_STORE)


def _describe(exc: PydanticValidationError) -> str:
    """The first problem, naming the field but never echoing its value."""
    first = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{field}: {first['msg']}"


async def _body(request: web.Request, model: type[_M]) -> _M:
    """The request's JSON body validated as ``model``; _BadRequest if it is not."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _BadRequest(f"body is over {MAX_BODY_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.content.iter_chunked(4096):
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _BadRequest(f"body is over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _BadRequest("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("body must be a JSON object")
    try:
        return model.model_validate(data, strict=True)
    except PydanticValidationError as exc:
        raise _BadRequest(_describe(exc)) from None


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


def throttled(exc: ThrottledError) -> web.Response:
    """429 with ``Retry-After`` and ``retry_after_s`` (whole seconds, at least 1)."""
    retry_after = max(1, math.ceil(exc.retry_after_s))
    return web.json_response(
        {"ok": False, "error": {"code": exc.code, "message": exc.message,
                                "retry_after_s": retry_after}},
        status=429, dumps=_dumps, headers={**_NO_STORE, "Retry-After": str(retry_after)})


async def _authenticate(
    request: web.Request,
    model: type[_M],
    account: Callable[[_M], str],
    verify: Callable[[_M], Principal],
) -> web.Response:
    """Body, throttle check (of that account from this address), verification off the event
    loop, then a hall token."""
    throttle = request.app[keys.THROTTLE]
    address = _address(request)
    try:
        body = await _body(request, model)
        who = account(body)
        await throttle.login_check(who, address)
        try:
            # argon2 takes tens of milliseconds of CPU: keep the event loop free meanwhile.
            principal = await asyncio.to_thread(verify, body)
        except AuthError:
            await throttle.login_failed(who, address)
            log.info("auth: %s failed from %s", safe_log(request.path), safe_log(address))
            raise
        await throttle.login_succeeded(who, address)
    except _BadRequest as exc:
        return json_error(400, "invalid_payload", exc.message)
    except ThrottledError as exc:
        return throttled(exc)
    except AuthError as exc:
        return json_error(401, exc.code, exc.message)
    token, expires_at = request.app[keys.TOKENS].issue(principal)
    return _ok(token=token, role=str(principal.role), name=principal.name, expires_at=expires_at)


# -- routes ----------------------------------------------------------------------------------


async def login(request: web.Request) -> web.Response:
    """``POST /api/auth/login``: a clerk or supervisor trades a password for a hall token."""
    accounts = request.app[keys.ACCOUNTS]
    return await _authenticate(
        request, LoginBody, lambda b: "user:" + b.username,
        lambda b: accounts.verify(b.username, b.password),
    )


async def kiosk_login(request: web.Request) -> web.Response:
    """``POST /api/auth/kiosk``: a kiosk trades its device secret for a hall token."""
    kiosks = request.app[keys.KIOSK_KEYS]
    return await _authenticate(
        request, KioskBody, lambda b: "kiosk:" + b.service_point_id,
        lambda b: kiosks.verify(b.service_point_id, b.secret),
    )


async def dev_resident_token(request: web.Request) -> web.Response:
    """``POST /api/dev/resident-token`` (demo only): an app identity token for anyone."""
    signer = request.app[keys.DEV_SIGNER]
    if signer is None:  # not registered then; kept as a second guard
        raise web.HTTPNotFound()
    try:
        body = await _body(request, ResidentTokenBody)
    except _BadRequest as exc:
        return json_error(400, "invalid_payload", exc.message)
    return _ok(id_token=signer.sign(body.resident_id, body.name))
