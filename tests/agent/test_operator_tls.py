"""The operator's side of the agent's HTTPS (``actuation.agentScheme: https``): ``HttpActuator``
posts a drain and ``AgentStatusReader`` reads ``/status`` over real TLS, to a real
``AgentServer`` on loopback; the agent's certificate is checked against the CA and the name the
spec gives, and every way the check can fail is reported as TLS, naming the URL, with nothing
reaching the agent. Certificates are made here with the openssl CLI, as in
``test_agent_tls.py``.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from connbalance.agent import AgentServer, ProxyAgent
from connbalance.agent.http import server_tls
from connbalance.controller import RecordingActuator
from connbalance.kube.actuator import HttpActuator
from connbalance.kube.agenttls import AgentTls
from connbalance.kube.confirm import UNREACHABLE, AgentStatusReader
from connbalance.kube.secrets import SpecError
from connbalance.kube.wiring import build_controller
from connbalance.model import DrainRequest, PodName, PodState, Policy, PolicyName, RequestId
from connbalance.ports import ActuationError
from tests.agent.certs import Certificate, self_signed
from tests.agent.support import run
from tests.unit.fakes import ListEvents

HOST = "127.0.0.1"
TOKEN = "operator-tls-token"
AGENT_NAME = "agent.connbalance.local"
POLICY = "teleport/auth"


@pytest.fixture
def by_ip(tmp_path: Path) -> Certificate:
    """The agent's certificate naming the pod's IP, as ``agentServerName`` unset expects."""
    return self_signed(tmp_path, name="by-ip", subject_alt_name=f"IP:{HOST}")


@pytest.fixture
def by_name(tmp_path: Path) -> Certificate:
    """The agent's certificate naming only a fixed DNS name, the setup that survives new IPs."""
    return self_signed(tmp_path, name="by-name", subject_alt_name=f"DNS:{AGENT_NAME}")


@dataclass(frozen=True, slots=True)
class Served:
    agent: ProxyAgent
    port: int

    def received(self) -> set[str]:
        return {entry.id for entry in self.agent.status().requests}


@contextlib.asynccontextmanager
async def agent_serving(certificate: Certificate | None) -> AsyncIterator[Served]:
    """A proxy agent (nothing upstream: the drains here ask for no connection) behind its HTTP
    app, served over TLS with ``certificate``, or plain HTTP with None."""
    agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, 9), max_fraction=1.0, state_file=None)
    await agent.start()
    tls = None
    if certificate is not None:
        tls = server_tls(cert_file=str(certificate.cert), key_file=str(certificate.key))
    server = AgentServer(agent, host=HOST, port=0, token=TOKEN, ssl_context=tls)
    await server.start()
    try:
        yield Served(agent=agent, port=server.port)
    finally:
        await server.stop()
        await agent.stop()


def drain(rid: str) -> DrainRequest:
    now = datetime.now(UTC)
    return DrainRequest(id=RequestId(rid), count=0, window_seconds=0.0, quiet_millis=0,
                        deadline=now + timedelta(seconds=30), policy=POLICY, issued_at=now)


