"""Reading one key of a Secret that a ConnectionBalancer names, and the error for a spec that
cannot be used.

Secrets are read by name only (``get``, never ``list`` or ``watch``), so the operator's RBAC can
name the Secrets it may read. Errors name the spec field, the Secret and the key, and never the
value.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from connbalance.model import SecretKeyRef


class SpecError(Exception):
    """The spec or what it refers to (a Secret) cannot be used. Nothing is done."""


def read_secret(core: Any, namespace: str, ref: SecretKeyRef, field_path: str) -> str:
    """The text under ``ref.key`` of the Secret ``ref.name`` in ``namespace``, without the
    surrounding whitespace that files written by hand carry. Raises SpecError naming
    ``field_path``, the Secret and the key."""
    where = f"{field_path}: Secret {namespace}/{ref.name}"
    try:
        secret = core.read_namespaced_secret(ref.name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise SpecError(f"{where} not found") from exc
        raise SpecError(f"{where} cannot be read: HTTP {exc.status} {exc.reason}") from exc
    except (HTTPError, OSError) as exc:
        raise SpecError(f"{where} cannot be read: the API server is unreachable") from exc
    data = secret.data or {}
    if ref.key not in data:
        held = ", ".join(sorted(data)) or "none"
        raise SpecError(f"{where} has no key {ref.key!r} (its keys: {held})")
    try:
        return base64.b64decode(data[ref.key], validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise SpecError(f"{where}: key {ref.key!r} does not hold UTF-8 text") from exc
