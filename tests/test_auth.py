"""Tests of authentication: hall tokens, app identity tokens, TURN credentials, accounts,
kiosk keys, the failure throttle, the new settings and the HTTP login routes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rooms.catalog import Catalog, load_catalog
from rooms.errors import AuthError, HallError
from server import keys
from server.app import create_app
from server.cli import _print_demo_kiosk
from server.config import Settings
from signaling.accounts import AccountBook, KioskKeys, demo_kiosk_secret, hash_password
from signaling.identity import (
    AppIdentityVerifier,
    DevIdentitySigner,
    Principal,
    Role,
    TokenService,
    ice_servers,
    turn_credentials,
)

SECRET = "s" * 32
IDP_KEY = "i" * 32
PASSWORD = "correct horse battery staple"
CLERK = Principal(Role.CLERK, "clerk01", "王芳")
KIOSK = Principal(Role.KIOSK, "XH-001", "某居委会", service_point_id="XH-001")


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(None)


@pytest.fixture(scope="module")
def demo_book(catalog: Catalog) -> AccountBook:
    return AccountBook.for_demo(catalog, PASSWORD)


# -- hall tokens -------------------------------------------------------------------------------


def test_token_round_trip_keeps_the_principal() -> None:
    """A hall token verifies back to the principal it was issued for, kiosk sp included."""
    tokens = TokenService(SECRET)
    for principal in (CLERK, KIOSK, Principal(Role.SUPERVISOR, "supervisor", "主管")):
        token, expires_at = tokens.issue(principal)
        assert tokens.verify(token) == principal
        assert expires_at == pytest.approx(time.time() + 900, abs=5)


def test_token_carries_the_documented_claims() -> None:
    """Claims are sub, role, name, sp, iat, exp, iss=virtual-hall and a unique jti."""
    clock = FakeClock()
    tokens = TokenService(SECRET, ttl_s=60, clock=clock)
    token, expires_at = tokens.issue(KIOSK)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["sub"] == "XH-001" and claims["role"] == "kiosk" and claims["sp"] == "XH-001"
    assert claims["iss"] == "virtual-hall" and claims["iat"] == int(clock.now)
    assert claims["exp"] == expires_at == clock.now + 60
    assert claims["jti"] != jwt.decode(
        tokens.issue(KIOSK)[0], SECRET, algorithms=["HS256"], options={"verify_exp": False}
    )["jti"]


def test_token_expires_after_its_ttl() -> None:
    """A token is refused as expired once the clock passes its expiry."""
    clock = FakeClock()
    tokens = TokenService(SECRET, ttl_s=60, clock=clock)
    token, _ = tokens.issue(CLERK)
    clock.now += 59
    assert tokens.verify(token) == CLERK
    clock.now += 2
    with pytest.raises(AuthError, match="expired") as caught:
        tokens.verify(token)
    assert caught.value.code == "unauthenticated"


def test_tampered_token_is_invalid() -> None:
    """Changing the payload (here the role) without re-signing makes the token invalid."""
    tokens = TokenService(SECRET)
    token, _ = tokens.issue(CLERK)
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "supervisor"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError, match=r"^invalid token$"):
        tokens.verify(f"{header}.{forged}.{sig}")
    with pytest.raises(AuthError, match=r"^invalid token$"):
        tokens.verify("not-a-jwt")


def test_token_signed_with_another_key_is_invalid() -> None:
    """A token from a hall with a different secret key is refused."""
    token, _ = TokenService("o" * 32).issue(CLERK)
    with pytest.raises(AuthError, match=r"^invalid token$"):
        TokenService(SECRET).verify(token)


def test_unsigned_alg_none_token_is_invalid() -> None:
    """An alg=none token with perfect claims is refused."""
    claims = {"sub": "clerk01", "role": "clerk", "name": "x", "iss": "virtual-hall",
              "exp": time.time() + 600}
    token = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(AuthError, match=r"^invalid token$"):
        TokenService(SECRET).verify(token)


def test_resident_role_tokens_are_neither_issued_nor_accepted() -> None:
    """Hall tokens never name a resident: issuing refuses, and a forged one is invalid."""
    tokens = TokenService(SECRET)
    with pytest.raises(ValueError):
        tokens.issue(Principal(Role.RESIDENT, "r1", ""))
    forged = jwt.encode({"sub": "r1", "role": "resident", "iss": "virtual-hall",
                         "exp": time.time() + 600}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match=r"^invalid token$"):
        tokens.verify(forged)


def test_token_with_wrong_issuer_or_unknown_role_is_invalid() -> None:
    """Properly signed tokens with a foreign iss or an unknown role are refused."""
    tokens = TokenService(SECRET)
    for claims in ({"sub": "c", "role": "clerk", "iss": "elsewhere"},
                   {"sub": "c", "role": "admin", "iss": "virtual-hall"},
                   {"sub": "", "role": "clerk", "iss": "virtual-hall"}):
        token = jwt.encode({**claims, "exp": time.time() + 600}, SECRET, algorithm="HS256")
        with pytest.raises(AuthError, match=r"^invalid token$"):
            tokens.verify(token)


def test_participant_id_is_role_and_subject() -> None:
    """participant_id is "<role>:<subject>"."""
    assert CLERK.participant_id == "clerk:clerk01"
    assert KIOSK.participant_id == "kiosk:XH-001"


# -- app identity tokens ---------------------------------------------------------------------


def _id_token(key: Any, alg: str = "HS256", **overrides: Any) -> str:
    claims: dict[str, Any] = {"sub": "r1", "name": "李明", "iss": "suishenban",
                              "exp": int(time.time()) + 600}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg)


def _rsa_pair() -> tuple[rsa.RSAPrivateKey, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, pem


def test_app_identity_hs256_gives_a_resident() -> None:
    """An HS256 identity token from the IdP verifies to a resident principal."""
    principal = AppIdentityVerifier(IDP_KEY).verify(_id_token(IDP_KEY))
    assert principal == Principal(Role.RESIDENT, "r1", "李明")
    assert principal.participant_id == "resident:r1"


def test_app_identity_name_is_optional() -> None:
    """Without a name claim the resident's name is empty."""
    assert AppIdentityVerifier(IDP_KEY).verify(_id_token(IDP_KEY, name=None)).name == ""


