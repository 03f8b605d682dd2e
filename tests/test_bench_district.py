"""Smoke test of bench/district.py: ``--quick`` (60 residents, 8 clerks, 5 kiosks over 8 s) on
the embedded hall and on 2 Redis-mode processes ends with the JSON summary, and the records
check passed on both (every ticket one terminal event, no seq gap, the log's tickets are the
clients' tickets, nothing the clients saw is missing).

It takes about 35 s on the 2-core machine (``--quick`` starts the second cluster while the
first is measured), so it carries no marker. It needs ``redis-server`` on PATH. The latencies
are not checked (the machine may be shared); that every figure was measured is.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "district.py"

# The headline keys the issue asks for, then figures every configuration must have measured.
# join_offer_p99_ms counts only tickets taken while a clerk had been free for a second: the
# quick load may have none (then it is null), so only its presence is checked.
HEADLINE = ["take_p99_ms", "store_unavailable", "breaks_forced", "kib_per_connection",
            "lost_events"]
PER_CONFIG = ["take_p50_ms", "take_p99_ms", "join_offer_all_p99_ms", "offer_delivery_p99_ms",
              "accept_p99_ms", "position_staleness_p99_ms", "wall_interval_p50_ms",
              "wall_interval_p99_ms", "cpu_ms_per_ticket", "kib_per_connection"]
RATIOS = ["take_p50_ms", "take_p99_ms", "offer_delivery_p99_ms", "accept_p99_ms",
          "wall_interval_p99_ms", "cpu_ms_per_ticket", "kib_per_connection"]


def test_quick_run_ends_with_the_summary_and_clean_records(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--processes", "0,2",
         "--keep-logs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )
    output = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(summary, dict), output
    assert summary["errors"] == {}, output
    for key in HEADLINE:
        assert key in summary, f"{key} missing\n{output}"
        assert isinstance(summary[key], int | float) and math.isfinite(summary[key]), key
    assert "join_offer_p99_ms" in summary, output
    for config in ("embedded", "2"):
        assert summary[f"records_ok_{config}"] is True, output
        assert summary[f"lost_events_{config}"] == 0, output
        assert summary[f"tickets_{config}"] > 0, output
        assert summary[f"tickets_in_log_{config}"] == summary[f"tickets_taken_{config}"], output
        for key in PER_CONFIG:
            value = summary[f"{key}_{config}"]
            assert isinstance(value, int | float) and math.isfinite(value), (key, config, value)
    for key in RATIOS:
        assert isinstance(summary[f"ratio_{key}_2"], int | float), key
    assert summary["lost_events_total"] == 0, output
