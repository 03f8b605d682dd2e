"""Smoke test of bench/cluster.py: ``--quick`` measures every configuration (embedded, Redis
with 1, 2 and 4 processes, AsyncRedisManager with 1, 2 and 4) and ends with the JSON summary.

It takes about 25 s on the 2-core machine (most of it starting the four clusters), under the
40 s limit for the normal suite, so it carries no marker. It needs ``redis-server`` on PATH.
The figures themselves are not checked (the machine may be shared); the halls' anomalies the
bench reports (reordered relays, slow stops) do not fail it, but a configuration it could not
measure (``errors``) does.
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
BENCH = ROOT / "bench" / "cluster.py"

# The figures the bench promises (its docstring); each must be a finite number.
KEYS = [
    "efficiency_2", "efficiency_4", "redis_p99_added_ms", "relay_p99_added_ms",
    *(f"cycles_per_cpu_s_{k}" for k in ("embedded", "1", "2", "4")),
    *(f"relays_per_cpu_s_{k}" for k in ("embedded", "1", "2", "4")),
    *(f"manager_cpu_per_msg_us_{n}" for n in (1, 2, 4)),
    "manager_growth_2", "manager_growth_4", "hall_relay_growth_4",
]


def test_quick_run_ends_with_the_summary(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--keep-logs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )
    output = f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(summary, dict), output
    assert summary["errors"] == {}, output
    for key in KEYS:
        assert key in summary, f"{key} missing\n{output}"
        value = summary[key]
        assert isinstance(value, int | float) and math.isfinite(value), (key, value)
    for key in KEYS:
        if "per_cpu_s" in key or "per_msg" in key or key.startswith("efficiency"):
            assert summary[key] > 0, (key, summary[key])
