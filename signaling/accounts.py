"""Credentials of the hall's staff and devices.

* :class:`AccountBook`: clerk and supervisor logins, argon2id password hashes.
* :class:`KioskKeys`: each service point's device secret, which a kiosk trades for a hall token.

Both come either from the demo (``hall serve --demo``) or from a TOML file provisioned by the
operator (``HALL_ACCOUNTS_FILE``, ``HALL_KIOSK_SECRETS_FILE``); the files hold hashes only,
never a password or a secret. Generate a hash with::

    python -c 'from signaling.accounts import hash_password; print(hash_password("…"))'

Accounts file::

    [[accounts]]
    username = "clerk01"          # a clerk id of the catalog, or a supervisor id
    role = "clerk"                # "clerk" or "supervisor"
    password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"

Kiosk secrets file::

    [[kiosks]]
    service_point_id = "XH-001"
    secret_hash = "$argon2id$v=19$…"

Every refusal is the same :class:`~rooms.errors.AuthError`, whether the name is unknown or the
password wrong, and an unknown name still costs one argon2 verification, so neither the message
nor the response time tells which names exist.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tomllib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from rooms.catalog import Catalog
from rooms.errors import AuthError, HallError
from signaling.identity import Principal, Role

__all__ = ["AccountBook", "KioskKeys", "demo_kiosk_secret", "hash_password"]

# RFC 9106's / OWASP's low-memory argon2id profile: 19 MiB, 2 passes, 1 lane (~30 ms).
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
# A hash of a random, forgotten password with the same parameters: verified against when the
# user is unknown so that an unknown name takes as long to refuse as a wrong password.
_DUMMY_HASH = (
    "$argon2id$v=19$m=19456,t=2,p=1$zzh0MzUHG3swUziaWcciUQ$"
    "IqtmRp2JaSqC9Cbs/xv2oChmx60JBlOcW1ycb+Rfyv4"
)
_WRONG_LOGIN = "wrong username or password"
_WRONG_KIOSK = "unknown service point or wrong secret"
# Demo kiosk secrets: hex digits of an HMAC of the hall's secret key.
_DEMO_SECRET_LENGTH = 32
_MAX_CREDENTIAL_LENGTH = 256


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (with a fresh random salt)."""
    return _HASHER.hash(password)


