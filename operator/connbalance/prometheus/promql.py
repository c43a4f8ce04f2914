"""Safe pieces of PromQL: label names checked, label values quoted, pod names regex-escaped.

Every value that comes from a user or from the cluster (namespace, selector values, pod names)
reaches a query only through these functions, so a quote or a backslash in a value can never end
a string literal early and change what the query selects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_NOT_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")
# RE2 treats a backslash before ASCII punctuation as that literal character, and rejects one
# before a letter, a digit or a space: escape the punctuation, except "-", which is literal outside
# a character class (and none can open, "[" being escaped): pod names stay readable in queries.
_RE2_PUNCTUATION = frozenset("!\"#$%&'()*+,./:;<=>?@[\\]^`{|}~")
_STRING_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def label_name(name: str, *, what: str = "label name") -> str:
    """``name`` unchanged when it is a valid Prometheus label name; ValueError otherwise."""
    if not _LABEL_NAME.match(name):
        raise ValueError(f"{what} {name!r} is not a valid Prometheus label name")
    return name


def sanitized_label_name(kube_label: str) -> str:
    """The metric label that Prometheus's ``labelmap`` convention gives a Kubernetes pod label.

    Kubernetes service discovery exposes ``app.kubernetes.io/component`` as
    ``__meta_kubernetes_pod_label_app_kubernetes_io_component`` (every character outside
    ``[a-zA-Z0-9_]`` becomes ``_``), and the usual ``labelmap`` rule strips the prefix.
    """
    return label_name(_NOT_LABEL_CHAR.sub("_", kube_label), what=f"selector key {kube_label!r} ->")


def string_literal(value: str) -> str:
    """``value`` as a double-quoted PromQL string literal (Go escaping rules)."""
    out = []
    for char in value:
        if char in _STRING_ESCAPES:
            out.append(_STRING_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def regex_literal(value: str) -> str:
    """``value`` escaped so that RE2 matches it literally."""
    return "".join("\\" + c if c in _RE2_PUNCTUATION else c for c in value)


def equal(name: str, value: str) -> str:
    return f"{label_name(name)}={string_literal(value)}"


def one_of(name: str, values: Iterable[str]) -> str:
    """``name=~"a|b|c"``: matches exactly these values (Prometheus anchors regex matchers)."""
    alternatives = sorted(set(values))
    if not alternatives:
        raise ValueError(f"one_of({name!r}) needs at least one value")
    return f"{label_name(name)}=~{string_literal('|'.join(map(regex_literal, alternatives)))}"


def join(matchers: Sequence[str]) -> str:
    return ",".join(matchers)
