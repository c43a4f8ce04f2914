"""Pod volumes for the test kubelet, written the way the real kubelet writes them.

Kinds: ``downwardAPI`` (labels, annotations, name, namespace, uid, or one label or annotation),
``secret`` and ``configMap`` (every key as a file, or ``items``; ``defaultMode`` and per-item
``mode``; ``optional``), ``projected`` (those three and ``serviceAccountToken``), ``emptyDir``, and
``hostPath`` (the path under the node's own root, ``<run dir>/nodes/<node>``, since the test
nodes share one host; ``DirectoryOrCreate`` makes it). Any other kind is an empty directory. A
volume lives in ``<pod dir>/volumes/<name>``.

Content is published as the kubelet's AtomicWriter publishes it: the files go into a fresh
``..<timestamp>`` directory, a ``..data_tmp`` symlink to it is renamed over ``..data`` (one
rename(2), so a reader sees the old set of files or the new one, never a mix), and each visible
top-level name is a symlink through ``..data``. The downward API is rewritten when the pod's
labels or annotations change; Secrets and ConfigMaps are read again every ``REFRESH_SECONDS``.
A Secret or ConfigMap that does not exist (and is not ``optional``) keeps the pod from starting,
as ``ContainerCreating`` does.

Mounts: containers are local processes on the host, not in a mount namespace, so nothing can
appear at a ``mountPath``. The kubelet rewrites the mount path instead, wherever it begins a path
in the container's ``command``, ``args`` and ``env`` values, to the volume's directory
(``MountTable``). A program that is told its paths through its flags or environment, as the
agent is, then reads and writes the volume; a path compiled into a program would not be seen.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

REFRESH_SECONDS = 5.0
DEFAULT_MODE = 0o644  # the API's defaultMode 420
TOKEN_SECONDS = 3600  # a projected serviceAccountToken's default expirationSeconds

# (relative path -> (content, file mode)): what one volume holds.
Payload = dict[str, tuple[bytes, int]]
# (audience or None, expirationSeconds) -> a token bound to the pod
TokenSource = Callable[[str | None, int], str]


class VolumeNotReady(Exception):
    """A volume cannot be set up (yet): the message says why, in the kubelet's words."""


_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t",
            "\v": r"\v"}  # fmt: skip
_PRINTABLE = ("L", "M", "N", "P", "S")  # Go's unicode.IsPrint: these categories, and U+0020


def go_quote(value: str) -> str:
    """``value`` quoted as Go's strconv.Quote (``%q``) quotes it."""
    out = ['"']
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char == " " or unicodedata.category(char)[0] in _PRINTABLE:
            out.append(char)
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def format_map(values: Mapping[str, str]) -> str:
    """Labels or annotations as the kubelet writes them (fieldpath.FormatMap): ``key="value"``
    lines sorted by key, values quoted as Go's ``%q``, no newline after the last."""
    return "\n".join(f"{key}={go_quote(values[key])}" for key in sorted(values))


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Any, path: str) -> str:
    """A downwardAPI volume item's ``fieldRef`` of ``pod``."""
    meta = pod.metadata
    if path in ("metadata.labels", "metadata.annotations"):
        return format_map(getattr(meta, path.removeprefix("metadata.")) or {})
    one = _SUBSCRIPT.match(path)
    if one:
        return str((getattr(meta, one[1]) or {}).get(one[2], ""))
    simple = {"metadata.name": meta.name, "metadata.namespace": meta.namespace,
              "metadata.uid": meta.uid}  # fmt: skip
    if path not in simple:
        raise VolumeNotReady(f"fieldRef {path} is not supported in a downwardAPI volume")
    return str(simple[path])


def publish(directory: Path, payload: Payload) -> None:
    """Make ``directory`` hold exactly ``payload``, swapping ``..data`` as AtomicWriter does."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    fresh = Path(tempfile.mkdtemp(prefix=stamp, dir=directory))
    fresh.chmod(0o755)
    for relative, (content, mode) in payload.items():
        target = fresh / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    swap = directory / "..data_tmp"
    swap.unlink(missing_ok=True)
    swap.symlink_to(fresh.name)
    os.replace(swap, data)  # rename(2) replaces the old symlink itself, atomically
    visible = {relative.split("/", 1)[0] for relative in payload}
    for name in visible:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    for entry in directory.iterdir():
        if not entry.name.startswith("..") and entry.name not in visible and entry.is_symlink():
            entry.unlink()
    if old and old != fresh.name:
        shutil.rmtree(directory / old, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class MountTable:
    """A container's mounts, as (mountPath, host directory) pairs."""

    mounts: tuple[tuple[str, str], ...]

    def rewrite(self, text: str) -> str:
        """``text`` with each mount path that begins a path (at the start, or after a character
        that cannot be part of one, such as ``=`` or ``:``) replaced by its host directory; the
        longest mount path wins, so nested mounts resolve as the kernel would."""
        if not self.mounts:
            return text
        hosts = dict(self.mounts)
        pattern = "|".join(re.escape(path) for path in sorted(hosts, key=len, reverse=True))
        found = re.compile(rf"(?<![\w./-])({pattern})(?=$|/|[^\w.-])")
        return found.sub(lambda m: hosts[m.group(1)], text)


