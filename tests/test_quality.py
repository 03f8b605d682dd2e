"""The codebase stays lint-clean (ruff) and type-clean (mypy --strict), as CI checks it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)


def test_ruff_finds_nothing() -> None:
    """ruff (configured in pyproject.toml) reports no problem anywhere in the repository."""
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    """mypy --strict passes on every package, the tests, each benchmark and each script."""
    result = _run("mypy", "server", "signaling", "rooms", "web", "kiosk", "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    # Benchmarks are scripts, checked one by one: bench/signaling.py would otherwise clash
    # with the signaling package's module name.
    scripts = sorted((ROOT / "bench").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    for script in scripts:
        result = _run("mypy", str(script.relative_to(ROOT)))
        assert result.returncode == 0, script.name + ": " + result.stdout + result.stderr