def test_app_identity_rs256_with_a_pem_public_key() -> None:
    """With a PEM public key, RS256 tokens signed by the private key verify."""
    private, pem = _rsa_pair()
    verifier = AppIdentityVerifier(pem)
    assert verifier.algorithm == "RS256"
    assert verifier.verify(_id_token(private, "RS256")).subject == "r1"
    other, _ = _rsa_pair()
    with pytest.raises(AuthError):
        verifier.verify(_id_token(other, "RS256"))


def test_app_identity_es256_with_an_ec_public_key() -> None:
    """With an EC public key, ES256 tokens verify."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    assert AppIdentityVerifier(pem).verify(_id_token(private, "ES256")).subject == "r1"


def test_app_identity_refuses_algorithm_confusion_and_none() -> None:
    """HS256 signed with the public key's PEM, alg none, or HS256 for an RS key are refused."""
    _, pem = _rsa_pair()
    verifier = AppIdentityVerifier(pem)
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(
        {"sub": "r1", "iss": "suishenban", "exp": int(time.time()) + 600}).encode()).rstrip(b"=")
    signing_input = header + b"." + body
    sig = base64.urlsafe_b64encode(
        hmac.new(pem.encode(), signing_input, hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(AuthError):
        verifier.verify((signing_input + b"." + sig).decode())
    none_token = _id_token(None, "none")
    with pytest.raises(AuthError):
        verifier.verify(none_token)
    with pytest.raises(AuthError):
        AppIdentityVerifier(IDP_KEY).verify(none_token)


def test_app_identity_wrong_issuer_is_refused() -> None:
    """A token from another issuer is refused."""
    with pytest.raises(AuthError, match="invalid identity token"):
        AppIdentityVerifier(IDP_KEY).verify(_id_token(IDP_KEY, iss="someone-else"))


def test_app_identity_custom_issuer() -> None:
    """The verifier checks the configured issuer, not the default one."""
    verifier = AppIdentityVerifier(IDP_KEY, issuer="idp.example")
    assert verifier.verify(_id_token(IDP_KEY, iss="idp.example")).subject == "r1"
    with pytest.raises(AuthError):
        verifier.verify(_id_token(IDP_KEY))


def test_app_identity_missing_or_bad_sub_is_refused() -> None:
    """sub is required and must be 1..128 characters."""
    verifier = AppIdentityVerifier(IDP_KEY)
    for sub in (None, "", "x" * 129):
        with pytest.raises(AuthError):
            verifier.verify(_id_token(IDP_KEY, sub=sub))
    assert verifier.verify(_id_token(IDP_KEY, sub="x" * 128)).subject == "x" * 128


def test_app_identity_missing_exp_or_iss_is_refused() -> None:
    """exp and iss are required claims."""
    verifier = AppIdentityVerifier(IDP_KEY)
    for missing in ("exp", "iss"):
        with pytest.raises(AuthError):
            overrides: dict[str, Any] = {missing: None}
            verifier.verify(_id_token(IDP_KEY, **overrides))


def test_app_identity_expired_is_refused() -> None:
    """An identity token past its exp (beyond a small clock-skew leeway) is refused."""
    clock = FakeClock()
    verifier = AppIdentityVerifier(IDP_KEY, clock=clock)
    token = _id_token(IDP_KEY, exp=int(clock.now) + 10)
    assert verifier.verify(token).subject == "r1"
    clock.now += 3600
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token)


def test_app_identity_wrong_key_is_refused() -> None:
    """A token signed with another shared secret is refused."""
    with pytest.raises(AuthError):
        AppIdentityVerifier(IDP_KEY).verify(_id_token("k" * 32))


def test_dev_signer_round_trip() -> None:
    """The demo signer's tokens verify with the same key and issuer."""
    signer = DevIdentitySigner(IDP_KEY)
    token = signer.sign("demo-resident", "张三")
    assert AppIdentityVerifier(IDP_KEY).verify(token) == Principal(
        Role.RESIDENT, "demo-resident", "张三"
    )
    with pytest.raises(AuthError):
        AppIdentityVerifier(IDP_KEY, issuer="other").verify(token)


def test_dev_signer_tokens_expire() -> None:
    """A dev token is valid for its ttl only."""
    clock = FakeClock()
    token = DevIdentitySigner(IDP_KEY, ttl_s=60, clock=clock).sign("r1")
    verifier = AppIdentityVerifier(IDP_KEY, clock=clock)
    assert verifier.verify(token).name == ""
    clock.now += 600
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token)


