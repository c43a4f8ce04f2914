"""The proxy's dial on loopback, without a cluster: a refused dial is tried again on another
endpoint, a client that no endpoint takes is reset, and bytes pass both ways."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.e2e.proxy_dial import ProxyDial
from tests.waiting import eventually

HOST = "127.0.12.1"


@dataclass
class Static:
    ready: tuple[tuple[str, int], ...]


@contextmanager
def echo_server(host: str) -> Iterator[int]:
    """Echoes on each connection, in a thread per connection."""
    listener = socket.create_server((host, 0))
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        # The proxy ends each connection with a reset.
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            while data := conn.recv(1024):
                conn.sendall(data)

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def closed_port(host: str) -> int:
    with socket.create_server((host, 0)) as probe:
        return int(probe.getsockname()[1])  # nothing listens there once it is closed


@contextmanager
def proxy(endpoints: Static, *, seed: int = 0) -> Iterator[ProxyDial]:
    dial = ProxyDial(endpoints, host=HOST, seed=seed)
    dial.start()
    try:
        yield dial
    finally:
        dial.stop()


def connect(dial: ProxyDial) -> socket.socket:
    host, port = dial.address.rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=5)
    conn.settimeout(5)
    return conn


@pytest.mark.parametrize("seed", range(4))
def test_a_refused_dial_is_tried_again_on_another_endpoint_and_the_bytes_pass(seed):
    with echo_server("127.0.12.2") as port:
        refusing = ("127.0.12.3", closed_port("127.0.12.3"))
        endpoints = Static(ready=(refusing, ("127.0.12.2", port)))
        with proxy(endpoints, seed=seed) as dial:
            for _ in range(6):
                with connect(dial) as conn:
                    conn.sendall(b"hello")
                    assert conn.recv(5) == b"hello"
            stats = dial.snapshot()
    assert stats["accepted"] == 6
    assert stats["gave_up"] == 0
    assert stats["dials"] == 6 + stats["refused"]
    # Each refusal was followed by a dial elsewhere, never by a second try of the same endpoint.
    assert stats["redialled"] == stats["refused"]


def test_a_client_no_endpoint_takes_is_reset_after_each_endpoint_refused_once():
    refusing = tuple(
        (host, closed_port(host)) for host in ("127.0.12.4", "127.0.12.5", "127.0.12.6")
    )
    with proxy(Static(ready=refusing)) as dial:
        # A reset (SO_LINGER 0), not an end of stream. On a busy machine it can come before the
        # client's connect() has returned, which then fails with it (once in CI).
        with pytest.raises(ConnectionResetError), connect(dial) as conn:
            conn.recv(5)
        stats = dial.snapshot()
    assert (stats["dials"], stats["refused"], stats["gave_up"]) == (3, 3, 1)


def test_the_open_connections_are_counted_per_endpoint_until_they_end():
    with echo_server("127.0.12.7") as port, proxy(Static(ready=(("127.0.12.7", port),))) as dial:
        conns = [connect(dial) for _ in range(3)]
        try:
            for conn in conns:
                conn.sendall(b"x")
                assert conn.recv(1) == b"x"
            assert dial.snapshot()["open_by_address"] == {"127.0.12.7": 3}
            conns.pop().close()

            def open_now() -> object:
                return dial.snapshot()["open_by_address"] == {"127.0.12.7": 2}

            eventually(open_now, what="the closed client's connection is uncounted", timeout=5)
        finally:
            for conn in conns:
                conn.close()


def test_what_the_endpoint_sent_before_its_reset_reaches_the_client_then_the_end():
    listener = socket.create_server(("127.0.12.8", 0))

    def answer_then_reset() -> None:
        conn, _ = listener.accept()
        conn.recv(1)
        conn.sendall(b"bye")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset, as SOCK_DESTROY gives the proxy

    thread = threading.Thread(target=answer_then_reset, daemon=True)
    thread.start()
    endpoints = Static(ready=(("127.0.12.8", listener.getsockname()[1]),))
    with listener, proxy(endpoints) as dial, connect(dial) as conn:
        conn.sendall(b"x")
        received = b""
        while chunk := conn.recv(16):
            received += chunk
        assert received == b"bye"
    thread.join(5)
