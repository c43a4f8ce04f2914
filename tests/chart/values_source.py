"""The chart's values.yaml read as the one source of its schema and its README table.

Two comment conventions that chart authors already know: ``# -- text`` above a key describes it
(helm-docs), and a block between two ``# @schema`` lines holds JSON-schema keywords for it, as
YAML (helm-schema). A key with a description is a value of its own; the keys under a value whose
schema is a ``$ref`` (a Kubernetes type) or a free-form map are that value's default, not values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "connbalance"
VALUES = CHART / "values.yaml"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?: |$)")
_COMMENT = re.compile(r"^(?P<indent> *)#(?: (?P<text>.*))?$")


@dataclass(frozen=True, slots=True)
class Documented:
    """One value: its dotted path, its description, and the schema keywords written for it."""

    path: tuple[str, ...]
    description: str
    keywords: dict[str, Any] = field(default_factory=dict)

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


class SourceError(ValueError):
    """values.yaml breaks its own conventions; the message names the line."""


def read(text: str | None = None) -> tuple[dict[str, Any], dict[tuple[str, ...], Documented]]:
    """The default values, and each documented key by its path."""
    text = VALUES.read_text() if text is None else text
    values = yaml.safe_load(text) or {}
    documented: dict[tuple[str, ...], Documented] = {}
    stack: list[tuple[int, str]] = []
    pending: list[tuple[int, str]] = []  # the comment lines just above the current line
    for number, line in enumerate(text.splitlines(), start=1):
        comment = _COMMENT.match(line)
        if comment:
            pending.append((number, comment.group("text") or ""))
            continue
        key = _KEY.match(line)
        if not key:
            if not line.strip():
                pending = []
            continue
        indent = len(key.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.group("key")))
        path = tuple(k for _, k in stack)
        if pending:
            documented[path] = _parse_comments(path, pending)
        pending = []
    return values, documented


def _parse_comments(path: tuple[str, ...], lines: list[tuple[int, str]]) -> Documented:
    keyword_lines: list[str] = []
    description: list[str] = []
    in_schema = False
    for number, text in lines:
        if text.strip() == "@schema":
            in_schema = not in_schema
        elif in_schema:
            keyword_lines.append(text)
        elif text.startswith("-- "):
            description = [text[3:]]
        elif description:
            description.append(text)
        else:
            raise SourceError(
                f"values.yaml:{number}: a comment above {'.'.join(path)} that is "
                "neither `# -- description` nor in a `# @schema` block"
            )
    if in_schema:
        raise SourceError(f"values.yaml: unclosed `# @schema` block above {'.'.join(path)}")
    if not description:
        raise SourceError(f"values.yaml: {'.'.join(path)} has no `# -- description`")
    keywords = yaml.safe_load("\n".join(keyword_lines)) if keyword_lines else {}
    return Documented(path=path, description=" ".join(description), keywords=keywords or {})
