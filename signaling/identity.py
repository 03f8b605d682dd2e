"""Who is talking to the hall: principals, hall tokens, app identity tokens, TURN credentials.

* **Hall tokens** (:class:`TokenService`) are HS256 JWTs signed with ``HALL_SECRET_KEY``, issued
  to clerks, supervisors and kiosks after a password or device-secret check.
* **App identity tokens** (:class:`AppIdentityVerifier`) come from the citizen app's identity
  provider (随申办) and identify a resident; the hall only verifies them.
  :class:`DevIdentitySigner` stands in for that provider in ``hall serve --demo``.
* **ICE servers** (:func:`ice_servers`): STUN URLs plus TURN credentials in coturn's
  ``use-auth-secret`` (TURN REST) format.

Error messages never say *why* a token was refused beyond "expired", "revoked" or "invalid":
the details would help someone forging tokens and help nobody else. A token issued in the
future (``iat`` or ``nbf`` more than the leeway ahead of the clock) is invalid: no honest
issuer makes one.

A hall token ends early when it is revoked: replaced by ``auth.refresh`` (its id, ``jti``, is
flagged) or by ``clerk.logout`` (that, and the principal's logout time: every token issued
before it). The flags live in the shared :class:`~signaling.auth_state.AuthState` until the
tokens would have expired anyway, and :meth:`TokenService.verify_live` refuses them. Only
connecting (and the file routes) pay those two look-ups, never an event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

from rooms.errors import AuthError
from signaling.auth_state import AuthState, MemoryAuthState

__all__ = [
    "AppIdentityVerifier",
    "Credential",
    "DevIdentitySigner",
    "Principal",
    "Role",
    "TokenService",
    "ice_servers",
    "turn_credentials",
]

HALL_ISSUER = "virtual-hall"
MAX_SUBJECT_LENGTH = 128
MAX_NAME_LENGTH = 256
# Clock skew tolerated between the hall and the app's identity provider.
_LEEWAY_S = 30.0
_PEM_PUBLIC_KEY = "-----BEGIN PUBLIC KEY-----"
_ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")


class Role(StrEnum):
    CLERK = "clerk"
    SUPERVISOR = "supervisor"
    KIOSK = "kiosk"
    RESIDENT = "resident"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: what it is (role), which one (subject) and its display name."""

    role: Role
    subject: str
    name: str
    service_point_id: str | None = None

    @property
    def participant_id(self) -> str:
        return f"{self.role}:{self.subject}"


