"""A real ``CoreV1Api`` that counts its pod list calls: every call still goes to the API server."""

from __future__ import annotations

from typing import Any


class CountingCore:
    def __init__(self, core: Any) -> None:
        self._core = core
        self.pod_lists = 0

    def list_namespaced_pod(self, *args: Any, **kwargs: Any) -> Any:
        self.pod_lists += 1
        return self._core.list_namespaced_pod(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)
