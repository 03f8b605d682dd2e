"""GET /metrics (server/metrics.py, docs/metrics.md): what a live hall reports after real
events, who may read it, the alert rules under promtool, and a real Prometheus scraping a hall
and firing a rule."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rooms.errors import HallError
from server import keys
from server.config import Settings
from tests.signalkit import Client, LiveHall, clients, free_port, hall_backend, live_hall

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = RULES_DIR / "grafana-dashboard.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
HAVE_PROMETHEUS = os.path.exists(PROMETHEUS)

MATTER = "flexible_employment_registration"  # served by clerk01 and clerk02 (hrss)
UNSTAFFED = "residence_permit"  # no clerk of the test is logged in for it

# Label names a hall may use, and what their values look like: names from closed sets
# (events, states, codes, catalog ids), never a ticket, participant or socket id.
LABELS = {"event", "code", "role", "state", "matter", "department", "service_point", "device",
          "link", "stage", "candidate_type", "le", "quantile"}
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.+\-]{1,64}$")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(hall: LiveHall, headers: dict[str, str] | None = None
                 ) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(hall.url + "/metrics",
                                                          headers=headers or {}) as r:
        return r.status, await r.text()


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape_until(hall: LiveHall, check: Callable[[Samples], bool],
                       within: float = 5.0) -> Samples:
    """Scrape until ``check`` holds: hall-wide gauges may come from the wall's snapshot,
    shared between processes for up to a second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        status, text = await scrape(hall)
        assert status == 200, text
        samples = parse(text)
        if check(samples):
            return samples
        if loop.time() > deadline:
            raise AssertionError("metrics never matched; last scrape:\n" + text[-4000:])
        await asyncio.sleep(0.1)


async def _welcome(c: Client, hall: LiveHall, auth: dict[str, Any]) -> dict[str, Any]:
    await c.connect(hall.url, auth)
    welcome: dict[str, Any] = await c.next("welcome")
    return welcome


@pytest.mark.usefixtures(hall_backend.__name__)
async def test_metrics_report_real_events_without_ids_in_labels(hall_backend: str) -> None:
    """After a clerk, a resident and a kiosk act, /metrics shows their figures, and no label
    value is an id."""
    async with live_hall() as hall, clients(3) as (clerk, resident, kiosk):
        await _welcome(clerk, hall, {"token": await hall.clerk_token("clerk01")})
        id_token = await hall.resident_id_token("r-metrics-1")
        welcome = await _welcome(resident, hall, {"id_token": id_token})
        took = await resident.call("ticket.take", {"matter_id": MATTER})
        assert took["ok"], took
        offer = await clerk.next("offer.new")
        declined = await clerk.call("offer.decline", {"ticket_id": offer["ticket_id"]})
        assert declined["ok"], declined
        unknown = await resident.call("no.such.event", {})
        assert unknown["error"]["code"] == "unknown_event"
        await _welcome(kiosk, hall, {"token": await hall.kiosk_token("XH-001")})
        health = await kiosk.call("kiosk.health", {"camera": "failed", "microphone": "ok",
                                                   "speaker": "ok", "document_camera": "absent"})
        assert health["ok"], health
        # A resume with a token that is no good: an attempt, and a failure.
        stranger = Client()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await stranger.connect(hall.url, {"id_token": id_token, "resume": "x" * 32,
                                              "last_seq": 0})
        await stranger.close()

        samples = await scrape_until(hall, lambda s: value(
            s, "hall_waiting_tickets", matter=MATTER, department="hrss") == 1)
        assert value(samples, "hall_connections", role="clerk") == 1
        assert value(samples, "hall_connections", role="resident") == 1
        assert value(samples, "hall_connections", role="kiosk") == 1
        assert value(samples, "hall_offers_total") == 1
        assert value(samples, "hall_offers_declined_total") == 1
        assert value(samples, "hall_offers_accepted_total") == 0
        assert value(samples, "hall_resume_attempts_total") == 1
        assert sum(v for (n, _), v in samples.items() if n == "hall_resume_failures_total") == 1
        assert value(samples, "hall_event_handling_seconds_count", event="ticket.take") == 1
        assert value(samples, "hall_event_handling_seconds_count", event="offer.decline") == 1
        assert value(samples, "hall_event_handling_seconds_count", event="unknown") == 1
        assert value(samples, "hall_event_errors_total", event="unknown",
                     code="unknown_event") == 1
        assert value(samples, "hall_event_handling_seconds_count", event="connect") == 4
        assert value(samples, "hall_oldest_wait_seconds", matter=MATTER, department="hrss") > 0
        assert value(samples, "hall_clerks_on_duty", matter=MATTER, department="hrss") == 1
        assert value(samples, "hall_clerks", state="available") == 1
        assert value(samples, "hall_kiosks", state="online") == 1
        assert value(samples, "hall_kiosk_online", service_point="XH-001") == 1
        assert value(samples, "hall_kiosk_devices_failed", device="camera") == 1
        assert value(samples, "hall_kiosk_devices_failed", device="microphone") == 0
        assert value(samples, "hall_service_level_seconds") == 300
        assert value(samples, "hall_live_state_readable") == 1
        assert value(samples, "hall_records_writer_healthy") == 1
        assert ("hall_records_outbox_age_seconds", frozenset()) in samples
        if hall_backend == "redis":
            assert value(samples, "hall_store_request_seconds_count", link="store") > 0
            assert value(samples, "hall_store_request_seconds_count", link="hub_state") > 0
            assert value(samples, "hall_store_errors_total", link="store") == 0
            assert value(samples, "hall_lock_transactions_total") > 0
            assert (value(samples, "hall_lock_attempts_total")
                    >= value(samples, "hall_lock_transactions_total"))

        # No ids in labels: every label is one of the known names, every value a short name,
        # and none is an id this test saw.
        ids = {welcome["participant"], took["ticket"]["id"], took["ticket"]["number"],
               "clerk01", "r-metrics-1", resident.sio.get_sid(), clerk.sio.get_sid()}
        catalog = hall.app[keys.CATALOG]
        for (name, labels), _ in samples.items():
            for label, text in labels:
                assert label in LABELS, (name, label)
                assert label == "le" or _LABEL_VALUE.match(text), (name, label, text)
                assert text not in ids, (name, label, text)
                if label == "matter":
                    assert text in catalog.matters
                if label == "department":
                    assert text in catalog.departments
                if label == "service_point":
                    assert text in catalog.service_points