def _valid_subject(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_SUBJECT_LENGTH


def _from_the_future(claims: dict[str, Any], now: float) -> bool:
    """``iat`` or ``nbf`` beyond the leeway ahead of ``now`` (or not a number)."""
    for name in ("iat", "nbf"):
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True
        if value > now + _LEEWAY_S:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Credential:
    """A verified hall token: who, its id (``jti``; None in tokens that carry none) and its
    expiry (POSIX time)."""

    principal: Principal
    token_id: str | None
    expires_at: float
    issued_at: float | None = None


class TokenService:
    """Issues and verifies hall tokens (clerk, supervisor, kiosk); never resident tokens."""

    def __init__(
        self, secret_key: str, *, ttl_s: float = 900.0, clock: Callable[[], float] = time.time,
        revocations: AuthState | None = None,
    ) -> None:
        if not secret_key:
            raise ValueError("TokenService needs a non-empty secret key")
        if ttl_s <= 0:
            raise ValueError("TokenService: ttl_s must be > 0")
        self._key = secret_key
        self.ttl_s = ttl_s
        self._clock = clock
        self.revocations = revocations if revocations is not None else MemoryAuthState()

    def issue_credential(self, principal: Principal) -> tuple[str, Credential]:
        """A token for ``principal`` and what it verifies to."""
        token, _ = self.issue(principal)
        return token, self.verify_claims(token)

    def issue(self, principal: Principal) -> tuple[str, float]:
        """A token for ``principal`` and the POSIX time it expires."""
        if principal.role is Role.RESIDENT:
            raise ValueError("residents are identified by the app's identity provider")
        now = self._clock()
        expires_at = now + self.ttl_s
        claims: dict[str, Any] = {
            "sub": principal.subject,
            "role": str(principal.role),
            "name": principal.name,
            "iat": int(now),
            "exp": expires_at,
            "iss": HALL_ISSUER,
            "jti": secrets.token_urlsafe(12),
        }
        if principal.service_point_id is not None:
            claims["sp"] = principal.service_point_id
        return jwt.encode(claims, self._key, algorithm="HS256"), expires_at

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; AuthError if it is expired or invalid. Says
        nothing about revocation: connections use :meth:`verify_live`."""
        return self.verify_claims(token).principal

    async def verify_live(self, token: str) -> Credential:
        """:meth:`verify_claims`, and AuthError if the token was revoked."""
        credential = self.verify_claims(token)
        now = self._clock()
        if credential.token_id is not None and await self.revocations.flagged(
                "jti:" + credential.token_id, now):
            raise AuthError("token revoked")
        out = await self.revocations.flag_value(
            "out:" + credential.principal.participant_id, now)
        # iat is whole seconds: a token issued within the second of the logout (a fresh
        # log-in right after it) is let be.
        if out is not None and (credential.issued_at is None
                                or credential.issued_at < int(out)):
            raise AuthError("token revoked")
        return credential

    async def revoke_all(self, principal: Principal) -> None:
        """Every token of ``principal`` issued until now stops working (a logout: other
        tabs, and a resumed socket whose token id the hall no longer holds, included)."""
        now = self._clock()
        await self.revocations.flag("out:" + principal.participant_id, now, self.ttl_s + 1.0,
                                    value=now)

    async def revoke(self, credential: Credential) -> None:
        """The token stops working now (it is remembered until it would have expired)."""
        if credential.token_id is None:
            return
        now = self._clock()
        # A second of margin: a process whose clock is slightly behind must still refuse it.
        await self.revocations.flag("jti:" + credential.token_id, now,
                                    credential.expires_at - now + 1.0)

    def verify_claims(self, token: str) -> Credential:
        """The verified token; AuthError if it is expired or invalid."""
        if not isinstance(token, str) or not token:
            raise AuthError("invalid token")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                issuer=HALL_ISSUER,
                # exp, iat and nbf are checked below against the injected clock, not PyJWT's.
                options={
                    "require": ["sub", "role", "exp", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,  # iat and nbf: _from_the_future, same clock
                },
            )
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise AuthError("invalid token")
        now = self._clock()
        if exp <= now:
            raise AuthError("token expired")
        if _from_the_future(claims, now):
            raise AuthError("invalid token")
        try:
            role = Role(str(claims.get("role")))
        except ValueError:
            raise AuthError("invalid token") from None
        subject = claims.get("sub")
        name = claims.get("name", "")
        sp = claims.get("sp")
        jti = claims.get("jti")
        if (
            role is Role.RESIDENT
            or not _valid_subject(subject)
            or not isinstance(name, str)
            or (sp is not None and not isinstance(sp, str))
            or (jti is not None and not _valid_subject(jti))
        ):
            raise AuthError("invalid token")
        assert isinstance(subject, str)
        principal = Principal(role=role, subject=subject, name=name, service_point_id=sp)
        iat = claims.get("iat")
        return Credential(principal, jti if isinstance(jti, str) else None, float(exp),
                          float(iat) if isinstance(iat, (int, float)) else None)


class AppIdentityVerifier:
    """Verifies residents' identity tokens from the app's identity provider.

    ``key`` is either an HS256 shared secret or a PEM public key (RS256 for RSA, ES256 for EC).
    Only the algorithm matching the key type is accepted: never ``none``, and never HS256
    with a public key as its secret (the classic algorithm-confusion forgery).
    """

    def __init__(
        self, key: str, *, issuer: str = "suishenban", clock: Callable[[], float] = time.time
    ) -> None:
        if not key:
            raise ValueError("AppIdentityVerifier needs a non-empty key")
        self._issuer = issuer
        self._clock = clock
        self._key: Any
        if key.lstrip().startswith(_PEM_PUBLIC_KEY):
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            public = load_pem_public_key(key.strip().encode())
            if isinstance(public, rsa.RSAPublicKey):
                self._algorithms = ["RS256"]
            elif isinstance(public, ec.EllipticCurvePublicKey):
                self._algorithms = ["ES256"]
            else:
                raise ValueError("app identity key: only RSA and EC public keys are supported")
            self._key = public
        else:
            self._algorithms = ["HS256"]
            self._key = key

    @property
    def algorithm(self) -> str:
        return self._algorithms[0]

    def verify(self, id_token: str) -> Principal:
        """The resident a valid identity token names; AuthError otherwise."""
        if not isinstance(id_token, str) or not id_token:
            raise AuthError("invalid identity token")
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise AuthError("invalid identity token") from None
        if header.get("alg") not in self._algorithms:
            raise AuthError("invalid identity token")
        try:
            claims = jwt.decode(
                id_token,
                self._key,
                algorithms=self._algorithms,
                issuer=self._issuer,
                leeway=_LEEWAY_S,
                # exp, iat and nbf are checked below against the injected clock, not PyJWT's.
                options={
                    "require": ["sub", "exp", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,  # iat and nbf: _from_the_future, same clock
                    "verify_aud": False,
                },
            )
        except jwt.PyJWTError:
            raise AuthError("invalid identity token") from None
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise AuthError("invalid identity token")
        now = self._clock()
        if exp + _LEEWAY_S <= now:
            raise AuthError("identity token expired")
        if _from_the_future(claims, now):
            raise AuthError("invalid identity token")
        subject = claims.get("sub")
        name = claims.get("name", "")
        if not _valid_subject(subject) or not isinstance(name, str):
            raise AuthError("invalid identity token")
        assert isinstance(subject, str)
        return Principal(role=Role.RESIDENT, subject=subject, name=name[:MAX_NAME_LENGTH])


class DevIdentitySigner:
    """The ``--demo`` stand-in for the app's identity provider (HS256, same key)."""

    def __init__(
        self,
        key: str,
        *,
        issuer: str = "suishenban",
        ttl_s: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not key:
            raise ValueError("DevIdentitySigner needs a non-empty key")
        self._key = key
        self._issuer = issuer
        self._ttl_s = ttl_s
        self._clock = clock

    def sign(self, resident_id: str, name: str = "") -> str:
        if not _valid_subject(resident_id):
            raise ValueError(f"resident_id must be 1..{MAX_SUBJECT_LENGTH} characters")
        now = self._clock()
        claims = {
            "sub": resident_id,
            "name": name,
            "iss": self._issuer,
            "iat": int(now),
            "exp": int(now + self._ttl_s),
        }
        return jwt.encode(claims, self._key, algorithm="HS256")


def turn_credentials(secret: str, participant: str, *, ttl_s: float, now: float) -> tuple[str, str]:
    """coturn ``use-auth-secret`` credentials: ``(username, credential)``.

    ``username = "<expiry unix time>:<participant>"`` and
    ``credential = base64(HMAC-SHA1(secret, username))``.
    """
    username = f"{int(now + ttl_s)}:{participant}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(
    *,
    stun_urls: Sequence[str],
    turn_urls: Sequence[str],
    turn_secret: str | None,
    turn_ttl_s: float,
    participant: str,
    now: float,
) -> list[dict[str, Any]]:
    """RTCIceServer dicts for one participant; ``[]`` when nothing is configured."""
    servers: list[dict[str, Any]] = []
    if stun_urls:
        servers.append({"urls": list(stun_urls)})
    if turn_urls and turn_secret:
        username, credential = turn_credentials(
            turn_secret, participant, ttl_s=turn_ttl_s, now=now
        )
        servers.append({"urls": list(turn_urls), "username": username, "credential": credential})
    return servers
