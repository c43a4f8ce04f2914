"""How the operator reaches a sidecar's HTTP port (``method: http``): plain HTTP, or HTTPS with
the agent's certificate verified (``actuation.agentScheme``, ``caSecret``, ``agentServerName``).

The POST of a request (``actuator``) and the read of ``/status`` (``confirm``) both build their
URL and connection options here, so the two never disagree on how they reach the same agent. A
failed handshake is reported as TLS, apart from a closed port: its fix is another one (the CA,
the name in the certificate, the agent's TLS flags), and a person should not have to guess it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TypedDict

import aiohttp


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentTls:
    """HTTPS toward the agent. ``context`` verifies the agent's certificate, hostname check on;
    the certificate must name ``server_name`` when given, else the pod's IP. The connection goes
    to the pod's IP either way: only what is checked differs."""

    context: ssl.SSLContext
    server_name: str | None = None


class ConnectOptions(TypedDict):
    """The keyword arguments of an aiohttp request that choose how it connects."""

    ssl: ssl.SSLContext | bool
    server_hostname: str | None


def agent_url(host: str, port: int, path: str, *, tls: AgentTls | None) -> str:
    """The URL of ``path`` on an agent at ``host`` (an IPv6 address in brackets)."""
    scheme = "http" if tls is None else "https"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{path}"


def connect_options(tls: AgentTls | None) -> ConnectOptions:
    if tls is None:
        # aiohttp's own default for ssl; it is not used for an http:// URL.
        return {"ssl": True, "server_hostname": None}
    return {"ssl": tls.context, "server_hostname": tls.server_name}


def tls_failure(url: str, exc: aiohttp.ClientError) -> str | None:
    """What went wrong, when ``exc`` is a failed TLS handshake with the agent at ``url``;
    None for any other failure (nothing listens, a timeout, an HTTP error)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        refused = exc.certificate_error
        why = getattr(refused, "verify_message", None) or str(refused)
        return (
            f"TLS with agent {url} failed: its certificate was refused ({why}); "
            "check actuation.caSecret and actuation.agentServerName"
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        cause = exc.os_error
        why = getattr(cause, "reason", None) or str(cause) or type(cause).__name__
        return (
            f"TLS with agent {url} failed ({why}): does the agent serve HTTPS "
            "(--tls-cert-file, --tls-key-file)?"
        )
    return None
