"""The test kubelet's volumes: written as the kubelet writes them, seen by a pod's process at
its mount paths, and kept up to date."""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from connbalance.agent.intake import parse_downward_annotations
from tests.cluster.cluster import Cluster
from tests.cluster.volumes import MountTable, format_map, go_quote, publish
from tests.waiting import eventually

# -- the kubelet's file format and its atomic writes (no cluster) -----------------------------


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", '"plain"'),
        ('{"id": "a", "count": 3}', r'"{\"id\": \"a\", \"count\": 3}"'),
        ("back\\slash", r'"back\\slash"'),
        ("line\nbreak\ttab\r", r'"line\nbreak\ttab\r"'),
        ("\x00\x1b\x7f", r'"\x00\x1b\x7f"'),
        ("caf\u00e9 \u65e5\u672c", '"caf\u00e9 \u65e5\u672c"'),  # printable: kept as they are
        ("\u00a0\u200b\u2028", r'"\u00a0\u200b\u2028"'),  # a non-ASCII space, a format char
        ("\U0001f600\U000e0001", '"\U0001f600\\U000e0001"'),
    ],
)
def test_values_are_quoted_as_gos_strconv_quote_quotes_them(value: str, quoted: str) -> None:
    assert go_quote(value) == quoted


def test_a_map_is_written_as_sorted_key_value_lines_without_a_final_newline() -> None:
    written = format_map({"b": "2", "a": 'say "hi"', "connbalance.io/drain": "{}"})
    assert written == 'a="say \\"hi\\""\nb="2"\nconnbalance.io/drain="{}"'


def test_the_agent_reads_back_every_annotation_the_kubelet_writes() -> None:
    annotations = {
        "connbalance.io/drain": '{"id": "cb.t.auth.1", "count": 7, "windowSeconds": 30}',
        "kubectl.kubernetes.io/restartedAt": "2026-12-02T03:00:00Z",
        "odd": 'quote " backslash \\ newline \n nul \x00 del \x7f \u00e9 \u2028 \U0001f600',
    }
    assert parse_downward_annotations(format_map(annotations)) == annotations


def test_publishing_swaps_the_data_symlink_and_leaves_only_the_new_files(tmp_path: Path) -> None:
    volume = tmp_path / "podinfo"
    publish(volume, {"annotations": (b"a=1", 0o644), "labels": (b"x=y", 0o644)})
    first = os.readlink(volume / "..data")
    assert os.readlink(volume / "annotations") == "..data/annotations"
    assert (volume / "annotations").read_bytes() == b"a=1"

    publish(volume, {"annotations": (b"a=2", 0o644), "nested/token": (b"t", 0o400)})
    second = os.readlink(volume / "..data")
    assert second != first
    assert second.startswith("..20")
    assert (volume / "annotations").read_bytes() == b"a=2"
    assert (volume / "nested" / "token").read_bytes() == b"t"
    assert stat.S_IMODE((volume / "nested" / "token").stat().st_mode) == 0o400
    assert not (volume / "labels").exists()
    assert not (volume / "labels").is_symlink()
    assert sorted(p.name for p in volume.iterdir()) == sorted(
        ["..data", second, "annotations", "nested"]
    )


@pytest.mark.parametrize(
    ("text", "rewritten"),
    [
        ("/etc/podinfo/annotations", "/h/info/annotations"),
        ("--annotations-file=/etc/podinfo/annotations", "--annotations-file=/h/info/annotations"),
        ("/etc/podinfo", "/h/info"),
        ("/var/run/connbalance/state.json", "/h/state/state.json"),
        ("/var/run/connbalance/token/token", "/h/token/token"),  # the longer mount wins
        ("a:/etc/podinfo:b", "a:/h/info:b"),
        ("/etc/podinfo2/x", "/etc/podinfo2/x"),  # another path that merely starts alike
        ("/opt/etc/podinfo/x", "/opt/etc/podinfo/x"),  # the mount path inside another path
    ],
)
def test_mount_paths_are_rewritten_where_they_begin_a_path(text: str, rewritten: str) -> None:
    table = MountTable(
        (
            ("/etc/podinfo", "/h/info"),
            ("/var/run/connbalance", "/h/state"),
            ("/var/run/connbalance/token", "/h/token"),
        )
    )
    assert table.rewrite(text) == rewritten


# -- on the test cluster ----------------------------------------------------------------------