# -- TURN and ICE ----------------------------------------------------------------------------


def test_turn_credentials_match_coturn_formula() -> None:
    """username = "<now+ttl>:<participant>", credential = base64(HMAC-SHA1(secret, username))."""
    now = 1_700_000_000.7
    username, credential = turn_credentials("s3cr3t", "resident:r1", ttl_s=3600, now=now)
    assert username == "1700003600:resident:r1"
    want = base64.b64encode(
        hmac.new(b"s3cr3t", b"1700003600:resident:r1", hashlib.sha1).digest()
    ).decode()
    assert credential == want


def test_turn_credentials_expiry_follows_ttl() -> None:
    """The expiry in the username is now + ttl, so credentials change with time."""
    a, ca = turn_credentials("k", "clerk:c", ttl_s=60, now=1000)
    b, cb = turn_credentials("k", "clerk:c", ttl_s=60, now=2000)
    assert a.split(":", 1)[0] == "1060" and b.split(":", 1)[0] == "2060"
    assert ca != cb


def test_ice_servers_shapes() -> None:
    """STUN only, TURN only, both, TURN without secret, and nothing configured."""
    common: dict[str, Any] = {"turn_ttl_s": 60, "participant": "clerk:c", "now": 1000.0}
    assert ice_servers(stun_urls=(), turn_urls=(), turn_secret=None, **common) == []
    assert ice_servers(stun_urls=["stun:a:3478"], turn_urls=(), turn_secret="k", **common) == [
        {"urls": ["stun:a:3478"]}
    ]
    # TURN URLs without a secret are useless: no TURN entry.
    assert ice_servers(stun_urls=(), turn_urls=["turn:t"], turn_secret=None, **common) == []
    both = ice_servers(stun_urls=["stun:a"], turn_urls=["turn:t", "turns:t:5349"],
                       turn_secret="k", **common)
    user, cred = turn_credentials("k", "clerk:c", ttl_s=60, now=1000.0)
    assert both == [
        {"urls": ["stun:a"]},
        {"urls": ["turn:t", "turns:t:5349"], "username": user, "credential": cred},
    ]