class PodVolumes:
    """One pod's volumes on the host: ``sync`` writes them, ``mounts`` maps a container's."""

    def __init__(self, *, root: Path, pod: Any, core: client.CoreV1Api, token: TokenSource,
                 node_root: Path) -> None:
        self.root = root
        self.node_root = node_root
        self.namespace = pod.metadata.namespace
        self.volumes = {volume.name: volume for volume in pod.spec.volumes or []}
        self._core = core
        self._token = token
        self._published: dict[str, Payload] = {}
        self._objects: dict[tuple[str, str], dict[str, bytes] | None] = {}
        self._read_at = float("-inf")
        self._tokens: dict[tuple[str | None, int], bytes] = {}

    def host_dir(self, name: str) -> Path:
        volume = self.volumes.get(name)
        if volume is not None and volume.host_path is not None:
            return self.node_root / volume.host_path.path.lstrip("/")
        return self.root / name

    def mounts(self, container: Any) -> MountTable:
        pairs = []
        for mount in container.volume_mounts or []:
            host = self.host_dir(mount.name)
            if mount.sub_path:
                host = host / mount.sub_path
            pairs.append((mount.mount_path.rstrip("/") or "/", str(host)))
        return MountTable(tuple(pairs))

    def sync(self, pod: Any) -> None:
        """Write every volume whose content changed; raises VolumeNotReady naming the first
        that cannot be written (the others keep what they held)."""
        if time.monotonic() - self._read_at >= REFRESH_SECONDS:
            self._objects.clear()
            self._read_at = time.monotonic()
        for name, volume in self.volumes.items():
            payload = self._payload(volume, pod)
            if payload is None:
                if volume.host_path is None:
                    (self.root / name).mkdir(parents=True, exist_ok=True)
                elif volume.host_path.type == "DirectoryOrCreate":
                    self.host_dir(name).mkdir(parents=True, exist_ok=True)
            elif self._published.get(name) != payload:
                try:
                    publish(self.root / name, payload)
                except OSError as error:
                    raise VolumeNotReady(f'volume "{name}": {error}') from error
                self._published[name] = payload

    def _payload(self, volume: Any, pod: Any) -> Payload | None:
        if volume.downward_api is not None:
            source = volume.downward_api
            return self._downward(source.items, pod, _mode(source.default_mode))
        if volume.secret is not None:
            s = volume.secret
            return self._keys("secret", s.secret_name, s.items, s.optional, _mode(s.default_mode))
        if volume.config_map is not None:
            c = volume.config_map
            return self._keys("configmap", c.name, c.items, c.optional, _mode(c.default_mode))
        if volume.projected is None:
            return None
        mode = _mode(volume.projected.default_mode)
        payload: Payload = {}
        for source in volume.projected.sources or []:
            if source.secret is not None:
                s = source.secret
                payload |= self._keys("secret", s.name, s.items, s.optional, mode)
            elif source.config_map is not None:
                c = source.config_map
                payload |= self._keys("configmap", c.name, c.items, c.optional, mode)
            elif source.downward_api is not None:
                payload |= self._downward(source.downward_api.items, pod, mode)
            elif source.service_account_token is not None:
                t = source.service_account_token
                key = (t.audience, t.expiration_seconds or TOKEN_SECONDS)
                if key not in self._tokens:
                    self._tokens[key] = self._token(*key).encode()
                payload[t.path] = (self._tokens[key], mode)
        return payload

    def _downward(self, items: Any, pod: Any, mode: int) -> Payload:
        payload: Payload = {}
        for item in items or []:
            if item.field_ref is None:
                raise VolumeNotReady(f"{item.path}: only fieldRef items are simulated")
            value = field_value(pod, item.field_ref.field_path)
            payload[item.path] = (value.encode(), _mode(item.mode, mode))
        return payload

    def _keys(self, kind: str, name: str, items: Any, optional: Any, mode: int) -> Payload:
        data = self._object(kind, name)
        if data is None:
            if optional:
                return {}
            raise VolumeNotReady(f'{kind} "{name}" not found')
        if not items:
            return {key: (value, mode) for key, value in data.items()}
        payload: Payload = {}
        for item in items:
            if item.key in data:
                payload[item.path] = (data[item.key], _mode(item.mode, mode))
            elif not optional:
                raise VolumeNotReady(f'{kind} "{name}": no key "{item.key}"')
        return payload

    def _object(self, kind: str, name: str) -> dict[str, bytes] | None:
        if (kind, name) not in self._objects:
            data: dict[str, bytes] | None = None
            try:
                if kind == "secret":
                    secret: Any = self._core.read_namespaced_secret(name, self.namespace)
                    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
                else:
                    found: Any = self._core.read_namespaced_config_map(name, self.namespace)
                    data = {k: v.encode() for k, v in (found.data or {}).items()}
                    data |= {k: base64.b64decode(v) for k, v in (found.binary_data or {}).items()}
            except client.ApiException as error:
                if error.status != 404:
                    raise
            self._objects[kind, name] = data
        return self._objects[kind, name]


def _mode(mode: int | None, default: int = DEFAULT_MODE) -> int:
    return default if mode is None else mode
