"""Connection settings against real servers: a bearer token and a tenant header through an
authenticating gateway (as Cortex, Mimir or an auth proxy stand in front of Prometheus), and TLS
with a CA bundle or an explicit insecure-skip-verify."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from connbalance.model import PodName, Policy
from connbalance.ports import MetricsHttpError, MetricsUnreachable
from connbalance.prometheus import Connection, PrometheusLoadSource
from tests.prometheus.harness import HOST, PrometheusServer

pytestmark = pytest.mark.prometheus

# A custom query needs no exporter: one series, for pod "p1", evaluated by Prometheus itself.
ONE_POD = 'label_replace(vector(7), "pod", "p1", "", "")'


def read_all(connection: Connection) -> dict[str, float]:
    src = PrometheusLoadSource(connection=connection, namespace="ns", preset="custom",
                               query=ONE_POD)
    return {pod: load.load for pod, load in asyncio.run(src.read_all()).items()}


@dataclass
class Gateway:
    """Forwards to Prometheus only requests that carry the expected token and tenant."""

    upstream: str
    token: str
    tenant: str = "tenant-a"
    seen: list[dict[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://{HOST}:{self.server.server_address[1]}"

    def start(self) -> None:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gateway.seen.append(dict(self.headers))
                if (self.headers.get("Authorization") != f"Bearer {gateway.token}"
                        or self.headers.get("X-Scope-OrgID") != gateway.tenant):
                    self._answer(401, b"no valid token for this tenant\n")
                    return
                try:
                    with urllib.request.urlopen(gateway.upstream + self.path, timeout=5) as up:
                        self._answer(up.status, up.read())
                except urllib.error.HTTPError as e:
                    self._answer(e.code, e.read())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def gateway(prometheus: PrometheusServer) -> Iterator[Gateway]:
    made = Gateway(upstream=prometheus.url, token="s3cret")
    made.start()
    try:
        yield made
    finally:
        made.stop()


def test_the_bearer_token_and_the_tenant_header_reach_the_server(gateway: Gateway) -> None:
    connection = Connection(url=gateway.url, bearer_token="s3cret",
                            headers=(("X-Scope-OrgID", "tenant-a"),))
    assert read_all(connection) == {"p1": 7}
    assert gateway.seen[-1]["Authorization"] == "Bearer s3cret"


def test_a_refused_token_is_an_http_error_with_the_servers_words(gateway: Gateway) -> None:
    connection = Connection(url=gateway.url, bearer_token="wrong",
                            headers=(("X-Scope-OrgID", "tenant-a"),))
    refused = "HTTP 401: no valid token for this tenant"
    with pytest.raises(MetricsHttpError, match=refused) as caught:
        read_all(connection)
    assert gateway.url in str(caught.value)


def test_a_missing_tenant_header_is_refused(gateway: Gateway) -> None:
    with pytest.raises(MetricsHttpError, match="HTTP 401"):
        read_all(Connection(url=gateway.url, bearer_token="s3cret"))


def test_the_token_file_is_read_again_at_every_query(gateway: Gateway, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    connection = Connection(url=gateway.url, bearer_token_file=str(token),
                            headers=(("X-Scope-OrgID", "tenant-a"),))
    assert read_all(connection) == {"p1": 7}
    gateway.token = "rotated"  # the server rotates first; the projected file follows
    with pytest.raises(MetricsHttpError, match="HTTP 401"):
        read_all(connection)
    token.write_text("rotated\n")
    assert read_all(connection) == {"p1": 7}


def test_a_token_file_that_vanished_is_reported_with_its_path(
    gateway: Gateway, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    connection = Connection(url=gateway.url, bearer_token_file=str(token))
    token.unlink()
    with pytest.raises(MetricsUnreachable, match=f"cannot read the bearer token file {token}"):
        read_all(connection)


def test_the_policy_spec_builds_the_same_connection(gateway: Gateway, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    policy = Policy.from_spec({
        "selector": {"matchLabels": {"app.kubernetes.io/component": "auth"}},
        "metrics": {
            "preset": "custom",
            "query": ONE_POD,
            "prometheus": {"url": gateway.url, "bearerTokenFile": str(token),
                           "headers": {"X-Scope-OrgID": "tenant-a"}, "timeoutSeconds": 3},
        },
    })
    src = PrometheusLoadSource.from_spec(policy.metrics, namespace="ns", selector=policy.selector)
    loads = asyncio.run(src.read(pods=[PodName("p1")]))
    assert loads[PodName("p1")].load == 7


def test_a_token_from_a_secret_must_be_handed_in() -> None:
    policy = Policy.from_spec({
        "selector": {"matchLabels": {"app": "x"}},
        "metrics": {"prometheus": {"url": "http://127.0.0.1:9090",
                                   "bearerTokenSecret": {"name": "prom-token"}}},
    })
    with pytest.raises(ValueError, match="Secret prom-token"):
        PrometheusLoadSource.from_spec(policy.metrics, namespace="ns", selector=policy.selector)
    src = PrometheusLoadSource.from_spec(policy.metrics, namespace="ns",
                                         selector=policy.selector, bearer_token="from-secret")
    assert src.connection.request_headers()["Authorization"] == "Bearer from-secret"


# TLS


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus serving HTTPS with a certificate from a throwaway CA (ca.crt beside it)."""
    run = tmp_path_factory.mktemp("tls-prometheus")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=connbalance test CA", cwd=run)
    openssl("req", *curve, "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=prometheus", cwd=run)
    (run / "san.ext").write_text(f"subjectAltName=IP:{HOST}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=run)
    web = run / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {run / 'server.crt'}\n"
                   f"  key_file: {run / 'server.key'}\n")
    server = PrometheusServer(run_dir=run, web_config=web)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_https_is_verified_with_the_ca_bundle(tls_prometheus: PrometheusServer) -> None:
    ca = str(tls_prometheus.run_dir / "ca.crt")
    assert tls_prometheus.url.startswith("https://")
    assert read_all(Connection(url=tls_prometheus.url, ca_file=ca)) == {"p1": 7}


def test_an_untrusted_certificate_is_refused(tls_prometheus: PrometheusServer) -> None:
    with pytest.raises(MetricsUnreachable, match="CERTIFICATE_VERIFY_FAILED") as caught:
        read_all(Connection(url=tls_prometheus.url))
    assert tls_prometheus.url in str(caught.value)


def test_insecure_skip_verify_accepts_it_without_a_warning_per_query(
    tls_prometheus: PrometheusServer,
) -> None:
    # filterwarnings = error: an InsecureRequestWarning at query time would fail this test.
    connection = Connection(url=tls_prometheus.url, insecure_skip_verify=True)
    assert read_all(connection) == {"p1": 7}
    assert read_all(connection) == {"p1": 7}


def test_a_ca_bundle_and_insecure_skip_verify_exclude_each_other(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("")
    with pytest.raises(ValueError, match="cannot be combined"):
        Connection(url="https://127.0.5.1:1", ca_file=str(ca), insecure_skip_verify=True)