# -- accounts --------------------------------------------------------------------------------


def test_demo_accounts_cover_every_clerk_and_supervisor(
    catalog: Catalog, demo_book: AccountBook
) -> None:
    """for_demo has one account per catalog clerk and supervisor, with their names."""
    assert len(demo_book) == len(catalog.clerks) + len(catalog.supervisors)
    clerk = next(iter(catalog.clerks.values()))
    sup = next(iter(catalog.supervisors.values()))
    assert clerk.id in demo_book and sup.id in demo_book and "nobody" not in demo_book
    assert demo_book.verify(clerk.id, PASSWORD) == Principal(Role.CLERK, clerk.id, clerk.name)
    assert demo_book.verify(sup.id, PASSWORD) == Principal(Role.SUPERVISOR, sup.id, sup.name)


def test_demo_accounts_each_have_their_own_salt(demo_book: AccountBook) -> None:
    """The same demo password gives a different hash for each account."""
    hashes = {h for _p, h in demo_book._accounts.values()}
    assert len(hashes) == len(demo_book)
    assert all(h.startswith("$argon2id$") for h in hashes)


def test_wrong_password_and_unknown_user_get_the_same_error(demo_book: AccountBook) -> None:
    """Wrong password and unknown username both raise 'wrong username or password'."""
    for username, password in (("clerk01", "nope"), ("nobody", PASSWORD), ("clerk01", "")):
        with pytest.raises(AuthError, match=r"^wrong username or password$"):
            demo_book.verify(username, password)


def test_unknown_user_still_costs_an_argon2_verify(demo_book: AccountBook) -> None:
    """An unknown username takes about as long as a wrong password (no user enumeration)."""
    def timed(username: str) -> float:
        start = time.perf_counter()
        with pytest.raises(AuthError):
            demo_book.verify(username, "wrong")
        return time.perf_counter() - start

    known = min(timed("clerk01") for _ in range(3))
    unknown = min(timed("nobody") for _ in range(3))
    assert unknown > known / 3


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_accounts_from_file(tmp_path: Path, catalog: Catalog) -> None:
    """A TOML accounts file gives logins for the listed clerks and supervisors only."""
    h1, h2 = hash_password("pw-one"), hash_password("pw-two")
    path = _write(tmp_path / "accounts.toml", f"""
[[accounts]]
username = "clerk01"
role = "clerk"
password_hash = "{h1}"

[[accounts]]
username = "supervisor"
role = "supervisor"
password_hash = "{h2}"
""")
    book = AccountBook.from_file(path, catalog)
    assert len(book) == 2 and "clerk02" not in book
    assert book.verify("clerk01", "pw-one").role is Role.CLERK
    assert book.verify("supervisor", "pw-two").role is Role.SUPERVISOR
    with pytest.raises(AuthError):
        book.verify("clerk01", "pw-two")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('username = "ghost"\nrole = "clerk"\npassword_hash = "HASH"', "no clerk 'ghost'"),
        ('username = "clerk01"\nrole = "supervisor"\npassword_hash = "HASH"', "no supervisor"),
        ('username = "clerk01"\nrole = "admin"\npassword_hash = "HASH"', "role must be"),
        ('username = "clerk01"\nrole = "clerk"\npassword_hash = "plaintext"', "not an argon2"),
        ('username = "clerk01"\nrole = "clerk"', "password_hash must be"),
        ('username = "clerk01"\nrole = "clerk"\npassword_hash = "HASH"\nextra = 1', "unknown"),
    ],
)
def test_bad_accounts_file_names_the_entry(
    tmp_path: Path, catalog: Catalog, entry: str, expected: str
) -> None:
    """A bad accounts entry is refused with config_invalid, naming the entry and the problem."""
    text = "[[accounts]]\n" + entry.replace("HASH", hash_password("x")) + "\n"
    path = _write(tmp_path / "accounts.toml", text)
    with pytest.raises(HallError) as caught:
        AccountBook.from_file(path, catalog)
    assert caught.value.code == "config_invalid"
    assert "accounts.toml: accounts[0]" in caught.value.message
    assert expected in caught.value.message
    assert "plaintext" not in caught.value.message  # never echo a would-be secret


