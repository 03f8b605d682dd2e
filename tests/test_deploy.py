"""The deployment files: deploy/local-cluster (run for real), deploy/compose.yaml and
deploy/nginx.conf (read, and nginx run in front of a local cluster when nginx is installed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rooms.files import FileLimits
from tests.redisproc import free_port
from tests.signalkit import Client

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
LOCAL_CLUSTER = DEPLOY / "local-cluster"
START_TIMEOUT_S = 90.0

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed")


# -- helpers ------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def _wait_gone(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [pid for pid in pids if _alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


class Launch:
    """A running deploy/local-cluster: its process, its JSON line, its stderr file."""

    def __init__(self, proc: subprocess.Popen[bytes], info: dict[str, Any],
                 stderr: Any) -> None:
        self.proc = proc
        self.info = info
        self._stderr = stderr

    def stderr(self) -> str:
        self._stderr.seek(0)
        return str(self._stderr.read().decode(errors="replace"))

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM, as a user's Ctrl-C or the bench would; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@contextlib.contextmanager
def local_cluster(*args: str, env: dict[str, str] | None = None) -> Iterator[Launch]:
    """Start deploy/local-cluster ARGS, yield once its JSON line is out, always stop it."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(LOCAL_CLUSTER), *args], stdout=subprocess.PIPE,
            stderr=stderr, cwd=ROOT, start_new_session=True,
            env={**os.environ, "HALL_LOG_LEVEL": "WARNING", **(env or {})},
        )
        assert proc.stdout is not None
        launch: Launch | None = None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
            line = proc.stdout.readline() if ready else b""
            if not line.strip():
                stderr.seek(0)
                raise AssertionError(
                    f"local-cluster {args} printed no JSON line (status {proc.poll()}):\n"
                    f"{stderr.read().decode(errors='replace')}")
            launch = Launch(proc, json.loads(line), stderr)
            yield launch
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            # Whatever happened above, nothing it started may outlive the test.
            if launch is not None:
                for pid in [*launch.info["pids"], launch.info.get("redis_pid")]:
                    if pid and _alive(int(pid)):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
            proc.stdout.close()


async def _json(http: aiohttp.ClientSession, method: str, url: str,
                body: dict[str, Any] | None = None) -> Any:
    async with http.request(method, url, json=body) as response:
        return await response.json()


def _queued(snapshot: dict[str, Any], matter_id: str) -> int:
    return int(next(m["queued"] for m in snapshot["matters"] if m["id"] == matter_id))


# -- local-cluster ------------------------------------------------------------------------------


def test_local_cluster_is_an_executable_stdlib_script() -> None:
    """deploy/local-cluster is executable, starts with a python3 shebang, imports stdlib only."""
    assert os.access(LOCAL_CLUSTER, os.X_OK)
    text = LOCAL_CLUSTER.read_text()
    assert text.startswith("#!/usr/bin/env python3\n")
    imported = set(re.findall(r"^(?:import|from) (\w+)", text, re.MULTILINE))
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_embedded_cluster_serves_then_stops_cleanly() -> None:
    """--embedded: one hall, the JSON line, /readyz 200; SIGTERM stops it and removes its dirs."""
    with local_cluster("--embedded", "--demo") as launch:
        info = launch.info
        assert set(info) >= {"redis_url", "prefix", "halls", "pids", "redis_pid",
                             "demo_password", "secret_key", "data_dir"}
        assert info["redis_url"] is None and info["redis_pid"] is None
        assert len(info["halls"]) == len(info["pids"]) == 1
        assert info["demo_password"] and len(info["secret_key"]) >= 32
        data_dir = Path(info["data_dir"])
        assert _status(info["halls"][0] + "/readyz") == 200
        assert (data_dir / "hall-1.log").exists()
        assert (data_dir / "records.sqlite3").exists()  # `hall db upgrade` ran first
        assert _alive(info["pids"][0])
        assert launch.stop() == 0
        assert _wait_gone(info["pids"], 5) == []
        assert not data_dir.exists()


def test_local_cluster_refuses_a_bad_process_count() -> None:
    """--processes outside 1..8 is a usage error (exit 2) before anything starts."""
    done = subprocess.run([sys.executable, str(LOCAL_CLUSTER), "--processes", "9"],
                          capture_output=True, cwd=ROOT, timeout=30, check=False)
    assert done.returncode == 2
    assert b"--processes" in done.stderr


