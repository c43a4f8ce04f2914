"""Drain requests that arrive as the pod's own annotation: through the API, or a downward-API file.

Both sources hand the raw annotation value to the engine, which deduplicates by id; a value that
did not change since the last look is not even parsed again, so an invalid annotation is logged
and counted once, not on every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

from connbalance.agent.engine import DrainEngine
from connbalance.model import DRAIN_ANNOTATION, DrainRequest, InvalidDrainRequest

log = logging.getLogger(__name__)

FILE_POLL_SECONDS = 1.0
WATCH_TIMEOUT_SECONDS = 60
WATCH_RETRY_SECONDS = 5.0


class AnnotationIntake:
    """Feeds annotation values to the engine, skipping a value already handled."""

    def __init__(self, *, engine: DrainEngine, source: str) -> None:
        self._engine = engine
        self._source = source
        self._last: str | None = None

    async def offer(self, value: str | None) -> None:
        if value is None or value == self._last:
            return
        self._last = value
        try:
            request = DrainRequest.from_json(value, now=self._engine.clock.now())
        except InvalidDrainRequest as exc:
            self._engine.metrics.count_request("invalid")
            log.warning("ignoring %s annotation %s: %s", self._source, DRAIN_ANNOTATION, exc)
            return
        status = await self._engine.submit(request)
        log.info(
            "%s request %s: %s%s",
            self._source,
            status.id,
            status.state.value,
            f" ({status.reason})" if status.reason else "",
        )


def parse_downward_annotations(text: str) -> dict[str, str]:
    """Parse a downward-API annotations file: ``key="value"`` lines, values Go-quoted.

    A line that is not one (no quotes, a broken escape) is left out, and the other lines stand:
    the kubelet writes none such, so a damaged line says nothing about what was asked.
    """
    result: dict[str, str] = {}
    # The kubelet ends each line with a newline and escapes every other line break in a value
    # (splitlines would also split at U+0085 or U+2028, cutting a value in two).
    for line in text.split("\n"):
        key, sep, quoted = line.partition("=")
        if not sep or len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
            continue
        try:
            result[key.strip()] = _go_unquote(quoted[1:-1])
        except ValueError:
            continue
    return result


_HEX_WIDTH = {"x": 2, "u": 4, "U": 8}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _go_unquote(body: str) -> str:
    """Undo Go's %q; ValueError for an escape Go would not write."""
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\" or i + 1 >= len(body):
            out.append(char)
            i += 1
            continue
        code = body[i + 1]
        if code in simple:
            out.append(simple[code])
            i += 2
        elif code in _HEX_WIDTH:
            width = _HEX_WIDTH[code]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not set(digits) <= _HEX_DIGITS:
                raise ValueError(f"broken \\{code} escape")
            out.append(_char(int(digits, 16)))
            i += 2 + width
        elif code in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not set(digits) <= set("01234567"):
                raise ValueError("broken octal escape")
            out.append(_char(int(digits, 8)))
            i += 4
        elif code in '\\"':
            out.append(code)
            i += 2
        else:
            raise ValueError(f"unknown escape \\{code}")
    return "".join(out)


def _char(code: int) -> str:
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        raise ValueError(f"U+{code:X} is not a character")
    return chr(code)


async def watch_annotations_file(
    *, path: Path, engine: DrainEngine, stop: asyncio.Event, poll_seconds: float = FILE_POLL_SECONDS
) -> None:
    """Poll the file (the kubelet swaps it through a symlink, so inotify on it is unreliable)."""
    intake = AnnotationIntake(engine=engine, source=f"file {path}")
    while not stop.is_set():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):  # the kubelet writes UTF-8: this is no such file
            text = ""
        await intake.offer(parse_downward_annotations(text).get(DRAIN_ANNOTATION))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_seconds)


async def watch_pod_annotation(
    *,
    namespace: str,
    name: str,
    engine: DrainEngine,
    stop: asyncio.Event,
    api_client: Any = None,
) -> None:
    """Watch this pod through the Kubernetes API (get/list/watch on pods is all it needs).

    The official client is synchronous, so the watch runs in a thread and hands annotation
    values to the loop. ``api_client`` defaults to the in-cluster configuration, else kubeconfig.
    """
    watch = _PodWatch(
        namespace=namespace,
        name=name,
        api_client=api_client if api_client is not None else _default_api_client(),
        loop=asyncio.get_running_loop(),
    )
    intake = AnnotationIntake(engine=engine, source=f"pod {namespace}/{name}")
    watch.start()
    try:
        await _offer_until_stopped(watch.values, intake=intake, stop=stop)
    finally:
        watch.halt()


def _default_api_client() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


class _PodWatch:
    """A thread following one pod's events, putting its drain annotation (or None) on
    ``values`` each time the pod changes, and watching again after each timeout or error."""

    def __init__(
        self, *, namespace: str, name: str, api_client: Any, loop: asyncio.AbstractEventLoop
    ) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._namespace = namespace
        self._name = name
        self._loop = loop
        self.values: asyncio.Queue[str | None] = asyncio.Queue()
        self._halt = threading.Event()
        self._current: list[Any] = []
        self._thread = threading.Thread(
            target=self._follow, name="pod-annotation-watch", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        self._halt.set()
        for watcher in self._current:
            watcher.stop()

    def _follow(self) -> None:
        while not self._halt.is_set():
            try:
                self._stream_once()
            except Exception as exc:  # the API server may be away for a while; keep trying
                if self._halt.is_set():
                    break
                log.warning("watching pod %s/%s: %s; retrying", self._namespace, self._name, exc)
                self._halt.wait(WATCH_RETRY_SECONDS)

    def _stream_once(self) -> None:
        from kubernetes import watch

        watcher = watch.Watch()  # type: ignore[no-untyped-call]
        self._current[:] = [watcher]
        for event in watcher.stream(  # type: ignore[no-untyped-call]
            self._core.list_namespaced_pod,
            self._namespace,
            field_selector=f"metadata.name={self._name}",
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
            _request_timeout=WATCH_TIMEOUT_SECONDS + 10,
        ):
            if self._halt.is_set():
                return
            pod = event["object"]
            annotations = (pod.metadata.annotations or {}) if pod.metadata else {}
            self._loop.call_soon_threadsafe(
                self.values.put_nowait, annotations.get(DRAIN_ANNOTATION)
            )


async def _offer_until_stopped(
    values: asyncio.Queue[str | None], *, intake: AnnotationIntake, stop: asyncio.Event
) -> None:
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            getting = asyncio.ensure_future(values.get())
            done, _ = await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if getting not in done:
                getting.cancel()
                return
            await intake.offer(getting.result())
    finally:
        stopping.cancel()
