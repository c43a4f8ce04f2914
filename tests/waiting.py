"""Waiting in tests for something real (a pod, a scrape, an operator) to come true."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def eventually(
    check: Callable[[], Any], *, what: str, timeout: float = 90.0, every: float = 0.3
) -> Any:
    """The check's first truthy result, polled; fails naming ``what`` (and the last result)
    after the timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"not within {timeout:.0f}s: {what} (last: {last!r})")
