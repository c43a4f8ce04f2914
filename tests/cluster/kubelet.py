"""The test kubelet: the one fake part of the test cluster (no containers, no network namespaces).

It registers Nodes and keeps them Ready, binds unscheduled pods to them (there is no scheduler),
gives each pod its own address in a loopback /20, runs each container's ``command`` + ``args`` as a
local process (images are ignored), reports Running/Ready from the readiness probe (HTTP GET on the
pod IP), and on deletion runs each container's preStop hook then SIGTERMs it, waits the pod's
grace period, SIGKILLs what is left and removes the pod.

A pod's process gets its ``env`` values, POD_NAME, POD_NAMESPACE, POD_IP, NODE_NAME, the kubelet's
PATH (so ``python`` and ``connbalance`` are the venv's) and PYTHONPATH if it has one (so they run
the code of the checkout the tests run, not that of the venv's editable install, which may be
another worktree's) and KUBECONFIG pointing at a kubeconfig holding a token for the pod's
ServiceAccount, so it talks to the API server as that account.
Volumes are written under the pod's directory and reach a process through its mount paths,
rewritten in its command, args and env (``volumes.py`` says how).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from urllib3.exceptions import HTTPError

from tests.cluster.processes import Container, Probe, now, stop_processes
from tests.cluster.volumes import MountTable, PodVolumes, VolumeNotReady

SLOTS = ipaddress.IPv4Network("127.1.0.0/16")
SLOT_PREFIX = 20  # 16 clusters at once (parallel test runs), 4094 pod IPs each
LOOP_SECONDS = 0.3
HEARTBEAT_SECONDS = 10.0
SHUTDOWN_GRACE = 5.0  # for every pod's processes at once when the kubelet itself stops


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` in command and args, as the kubelet expands them: from the container's
    environment, ``$$`` for a literal ``$``, unknown references left as written."""
    return _REFERENCE.sub(
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text
    )


def pre_stop(c: Any, mounts: MountTable) -> list[str] | None:
    """The preStop hook as a command: exec's (mount paths rewritten), or ``sleep N``."""
    hook = c.lifecycle.pre_stop if c.lifecycle else None
    if hook is not None and hook._exec is not None:
        return [mounts.rewrite(arg) for arg in hook._exec.command or []]
    if hook is not None and hook.sleep is not None:
        return ["sleep", str(hook.sleep.seconds)]
    return None  # none, or an httpGet hook (not run)


def pinned_node(spec: Any) -> str | None:
    """The one node a pod names: by ``nodeSelector`` on ``kubernetes.io/hostname``, or by a
    required node affinity term on ``metadata.name`` (how the DaemonSet controller pins each
    pod); None if it names none."""
    named = (spec.node_selector or {}).get("kubernetes.io/hostname")
    if named:
        return str(named)
    affinity = spec.affinity.node_affinity if spec.affinity else None
    required = affinity.required_during_scheduling_ignored_during_execution if affinity else None
    for term in required.node_selector_terms if required else []:
        for rule in [*(term.match_fields or []), *(term.match_expressions or [])]:
            if (rule.key in ("metadata.name", "kubernetes.io/hostname") and rule.operator == "In"
                    and len(rule.values or []) == 1):
                return str(rule.values[0])
    return None


@dataclass(slots=True)
class Pod:
    uid: str
    namespace: str
    name: str
    ip: str
    containers: list[Container]
    volumes: PodVolumes
    stopping: bool = False
    last_status: list[Any] = field(default_factory=list)