def test_accounts_file_missing_broken_or_duplicated(tmp_path: Path, catalog: Catalog) -> None:
    """A missing file, a TOML syntax error or a duplicate username is config_invalid."""
    h = hash_password("x")
    entry = f'[[accounts]]\nusername = "clerk01"\nrole = "clerk"\npassword_hash = "{h}"\n'
    cases = [tmp_path / "missing.toml", _write(tmp_path / "syntax.toml", "[[accounts]\n"),
             _write(tmp_path / "dup.toml", entry + entry)]
    for path in cases:
        with pytest.raises(HallError) as caught:
            AccountBook.from_file(path, catalog)
        assert caught.value.code == "config_invalid"
    with pytest.raises(HallError, match="duplicate username"):
        AccountBook.from_file(cases[2], catalog)


# -- kiosk keys ------------------------------------------------------------------------------


def test_demo_kiosk_keys_verify(catalog: Catalog) -> None:
    """A demo kiosk secret is the HMAC-derived one and verifies to the kiosk principal."""
    kiosks = KioskKeys.for_demo(catalog, SECRET)
    want = hmac.new(SECRET.encode(), b"kiosk:XH-001", hashlib.sha256).hexdigest()[:32]
    assert kiosks.demo_secret("XH-001") == want == demo_kiosk_secret(SECRET, "XH-001")
    point = catalog.service_points["XH-001"]
    assert kiosks.verify("XH-001", want) == Principal(
        Role.KIOSK, "XH-001", point.name, service_point_id="XH-001"
    )
    assert kiosks.demo_secret("XH-002") != want


def test_demo_kiosk_keys_refuse_wrong_secret_and_unknown_point(catalog: Catalog) -> None:
    """A wrong secret, another point's secret or an unknown point is AuthError."""
    kiosks = KioskKeys.for_demo(catalog, SECRET)
    for sp_id, secret in (("XH-001", "wrong"), ("XH-001", kiosks.demo_secret("XH-002")),
                          ("XH-999", demo_kiosk_secret(SECRET, "XH-999"))):
        with pytest.raises(AuthError) as caught:
            kiosks.verify(sp_id, secret)
        assert caught.value.code == "unauthenticated"
    with pytest.raises(HallError):
        kiosks.demo_secret("XH-999")


def test_kiosk_keys_from_file(tmp_path: Path, catalog: Catalog) -> None:
    """Provisioned argon2 secrets verify; unlisted points and demo_secret are refused."""
    path = _write(tmp_path / "kiosks.toml", f"""
[[kiosks]]
service_point_id = "XH-002"
secret_hash = "{hash_password("device-secret")}"
""")
    kiosks = KioskKeys.from_file(path, catalog)
    assert not kiosks.is_demo and "XH-002" in kiosks and "XH-001" not in kiosks
    assert kiosks.verify("XH-002", "device-secret").service_point_id == "XH-002"
    for sp_id, secret in (("XH-002", "wrong"), ("XH-001", "device-secret"),
                          ("XH-999", "device-secret")):
        with pytest.raises(AuthError):
            kiosks.verify(sp_id, secret)
    with pytest.raises(HallError):
        kiosks.demo_secret("XH-002")


def test_bad_kiosk_file_names_the_entry(tmp_path: Path, catalog: Catalog) -> None:
    """An unknown service point or a non-argon2 hash in the kiosk file is config_invalid."""
    for text, expected in (
        (f'service_point_id = "XH-999"\nsecret_hash = "{hash_password("x")}"', "no service point"),
        ('service_point_id = "XH-001"\nsecret_hash = "abc"', "not an argon2"),
    ):
        path = _write(tmp_path / "kiosks.toml", "[[kiosks]]\n" + text + "\n")
        with pytest.raises(HallError) as caught:
            KioskKeys.from_file(path, catalog)
        assert caught.value.code == "config_invalid"
        assert "kiosks[0]" in caught.value.message and expected in caught.value.message


# -- settings --------------------------------------------------------------------------------


