"""Fixtures for the destination tests.

Integration tests (marked `services`) talk to the real local servers started by
`bash scripts/services.sh up` (endpoints in tests/services.py); helpers live in
support.py.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Pki:
    ca: Path           # CA certificate (PEM) the client trusts
    cert: Path         # server certificate for localhost / 127.0.0.1 / iot.example.test
    key: Path
    other_ca: Path     # an unrelated CA: verification against it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """A throwaway CA and a server certificate it signed (openssl CLI)."""
    d = tmp_path_factory.mktemp("pki")
    for name in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", f"/CN=engine test {name} CA", "-keyout", f"{name}.key",
                 "-out", f"{name}.pem", cwd=d)
    (d / "san.ext").write_text(
        "subjectAltName=DNS:localhost,DNS:iot.example.test,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)
    return Pki(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key", other_ca=d / "other.pem")
