"""Self-signed certificates for the TLS tests, made with openssl (which `make test` installs)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: Path
    key: Path

    def trusted(self) -> ssl.SSLContext:
        """A client context whose only CA is this (self-signed) certificate."""
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed(folder: Path, *, name: str, subject_alt_name: str) -> Certificate:
    """A one-day EC certificate and its key in ``folder``, named ``name``, for the SAN given
    (``IP:127.0.0.1``, ``DNS:agent.example``)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is missing: make test installs it (APT_PACKAGES)")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext",
         f"subjectAltName={subject_alt_name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return Certificate(cert=cert, key=key)
