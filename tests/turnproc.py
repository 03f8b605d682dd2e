"""A private coturn (``turnserver``) for the tests: TURN over UDP, TCP and TLS on free ports.

Like tests/redisproc.py for Redis: the test starts its own server with a configuration file of
its own in a temporary directory (never ``/etc/turnserver.conf``, the package's service or its
database), waits until every listener answers, and stops it afterwards. coturn is the Debian
package ``coturn`` (``scripts/install-browser.sh`` installs it with Chromium).

The server authenticates the way production does (deploy/turnserver.conf): ``use-auth-secret``
with a random ``static-auth-secret``, so the only valid credentials are the hall's TURN REST
ones (``signaling.identity.turn_credentials``). It listens and relays on the machine's own
interface address, the one aioice gathers (aioice offers no loopback candidates), so two peers
on this machine meet through it; relayed peers on that address are allowed (the production
configuration denies private networks, which is right there and would refuse every test call).

The TLS listener (``turns:``) uses a certificate made at start-up: a test CA and a server
certificate for the interface address (an IP subjectAltName), so a client can verify it for
real: Python (aioice) by trusting :attr:`TurnServer.ca_file` (``SSL_CERT_FILE``), Chromium by
pinning :attr:`TurnServer.spki_sha256` (``--ignore-certificate-errors-spki-list``).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice.ice import get_host_addresses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.redisproc import end_process

TURNSERVER = "turnserver"
REALM = "hall.test"
START_TIMEOUT_S = 10.0


def own_address() -> str:
    """The machine's own (non-loopback) IPv4 address: the first one aioice gathers."""
    addresses = get_host_addresses(use_ipv4=True, use_ipv6=False)
    if not addresses:
        raise RuntimeError("no non-loopback IPv4 address on this machine for TURN tests")
    return str(addresses[0])


def free_udp_tcp_port(host: str) -> int:
    """A port free for both TCP and UDP on ``host`` (coturn listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        return port


def _make_certificate(directory: Path, host: str) -> tuple[Path, Path, Path, str]:
    """A test CA and a server certificate for ``host`` (IP SAN) signed by it.

    Returns (ca.pem, cert.pem, key.pem, base64 SHA-256 of the server key's SPKI)."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Virtual Hall test CA")])
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return ca_file, cert_file, key_file, base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _stun_binding_answers(host: str, port: int) -> bool:
    """A STUN Binding request over UDP gets a success response (RFC 8489 header only)."""
    transaction = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(0.2)
        try:
            udp.sendto(request, (host, port))
            data = udp.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == transaction


def _tcp_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _tls_answers(host: str, port: int, ca_file: Path) -> bool:
    """A TLS handshake that verifies the certificate against the test CA succeeds."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (socket.create_connection((host, port), timeout=0.5) as raw,
              context.wrap_socket(raw, server_hostname=host)):
            return True
    except (OSError, ssl.SSLError):
        return False


class TurnServer:
    """One private ``turnserver`` process (see the module docstring)."""

    def __init__(self, workdir: Path, *, base_config: str | None = None) -> None:
        self.dir = workdir
        # Another configuration to run (deploy/turnserver.conf): this machine's addresses,
        # ports, secret and files replace its own settings of the same names.
        self._base = base_config
        self.host = own_address()
        self.port = free_udp_tcp_port(self.host)  # TURN over UDP and over TCP
        self.tls_port = free_udp_tcp_port(self.host)  # TURN over TLS (turns:)
        self.secret = secrets.token_urlsafe(24)
        self.realm = REALM
        self.log_file = workdir / "turnserver.log"
        self.ca_file, self.cert_file, self.key_file, self.spki_sha256 = _make_certificate(
            workdir, self.host)
        self._proc: subprocess.Popen[bytes] | None = None

    # The three ways a client reaches it (RFC 7065 URIs, as HALL_TURN_URLS takes them).
    @property
    def udp_url(self) -> str:
        return f"turn:{self.host}:{self.port}?transport=udp"

    @property
    def tcp_url(self) -> str:
        return f"turn:{self.host}:{self.port}?transport=tcp"

    @property
    def tls_url(self) -> str:
        return f"turns:{self.host}:{self.tls_port}?transport=tcp"

    def config(self) -> str:
        lines = [
            f"listening-ip={self.host}",
            f"relay-ip={self.host}",
            f"listening-port={self.port}",
            f"tls-listening-port={self.tls_port}",
            "no-dtls",
            f"cert={self.cert_file}",
            f"pkey={self.key_file}",
            "use-auth-secret",
            f"static-auth-secret={self.secret}",
            f"realm={self.realm}",
            "fingerprint",
            "no-cli",
            "no-multicast-peers",
            "no-auth-pings",
            # Every Allocate, its listener and its relayed bytes in the log (tests read it).
            "verbose",
            # A database of its own (coturn opens one even with a static secret).
            f"userdb={self.dir / 'turndb'}",
            f"pidfile={self.dir / 'turnserver.pid'}",
            f"log-file={self.log_file}",
            "simple-log",
            "no-stdout-log",
        ]
        if self._base is None:
            return "\n".join(lines) + "\n"
        ours = {line.split("=", 1)[0] for line in lines}
        kept = [line for line in self._base.splitlines()
                if line.strip().split("=", 1)[0] not in ours]
        return "\n".join([*kept, *lines]) + "\n"

    def start(self) -> None:
        """Start and wait until UDP, TCP and TLS listeners all answer."""
        if self._proc is not None and self._proc.poll() is None:
            return
        conf = self.dir / "turnserver.conf"
        conf.write_text(self.config())
        self._proc = subprocess.Popen(
            [_turnserver(), "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (_stun_binding_answers(self.host, self.port)
                   and _tcp_answers(self.host, self.port)
                   and _tls_answers(self.host, self.tls_port, self.ca_file)):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"turnserver on {self.host}:{self.port}/{self.tls_port} "
                                   f"did not start:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 5 s); idempotent."""
        proc, self._proc = self._proc, None
        end_process(proc, signal.SIGTERM, 5)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _turnserver() -> str:
    found = shutil.which(TURNSERVER) or next(
        (p for p in ("/usr/bin/turnserver", "/usr/sbin/turnserver") if os.path.exists(p)), None)
    if found is None:
        # Not a skip: a TURN test that does not run must not count as passing.
        pytest.fail("turnserver is not installed: run scripts/install-browser.sh "
                    "(Debian package coturn)", pytrace=False)
    return found


@contextlib.contextmanager
def own_turn(base_config: str | None = None) -> Iterator[TurnServer]:
    """A running private TURN server, stopped and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="hall-turn-") as tmp:
        server = TurnServer(Path(tmp), base_config=base_config)
        server.start()
        try:
            yield server
        finally:
            server.stop()
