"""Process configuration, read once from ``HALL_*`` environment variables.

Every variable is optional. A malformed value is refused at start-up with a
:class:`~rooms.errors.HallError` (``code="config_invalid"``) that names the variable, because a
hall that starts with a silently ignored setting (a queue limit, a timeout) is worse than one
that does not start.

Two settings depend on whether the hall runs as a demo, which the CLI only knows after parsing
its flags; they stay "unresolved" (``None``) in :meth:`Settings.from_env` and are fixed by
:meth:`Settings.resolve`:

* ``HALL_SECRET_KEY``: required outside demo mode; a demo gets an ephemeral random key.
* ``HALL_ENFORCE_HOURS``: defaults to true, but a demo is always open unless it is set.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from rooms.errors import HallError
from rooms.policy import QueuePolicy
from rooms.records import normalize_database_url

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Long enough that a token signature cannot be brute-forced; 32 hex digits = 128 bits.
MIN_SECRET_KEY_LENGTH = 32
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# Words that switch HALL_MAX_WAIT_S off (no upper bound on a ticket's wait).
_NO_LIMIT = frozenset({"0", "none", "off", "unlimited"})


def _invalid(name: str, value: str | None, expected: str) -> HallError:
    """The error for a bad value; pass ``value=None`` when it may hold a password."""
    shown = f"{name}={value!r}" if value is not None else name
    return HallError(f"{shown} is invalid: expected {expected}", code="config_invalid")


def _parse_int(name: str, raw: str, *, minimum: int, maximum: int | None = None) -> int:
    expected = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    try:
        value = int(raw.strip())
    except ValueError:
        raise _invalid(name, raw, expected) from None
    if value < minimum or (maximum is not None and value > maximum):
        raise _invalid(name, raw, expected)
    return value


def _parse_seconds(name: str, raw: str, *, positive: bool) -> float:
    expected = "a number of seconds " + ("> 0" if positive else ">= 0")
    try:
        value = float(raw.strip())
    except ValueError:
        raise _invalid(name, raw, expected) from None
    # float() accepts "nan" and "inf"; neither is a usable timeout.
    if value != value or value in (float("inf"), float("-inf")):
        raise _invalid(name, raw, expected)
    if value < 0 or (positive and value == 0):
        raise _invalid(name, raw, expected)
    return value


def _parse_bool(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _invalid(name, raw, "one of 1/0, true/false, yes/no, on/off")


def _parse_max_wait(name: str, raw: str) -> float | None:
    if raw.strip().lower() in _NO_LIMIT:
        return None
    return _parse_seconds(name, raw, positive=True)


def _parse_log_level(name: str, raw: str) -> str:
    level = raw.strip().upper()
    if level not in _LOG_LEVELS:
        raise _invalid(name, raw, "one of " + ", ".join(_LOG_LEVELS))
    return level


def _parse_redis_url(name: str, raw: str) -> str:
    url = raw.strip()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        # The URL may carry a password: name the variable, not the value.
        raise _invalid(name, None, "a redis://, rediss:// or unix:// URL")
    return url


def _parse_database_url(name: str, raw: str) -> str:
    # Validated now (by the records module, which decides which drivers exist) so a typo
    # fails at start-up; its message names the scheme only, never the URL's password.
    try:
        normalize_database_url(raw, default_sqlite_path="unused")
    except HallError as exc:
        raise HallError(f"{name}: {exc.message}", code="config_invalid") from None
    return raw.strip()


def _parse_catalog(name: str, raw: str) -> Path:
    path = Path(raw.strip()).expanduser()
    if not path.is_file():
        raise _invalid(name, raw, "the path of an existing catalog file")
    return path


def _parse_secret_key(name: str, raw: str) -> str:
    if len(raw) < MIN_SECRET_KEY_LENGTH:
        raise HallError(
            f"{name} is too short ({len(raw)} characters): use at least "
            f"{MIN_SECRET_KEY_LENGTH}, e.g. the output of `python3 -c "
            "'import secrets; print(secrets.token_hex(32))'`",
            code="config_invalid",
        )
    return raw


def _parse_host(name: str, raw: str) -> str:
    host = raw.strip()
    if not host or any(c.isspace() for c in host):
        raise _invalid(name, raw, "a host name or IP address")
    return host


def _parse_public_url(name: str, raw: str) -> str:
    # The origin (and optional path prefix) residents reach the hall at, printed on paper as
    # a link and QR code: no query, no fragment, no credentials.
    expected = "an http:// or https:// URL without query or fragment, e.g. https://hall.example"
    parts = urlsplit(raw.strip())
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.query
            or parts.fragment or parts.username is not None or raw.strip().endswith("?")):
        raise _invalid(name, raw, expected)
    return raw.strip().rstrip("/")


def _parse_text(name: str, raw: str) -> str:
    if not raw.strip():
        raise _invalid(name, raw, "a non-empty value")
    return raw


def _parse_app_idp_key(name: str, raw: str) -> str:
    # The value may be a shared secret: never echo it.
    key = raw.strip()
    if key.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            public = load_pem_public_key(key.encode())
        except (ValueError, TypeError):
            raise _invalid(name, None, "a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
        if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise _invalid(name, None, "an RSA or EC public key")
        return key
    if len(raw) < MIN_SECRET_KEY_LENGTH:
        raise _invalid(
            name, None, f"an HS256 shared secret of at least {MIN_SECRET_KEY_LENGTH} characters "
            "or a PEM public key"
        )
    return raw


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _parse_ice_urls(name: str, raw: str, schemes: tuple[str, ...]) -> tuple[str, ...]:
    urls = _split_list(raw)
    for url in urls:
        if not url.startswith(schemes) or any(c.isspace() for c in url):
            raise _invalid(name, raw, "a comma-separated list of " + "/".join(schemes) + " URLs")
    return urls


_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


def _parse_origins(name: str, raw: str) -> tuple[str, ...]:
    origins = _split_list(raw)
    if "*" in origins:
        if len(origins) > 1:
            raise _invalid(name, raw, '"*" alone, or a comma-separated list of origins')
        return origins
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise _invalid(
                name, raw, "a comma-separated list of origins like https://hall.example:8443"
            )
    return tuple(origin.rstrip("/") for origin in origins)


def _parse_proxies(name: str, raw: str) -> tuple[str, ...]:
    items = _split_list(raw)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise _invalid(name, raw, "comma-separated addresses or CIDR blocks, e.g. "
                           "10.0.0.0/8,192.168.1.5") from None
    return tuple(items)


def _parse_name(name: str, raw: str) -> str:
    value = raw.strip()
    if not 1 <= len(value) <= 64 or any(c.isspace() for c in value):
        raise _invalid(name, raw, "1 to 64 characters without spaces")
    return value


def _parse_file(name: str, raw: str) -> Path:
    path = Path(raw.strip()).expanduser()
    if not path.is_file():
        raise _invalid(name, raw, "the path of an existing file")
    return path


@dataclass(frozen=True)
class Settings:
    """Everything the process needs to start; see README.md for the table of variables."""

    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    # Key prefix in Redis: processes with the same URL and prefix are one hall.
    redis_prefix: str = "hall:"
    # Names this process to the others (its channel, its heartbeat); None: <hostname>-<pid>.
    process_id: str | None = None
    # HALL_DATABASE_URL as given; the effective URL is the ``database_url`` property.
    database_url_setting: str | None = None
    data_dir: Path = Path("./var")
    catalog_path: Path | None = None
    # Where the npm packages of the pages live (None: node_modules beside the source tree).
    vendor_dir: Path | None = None
    # None until :meth:`resolve` (demo: ephemeral key; otherwise: refused).
    secret_key: str | None = None
    demo_password: str | None = None
    # None = "not set": enforced, except in demo mode (see :meth:`resolve`).
    enforce_hours: bool | None = None
    offer_timeout_s: float = 20.0
    max_missed_offers: int = 2
    # How long a clerk who declined or missed a ticket is not offered it again (None: the
    # offer timeout).
    decline_cooldown_s: float | None = None
    wrapup_s: float = 60.0
    wrapup_max_extension_s: float = 300.0
    abandon_grace_s: float = 30.0
    priority_credit_s: float = 600.0
    max_queue: int = 500
    max_wait_s: float | None = 14400.0
    service_level_s: float = 300.0
    wait_alert_s: float = 600.0
    log_level: str = "INFO"
    # -- authentication and real-time connections ----------------------------------------
    token_ttl_s: float = 900.0
    # HS256 shared secret or PEM public key of the app's identity provider (None: see
    # :meth:`app_idp_key_resolved`).
    app_idp_key: str | None = None
    app_idp_issuer: str = "suishenban"
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl_s: float = 3600.0
    # Empty = same origin only; ("*",) = any origin.
    allowed_origins: tuple[str, ...] = ()
    # Reverse proxies whose X-Forwarded-For is believed (addresses or CIDR blocks).
    trusted_proxies: tuple[str, ...] = ()
    # Client addresses (or CIDR blocks) GET /metrics answers; behind a trusted proxy, the
    # forwarded client address counts (server/forwarded.py).
    metrics_allow: tuple[str, ...] = ("127.0.0.1", "::1")
    auth_timeout_s: float = 5.0
    # Connections from one address still inside auth_timeout_s; more are refused at once.
    # Generous: a service centre behind one NAT reconnects all its clerks after a restart,
    # and mobile carriers put many residents behind one address.
    max_unauthenticated_per_address: int = 200
    resume_grace_s: float = 30.0
    # None: demo accounts with --demo, otherwise nobody can log in.
    accounts_file: Path | None = None
    kiosk_secrets_file: Path | None = None
    login_failure_limit: int = 10
    login_failure_window_s: float = 1800.0
    # Per-principal event budgets (signaling/ratelimit.py); off only for benchmarks.
    rate_limits: bool = True
    # -- HTTP ----------------------------------------------------------------------------
    # Where residents reach the hall (printed links, QR codes); None: derived from host/port
    # (the ``public_url`` property).
    public_url_setting: str | None = None
    # A request's headers must be complete this long after the connection opened or its last
    # answer was sent (also the keep-alive idle time); a body may pause this long between
    # two reads. Slow-loris guards: see server/http_limits.py.
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every ``HALL_*`` variable; unset or empty means the default."""
        env = os.environ if environ is None else environ

        def get(name: str, parse: Callable[[str, str], _T], default: _T) -> _T:
            raw = env.get(name)
            # An empty value counts as unset: `HALL_X=` in a compose file or unit means "default".
            if raw is None or raw == "":
                return default
            return parse(name, raw)

        d = cls()  # the defaults live on the dataclass only, not repeated here
        return cls(
            host=get("HALL_HOST", _parse_host, d.host),
            port=get("HALL_PORT", lambda n, r: _parse_int(n, r, minimum=0, maximum=65535), d.port),
            redis_url=get("HALL_REDIS_URL", _parse_redis_url, d.redis_url),
            redis_prefix=get("HALL_REDIS_PREFIX", _parse_name, d.redis_prefix),
            process_id=get("HALL_PROCESS_ID", _parse_name, d.process_id),
            database_url_setting=get("HALL_DATABASE_URL", _parse_database_url, None),
            data_dir=get("HALL_DATA_DIR", lambda n, r: Path(r).expanduser(), d.data_dir),
            catalog_path=get("HALL_CATALOG", _parse_catalog, d.catalog_path),
            vendor_dir=get("HALL_VENDOR_DIR", lambda n, r: Path(r).expanduser(), d.vendor_dir),
            secret_key=get("HALL_SECRET_KEY", _parse_secret_key, d.secret_key),
            demo_password=get("HALL_DEMO_PASSWORD", _parse_text, d.demo_password),
            enforce_hours=get("HALL_ENFORCE_HOURS", _parse_bool, d.enforce_hours),
            offer_timeout_s=get(
                "HALL_OFFER_TIMEOUT_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.offer_timeout_s,
            ),
            max_missed_offers=get(
                "HALL_MAX_MISSED_OFFERS",
                lambda n, r: _parse_int(n, r, minimum=1),
                d.max_missed_offers,
            ),
            decline_cooldown_s=get(
                "HALL_DECLINE_COOLDOWN_S",
                lambda n, r: _parse_seconds(n, r, positive=False),
                d.decline_cooldown_s,
            ),
            wrapup_s=get(
                "HALL_WRAPUP_S", lambda n, r: _parse_seconds(n, r, positive=True), d.wrapup_s
            ),
            wrapup_max_extension_s=get(
                "HALL_WRAPUP_MAX_EXTENSION_S",
                lambda n, r: _parse_seconds(n, r, positive=False),
                d.wrapup_max_extension_s,
            ),
            abandon_grace_s=get(
                "HALL_ABANDON_GRACE_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.abandon_grace_s,
            ),
            priority_credit_s=get(
                "HALL_PRIORITY_CREDIT_S",
                lambda n, r: _parse_seconds(n, r, positive=False),
                d.priority_credit_s,
            ),
            max_queue=get(
                "HALL_MAX_QUEUE", lambda n, r: _parse_int(n, r, minimum=1), d.max_queue
            ),
            max_wait_s=get("HALL_MAX_WAIT_S", _parse_max_wait, d.max_wait_s),
            service_level_s=get(
                "HALL_SERVICE_LEVEL_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.service_level_s,
            ),
            wait_alert_s=get(
                "HALL_WAIT_ALERT_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.wait_alert_s,
            ),
            log_level=get("HALL_LOG_LEVEL", _parse_log_level, d.log_level),
            token_ttl_s=get(
                "HALL_TOKEN_TTL_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.token_ttl_s,
            ),
            app_idp_key=get("HALL_APP_IDP_KEY", _parse_app_idp_key, d.app_idp_key),
            app_idp_issuer=get(
                "HALL_APP_IDP_ISSUER", lambda n, r: _parse_text(n, r).strip(), d.app_idp_issuer
            ),
            stun_urls=get(
                "HALL_STUN_URLS",
                lambda n, r: _parse_ice_urls(n, r, ("stun:", "stuns:")),
                d.stun_urls,
            ),
            turn_urls=get(
                "HALL_TURN_URLS",
                lambda n, r: _parse_ice_urls(n, r, ("turn:", "turns:")),
                d.turn_urls,
            ),
            turn_secret=get("HALL_TURN_SECRET", _parse_text, d.turn_secret),
            turn_ttl_s=get(
                "HALL_TURN_TTL_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.turn_ttl_s,
            ),
            allowed_origins=get("HALL_ALLOWED_ORIGINS", _parse_origins, d.allowed_origins),
            trusted_proxies=get("HALL_TRUSTED_PROXIES", _parse_proxies, d.trusted_proxies),
            metrics_allow=get("HALL_METRICS_ALLOW", _parse_proxies, d.metrics_allow),
            auth_timeout_s=get(
                "HALL_AUTH_TIMEOUT_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.auth_timeout_s,
            ),
            max_unauthenticated_per_address=get(
                "HALL_MAX_UNAUTHENTICATED_PER_ADDRESS",
                lambda n, r: _parse_int(n, r, minimum=1),
                d.max_unauthenticated_per_address,
            ),
            resume_grace_s=get(
                "HALL_RESUME_GRACE_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.resume_grace_s,
            ),
            accounts_file=get("HALL_ACCOUNTS_FILE", _parse_file, d.accounts_file),
            kiosk_secrets_file=get("HALL_KIOSK_SECRETS_FILE", _parse_file, d.kiosk_secrets_file),
            login_failure_limit=get(
                "HALL_LOGIN_FAILURE_LIMIT",
                lambda n, r: _parse_int(n, r, minimum=1),
                d.login_failure_limit,
            ),
            login_failure_window_s=get(
                "HALL_LOGIN_FAILURE_WINDOW_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.login_failure_window_s,
            ),
            rate_limits=get("HALL_RATE_LIMITS", _parse_bool, d.rate_limits),
            public_url_setting=get("HALL_PUBLIC_URL", _parse_public_url, None),
            http_header_timeout_s=get(
                "HALL_HTTP_HEADER_TIMEOUT_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.http_header_timeout_s,
            ),
            http_body_timeout_s=get(
                "HALL_HTTP_BODY_TIMEOUT_S",
                lambda n, r: _parse_seconds(n, r, positive=True),
                d.http_body_timeout_s,
            ),
        )

    def resolve(self, *, demo: bool) -> Settings:
        """Fix the demo-dependent settings; idempotent, so the CLI and the app may both call it.

        Raises ``HallError(code="config_invalid")`` when HALL_SECRET_KEY is missing outside
        demo mode: tokens signed with a key that changes on every restart would log every
        clerk out at each deploy, and a guessable default key would let anyone forge them.
        """
        if self.redis_url is not None:
            self._check_shared(demo)
        secret_key = self.secret_key
        if secret_key is None:
            if not demo:
                raise HallError(
                    "HALL_SECRET_KEY is not set: it signs login tokens and must be the same "
                    "on every start. Generate one with `python3 -c 'import secrets; "
                    "print(secrets.token_hex(32))'`, or run `hall serve --demo` to try the hall",
                    code="config_invalid",
                )
            secret_key = secrets.token_hex(32)
            log.warning(
                "HALL_SECRET_KEY is not set: using an ephemeral key for this demo; "
                "tokens will not survive a restart"
            )
        enforce_hours = self.enforce_hours
        if enforce_hours is None:
            # A demo is tried at any hour; a real hall keeps the catalog's opening hours.
            enforce_hours = not demo
        return replace(self, secret_key=secret_key, enforce_hours=enforce_hours)

    def _check_shared(self, demo: bool) -> None:
        """With Redis, several processes are one hall: what one issues, all must accept."""
        missing = []
        if self.secret_key is None:
            missing.append("HALL_SECRET_KEY (every process must verify the others' tokens)")
        if self.database_url_setting is None:
            missing.append("HALL_DATABASE_URL (every process writes the same records)")
        if demo and self.demo_password is None:
            missing.append("HALL_DEMO_PASSWORD (one demo password for every process)")
        if missing:
            raise HallError("HALL_REDIS_URL is set, so these must be too: " + "; ".join(missing),
                            code="config_invalid")

    def app_idp_key_resolved(self, demo: bool) -> str | None:
        """The key that verifies residents' identity tokens, or None if residents cannot log in.

        HALL_APP_IDP_KEY if set; otherwise, in demo mode, a key derived from HALL_SECRET_KEY
        (the demo's stand-in identity provider signs with it). Call on resolved settings.
        """
        if self.app_idp_key is not None:
            return self.app_idp_key
        if demo and self.secret_key is not None:
            return hmac.new(self.secret_key.encode(), b"app-idp", hashlib.sha256).hexdigest()
        return None

    @property
    def public_url(self) -> str:
        """HALL_PUBLIC_URL without a trailing slash, or ``http://<host>:<port>`` of the bind
        address (every-address binds name 127.0.0.1: only right on this machine)."""
        if self.public_url_setting is not None:
            return self.public_url_setting
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def hours_enforced(self) -> bool:
        """Whether the catalog's service hours apply (unset counts as true)."""
        return self.enforce_hours is not False

    @property
    def default_sqlite_path(self) -> Path:
        return self.data_dir / "records.sqlite3"

    @property
    def database_url(self) -> str:
        """The records DB URL: HALL_DATABASE_URL, or the SQLite file in the data dir."""
        return normalize_database_url(
            self.database_url_setting, default_sqlite_path=self.default_sqlite_path
        )

    def policy(self) -> QueuePolicy:
        """The queue engine's timing and fairness knobs, from the matching variables."""
        return QueuePolicy(
            offer_timeout_s=self.offer_timeout_s,
            max_missed_offers=self.max_missed_offers,
            decline_cooldown_s=self.decline_cooldown_s,
            wrapup_s=self.wrapup_s,
            wrapup_max_extension_s=self.wrapup_max_extension_s,
            abandon_grace_s=self.abandon_grace_s,
            priority_credit_s=self.priority_credit_s,
            default_max_queue=self.max_queue,
            max_wait_s=self.max_wait_s,
            enforce_hours=self.hours_enforced,
            service_level_s=self.service_level_s,
            wait_alert_s=self.wait_alert_s,
        )
