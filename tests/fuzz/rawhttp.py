"""One HTTP/1.1 request written byte for byte on a fresh TCP connection, and its answer.

A client library would refuse or rewrite much of what the fuzz tests send (header values with
odd bytes, a Content-Length that is not the body's, chunked bodies); the server must not.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(
    host: str,
    port: int,
    *,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    chunked: bool = False,
    content_length: int | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> Answer:
    """Send the request; ``content_length`` None means the body's true length (unless chunked)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {host}:{port}".encode()]
    lines += [name + b": " + value for name, value in headers]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        payload = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        lines.append(
            b"Content-Length: %d" % (len(body) if content_length is None else content_length)
        )
        payload = body
    lines.append(b"Connection: close")
    raw = socket.create_connection((host, port), timeout=timeout)
    sock: socket.socket = tls.wrap_socket(raw, server_hostname=host) if tls else raw
    with sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        # The server may answer early (a refusal) and close; its answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        data = response.read()
        return Answer(
            status=response.status,
            headers={k.lower(): v for k, v in response.getheaders()},
            body=data,
        )