class Kubelet:
    def __init__(self, *, nodes: list[str], run_dir: Path, api_server: str, ca_file: str) -> None:
        self.nodes = nodes
        self.run_dir = run_dir
        self.api_server = api_server
        self.ca_file = ca_file
        self.core = client.CoreV1Api()
        self.pods: dict[str, Pod] = {}
        self.waiting: dict[str, str] = {}  # pod uid -> why its volumes are not ready, as logged
        self.next_node = 0
        self.stop = threading.Event()
        self.network, self.slot_lock = self.claim_slot()
        self.free_ips = (str(ip) for ip in self.network.hosts() if ip.packed[-1] not in (0, 255))
        # Each node its own address: its InternalIP, its pods' hostIP, its hostNetwork pods' IP.
        self.node_ips = {name: next(self.free_ips) for name in nodes}

    def claim_slot(self) -> tuple[ipaddress.IPv4Network, Any]:
        """Hold a /20 of 127.1.0.0/16 while the kubelet lives: parallel clusters never share IPs."""
        lock_dir = Path("/tmp/connbalance-cluster-slots")
        lock_dir.mkdir(exist_ok=True)
        for index, network in enumerate(SLOTS.subnets(new_prefix=SLOT_PREFIX)):
            handle = (lock_dir / f"slot-{index}.lock").open("w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return network, handle
        raise SystemExit("kubelet: every pod address slot in 127.1.0.0/16 is in use")

    def register_nodes(self) -> None:
        for name in self.nodes:
            body: Any = {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}
            with contextlib.suppress(client.ApiException):
                self.core.create_node(body)
            self.heartbeat(name)

    def heartbeat(self, name: str) -> None:
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
        resources = {"cpu": "16", "memory": "64Gi", "pods": "250"}
        status = {
            "conditions": [{**ready, "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
            "addresses": [{"type": "InternalIP", "address": self.node_ips[name]}],
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {"kubeletVersion": "v1.35.4-test", "containerRuntimeVersion": "process://"},
        }
        self.core.patch_node_status(name, {"status": status})
        # Admission tainted the new node not-ready; the node lifecycle controller that would lift
        # the taint needs real kubelets and is off, so the kubelet lifts it itself.
        self.core.patch_node(name, {"spec": {"taints": None}})

    def run(self) -> None:
        self.register_nodes()
        beat = time.monotonic()
        while not self.stop.wait(LOOP_SECONDS):
            try:
                if time.monotonic() - beat > HEARTBEAT_SECONDS:
                    beat = time.monotonic()
                    for name in self.nodes:
                        self.heartbeat(name)
                self.sync()
            # The API server may be restarting: refused connections reach here as urllib3's
            # MaxRetryError, which is no OSError.
            except (client.ApiException, OSError, HTTPError) as error:
                print(f"kubelet: sync failed: {error}", flush=True)
        # Pod processes have sessions of their own: nothing else would stop them.
        stop_processes([c for pod in self.pods.values() for c in pod.containers], SHUTDOWN_GRACE)

    def sync(self) -> None:
        seen = set()
        pods: list[Any] = self.core.list_pod_for_all_namespaces().items
        for obj in pods:
            meta, spec = obj.metadata, obj.spec
            seen.add(meta.uid)
            if not spec.node_name:
                if meta.deletion_timestamp is None:
                    self.bind(obj)
                continue
            if spec.node_name not in self.nodes:
                continue
            pod = self.pods.get(meta.uid)
            if meta.deletion_timestamp is not None:
                if pod is None:
                    self.remove(meta.namespace, meta.name, meta.uid)
                elif not pod.stopping:
                    pod.stopping = True
                    grace = meta.deletion_grace_period_seconds or 0
                    threading.Thread(target=self.kill, args=(pod, grace), daemon=True).start()
                continue
            if pod is None and obj.status.phase in (None, "Pending"):
                pod = self.start(obj)
                if pod is not None:
                    self.pods[meta.uid] = pod
            if pod is not None:
                try:
                    pod.volumes.sync(obj)
                except VolumeNotReady as error:  # the kubelet keeps the old content meanwhile
                    self.wait_for_volumes(obj, error)
                for container in pod.containers:
                    container.poll()
                self.report(pod, obj)
        self.waiting = {uid: why for uid, why in self.waiting.items() if uid in seen}
        for uid in [uid for uid, pod in self.pods.items() if uid not in seen]:
            for container in self.pods.pop(uid).containers:  # removed behind our back
                container.signal(signal.SIGKILL)

    def bind(self, obj: Any) -> None:
        """To the node the pod asks for by name (a DaemonSet's pods do, by node affinity), else
        round-robin: there is no scheduler."""
        namespace, name = obj.metadata.namespace, obj.metadata.name
        node = pinned_node(obj.spec)
        if node is None:
            node = self.nodes[self.next_node % len(self.nodes)]
            self.next_node += 1
        elif node not in self.nodes:
            return  # no such node: it stays Pending, as it would unscheduled
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name),
            target=client.V1ObjectReference(kind="Node", name=node),
        )
        # The generated client cannot read the Status it gets back: skip decoding it.
        with contextlib.suppress(client.ApiException):  # lost a race with a deletion
            self.core.create_namespaced_pod_binding(name, namespace, body, _preload_content=False)

    def wait_for_volumes(self, obj: Any, error: VolumeNotReady) -> None:
        meta = obj.metadata
        if self.waiting.get(meta.uid) != str(error):
            self.waiting[meta.uid] = str(error)
            print(f"kubelet: {meta.namespace}/{meta.name}: MountVolume: {error}", flush=True)

    def start(self, obj: Any) -> Pod | None:
        """Write the pod's volumes and start its containers; None while a volume cannot be
        written (the pod stays Pending, and the next sync tries again)."""
        meta, spec = obj.metadata, obj.spec
        pod_dir = self.run_dir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid[:8]}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        volumes = PodVolumes(
            root=pod_dir / "volumes", pod=obj, core=self.core,
            token=lambda audience, seconds: self.token(obj, audience=audience, seconds=seconds),
            node_root=self.run_dir / "nodes" / spec.node_name,
        )  # fmt: skip
        try:
            volumes.sync(obj)
        except VolumeNotReady as error:
            self.wait_for_volumes(obj, error)
            return None
        self.waiting.pop(meta.uid, None)
        ip = self.node_ips[spec.node_name] if spec.host_network else next(self.free_ips)
        base = {
            "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1", "POD_NAME": meta.name, "POD_NAMESPACE": meta.namespace,
            "POD_IP": ip, "NODE_NAME": spec.node_name,
        }  # fmt: skip
        if os.environ.get("PYTHONPATH"):  # absolute: a container may set its own workingDir
            base["PYTHONPATH"] = os.pathsep.join(
                os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p
            )
        if spec.automount_service_account_token is not False:
            base["KUBECONFIG"] = str(self.pod_kubeconfig(obj, pod_dir))
        fields = {
            "metadata.name": meta.name, "metadata.namespace": meta.namespace,
            "metadata.uid": meta.uid, "status.podIP": ip, "spec.nodeName": spec.node_name,
            "spec.serviceAccountName": spec.service_account_name or "default",
        }  # fmt: skip
        containers = []
        for c in spec.containers:
            env, mounts = dict(base), volumes.mounts(c)
            for item in c.env or []:
                ref = item.value_from.field_ref if item.value_from else None
                value = fields.get(ref.field_path, "") if ref else item.value or ""
                env[item.name] = mounts.rewrite(value)
            argv = [mounts.rewrite(expand(a, env)) for a in [*(c.command or []), *(c.args or [])]]
            containers.append(Container(
                name=c.name, argv=argv, env=env,
                cwd=mounts.rewrite(c.working_dir) if c.working_dir else os.getcwd(),
                log=pod_dir / f"{c.name}.log", restart_policy=spec.restart_policy or "Always",
                probe=self.probe(c, ip), pre_stop=pre_stop(c, mounts),
            ))  # fmt: skip
        for container in containers:
            try:
                container.start()
            except OSError as error:  # like a missing image: the pod does not run
                print(f"kubelet: {meta.namespace}/{meta.name}: {error}", flush=True)
        return Pod(uid=meta.uid, namespace=meta.namespace, name=meta.name, ip=ip,
                   containers=containers, volumes=volumes)  # fmt: skip

    def probe(self, c: Any, ip: str) -> Probe | None:
        """The readiness probe (HTTP GET or TCP; exec and gRPC probes are not run: ready)."""
        p = c.readiness_probe
        action = p and (p.http_get or p.tcp_socket)
        if not action:
            return None
        port = action.port
        if isinstance(port, str) and not port.isdigit():
            port = next(x.container_port for x in c.ports or [] if x.name == port)
        url = f"http://{ip}:{port}{p.http_get.path or '/'}" if p.http_get else f"tcp://{ip}:{port}"
        return Probe(
            url=url, period=p.period_seconds or 10,
            next_at=time.monotonic() + (p.initial_delay_seconds or 0),
            success_threshold=p.success_threshold or 1, failure_threshold=p.failure_threshold or 3,
        )  # fmt: skip

    def token(self, obj: Any, *, audience: str | None = None, seconds: int = 86400) -> str:
        """A TokenRequest token bound to this pod, for its ServiceAccount ("" if it has none)."""
        meta = obj.metadata
        account = obj.spec.service_account_name or "default"
        bound = {"kind": "Pod", "apiVersion": "v1", "name": meta.name, "uid": meta.uid}
        request: Any = {"spec": {"expirationSeconds": seconds, "boundObjectRef": bound}}
        if audience:
            request["spec"]["audiences"] = [audience]
        with contextlib.suppress(client.ApiException):  # no such account: the pod is anonymous
            answer: Any = self.core.create_namespaced_service_account_token(
                account, meta.namespace, request
            )
            return str(answer.status.token)
        return ""

    def pod_kubeconfig(self, obj: Any, pod_dir: Path) -> Path:
        """A kubeconfig with a token bound to this pod, as a projected token volume would hold."""
        meta = obj.metadata
        token = self.token(obj)
        path = pod_dir / "kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: c, cluster: {{server: '{self.api_server}', "
            f"certificate-authority: '{self.ca_file}'}}}}]\n"
            f"users: [{{name: u, user: {{token: '{token}'}}}}]\n"
            "contexts: [{name: c, context: {cluster: c, user: u, "
            f"namespace: {meta.namespace}}}}}]\n"
            "current-context: c\n"
        )
        path.chmod(0o600)
        return path

    def report(self, pod: Pod, obj: Any) -> None:
        images = {c.name: c.image for c in obj.spec.containers}
        statuses = [c.status(images.get(c.name, "")) for c in pod.containers]
        running = any(c.process is not None for c in pod.containers)
        restarting = any(c.restart_at for c in pod.containers)
        if running or restarting:
            phase = "Running"
        elif all(c.exit_code == 0 for c in pod.containers):
            phase = "Succeeded"
        else:
            phase = "Failed"
        containers_ready = "True" if all(c.ready for c in pod.containers) else "False"
        old = {c.type: c for c in obj.status.conditions or []}
        # As the kubelet does: Ready also needs each readiness gate's condition True; those
        # conditions are others' to write, so the patch below names only the kubelet's own.
        gates = [g.condition_type for g in obj.spec.readiness_gates or []]
        closed = [g for g in gates if g not in old or old[g].status != "True"]
        ready = "False" if closed else containers_ready

        def condition(kind: str, value: str) -> dict[str, Any]:
            keep = kind in old and old[kind].status == value and old[kind].last_transition_time
            stamp = old[kind].last_transition_time.strftime("%Y-%m-%dT%H:%M:%SZ") if keep else now()
            return {"type": kind, "status": value, "lastTransitionTime": stamp}

        start = obj.status.start_time
        host = self.node_ips[obj.spec.node_name]
        status = {
            "phase": phase, "podIP": pod.ip, "podIPs": [{"ip": pod.ip}], "hostIP": host,
            "hostIPs": [{"ip": host}], "containerStatuses": statuses,
            "startTime": start.strftime("%Y-%m-%dT%H:%M:%SZ") if start else now(),
            "conditions": [condition("PodScheduled", "True"), condition("Initialized", "True"),
                           condition("ContainersReady", containers_ready),
                           condition("Ready", ready)],
        }  # fmt: skip
        summary = [phase, ready, *((s["ready"], s["restartCount"], s["started"]) for s in statuses)]
        if summary != pod.last_status:
            # A strategic merge patch merges conditions by type: those of others are kept.
            self.core.patch_namespaced_pod_status(
                pod.name, pod.namespace, {"status": status},
                _content_type="application/strategic-merge-patch+json",
            )
            pod.last_status = summary

    def kill(self, pod: Pod, grace: int) -> None:
        """Stop the processes within the grace period, then remove the pod, as the kubelet does."""
        stop_processes(pod.containers, grace, hooks=True)
        self.remove(pod.namespace, pod.name, pod.uid)  # sync() forgets it once it is gone

    def remove(self, namespace: str, name: str, uid: str) -> None:
        options = client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
        )
        with contextlib.suppress(client.ApiException):  # already gone
            self.core.delete_namespaced_pod(name, namespace, body=options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the test kubelet")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--node-prefix", default="test-node")
    args = parser.parse_args(argv)
    config.load_kube_config(args.kubeconfig)  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    kubelet = Kubelet(
        nodes=[f"{args.node_prefix}-{i}" for i in range(args.nodes)],
        run_dir=args.run_dir,
        api_server=configuration.host,
        ca_file=str(configuration.ssl_ca_cert),
    )
    signal.signal(signal.SIGTERM, lambda *_: kubelet.stop.set())
    signal.signal(signal.SIGINT, lambda *_: kubelet.stop.set())
    print(f"kubelet: nodes {kubelet.nodes}, pod addresses from {kubelet.network}", flush=True)
    kubelet.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