def _check(password_hash: str, password: str) -> bool:
    """True if ``password`` matches ``password_hash``; False for a mismatch or a bad hash."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _waste_time(password: str) -> None:
    """One argon2 verification whose answer is thrown away (timing of unknown names)."""
    _check(_DUMMY_HASH, password)


def _hash_all(passwords: list[str]) -> list[str]:
    """Hash several passwords in threads (argon2 releases the GIL), keeping start-up short."""
    workers = max(1, min(8, os.cpu_count() or 1, len(passwords)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2") as pool:
        return list(pool.map(_HASHER.hash, passwords))


def _is_argon2_hash(value: str) -> bool:
    if not value.startswith("$argon2"):
        return False
    try:
        _HASHER.check_needs_rehash(value)  # parses the parameters; raises on a malformed hash
    except (InvalidHashError, ValueError):
        return False
    return True


def _read_toml(path: str | os.PathLike[str], what: str) -> tuple[str, dict[str, Any]]:
    label = Path(path).name
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise HallError(f"{what} file {os.fspath(path)!r} does not exist",
                        code="config_invalid") from None
    except OSError as exc:
        raise HallError(f"{what} file {os.fspath(path)!r}: {exc.strerror}",
                        code="config_invalid") from None
    except tomllib.TOMLDecodeError as exc:
        raise HallError(f"{label}: {exc}", code="config_invalid") from None
    return label, data


def _entries(label: str, data: dict[str, Any], table: str, fields: tuple[str, ...]
             ) -> list[tuple[str, dict[str, str]]]:
    """``[[table]]`` entries as (name for messages, fields); refuses unknown/missing fields."""
    unknown = set(data) - {table}
    if unknown:
        raise HallError(f"{label}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                        f"expected only [[{table}]]", code="config_invalid")
    raw = data.get(table, [])
    if not isinstance(raw, list):
        raise HallError(f"{label}: {table} must be an array of tables ([[{table}]])",
                        code="config_invalid")
    out: list[tuple[str, dict[str, str]]] = []
    for i, entry in enumerate(raw):
        where = f"{label}: {table}[{i}]"
        if not isinstance(entry, dict):
            raise HallError(f"{where}: expected a table", code="config_invalid")
        first = entry.get(fields[0])
        if isinstance(first, str):
            where += f" ({fields[0]} {first!r})"
        extra = set(entry) - set(fields)
        if extra:
            raise HallError(f"{where}: unknown field(s) {', '.join(sorted(extra))}",
                            code="config_invalid")
        for name in fields:
            value = entry.get(name)
            if not isinstance(value, str) or not value:
                raise HallError(f"{where}: {name} must be a non-empty string",
                                code="config_invalid")
        out.append((where, {k: str(v) for k, v in entry.items()}))
    return out


class AccountBook:
    """Clerk and supervisor logins: username -> (principal, argon2 hash)."""

    def __init__(self, accounts: Mapping[str, tuple[Principal, str]]) -> None:
        for username, (principal, _hash) in accounts.items():
            if principal.role not in (Role.CLERK, Role.SUPERVISOR):
                raise ValueError(f"account {username!r}: role {principal.role} cannot log in")
        self._accounts: Mapping[str, tuple[Principal, str]] = MappingProxyType(dict(accounts))

    @classmethod
    def empty(cls) -> AccountBook:
        return cls({})

    @classmethod
    def for_demo(cls, catalog: Catalog, password: str) -> AccountBook:
        """Every catalog clerk and supervisor, all with ``password`` (each its own salt)."""
        principals = [
            Principal(Role.CLERK, clerk.id, clerk.name) for clerk in catalog.clerks.values()
        ] + [
            Principal(Role.SUPERVISOR, sup.id, sup.name) for sup in catalog.supervisors.values()
        ]
        hashes = _hash_all([password] * len(principals))
        return cls({p.subject: (p, h) for p, h in zip(principals, hashes, strict=True)})

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], catalog: Catalog) -> AccountBook:
        """Accounts from a TOML file (see the module's doc); HallError(config_invalid) if bad."""
        label, data = _read_toml(path, "accounts")
        accounts: dict[str, tuple[Principal, str]] = {}
        for where, entry in _entries(label, data, "accounts",
                                     ("username", "role", "password_hash")):
            username, role, password_hash = (
                entry["username"], entry["role"], entry["password_hash"]
            )
            if username in accounts:
                raise HallError(f"{where}: duplicate username", code="config_invalid")
            if role == Role.CLERK:
                clerk = catalog.clerks.get(username)
                if clerk is None:
                    raise HallError(f"{where}: no clerk {username!r} in the catalog",
                                    code="config_invalid")
                principal = Principal(Role.CLERK, clerk.id, clerk.name)
            elif role == Role.SUPERVISOR:
                sup = catalog.supervisors.get(username)
                if sup is None:
                    raise HallError(f"{where}: no supervisor {username!r} in the catalog",
                                    code="config_invalid")
                principal = Principal(Role.SUPERVISOR, sup.id, sup.name)
            else:
                raise HallError(f"{where}: role must be \"clerk\" or \"supervisor\"",
                                code="config_invalid")
            if not _is_argon2_hash(password_hash):
                # Never echo the value: a pasted password would end up in the logs.
                raise HallError(f"{where}: password_hash is not an argon2 hash",
                                code="config_invalid")
            accounts[username] = (principal, password_hash)
        return cls(accounts)

    def verify(self, username: str, password: str) -> Principal:
        """The account's principal if the password is right; AuthError otherwise.

        Takes one argon2 verification (~30 ms of CPU): call it off the event loop.
        """
        if len(password) > _MAX_CREDENTIAL_LENGTH:
            raise AuthError(_WRONG_LOGIN)
        account = self._accounts.get(username)
        if account is None:
            _waste_time(password)
            raise AuthError(_WRONG_LOGIN)
        principal, password_hash = account
        if not _check(password_hash, password):
            raise AuthError(_WRONG_LOGIN)
        return principal

    def __contains__(self, username: object) -> bool:
        return username in self._accounts

    def __len__(self) -> int:
        return len(self._accounts)


def demo_kiosk_secret(secret_key: str, service_point_id: str) -> str:
    """The demo device secret of a service point, derived from the hall's secret key."""
    mac = hmac.new(secret_key.encode(), f"kiosk:{service_point_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:_DEMO_SECRET_LENGTH]


class KioskKeys:
    """Service point device secrets -> kiosk principals.

    Two modes: *hashed* (argon2 hashes, from a provisioned file) and *demo* (secrets derived
    from the hall's secret key and compared in constant time; hashing 100 secrets at each
    demo start would take seconds).
    """

    def __init__(self, catalog: Catalog, hashes: Mapping[str, str]) -> None:
        for sp_id in hashes:
            if sp_id not in catalog.service_points:
                raise ValueError(f"no service point {sp_id!r} in the catalog")
        self._catalog = catalog
        self._hashes: Mapping[str, str] = MappingProxyType(dict(hashes))
        self._derive: Callable[[str], str] | None = None

    @classmethod
    def for_demo(cls, catalog: Catalog, secret_key: str) -> KioskKeys:
        """Every service point, with the secret :func:`demo_kiosk_secret` derives."""
        keys = cls(catalog, {})
        keys._derive = lambda sp_id: demo_kiosk_secret(secret_key, sp_id)
        return keys

    @property
    def is_demo(self) -> bool:
        return self._derive is not None

    def demo_secret(self, service_point_id: str) -> str:
        """A demo kiosk's secret (printed by ``hall serve --demo``); HallError otherwise."""
        if self._derive is None:
            raise HallError("kiosk secrets are provisioned, not derived: no demo secret",
                            code="not_allowed")
        if service_point_id not in self._catalog.service_points:
            raise HallError(f"no service point {service_point_id!r}", code="not_found")
        return self._derive(service_point_id)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], catalog: Catalog) -> KioskKeys:
        """Secrets from a TOML file (see the module's doc); HallError(config_invalid) if bad."""
        label, data = _read_toml(path, "kiosk secrets")
        hashes: dict[str, str] = {}
        for where, entry in _entries(label, data, "kiosks", ("service_point_id", "secret_hash")):
            sp_id, secret_hash = entry["service_point_id"], entry["secret_hash"]
            if sp_id in hashes:
                raise HallError(f"{where}: duplicate service_point_id", code="config_invalid")
            if sp_id not in catalog.service_points:
                raise HallError(f"{where}: no service point {sp_id!r} in the catalog",
                                code="config_invalid")
            if not _is_argon2_hash(secret_hash):
                raise HallError(f"{where}: secret_hash is not an argon2 hash",
                                code="config_invalid")
            hashes[sp_id] = secret_hash
        return cls(catalog, hashes)

    def verify(self, service_point_id: str, secret: str) -> Principal:
        """The kiosk principal of the service point if the secret is right; AuthError otherwise.

        In hashed mode this takes one argon2 verification: call it off the event loop.
        """
        if len(secret) > _MAX_CREDENTIAL_LENGTH:
            raise AuthError(_WRONG_KIOSK)
        point = self._catalog.service_points.get(service_point_id)
        if self._derive is not None:
            expected = self._derive(service_point_id)
            ok = hmac.compare_digest(expected.encode(), secret.encode())
        else:
            secret_hash = self._hashes.get(service_point_id) if point is not None else None
            if secret_hash is None:
                _waste_time(secret)
                ok = False
            else:
                ok = _check(secret_hash, secret)
        if point is None or not ok:
            raise AuthError(_WRONG_KIOSK)
        return Principal(Role.KIOSK, point.id, point.name, service_point_id=point.id)

    def __contains__(self, service_point_id: object) -> bool:
        if service_point_id not in self._catalog.service_points:
            return False
        return self._derive is not None or service_point_id in self._hashes

    def __len__(self) -> int:
        return len(self._catalog.service_points) if self._derive is not None else len(self._hashes)