def test_auth_settings_defaults() -> None:
    """The auth and connection settings have their documented defaults."""
    s = Settings.from_env({})
    assert (s.token_ttl_s, s.app_idp_key, s.app_idp_issuer) == (900, None, "suishenban")
    assert (s.stun_urls, s.turn_urls, s.turn_secret, s.turn_ttl_s) == ((), (), None, 3600)
    assert (s.allowed_origins, s.auth_timeout_s, s.resume_grace_s) == ((), 5, 30)
    assert (s.accounts_file, s.kiosk_secrets_file) == (None, None)
    assert (s.login_failure_limit, s.login_failure_window_s) == (10, 1800)


def test_auth_settings_are_read(tmp_path: Path) -> None:
    """Each new HALL_* variable lands in its setting; lists are comma-separated."""
    accounts = _write(tmp_path / "a.toml", "")
    kiosks = _write(tmp_path / "k.toml", "")
    s = Settings.from_env({
        "HALL_TOKEN_TTL_S": "600",
        "HALL_APP_IDP_KEY": IDP_KEY,
        "HALL_APP_IDP_ISSUER": "idp.example",
        "HALL_STUN_URLS": "stun:a:3478, stun:b:3478",
        "HALL_TURN_URLS": "turn:t:3478,turns:t:5349",
        "HALL_TURN_SECRET": "s3cr3t",
        "HALL_TURN_TTL_S": "120",
        "HALL_ALLOWED_ORIGINS": "https://hall.example, http://localhost:3000",
        "HALL_AUTH_TIMEOUT_S": "2.5",
        "HALL_RESUME_GRACE_S": "45",
        "HALL_ACCOUNTS_FILE": str(accounts),
        "HALL_KIOSK_SECRETS_FILE": str(kiosks),
        "HALL_LOGIN_FAILURE_LIMIT": "5",
        "HALL_LOGIN_FAILURE_WINDOW_S": "600",
    })
    assert s.token_ttl_s == 600 and s.app_idp_key == IDP_KEY
    assert s.app_idp_issuer == "idp.example"
    assert s.stun_urls == ("stun:a:3478", "stun:b:3478")
    assert s.turn_urls == ("turn:t:3478", "turns:t:5349")
    assert (s.turn_secret, s.turn_ttl_s) == ("s3cr3t", 120)
    assert s.allowed_origins == ("https://hall.example", "http://localhost:3000")
    assert (s.auth_timeout_s, s.resume_grace_s) == (2.5, 45)
    assert (s.accounts_file, s.kiosk_secrets_file) == (accounts, kiosks)
    assert (s.login_failure_limit, s.login_failure_window_s) == (5, 600)
    assert Settings.from_env({"HALL_ALLOWED_ORIGINS": "*"}).allowed_origins == ("*",)


def test_pem_app_idp_key_is_accepted() -> None:
    """HALL_APP_IDP_KEY may be a PEM public key."""
    _, pem = _rsa_pair()
    assert Settings.from_env({"HALL_APP_IDP_KEY": pem}).app_idp_key == pem.strip()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HALL_TOKEN_TTL_S", "0"),
        ("HALL_APP_IDP_KEY", "short-secret"),
        ("HALL_APP_IDP_KEY", "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----"),
        ("HALL_APP_IDP_ISSUER", "  "),
        ("HALL_STUN_URLS", "http://stun.example"),
        ("HALL_TURN_URLS", "stun:t"),
        ("HALL_TURN_SECRET", " "),
        ("HALL_TURN_TTL_S", "-1"),
        ("HALL_ALLOWED_ORIGINS", "hall.example"),
        ("HALL_ALLOWED_ORIGINS", "*, https://a.example"),
        ("HALL_AUTH_TIMEOUT_S", "nan"),
        ("HALL_RESUME_GRACE_S", "0"),
        ("HALL_ACCOUNTS_FILE", "/no/such/accounts.toml"),
        ("HALL_KIOSK_SECRETS_FILE", "/no/such/kiosks.toml"),
        ("HALL_LOGIN_FAILURE_LIMIT", "0"),
        ("HALL_LOGIN_FAILURE_WINDOW_S", "soon"),
    ],
)
def test_bad_auth_setting_is_refused(name: str, value: str) -> None:
    """A malformed auth variable is config_invalid naming it, without echoing a key."""
    with pytest.raises(HallError) as caught:
        Settings.from_env({name: value})
    assert caught.value.code == "config_invalid"
    assert name in caught.value.message
    if name == "HALL_APP_IDP_KEY":
        assert value not in caught.value.message