# One file server per volume: a mount path is rewritten where it is named (here in --directory),
# so each server is told its volume's own mount path.
FILE_SERVER = """
apiVersion: v1
kind: Pod
metadata:
  name: files
  namespace: {ns}
  labels: {{app: files}}
  annotations: {{first: "one"}}
spec:
  automountServiceAccountToken: false
  containers:
  - name: podinfo
    image: python
    command: [python, -m, http.server, "8080", --bind, "$(POD_IP)", --directory, /etc/podinfo]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
    volumeMounts: [{{name: podinfo, mountPath: /etc/podinfo, readOnly: true}}]
  - name: creds
    image: python
    command: [python, -m, http.server, "8081", --bind, "$(POD_IP)", --directory, /etc/creds]
    readinessProbe: {{tcpSocket: {{port: 8081}}, periodSeconds: 1}}
    volumeMounts: [{{name: creds, mountPath: /etc/creds, readOnly: true}}]
  - name: picked
    image: python
    command: [python, -m, http.server, "8082", --bind, "$(POD_IP)"]
    workingDir: /etc/picked
    readinessProbe: {{tcpSocket: {{port: 8082}}, periodSeconds: 1}}
    volumeMounts: [{{name: picked, mountPath: /etc/picked, readOnly: true}}]
  volumes:
  - name: podinfo
    downwardAPI:
      items:
      - {{path: annotations, fieldRef: {{fieldPath: metadata.annotations}}}}
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: first, fieldRef: {{fieldPath: "metadata.annotations['first']"}}}}
  - name: creds
    secret: {{secretName: creds, defaultMode: 0400}}
  - name: picked
    secret:
      secretName: creds
      items: [{{key: token, path: auth/token, mode: 0600}}]
"""
SECRET = """
apiVersion: v1
kind: Secret
metadata: {{name: creds, namespace: {ns}}}
stringData: {{token: s3cret, ca.crt: "-----BEGIN CERTIFICATE-----"}}
"""


@pytest.fixture
def core(cluster: Cluster) -> client.CoreV1Api:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api)


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def ready_pod(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    def ready() -> Any:
        pod: Any = core.read_namespaced_pod(name, namespace)
        conditions = {c.type: c.status for c in pod.status.conditions or []}
        return pod if conditions.get("Ready") == "True" else None

    return eventually(ready, what=f"pod {name} is Ready")


def volume_dir(cluster: Cluster, namespace: str, pod: Any, volume: str) -> Path:
    name, uid = pod.metadata.name, pod.metadata.uid
    return cluster.run_dir / "pods" / f"{namespace}_{name}_{uid[:8]}" / "volumes" / volume


@pytest.mark.cluster
def test_a_pods_process_sees_its_annotations_and_their_changes_at_the_mount_path(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    cluster.run_kubectl("apply", "-f", "-", stdin=SECRET.format(ns=namespace))
    cluster.run_kubectl("create", "-f", "-", stdin=FILE_SERVER.format(ns=namespace))
    base = f"http://{ready_pod(core, namespace, 'files').status.pod_ip}:8080"
    assert fetch(f"{base}/annotations") == 'first="one"'
    assert fetch(f"{base}/labels") == 'app="files"'
    assert fetch(f"{base}/first") == "one"

    drain = '{"id": "cb.t.files.1", "count": 3}'
    cluster.run_kubectl(
        "annotate", "--overwrite", "-n", namespace, "pod/files",
        f"connbalance.io/drain={drain}", "first=two",
    )  # fmt: skip
    expected = f"connbalance.io/drain={go_quote(drain)}\nfirst=" + '"two"'
    eventually(lambda: fetch(f"{base}/annotations") == expected, what="the file follows")
    assert fetch(f"{base}/first") == "two"


@pytest.mark.cluster
def test_a_secrets_keys_appear_as_files_with_their_modes_and_chosen_paths(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    cluster.run_kubectl("apply", "-f", "-", stdin=SECRET.format(ns=namespace))
    cluster.run_kubectl("create", "-f", "-", stdin=FILE_SERVER.format(ns=namespace))
    pod = ready_pod(core, namespace, "files")
    creds_url, picked_url = (f"http://{pod.status.pod_ip}:{port}" for port in (8081, 8082))
    assert fetch(f"{creds_url}/token") == "s3cret"
    assert fetch(f"{creds_url}/ca.crt") == "-----BEGIN CERTIFICATE-----"
    assert fetch(f"{picked_url}/auth/token") == "s3cret"  # through workingDir
    assert fetch(f"{picked_url}/ca.crt") is None  # items: only the keys named

    creds, picked = (volume_dir(cluster, namespace, pod, v) for v in ("creds", "picked"))
    assert stat.S_IMODE((creds / "token").stat().st_mode) == 0o400
    assert stat.S_IMODE((picked / "auth" / "token").stat().st_mode) == 0o600
    assert os.readlink(creds / "token") == "..data/token"


@pytest.mark.cluster
def test_a_pod_waits_for_a_missing_secret_and_starts_once_it_exists(
    cluster: Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    cluster.run_kubectl("create", "-f", "-", stdin=FILE_SERVER.format(ns=namespace))
    log = cluster.run_dir / "logs" / "kubelet.log"
    refused = f'{namespace}/files: MountVolume: secret "creds" not found'
    eventually(lambda: refused in log.read_text(), what="the kubelet reports the missing Secret")
    pod: Any = core.read_namespaced_pod("files", namespace)
    assert pod.status.phase == "Pending"
    assert not pod.status.container_statuses
    cluster.run_kubectl("apply", "-f", "-", stdin=SECRET.format(ns=namespace))
    pod = ready_pod(core, namespace, "files")
    assert fetch(f"http://{pod.status.pod_ip}:8081/token") == "s3cret"
