"""``read_secret`` against the test cluster's API server: Secrets made with the real API, read by
name; what is missing is named."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes import client, config

from connbalance.kube.secrets import SpecError, read_secret
from connbalance.model import SecretKeyRef
from tests.cluster.cluster import Cluster

pytestmark = pytest.mark.cluster

FIELD = "spec.actuation.tokenSecret"


@pytest.fixture
def core(cluster: Cluster) -> Any:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api)


def make_secret(core: Any, namespace: str, name: str, data: dict[str, bytes]) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        data={key: base64.b64encode(value).decode() for key, value in data.items()},
    )
    core.create_namespaced_secret(namespace, body)


def test_a_key_is_read_by_name_without_its_trailing_newline(core, namespace):
    make_secret(core, namespace, "agent-token", {"token": b"s3cret\n", "other": b"x"})
    ref = SecretKeyRef(name="agent-token", key="token")
    assert read_secret(core, namespace, ref, FIELD) == "s3cret"


def test_a_secret_made_with_string_data_reads_the_same(core, namespace):
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="prometheus"), string_data={"token": "abc"}
        ),
    )
    ref = SecretKeyRef(name="prometheus", key="token")
    assert read_secret(core, namespace, ref, "spec.metrics.prometheus.bearerTokenSecret") == "abc"


def test_a_missing_secret_names_the_field_and_the_secret(core, namespace):
    with pytest.raises(SpecError) as missing:
        read_secret(core, namespace, SecretKeyRef(name="nowhere", key="token"), FIELD)
    assert str(missing.value) == f"{FIELD}: Secret {namespace}/nowhere not found"


def test_a_missing_key_names_the_key_and_the_keys_there_are(core, namespace):
    make_secret(core, namespace, "agent-token", {"tok": b"s3cret", "ca.crt": b"pem"})
    with pytest.raises(SpecError) as missing:
        read_secret(core, namespace, SecretKeyRef(name="agent-token", key="token"), FIELD)
    assert str(missing.value) == (
        f"{FIELD}: Secret {namespace}/agent-token has no key 'token' (its keys: ca.crt, tok)"
    )
    assert "s3cret" not in str(missing.value)


def test_a_secret_in_another_namespace_is_not_found_from_this_one(cluster, core, namespace):
    other = f"{namespace}-other"
    cluster.run_kubectl("create", "namespace", other)
    try:
        make_secret(core, other, "agent-token", {"token": b"s3cret"})
        with pytest.raises(SpecError, match="not found"):
            read_secret(core, namespace, SecretKeyRef(name="agent-token", key="token"), FIELD)
    finally:
        cluster.run_kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_a_key_that_is_not_text_is_named(core, namespace):
    make_secret(core, namespace, "binary", {"token": b"\xff\xfe\x00"})
    with pytest.raises(SpecError) as bad:
        read_secret(core, namespace, SecretKeyRef(name="binary", key="token"), FIELD)
    assert str(bad.value) == (
        f"{FIELD}: Secret {namespace}/binary: key 'token' does not hold UTF-8 text"
    )


def test_a_client_the_api_server_refuses_gets_its_status_not_not_found(cluster, namespace):
    """A bearer token the API server does not know: 401, named as such, not taken as missing."""
    settings = client.Configuration()
    settings.host = cluster.api_server
    settings.ssl_ca_cert = str(cluster.run_dir / "pki" / "ca.crt")
    settings.api_key = {"authorization": "Bearer not-a-token"}
    stranger = client.CoreV1Api(client.ApiClient(settings))
    with pytest.raises(SpecError) as refused:
        read_secret(stranger, namespace, SecretKeyRef(name="any", key="token"), FIELD)
    assert str(refused.value) == (
        f"{FIELD}: Secret {namespace}/any cannot be read: HTTP 401 Unauthorized"
    )