def test_app_idp_key_resolution() -> None:
    """Explicit key wins; a demo derives one from HALL_SECRET_KEY; otherwise None."""
    assert Settings(secret_key=SECRET, app_idp_key=IDP_KEY).app_idp_key_resolved(True) == IDP_KEY
    derived = hmac.new(SECRET.encode(), b"app-idp", hashlib.sha256).hexdigest()
    assert Settings(secret_key=SECRET).app_idp_key_resolved(True) == derived
    assert Settings(secret_key=SECRET).app_idp_key_resolved(False) is None


# -- HTTP routes -----------------------------------------------------------------------------

Client = TestClient[web.Request, web.Application]
DEMO_PW = "demo-password-for-auth-tests"


@pytest.fixture
async def demo_client(tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings(data_dir=tmp_path, secret_key=SECRET, demo_password=DEMO_PW)
    async with TestClient(TestServer(create_app(settings, demo=True))) as client:
        yield client


async def _post(client: Client, path: str, body: Any) -> tuple[int, Any, Any]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    response = await client.post(path, data=data, headers={"Content-Type": "application/json"})
    return response.status, await response.json(), response.headers


async def test_login_gives_a_token_that_verifies(demo_client: Client) -> None:
    """POST /api/auth/login with the demo password returns a hall token for the clerk."""
    status, body, headers = await _post(demo_client, "/api/auth/login",
                                        {"username": "clerk01", "password": DEMO_PW})
    assert status == 200, body
    assert body["ok"] is True and body["role"] == "clerk" and body["name"]
    assert body["expires_at"] == pytest.approx(time.time() + 900, abs=10)
    assert headers["Cache-Control"] == "no-store"
    principal = demo_client.app[keys.TOKENS].verify(body["token"])
    assert principal.participant_id == "clerk:clerk01"


async def test_supervisor_login(demo_client: Client) -> None:
    """A supervisor logs in with the same route and gets role supervisor."""
    status, body, _ = await _post(demo_client, "/api/auth/login",
                                  {"username": "supervisor", "password": DEMO_PW})
    assert status == 200 and body["role"] == "supervisor"


async def test_wrong_password_is_401(demo_client: Client) -> None:
    """A wrong password or unknown user answers 401 unauthenticated, the same message."""
    for username, password in (("clerk01", "nope"), ("ghost", DEMO_PW)):
        status, body, _ = await _post(demo_client, "/api/auth/login",
                                      {"username": username, "password": password})
        assert status == 401
        assert body == {"ok": False, "error": {"code": "unauthenticated",
                                               "message": "wrong username or password"}}


async def test_eleventh_failure_is_429_with_retry_after(demo_client: Client) -> None:
    """After ten failures on an account from one address, its right password from there gets
    429 + Retry-After (the first back-off step, issue 11 item 5)."""
    for _ in range(10):
        status, _, _ = await _post(demo_client, "/api/auth/login",
                                   {"username": "clerk01", "password": "nope"})
        assert status == 401
    status, body, headers = await _post(demo_client, "/api/auth/login",
                                        {"username": "clerk01", "password": DEMO_PW})
    assert status == 429
    assert body["ok"] is False and body["error"]["code"] == "too_many_attempts"
    assert int(headers["Retry-After"]) == body["error"]["retry_after_s"] == 60
    # Another account (the kiosk's) is not locked by that one's failures.
    status, _, _ = await _post(demo_client, "/api/auth/kiosk",
                               {"service_point_id": "XH-001", "secret": "x"})
    assert status == 401


async def test_bad_bodies_do_not_count_as_failures(demo_client: Client) -> None:
    """Malformed bodies are 400 and do not use up the address's failure budget."""
    for _ in range(12):
        status, _, _ = await _post(demo_client, "/api/auth/login", b"{nope")
        assert status == 400
    assert await demo_client.app[keys.THROTTLE].failures("127.0.0.1") == 0


async def test_kiosk_login(demo_client: Client) -> None:
    """POST /api/auth/kiosk with the demo secret returns a kiosk token bound to its point."""
    secret = demo_client.app[keys.KIOSK_KEYS].demo_secret("XH-001")
    status, body, _ = await _post(demo_client, "/api/auth/kiosk",
                                  {"service_point_id": "XH-001", "secret": secret})
    assert status == 200 and body["ok"] and body["role"] == "kiosk"
    principal = demo_client.app[keys.TOKENS].verify(body["token"])
    assert principal.service_point_id == "XH-001" and principal.role is Role.KIOSK
    status, body, _ = await _post(demo_client, "/api/auth/kiosk",
                                  {"service_point_id": "XH-002", "secret": secret})
    assert status == 401 and body["error"]["code"] == "unauthenticated"


async def test_dev_resident_token_in_demo(demo_client: Client) -> None:
    """In demo mode the dev route signs an identity token the app verifier accepts."""
    status, body, _ = await _post(demo_client, "/api/dev/resident-token",
                                  {"resident_id": "r42", "name": "李明"})
    assert status == 200 and body["ok"] is True
    verifier = demo_client.app[keys.APP_IDENTITY]
    assert verifier is not None
    assert verifier.verify(body["id_token"]) == Principal(Role.RESIDENT, "r42", "李明")


async def test_dev_resident_token_is_absent_outside_demo(tmp_path: Path) -> None:
    """Without --demo the dev route does not exist (404) and nobody can log in."""
    settings = Settings(data_dir=tmp_path, secret_key=SECRET)
    async with TestClient(TestServer(create_app(settings, demo=False))) as client:
        response = await client.post("/api/dev/resident-token", json={"resident_id": "r1"})
        assert response.status == 404
        assert client.app[keys.DEV_SIGNER] is None and client.app[keys.APP_IDENTITY] is None
        status, _, _ = await _post(client, "/api/auth/login",
                                   {"username": "clerk01", "password": "anything"})
        assert status == 401


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        {"username": "clerk01"},
        {"username": "clerk01", "password": DEMO_PW, "extra": 1},
        {"username": 123, "password": DEMO_PW},
        {"username": "", "password": DEMO_PW},
        {"username": "x" * 129, "password": DEMO_PW},
        {"username": "clerk01", "password": "p" * 257},
        {"username": "clerk01", "password": "p" * 9000},
    ],
)
async def test_malformed_or_oversized_login_body_is_400(demo_client: Client, body: Any) -> None:
    """Bodies that are not a strict {username, password} object within limits are 400."""
    status, reply, _ = await _post(demo_client, "/api/auth/login", body)
    assert status == 400
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload"
    assert DEMO_PW not in reply["error"]["message"]