def test_local_cluster_exits_1_when_a_hall_cannot_start(tmp_path: Path) -> None:
    """A configuration the hall refuses: exit 1 with the hall's error, nothing left running."""
    data_dir = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, str(LOCAL_CLUSTER), "--embedded", "--data-dir", str(data_dir)],
        capture_output=True, cwd=ROOT, timeout=60, check=False,
        env={**os.environ, "HALL_SECRET_KEY": "too-short"},
    )
    assert done.returncode == 1
    assert done.stdout == b""
    assert b"HALL_SECRET_KEY" in done.stderr
    assert data_dir.exists()  # given with --data-dir: the caller's, kept


async def _across_processes(info: dict[str, Any]) -> None:
    """A token, a ticket and a resume across the two processes of ``info``; kills process 2."""
    h1, h2 = info["halls"]
    async with aiohttp.ClientSession() as http:
        # A clerk logs in on process 1; process 2 accepts the token.
        login = await _json(http, "POST", h1 + "/api/auth/login",
                            {"username": "clerk01", "password": info["demo_password"]})
        assert login["ok"], login
        resident = await _json(http, "POST", h1 + "/api/dev/resident-token",
                               {"resident_id": "deploy-r1", "name": "居民"})
        matter = (await _json(http, "GET", h1 + "/api/catalog"))["matters"][0]["id"]
        clerk, person, again = Client(), Client(), Client()
        try:
            await clerk.connect(h2, auth={"token": login["token"]})
            assert (await clerk.next("welcome"))["participant"] == "clerk:clerk01"
            # A resident takes a ticket on process 2; both processes see it queued.
            await person.connect(h2, auth={"id_token": resident["id_token"]})
            welcome = await person.next("welcome")
            taken = await person.call("ticket.take", {"matter_id": matter,
                                                      "when_unstaffed": "wait"})
            assert taken["ok"], taken
            for hall in (h1, h2):
                assert _queued(await _json(http, "GET", hall + "/api/queues"), matter) == 1
            # Process 2 dies; the resident resumes on process 1 with the same ticket.
            os.kill(info["pids"][1], signal.SIGKILL)
            for _ in range(100):
                if not _alive(info["pids"][1]):
                    break
                await asyncio.sleep(0.05)
            await person.close()
            await clerk.close()
            await again.connect(h1, auth={"id_token": resident["id_token"],
                                          "resume": welcome["resume_token"], "last_seq": 0})
            back = await again.next("welcome")
            assert back["resumed"] is True
            assert back["ticket"]["id"] == taken["ticket"]["id"]
        finally:
            for client in (again, person, clerk):
                await client.close()


@needs_redis
def test_two_processes_share_one_hall() -> None:
    """--processes 2: both ready; a token, a ticket and a resume work across the processes;
    a killed process leaves the script and the other process running; SIGTERM ends the rest."""
    with local_cluster("--processes", "2", "--demo") as launch:
        info = launch.info
        h1, h2 = info["halls"]
        assert info["redis_url"].startswith("redis://127.0.0.1:")
        assert info["prefix"].startswith("lc") and _alive(info["redis_pid"])
        assert _status(h1 + "/readyz") == 200 and _status(h2 + "/readyz") == 200
        asyncio.run(_across_processes(info))
        assert not _alive(info["pids"][1])
        assert launch.proc.poll() is None  # the launcher outlives a killed hall
        assert _status(h1 + "/readyz") == 200
        assert launch.stop() == 0
        assert _wait_gone([info["pids"][0], info["redis_pid"]], 5) == []
        assert not Path(info["data_dir"]).exists()


# -- compose.yaml -------------------------------------------------------------------------------


def _services(text: str) -> dict[str, str]:
    """The text of each service under the top-level ``services:`` key, by name."""
    section = re.search(r"^services:\n(.*?)(?=^\S)", text, re.MULTILINE | re.DOTALL)
    assert section is not None, "no services: section"
    blocks = re.split(r"^  ([\w-]+):[ \t]*\n", section.group(1), flags=re.MULTILINE)
    return {name: body for name, body in zip(blocks[1::2], blocks[2::2], strict=True)}


def _anchor(text: str, name: str) -> str:
    found = re.search(rf"^x-[\w-]+: &{name}\n(.*?)(?=^\S)", text, re.MULTILINE | re.DOTALL)
    assert found is not None, f"no &{name} anchor"
    return found.group(1)


