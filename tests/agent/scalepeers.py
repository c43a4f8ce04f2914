"""Both ends of the 100,000-socket agent benchmark (``tests/agent/bench_scale.py``), one share
per process, since a process here may hold at most 20,000 descriptors.

``python -m tests.agent.scalepeers serve HOST PORT``: accept and hold every connection on
HOST:PORT, bound with SO_REUSEPORT so several processes share the port (the kernel spreads new
connections over them). Prints ``ready`` once listening, ``held N`` now and then.

``python -m tests.agent.scalepeers connect SOURCE HOST PORT COUNT``: print ``started``, open
COUNT connections to HOST:PORT from the address SOURCE (one source address has about 28,000
ephemeral ports), print ``connected N``, hold them. Every socket is closed with a reset
(SO_LINGER 0) when it exits, so no TIME_WAIT is left holding the source's ports.

Both exit when their stdin closes.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time

_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def serve(host: str, port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((host, port))
    listener.listen(4096)
    held: list[socket.socket] = []
    print("ready", flush=True)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError as exc:  # EMFILE: over this process's share; say so, keep the rest
                print(f"accept failed: {exc}", flush=True)
                time.sleep(0.5)
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
            held.append(conn)

    def report() -> None:
        while True:
            time.sleep(0.5)
            print(f"held {len(held)}", flush=True)

    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=report, daemon=True).start()
    sys.stdin.read()


def connect(source: str, host: str, port: int, count: int) -> None:
    print("started", flush=True)
    held: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
        sock.bind((source, 0))
        for attempt in range(50):
            try:
                sock.connect((host, port))
                break
            except (ConnectionRefusedError, TimeoutError, BlockingIOError):
                if attempt == 49:
                    raise
                time.sleep(0.05)
        held.append(sock)
    print(f"connected {len(held)}", flush=True)
    sys.stdin.read()


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 3:
        serve(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["connect"] and len(argv) == 5:
        connect(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
