"""A private PostgreSQL cluster (never the machine's own server, which others use): initdb +
pg_ctl in a directory of its own, on a free loopback port; stop and start it again to make a
real outage. Used by the durability tests and by bench/district.py's --faults."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
from pathlib import Path

from tests.redisproc import free_port


class PgMissingError(RuntimeError):
    """A PostgreSQL program is not installed."""


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   reverse=True)), None)
    if found is None:
        raise PgMissingError(f"PostgreSQL's {name} is not installed")
    return found


class PgCluster:
    """PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user.
    ``url`` is the ``postgres`` database's."""

    def __init__(self, directory: Path, *, max_connections: int | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = self.database_url("postgres")
        self._options = "" if max_connections is None else f" -c max_connections={max_connections}"
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def database_url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(pg_bin("initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U",
                  "postgres", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"),
                  "-w", "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                  f"-c fsync=off{self._options}", "start")

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def create(self, database: str) -> str:
        """A new database; its URL."""
        self._run(pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  database)
        return self.database_url(database)

    def remove(self) -> None:
        """Stop, whatever state it is in (the directory stays)."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop()
