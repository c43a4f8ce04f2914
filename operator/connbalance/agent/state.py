"""The request ids this agent has seen, kept in a small JSON file so a restart never acts twice.

In Kubernetes the file lives on an emptyDir, which outlives container restarts. An id is written
down before its first close, so a crash mid-request leaves it recorded (and reported as
interrupted), never repeated. Writes go to a temporary file then ``os.replace``: a crash leaves
the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

# Bounded: the operator issues at most a few requests per pod per rollout, and the oldest ids are
# long past their deadlines by the time they fall off.
MAX_REMEMBERED = 1000
_VERSION = 1


class StateFileError(RuntimeError):
    """The state file exists but cannot be read or written."""


class SeenRequests:
    """An ordered map from request id to its last recorded status (wire form)."""

    def __init__(self, *, path: Path | None, limit: int = MAX_REMEMBERED) -> None:
        self._path = path
        self._limit = limit
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        if path is not None:
            self._load(path)

    @property
    def path(self) -> Path | None:
        return self._path

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._entries

    def get(self, request_id: str) -> dict[str, Any] | None:
        return self._entries.get(request_id)

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries.values())

    def record(self, entry: dict[str, Any]) -> None:
        """Remember (or update) one request and write the file before returning."""
        request_id = str(entry["id"])
        self._entries[request_id] = dict(entry)
        self._entries.move_to_end(request_id)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)
        self._save()

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateFileError(f"--state-file {path}: cannot read ({exc})") from None
        try:
            data = json.loads(text)
            entries = data["requests"]
            if not isinstance(entries, list):
                raise TypeError("requests is not a list")
            for entry in entries:
                self._entries[str(entry["id"])] = dict(entry)
        except (ValueError, TypeError, KeyError) as exc:
            raise StateFileError(
                f"--state-file {path}: not a state file written by this agent ({exc}); "
                "move it away to start afresh"
            ) from None

    def _save(self) -> None:
        if self._path is None:
            return
        payload = json.dumps(
            {"version": _VERSION, "requests": list(self._entries.values())},
            separators=(",", ":"),
            sort_keys=True,
        )
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StateFileError(f"--state-file {self._path}: cannot write ({exc})") from None