async def test_oversized_kiosk_and_dev_bodies_are_400(demo_client: Client) -> None:
    """An over-8-KiB body is refused on every auth route."""
    big = {"service_point_id": "XH-001", "secret": "s", "pad": "x" * 9000}
    status, reply, _ = await _post(demo_client, "/api/auth/kiosk", big)
    assert status == 400 and "8192" in reply["error"]["message"]
    status, reply, _ = await _post(demo_client, "/api/dev/resident-token",
                                   {"resident_id": "r" * 129})
    assert status == 400 and reply["error"]["message"].startswith("resident_id")


async def test_accounts_file_replaces_demo_accounts(tmp_path: Path) -> None:
    """With HALL_ACCOUNTS_FILE set, its accounts are the only logins, even in demo mode."""
    path = _write(tmp_path / "accounts.toml", f"""
[[accounts]]
username = "clerk02"
role = "clerk"
password_hash = "{hash_password("file-pw")}"
""")
    settings = Settings(data_dir=tmp_path, secret_key=SECRET, demo_password=DEMO_PW,
                        accounts_file=path)
    async with TestClient(TestServer(create_app(settings, demo=True))) as client:
        ok, _, _ = await _post(client, "/api/auth/login",
                               {"username": "clerk02", "password": "file-pw"})
        demo, _, _ = await _post(client, "/api/auth/login",
                                 {"username": "clerk01", "password": DEMO_PW})
        assert (ok, demo) == (200, 401)


def test_serve_demo_prints_a_kiosk_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hall serve --demo` prints XH-001's demo kiosk secret and its screen's address."""
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET), demo=True)
    _print_demo_kiosk(app, "http://127.0.0.1:8080/")
    secret = demo_kiosk_secret(SECRET, "XH-001")
    out = capsys.readouterr().out
    assert f"kiosk XH-001 secret: {secret}" in out
    assert f"http://127.0.0.1:8080/kiosk/XH-001#secret={secret}" in out