async def test_metrics_are_refused_outside_the_allow_list() -> None:
    """Only HALL_METRICS_ALLOW may read /metrics (403 forbidden otherwise); behind a trusted
    proxy the forwarded client address is the one checked."""
    async with live_hall({"HALL_METRICS_ALLOW": "10.0.0.0/8"}) as hall:
        status, text = await scrape(hall)
        assert status == 403
        assert json.loads(text)["error"]["code"] == "forbidden"
    async with live_hall({"HALL_METRICS_ALLOW": "10.0.0.0/8",
                          "HALL_TRUSTED_PROXIES": "127.0.0.1"}) as hall:
        status, _ = await scrape(hall, {"X-Forwarded-For": "10.1.2.3"})
        assert status == 200
        status, _ = await scrape(hall, {"X-Forwarded-For": "203.0.113.9"})
        assert status == 403
    async with live_hall({"HALL_TRUSTED_PROXIES": "127.0.0.1"}) as hall:
        # The default allows loopback only: a client behind the proxy is not loopback.
        status, _ = await scrape(hall, {"X-Forwarded-For": "203.0.113.9"})
        assert status == 403
        status, _ = await scrape(hall)
        assert status == 200
    with pytest.raises(HallError, match="HALL_METRICS_ALLOW"):
        Settings.from_env({"HALL_METRICS_ALLOW": "everyone"})


def test_promtool_checks_the_rules_the_config_and_their_unit_tests() -> None:
    """deploy/prometheus/ passes promtool: the rules, the example config, the rule tests."""
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([PROMTOOL, *args], cwd=RULES_DIR, capture_output=True,
                              text=True, timeout=30, check=False)
        assert done.returncode == 0, (args, done.stdout, done.stderr)


@asynccontextmanager
async def prometheus(target: str, rules: Path) -> AsyncIterator[str]:
    """A private Prometheus scraping ``target`` every second with ``rules`` loaded: its own
    port, config and storage (never the package's service); stopped afterwards."""
    if not HAVE_PROMETHEUS:
        pytest.fail("prometheus is not installed: run scripts/install-browser.sh (Debian "
                    "package prometheus)")
    home = Path(tempfile.mkdtemp(prefix="hall-prometheus-"))
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "hall", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [target]}]}],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (home / "log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS, f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(url + "/-/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("prometheus never became ready")
        assert proc.returncode is None, (home / "log").read_text()
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


async def query(url: str, expr: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(
            url + "/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def query_until(url: str, expr: str, check: Callable[[list[dict[str, Any]]], bool],
                      within: float = 15.0) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await query(url, expr)
        if check(result):
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{expr}: {result}")
        await asyncio.sleep(0.2)


def _dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


async def test_a_real_prometheus_scrapes_the_hall_and_fires_a_rule(tmp_path: Path) -> None:
    """Prometheus (the Debian package) scrapes a live hall: its hall_waiting_tickets is the
    hall's, the no-clerk-on-duty rule fires, and every dashboard query is valid."""
    rules = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        if rule["alert"] == "HallWaitingNoClerkOnDuty":
            rule["for"] = "0s"  # the real rule waits 2 minutes
    quick = tmp_path / "alerts.yml"
    quick.write_text(yaml.safe_dump(rules))
    async with live_hall() as hall, clients(1) as (resident,):
        await _welcome(resident, hall, {"id_token": await hall.resident_id_token("r-prom")})
        took = await resident.call("ticket.take", {"matter_id": UNSTAFFED,
                                                   "when_unstaffed": "wait"})
        assert took["ok"], took
        target = hall.url.removeprefix("http://")
        async with prometheus(target, quick) as url:
            waiting = f'hall_waiting_tickets{{matter="{UNSTAFFED}"}}'
            result = await query_until(url, waiting, lambda r: len(r) == 1)
            snapshot = await hall.app[keys.HALL].snapshot()
            queued = next(m["queued"] for m in snapshot["matters"] if m["id"] == UNSTAFFED)
            assert float(result[0]["value"][1]) == queued == 1
            assert result[0]["metric"]["department"] == "police"
            firing = ('ALERTS{alertname="HallWaitingNoClerkOnDuty",alertstate="firing",'
                      f'matter="{UNSTAFFED}"}}')
            alerts = await query_until(url, firing, lambda r: len(r) == 1)
            assert alerts[0]["metric"]["severity"] == "critical"
            # Only that matter: the others have nobody waiting.
            assert len(await query(url, 'ALERTS{alertname="HallWaitingNoClerkOnDuty"}')) == 1
            for expr in _dashboard_exprs():
                await query(url, expr)  # status success: the expression is valid
            up = await query(url, 'up{job="hall"}')
            assert [float(r["value"][1]) for r in up] == [1.0]
