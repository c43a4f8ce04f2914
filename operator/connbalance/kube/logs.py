"""Log lines as text or JSON. A line about a balancer carries its namespace, balancer, episode,
step and request id, passed as ``extra``; in JSON they are fields of their own."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Final

CONTEXT: Final = ("namespace", "balancer", "episode", "step", "request_id")
FORMATS: Final = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{name}={getattr(record, name)}"
            for name in CONTEXT
            if getattr(record, name, None) is not None
        )
        return f"{text} [{context}]" if context else text


def configure(*, log_format: str, verbose: bool) -> None:
    if log_format not in FORMATS:
        raise ValueError(f"--log-format: want one of {', '.join(FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # kopf says "Handler ... succeeded" for every watch event: news only when verbose.
    logging.getLogger("kopf.objects").setLevel(logging.DEBUG if verbose else logging.WARNING)
