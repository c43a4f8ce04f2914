"""Fixtures: one Prometheus for the session, and per test a pool of exporter pods of its own.

Each test's pods live in a namespace of their own (and a file_sd file of their own), so tests
never see each other's series even though they share one Prometheus.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.prometheus.harness import Exporter, PrometheusServer, publish, wait_until

_POOLS = itertools.count(1)

AUTH_LABELS = {"app.kubernetes.io/component": "auth", "app.kubernetes.io/instance": "teleport"}


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(run_dir=tmp_path_factory.mktemp("prometheus"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Pool:
    """The pods of one test. ``add`` starts exporters and waits until Prometheus has them."""

    def __init__(self, server: PrometheusServer, run_dir: Path) -> None:
        self.server = server
        self.run_dir = run_dir
        self.name = f"pool{next(_POOLS)}"
        self.namespace = f"ns-{self.name}"
        self.exporters: list[Exporter] = []

    def add(self, pod: str, *, labels: dict[str, str] | None = None, container: str = "teleport",
            **values: Any) -> Exporter:
        exporter = Exporter(
            pod=pod, namespace=self.namespace, container=container,
            state=self.run_dir / f"{self.name}-{pod}-{container}.json",
            labels=AUTH_LABELS if labels is None else labels,
        )
        exporter.set(**values)
        exporter.start()
        self.exporters.append(exporter)
        return exporter

    def publish(self) -> None:
        self.announce()
        self.wait_scraped()

    def announce(self) -> None:
        """Hand the targets to Prometheus, which applies them within about 5 s."""
        publish(self.server, self.name, self.exporters)

    def wait_scraped(self) -> None:
        targets = len(self.exporters)
        wait_until(self.server, f'count(up{{namespace="{self.namespace}"}} == 1)',
                   lambda seen: seen.get("") == str(targets))

    def scraped(self, metric: str, done: Callable[[dict[str, str]], bool]) -> None:
        """Until ``sum by (pod) (metric)`` in this namespace satisfies ``done``."""
        wait_until(self.server, f'sum by (pod) ({metric}{{namespace="{self.namespace}"}})', done)

    def close(self) -> None:
        publish(self.server, self.name, [])
        for exporter in self.exporters:
            exporter.stop()


def pools(
    prometheus: PrometheusServer, run_dir: Path, layout: dict[str, list[dict[str, Any]]]
) -> Iterator[dict[str, Pool]]:
    """Several pools at once, from ``{name: [Pool.add keywords, ...]}``: all announced together,
    so they cost one wait for Prometheus's target update between them."""
    made: dict[str, Pool] = {}
    try:
        for name, pods in layout.items():
            made[name] = Pool(prometheus, run_dir)
            for pod in pods:
                made[name].add(**pod)
            made[name].announce()
        for each in made.values():
            each.wait_scraped()
        yield made
    finally:
        for each in made.values():
            each.close()


@pytest.fixture
def pool(prometheus: PrometheusServer, tmp_path: Path) -> Iterator[Pool]:
    """An empty pool for one test to fill and change."""
    made = Pool(prometheus, tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def auth_pool(
    prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pool]:
    """Three auth pods after a rolling restart: 120, 118 and 2 connected resources, shared by
    the tests of a module that only read it (Prometheus applies new targets every 5 s, so
    each pool costs that much to set up)."""
    made = Pool(prometheus, tmp_path_factory.mktemp("auth-pool"))
    try:
        made.add("auth-a", resources={"node": 60, "kube": 40, "app": 20}, open_fds=400)
        made.add("auth-b", resources={"node": 100, "db": 18}, open_fds=390)
        made.add("auth-c", resources={"node": 2, "kube": 0}, open_fds=45)
        made.publish()
        yield made
    finally:
        made.close()