def test_compose_names_every_service_and_shares_the_halls_state() -> None:
    """compose.yaml: redis (AOF), postgres, coturn, migrate, hall1/2 from the Dockerfile
    sharing one Redis, one database and one data volume, nginx in front."""
    text = (DEPLOY / "compose.yaml").read_text()
    services = _services(text)
    assert set(services) >= {"redis", "postgres", "coturn", "migrate", "hall1", "hall2",
                             "nginx"}
    hall = _anchor(text, "hall")
    for name in ("hall1", "hall2", "migrate"):
        assert "<<: *hall" in services[name]
    assert re.search(r"context: \.\.\n\s+dockerfile: Dockerfile\n", hall)
    assert (ROOT / "Dockerfile").is_file()
    assert "HALL_REDIS_URL: redis://redis:6379/0" in hall
    assert "HALL_DATABASE_URL: postgresql+asyncpg://hall:" in hall
    assert "@postgres:5432/hall" in hall
    assert "HALL_DATA_DIR: /data" in hall and "- hall-data:/data" in hall
    for name in ("hall1", "hall2"):  # nothing of their own overrides the shared settings
        assert "environment" not in services[name] and "HALL_REDIS" not in services[name]
        assert f"HALL_PROCESS_ID={name}-" in services[name]
    assert "condition: service_completed_successfully" in hall
    assert '"hall", "db", "upgrade"' in services["migrate"]
    assert '"--appendonly", "yes"' in services["redis"]
    assert "pg-data:/var/lib/postgresql/data" in services["postgres"]
    assert "healthcheck" in services["postgres"]
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf" in services["nginx"]
    assert "./turnserver.conf:/etc/coturn/turnserver.conf" in services["coturn"]


def test_coturn_uses_the_halls_turn_secret() -> None:
    """coturn's static-auth-secret is the halls' HALL_TURN_SECRET (one variable, from .env),
    with use-auth-secret, port 3478 and a relay range compose publishes one to one."""
    text = (DEPLOY / "compose.yaml").read_text()
    coturn = _services(text)["coturn"]
    assert "HALL_TURN_SECRET: ${HALL_TURN_SECRET:?" in coturn
    assert 'echo "static-auth-secret=$$HALL_TURN_SECRET"' in coturn
    assert "HALL_TURN_SECRET: ${HALL_TURN_SECRET:?" in _anchor(text, "hall")
    conf = (DEPLOY / "turnserver.conf").read_text()
    settings = dict(re.findall(r"^([\w-]+)=(\S+)$", conf, re.MULTILINE))
    assert re.search(r"^use-auth-secret$", conf, re.MULTILINE)
    assert "static-auth-secret" not in settings  # the secret is never in a tracked file
    assert settings["listening-port"] == "3478"
    low, high = settings["min-port"], settings["max-port"]
    assert f'"{low}-{high}:{low}-{high}/udp"' in coturn
    for port in ('"3478:3478/udp"', '"3478:3478/tcp"'):
        assert port in coturn


def test_env_example_lists_every_required_variable() -> None:
    """Every ${VAR:?...} compose.yaml requires is in deploy/.env.example, secrets left empty."""
    text = (DEPLOY / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"HALL_SECRET_KEY", "HALL_TURN_SECRET", "POSTGRES_PASSWORD"} <= required
    example = dict(re.findall(r"^(\w+)=(.*)$", (DEPLOY / ".env.example").read_text(),
                              re.MULTILINE))
    assert required <= set(example)
    for secret in ("HALL_SECRET_KEY", "HALL_TURN_SECRET", "POSTGRES_PASSWORD"):
        assert example[secret] == ""  # no placeholder a careless deploy would run with


