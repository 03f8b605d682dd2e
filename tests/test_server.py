"""Tests of the composition layer: configuration, the ``hall`` command and the HTTP routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rooms.errors import HallError
from rooms.policy import QueuePolicy
from server import keys
from server.app import create_app
from server.cli import main
from server.config import Settings
from server.routes import public_queues

SECRET = "s" * 32


# -- configuration ---------------------------------------------------------------------------


def test_defaults_without_any_variable() -> None:
    """With no HALL_* variable set, every setting takes its documented default."""
    s = Settings.from_env({})
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.redis_url is None
    assert s.data_dir == Path("./var")
    assert s.catalog_path is None
    assert s.secret_key is None
    assert s.demo_password is None
    assert s.hours_enforced is True
    assert s.log_level == "INFO"
    assert s.database_url.endswith("var/records.sqlite3")
    assert s.database_url.startswith("sqlite+aiosqlite:///")
    assert s.policy() == QueuePolicy(
        offer_timeout_s=20,
        max_missed_offers=2,
        wrapup_s=60,
        wrapup_max_extension_s=300,
        abandon_grace_s=30,
        priority_credit_s=600,
        default_max_queue=500,
        max_wait_s=14400,
        enforce_hours=True,
    )


def test_every_variable_is_read(tmp_path: Path) -> None:
    """Each HALL_* variable lands in its setting and the policy gets the timeouts."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text("")
    s = Settings.from_env(
        {
            "HALL_HOST": "0.0.0.0",
            "HALL_PORT": "9000",
            "HALL_DATABASE_URL": "postgresql://hall:pw@db/hall",
            "HALL_DATA_DIR": str(tmp_path),
            "HALL_CATALOG": str(catalog),
            "HALL_SECRET_KEY": SECRET,
            "HALL_DEMO_PASSWORD": "demo-pass",
            "HALL_ENFORCE_HOURS": "off",
            "HALL_OFFER_TIMEOUT_S": "15.5",
            "HALL_MAX_MISSED_OFFERS": "3",
            "HALL_WRAPUP_S": "45",
            "HALL_WRAPUP_MAX_EXTENSION_S": "0",
            "HALL_ABANDON_GRACE_S": "10",
            "HALL_PRIORITY_CREDIT_S": "120",
            "HALL_MAX_QUEUE": "50",
            "HALL_MAX_WAIT_S": "none",
            "HALL_LOG_LEVEL": "debug",
        }
    )
    assert (s.host, s.port, s.data_dir, s.catalog_path) == ("0.0.0.0", 9000, tmp_path, catalog)
    assert s.database_url == "postgresql+asyncpg://hall:pw@db/hall"
    assert (s.secret_key, s.demo_password, s.log_level) == (SECRET, "demo-pass", "DEBUG")
    policy = s.policy()
    assert policy.offer_timeout_s == 15.5
    assert policy.max_missed_offers == 3
    assert (policy.wrapup_s, policy.wrapup_max_extension_s) == (45, 0)
    assert (policy.abandon_grace_s, policy.priority_credit_s) == (10, 120)
    assert (policy.default_max_queue, policy.max_wait_s) == (50, None)
    assert policy.enforce_hours is False


def test_default_sqlite_file_is_in_the_data_dir(tmp_path: Path) -> None:
    """Without HALL_DATABASE_URL the records DB is <HALL_DATA_DIR>/records.sqlite3."""
    s = Settings.from_env({"HALL_DATA_DIR": str(tmp_path)})
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'records.sqlite3'}"