def pod(request: DrainRequest) -> PodState:
    return PodState(name=PodName("auth-0"), ready=True, ready_since=0.0, uid="uid-0", ip=HOST,
                    drain=request)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one delivery and one status read came to, against one agent."""

    annotated: list[tuple[str, DrainRequest]]
    error: ActuationError | None
    received: set[str]
    state: str
    reason: str
    port: int


def attempt(certificate: Certificate | None, tls: AgentTls) -> Attempt:
    """Post one drain through ``HttpActuator`` and read it back with ``AgentStatusReader``,
    both with ``tls``, to an agent serving ``certificate``."""
    request = drain("cb.tls.1.auth-0")

    async def scenario() -> Attempt:
        async with agent_serving(certificate) as served:
            annotate = RecordingActuator()
            http = HttpActuator(annotate=annotate, port=served.port, token=TOKEN, tls=tls)
            error = None
            try:
                await http.deliver(pod=pod(request), request=request)
            except ActuationError as failed:
                error = failed
            if error is None:
                await served.agent.wait(request.id, timeout=10)
            reader = AgentStatusReader(port=served.port, token=TOKEN, tls=tls)
            outcome = await reader.ask(pod(request), request)
            return Attempt(annotated=list(annotate.delivered), error=error,
                           received=served.received(), state=outcome.state,
                           reason=outcome.reason, port=served.port)

    return run(scenario(), timeout=60)


def test_a_drain_posted_over_https_reaches_the_agent_and_its_status_is_read_back(by_ip):
    done = attempt(by_ip, AgentTls(context=by_ip.trusted()))
    assert done.error is None
    assert [name for name, _ in done.annotated] == ["auth-0"]
    assert done.received == {"cb.tls.1.auth-0"}
    assert done.state == "done", done.reason


def test_a_server_name_is_checked_in_the_certificate_while_the_pod_ip_is_dialled(by_name):
    done = attempt(by_name, AgentTls(context=by_name.trusted(), server_name=AGENT_NAME))
    assert done.error is None
    assert done.received == {"cb.tls.1.auth-0"}
    assert done.state == "done", done.reason


def assert_refused_as_tls(refused: Attempt, *, says: str) -> None:
    """Refused before the token was sent: nothing reached the agent; both the actuator and the
    reader name TLS and their URL; the annotation (the durable delivery) was still written."""
    assert refused.error is not None
    drain_url = f"https://{HOST}:{refused.port}/v1/drain"
    status_url = f"https://{HOST}:{refused.port}/status"
    assert f"TLS with agent {drain_url} failed" in str(refused.error)
    assert says in str(refused.error)
    assert refused.received == set()
    assert [name for name, _ in refused.annotated] == ["auth-0"]
    assert refused.state == UNREACHABLE
    assert f"TLS with agent {status_url} failed" in refused.reason
    assert says in refused.reason


def test_an_agent_whose_certificate_another_ca_signed_is_refused_as_tls(by_ip, by_name):
    refused = attempt(by_ip, AgentTls(context=by_name.trusted()))
    assert_refused_as_tls(refused, says="its certificate was refused (self-signed certificate)")


@pytest.mark.parametrize(
    ("server_name", "says"),
    [
        pytest.param(None, f"IP address mismatch, certificate is not valid for '{HOST}'",
                     id="no-name-so-the-ip-which-the-certificate-lacks"),
        pytest.param("other.connbalance.local", "Hostname mismatch", id="another-name"),
    ],
)  # fmt: skip
def test_a_certificate_not_naming_what_is_checked_is_refused_as_tls(by_name, server_name, says):
    refused = attempt(by_name, AgentTls(context=by_name.trusted(), server_name=server_name))
    assert_refused_as_tls(refused, says=says)


def test_https_to_an_agent_serving_plain_http_is_refused_as_tls(by_ip):
    refused = attempt(None, AgentTls(context=by_ip.trusted()))
    assert_refused_as_tls(refused, says="does the agent serve HTTPS")


class SecretsOnly:
    """The one Kubernetes call the wiring makes for a Secret, answered from a dict; the other
    adapters it builds make no call until a tick."""

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self._secrets = secrets

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        data = self._secrets[name]
        return SimpleNamespace(data={k: base64.b64encode(v.encode()).decode()
                                     for k, v in data.items()})  # fmt: skip


def wired_reader(ca_bundle: str, *, server_name: str | None = None) -> AgentStatusReader:
    actuation: dict[str, Any] = {"method": "http", "agentScheme": "https",
                                 "tokenSecret": {"name": "agent-token"},
                                 "caSecret": {"name": "agent-ca", "key": "ca.crt"}}  # fmt: skip
    if server_name is not None:
        actuation["agentServerName"] = server_name
    policy = Policy.from_spec({"selector": {"matchLabels": {"app": "auth"}},
                               "actuation": actuation})  # fmt: skip
    core = SecretsOnly({"agent-token": {"token": TOKEN}, "agent-ca": {"ca.crt": ca_bundle}})
    wired = build_controller(name=PolicyName(POLICY), namespace="teleport", policy=policy,
                             events=ListEvents(), core=core, apps=None,
                             default_prometheus_url="http://127.0.0.1:9")  # fmt: skip
    assert isinstance(wired.confirmations, AgentStatusReader)
    return wired.confirmations


def test_the_wiring_verifies_the_agents_with_the_ca_from_the_secret_and_the_server_name(by_name):
    wired = wired_reader(by_name.cert.read_text(), server_name=AGENT_NAME)
    assert wired.tls is not None
    assert wired.tls.server_name == AGENT_NAME
    request = drain("cb.tls.2.auth-0")

    async def scenario() -> tuple[str, str]:
        async with agent_serving(by_name) as served:
            await served.agent.submit(request)
            await served.agent.wait(request.id, timeout=10)
            # The spec's agentPort is fixed; the test's agent got a free one.
            outcome = await replace(wired, port=served.port).ask(pod(request), request)
            return outcome.state, outcome.reason

    state, reason = run(scenario(), timeout=60)
    assert state == "done", reason


@pytest.mark.parametrize(
    ("bundle", "says"),
    [pytest.param("", "is empty", id="empty"),
     pytest.param("not a certificate", "holds no PEM CA certificate", id="not-pem")],
)  # fmt: skip
def test_a_ca_secret_that_holds_no_certificate_is_a_spec_error_naming_it(bundle, says):
    with pytest.raises(SpecError) as refused:
        wired_reader(bundle)
    assert str(refused.value).startswith("spec.actuation.caSecret: Secret teleport/agent-ca key")
    assert says in str(refused.value)