def test_compose_is_valid_yaml_when_pyyaml_is_installed() -> None:
    """With PyYAML, compose.yaml loads and its halls resolve (through the anchor) to one
    Redis URL, the Dockerfile build and the migrate dependency."""
    import yaml
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    urls = {services[n]["environment"]["HALL_REDIS_URL"] for n in ("hall1", "hall2")}
    assert urls == {"redis://redis:6379/0"}
    for name in ("hall1", "hall2"):
        assert services[name]["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert services[name]["depends_on"]["migrate"]["condition"] == \
            "service_completed_successfully"
    assert "migrate" not in services["migrate"]["depends_on"]


# -- nginx.conf ---------------------------------------------------------------------------------


def _location(conf: str, path: str) -> str:
    found = re.search(rf"location {re.escape(path)} \{{(.*?)\n    \}}", conf, re.DOTALL)
    assert found is not None, f"no location {path}"
    return found.group(1)


def test_nginx_conf_upgrades_websockets_to_both_halls() -> None:
    """nginx.conf: both halls in one sticky upstream; /socket.io/ with Upgrade/Connection and
    long timeouts; probes proxied; body limit above the hall's own file limit."""
    conf = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream hall \{(.*?)\n\}", conf, re.DOTALL)
    assert upstream is not None
    assert re.search(r"^\s+(ip_hash|hash \$remote_addr( consistent)?);", upstream.group(1),
                     re.MULTILINE)
    assert "server hall1:8080" in upstream.group(1) and "server hall2:8080" in upstream.group(1)
    sio = _location(conf, "/socket.io/")
    assert "proxy_set_header Upgrade $http_upgrade;" in sio
    assert "proxy_set_header Connection $connection_upgrade;" in sio
    assert "proxy_set_header Host $http_host;" in sio  # not inherited once a location sets any
    assert "proxy_http_version 1.1;" in conf
    timeout = re.search(r"proxy_read_timeout (\d+)s;", sio)
    assert timeout is not None and int(timeout.group(1)) >= 600
    assert "map $http_upgrade $connection_upgrade" in conf
    for probe in ("= /healthz", "= /readyz"):
        assert "proxy_pass http://hall;" in _location(conf, probe)
    limit = re.search(r"client_max_body_size (\d+)m;", conf)
    assert limit is not None
    assert int(limit.group(1)) * 1024 * 1024 > FileLimits().max_file_bytes


def _nginx_version() -> tuple[int, ...] | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if nginx is None:
        return None
    out = subprocess.run([nginx, "-v"], capture_output=True, check=False).stderr.decode()
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in found.groups()) if found else None


@contextlib.contextmanager
def nginx_front(tmp_path: Path, ports: list[str]) -> Iterator[str]:
    """The real nginx with deploy/nginx.conf, hall1/hall2 pointed at loopback ports; its URL."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = (DEPLOY / "nginx.conf").read_text()
    conf = conf.replace("hall1:8080", f"127.0.0.1:{ports[0]}")
    conf = conf.replace("hall2:8080", f"127.0.0.1:{ports[1]}")
    version = _nginx_version()
    if version is not None and version < (1, 27, 3):  # no "resolve" (nor needed: IPs)
        conf = conf.replace(" resolve ", " ")
    conf = re.sub(r"^resolver .*$", "", conf, flags=re.MULTILINE)
    listen = free_port()
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / sub).mkdir()
    main_conf = tmp_path / "nginx.conf"
    main_conf.write_text(
        # As root, workers would run as nobody, who cannot enter pytest's tmp_path.
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log warn;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  fastcgi_temp_path {tmp_path}/fastcgi;\n"
        f"  uwsgi_temp_path {tmp_path}/uwsgi;\n  scgi_temp_path {tmp_path}/scgi;\n"
        f"{conf}\n}}\n")
    checked = subprocess.run([nginx, "-t", "-c", str(main_conf), "-p", str(tmp_path)],
                             capture_output=True, check=False, timeout=30)
    assert checked.returncode == 0, checked.stderr.decode()
    proc = subprocess.Popen([nginx, "-c", str(main_conf), "-p", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        front = f"http://127.0.0.1:{listen}"
        deadline = time.monotonic() + 10
        while _status(front + "/readyz") != 200:
            assert proc.poll() is None, (tmp_path / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx never answered /readyz 200"
            time.sleep(0.1)
        yield front
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful shutdown
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _through_nginx(front: str, password: str) -> None:
    async with aiohttp.ClientSession() as http:
        login = await _json(http, "POST", front + "/api/auth/login",
                            {"username": "clerk01", "password": password})
        assert login["ok"], login
    # The browser's Origin is the address it used, port included: accepted as same origin
    # only because nginx passes Host (and X-Forwarded-Host) with the port ($http_host).
    client = Client()
    try:
        await client.connect(front, auth={"token": login["token"]}, headers={"Origin": front})
        assert (await client.next("welcome"))["participant"] == "clerk:clerk01"
        assert (await client.call("auth.refresh"))["ok"]
    finally:
        await client.close()


@needs_redis
def test_nginx_conf_in_front_of_a_local_cluster(tmp_path: Path) -> None:
    """The real nginx with deploy/nginx.conf in front of a 2-process local cluster passes
    /readyz, /healthz, logins and same-origin WebSocket connections through to the halls."""
    with local_cluster("--processes", "2", "--demo") as launch:
        ports = [url.rsplit(":", 1)[1] for url in launch.info["halls"]]
        with nginx_front(tmp_path, ports) as front:
            assert _status(front + "/healthz") == 200
            asyncio.run(_through_nginx(front, launch.info["demo_password"]))