def test_empty_value_counts_as_unset() -> None:
    """An empty variable (`HALL_PORT=` in a unit file) means the default, not an error."""
    assert Settings.from_env({"HALL_PORT": "", "HALL_SECRET_KEY": ""}) == Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HALL_PORT", "http"),
        ("HALL_PORT", "70000"),
        ("HALL_HOST", "bad host"),
        ("HALL_REDIS_URL", "localhost:6379"),
        ("HALL_DATABASE_URL", "mysql://u@h/db"),
        ("HALL_CATALOG", "/no/such/catalog.toml"),
        ("HALL_SECRET_KEY", "short"),
        ("HALL_DEMO_PASSWORD", "   "),
        ("HALL_ENFORCE_HOURS", "maybe"),
        ("HALL_OFFER_TIMEOUT_S", "0"),
        ("HALL_OFFER_TIMEOUT_S", "nan"),
        ("HALL_MAX_MISSED_OFFERS", "0"),
        ("HALL_MAX_MISSED_OFFERS", "1.5"),
        ("HALL_WRAPUP_S", "-1"),
        ("HALL_WRAPUP_MAX_EXTENSION_S", "-5"),
        ("HALL_ABANDON_GRACE_S", "soon"),
        ("HALL_PRIORITY_CREDIT_S", "inf"),
        ("HALL_MAX_QUEUE", "0"),
        ("HALL_MAX_WAIT_S", "-1"),
        ("HALL_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    """A malformed value is refused with code config_invalid and a message naming it."""
    with pytest.raises(HallError) as caught:
        Settings.from_env({name: value})
    assert caught.value.code == "config_invalid"
    assert name in caught.value.message


def test_url_passwords_are_not_echoed() -> None:
    """Errors about URLs name the variable but never print the URL (it may hold a password)."""
    for name, url in [
        ("HALL_REDIS_URL", "http://u:hunter2@h"),
        ("HALL_DATABASE_URL", "oracle://u:hunter2@h/db"),
    ]:
        with pytest.raises(HallError) as caught:
            Settings.from_env({name: url})
        assert name in caught.value.message
        assert "hunter2" not in caught.value.message


def test_secret_key_is_required_outside_demo() -> None:
    """Without HALL_SECRET_KEY a non-demo hall refuses to start, naming the variable."""
    with pytest.raises(HallError) as caught:
        Settings.from_env({}).resolve(demo=False)
    assert caught.value.code == "config_invalid"
    assert "HALL_SECRET_KEY" in caught.value.message


def test_demo_gets_an_ephemeral_secret_key(caplog: pytest.LogCaptureFixture) -> None:
    """In demo mode a missing key is replaced by a random one per start, with a warning."""
    with caplog.at_level(logging.WARNING):
        first = Settings.from_env({}).resolve(demo=True)
        second = Settings.from_env({}).resolve(demo=True)
    assert first.secret_key is not None and second.secret_key is not None
    assert len(first.secret_key) >= 32
    assert first.secret_key != second.secret_key
    assert "HALL_SECRET_KEY" in caplog.text


def test_configured_secret_key_is_kept_in_both_modes() -> None:
    """A configured key is used as is, demo or not."""
    s = Settings.from_env({"HALL_SECRET_KEY": SECRET})
    assert s.resolve(demo=False).secret_key == SECRET
    assert s.resolve(demo=True).secret_key == SECRET


def test_demo_is_always_open_unless_hours_are_set() -> None:
    """--demo turns hours off by default; an explicit HALL_ENFORCE_HOURS still wins."""
    base = Settings.from_env({"HALL_SECRET_KEY": SECRET})
    assert base.resolve(demo=False).policy().enforce_hours is True
    assert base.resolve(demo=True).policy().enforce_hours is False
    forced = Settings.from_env({"HALL_SECRET_KEY": SECRET, "HALL_ENFORCE_HOURS": "true"})
    assert forced.resolve(demo=True).policy().enforce_hours is True
    off = Settings.from_env({"HALL_SECRET_KEY": SECRET, "HALL_ENFORCE_HOURS": "0"})
    assert off.resolve(demo=False).policy().enforce_hours is False


# -- the hall command ------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`hall serve` and `hall db upgrade` configure the root logger; undo it after the test,
    or its handler would keep writing to pytest's closed capture stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_catalog_check_accepts_the_demo_catalog(
    capsys: pytest.CaptureFixture[str], demo_catalog_path: Path
) -> None:
    """`hall catalog check` on the built-in demo catalog exits 0 and prints its summary."""
    from rooms.catalog import load_catalog

    assert main(["catalog", "check", str(demo_catalog_path)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == load_catalog(demo_catalog_path).summary().strip()
    assert out.strip()


def test_catalog_check_reports_a_broken_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`hall catalog check` on an invalid file exits 1 with `error: <message>` on stderr."""
    broken = tmp_path / "broken.toml"
    broken.write_text('[[departments]]\nid = "x"\nthis is not toml =\n', encoding="utf-8")
    assert main(["catalog", "check", str(broken)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert len(captured.err.strip()) > len("error: ")


@pytest.mark.usefixtures("restore_logging")
def test_db_upgrade_prints_the_schema_version(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hall db upgrade` creates the records DB in the data dir and prints its version."""
    monkeypatch.setenv("HALL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("HALL_DATABASE_URL", raising=False)
    assert main(["db", "upgrade"]) == 0
    assert "schema version" in capsys.readouterr().out
    assert (tmp_path / "data" / "records.sqlite3").is_file()


@pytest.mark.usefixtures("restore_logging")
def test_serve_refuses_to_start_without_secret_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hall serve` without HALL_SECRET_KEY (and without --demo) exits 1 before binding."""
    monkeypatch.delenv("HALL_SECRET_KEY", raising=False)
    assert main(["serve", "--port", "0"]) == 1
    assert "HALL_SECRET_KEY" in capsys.readouterr().err


def test_redis_mode_refuses_settings_the_processes_would_not_share(tmp_path: Path) -> None:
    """With HALL_REDIS_URL, a missing secret key, database URL or demo password is refused."""
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(HallError) as caught:
        create_app(settings, demo=True)
    assert caught.value.code == "config_invalid"
    for name in ("HALL_SECRET_KEY", "HALL_DATABASE_URL", "HALL_DEMO_PASSWORD"):
        assert name in caught.value.message


def test_redis_mode_builds_the_shared_stores(tmp_path: Path) -> None:
    """With every shared setting, the hall is built on Redis (nothing is opened yet)."""
    from rooms.redis_store import RedisStore
    from signaling.redis_hub_state import RedisHubState

    env = {"HALL_REDIS_URL": "redis://127.0.0.1:1/0", "HALL_REDIS_PREFIX": "x1:",
           "HALL_PROCESS_ID": "hall-a", "HALL_SECRET_KEY": SECRET,
           "HALL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/r.db",
           "HALL_DATA_DIR": str(tmp_path), "HALL_DEMO_PASSWORD": "pw-123456"}
    app = create_app(Settings.from_env(env), demo=True)
    store, state = app[keys.STORE], app[keys.HUB].state
    assert isinstance(store, RedisStore) and store.prefix == "x1:"
    assert isinstance(state, RedisHubState) and state.process_id == "hall-a"


# -- HTTP over a real socket -----------------------------------------------------------------


@pytest.fixture
def demo_catalog_path() -> Path:
    """The built-in demo catalog file shipped with rooms."""
    from rooms.catalog import DEFAULT_CATALOG_PATH

    return DEFAULT_CATALOG_PATH


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[web.Application]:
    settings = Settings(data_dir=tmp_path, secret_key=SECRET)
    yield create_app(settings, demo=True)


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(app)) as client:
        yield client


async def _json(client: TestClient[web.Request, web.Application], path: str) -> Any:
    response = await client.get(path)
    assert response.content_type == "application/json"
    return response.status, await response.json()


async def test_healthz_answers_ok(client: TestClient[web.Request, web.Application]) -> None:
    """GET /healthz answers 200 {"status": "ok"} while the process runs."""
    assert await _json(client, "/healthz") == (200, {"status": "ok"})


async def test_readyz_is_ready_when_db_and_writer_are(
    client: TestClient[web.Request, web.Application],
) -> None:
    """GET /readyz answers 200 when the records DB answers and the writer is healthy."""
    status, body = await _json(client, "/readyz")
    assert status == 200
    assert body["status"] == "ready"
    assert body["checks"] == {"store": "ok", "records_db": "ok", "records_writer": "ok"}


async def test_readyz_names_the_failed_part(
    app: web.Application, client: TestClient[web.Request, web.Application]
) -> None:
    """GET /readyz answers 503 naming the records DB when it does not answer."""
    await app[keys.RECORDS].close()  # ping() is False on a closed database
    status, body = await _json(client, "/readyz")
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["checks"]["records_db"] == "failed"
    assert body["checks"]["records_writer"] == "ok"


async def test_readyz_fails_when_the_writer_task_died(
    app: web.Application, client: TestClient[web.Request, web.Application]
) -> None:
    """GET /readyz answers 503 naming the records writer once its task has ended."""
    task = app[keys.WRITER_TASK]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    status, body = await _json(client, "/readyz")
    assert status == 503
    assert body["checks"] == {"store": "ok", "records_db": "ok", "records_writer": "failed"}


def test_only_a_demo_ignores_service_hours(tmp_path: Path) -> None:
    """create_app(demo=True) opens the hall around the clock; otherwise the catalog's hours hold."""
    from rooms.catalog import ServiceHours, load_catalog

    settings = Settings(data_dir=tmp_path, secret_key=SECRET)
    assert create_app(settings, demo=True)[keys.CATALOG].hours == ServiceHours.always()
    real = create_app(settings, demo=False)
    assert real[keys.CATALOG].hours == load_catalog(None).hours
    assert real[keys.DEMO_PASSWORD] is None
    assert real[keys.SETTINGS].policy().enforce_hours is True


def test_demo_password_comes_from_the_environment_or_is_random(tmp_path: Path) -> None:
    """HALL_DEMO_PASSWORD is used as is; unset, each demo start gets a different password."""
    fixed = Settings(data_dir=tmp_path, secret_key=SECRET, demo_password="pw-123456")
    assert create_app(fixed, demo=True)[keys.DEMO_PASSWORD] == "pw-123456"
    unset = Settings(data_dir=tmp_path, secret_key=SECRET)
    first = create_app(unset, demo=True)[keys.DEMO_PASSWORD]
    second = create_app(unset, demo=True)[keys.DEMO_PASSWORD]
    assert first and second and first != second


async def test_api_catalog_lists_everything_but_device_secrets(
    app: web.Application, client: TestClient[web.Request, web.Application]
) -> None:
    """GET /api/catalog lists departments, matters, streets, points, and no device secret."""
    response = await client.get("/api/catalog")
    assert response.status == 200
    text = await response.text()
    body = json.loads(text)
    catalog = app[keys.CATALOG]
    assert {d["id"] for d in body["departments"]} == set(catalog.departments)
    assert {m["id"] for m in body["matters"]} == set(catalog.matters)
    assert all("materials" in m for m in body["matters"])
    assert {s["id"] for s in body["streets"]} == set(catalog.streets)
    assert {p["id"] for p in body["service_points"]} == set(catalog.service_points)
    assert "device_secret" not in text
    for point in catalog.service_points.values():
        assert point.device_secret not in text


async def test_api_queues_returns_the_hall_snapshot(
    app: web.Application, client: TestClient[web.Request, web.Application]
) -> None:
    """GET /api/queues answers the public view of the hall's live snapshot as JSON."""
    status, body = await _json(client, "/api/queues")
    assert status == 200
    expected = json.loads(json.dumps(public_queues(await app[keys.HALL].snapshot(),
                                                   staff=False)))
    # "at" is the snapshot's own time; everything else is unchanged in an idle hall.
    assert body.keys() == expected.keys()
    assert {k: v for k, v in body.items() if k != "at"} == {
        k: v for k, v in expected.items() if k != "at"
    }
    assert {m["id"] for m in body["matters"]} == set(app[keys.CATALOG].matters)
    assert sum(body["clerk_states"].values()) == len(app[keys.CATALOG].clerks)
    assert "clerks" not in body  # names are for staff only (tests/test_harden_http.py)


async def test_landing_page_is_chinese_first(
    app: web.Application, client: TestClient[web.Request, web.Application]
) -> None:
    """GET / renders the landing page: 徐汇 in the title, every department listed."""
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    html = await response.text()
    assert "徐汇区虚拟政务大厅" in html
    assert '<html lang="zh-CN">' in html
    assert "/static/hall.css" in html
    for department in app[keys.CATALOG].departments.values():
        assert department.name in html


async def test_static_stylesheet_is_served(
    client: TestClient[web.Request, web.Application],
) -> None:
    """GET /static/hall.css serves the stylesheet from web/static."""
    response = await client.get("/static/hall.css")
    assert response.status == 200
    assert response.content_type == "text/css"
    assert "body" in await response.text()


async def test_nothing_external_is_loaded(
    client: TestClient[web.Request, web.Application],
) -> None:
    """The landing page references no external host (no CDN: kiosks may be offline)."""
    html = await (await client.get("/")).text()
    assert "http://" not in html and "https://" not in html and "//cdn" not in html


def test_hash_password_prints_a_hash_that_logs_in(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`hall hash-password` reads stdin and prints an argon2id hash an accounts file accepts."""
    import io

    from rooms.catalog import load_catalog
    from signaling.accounts import AccountBook

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass\n"))
    assert main(["hash-password"]) == 0
    digest = capsys.readouterr().out.strip()
    assert digest.startswith("$argon2id$")
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        f'[[accounts]]\nusername = "clerk01"\nrole = "clerk"\npassword_hash = "{digest}"\n',
        encoding="utf-8",
    )
    book = AccountBook.from_file(accounts, load_catalog())
    assert book.verify("clerk01", "s3cret-pass").subject == "clerk01"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["hash-password"]) == 1
