"""The drain request: the operator's intent, written to a pod and acted on once by its agent.

Wire form (the annotation ``connbalance.io/drain`` and the body of ``POST /v1/drain``)::

    {"id": "cb.default.web.3f2a9c1e.2.web-0", "count": 40, "windowSeconds": 30,
     "quietMillis": 200, "deadline": "2026-11-30T08:00:00Z", "policy": "default/web",
     "issuedAt": "2026-11-30T07:59:00Z", "steer": true}

``id`` and ``count`` are required; the rest have the defaults below. With ``steer`` the agent
also refuses new connections for the window, so cycled clients reconnect to other pods. Unknown
keys are rejected so that a typo never silently changes what is cycled, and so is a key given
twice, which JSON parsers resolve differently (the last wins here, the first elsewhere).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from connbalance.model.ids import RequestId
from connbalance.model.settings import setting

DRAIN_ANNOTATION = "connbalance.io/drain"

# A request's defaults and bounds are the policy's: one table says what a window or a quiet
# period may be, whether the operator or a person with curl writes the request.
_WINDOW = setting("actuation.windowSeconds")
_QUIET = setting("actuation.quietMillis")
DEFAULT_WINDOW_SECONDS = float(_WINDOW.number_default())
DEFAULT_QUIET_MILLIS = int(_QUIET.number_default())
MAX_WINDOW_SECONDS = float(_WINDOW.upper_bound())
MAX_QUIET_MILLIS = int(_QUIET.upper_bound())
# Without a deadline, a request may run this long past its window before forced closes.
DEFAULT_DEADLINE_SLACK_SECONDS = 30.0
MAX_COUNT = 1_000_000
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$")
_KEYS = frozenset(
    {"id", "count", "windowSeconds", "quietMillis", "deadline", "policy", "issuedAt", "steer"}
)


class InvalidDrainRequest(ValueError):
    """A drain request that must not be acted on. ``field`` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class DrainRequest:
    id: RequestId
    count: int
    window_seconds: float
    quiet_millis: int
    deadline: datetime
    policy: str = ""
    issued_at: datetime | None = None
    steer: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "count": self.count,
            "windowSeconds": self.window_seconds,
            "quietMillis": self.quiet_millis,
            "deadline": _format_time(self.deadline),
            "policy": self.policy,
        }
        if self.issued_at is not None:
            wire["issuedAt"] = _format_time(self.issued_at)
        if self.steer:
            wire["steer"] = True
        return wire

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, now: datetime) -> DrainRequest:
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except InvalidDrainRequest:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidDrainRequest("body", f"not valid JSON ({exc})") from None
        except RecursionError:
            raise InvalidDrainRequest("body", "not a drain request: nested too deeply") from None
        return cls.from_wire(data, now=now)

    @classmethod
    def from_wire(cls, data: object, *, now: datetime) -> DrainRequest:
        """Validate a decoded request. ``now`` (the caller's clock: the model reads none) fills
        the default deadline when neither ``deadline`` nor ``issuedAt`` is given."""
        if not isinstance(data, Mapping):
            raise InvalidDrainRequest("body", "must be a JSON object")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            # A key that is blank or not printable names nothing a person could find: the body.
            key = unknown[0]
            raise InvalidDrainRequest(
                key if key.isprintable() and key.strip() else "body", f"unknown field {key!r}"
            )
        request_id = data.get("id")
        if not isinstance(request_id, str) or not _ID_PATTERN.fullmatch(request_id):
            raise InvalidDrainRequest(
                "id", "required: 1-253 characters of letters, digits and . _ : -"
            )
        count = data.get("count")
        if isinstance(count, bool) or not isinstance(count, int):
            raise InvalidDrainRequest("count", "required: a whole number")
        if not 0 <= count <= MAX_COUNT:
            raise InvalidDrainRequest("count", f"must be between 0 and {MAX_COUNT}")
        window = _number(data, "windowSeconds", DEFAULT_WINDOW_SECONDS, 0.0, MAX_WINDOW_SECONDS)
        quiet = _number(data, "quietMillis", DEFAULT_QUIET_MILLIS, 0, MAX_QUIET_MILLIS)
        if quiet != int(quiet):
            raise InvalidDrainRequest("quietMillis", "must be a whole number")
        policy = data.get("policy", "")
        if not isinstance(policy, str):
            raise InvalidDrainRequest("policy", "must be a string")
        issued_at = _time(data, "issuedAt") if "issuedAt" in data else None
        steer = data.get("steer", False)
        if not isinstance(steer, bool):
            raise InvalidDrainRequest("steer", "must be true or false")
        if "deadline" in data:
            deadline = _time(data, "deadline")
        else:
            start = issued_at or now
            try:
                deadline = start + timedelta(seconds=window + DEFAULT_DEADLINE_SLACK_SECONDS)
            except OverflowError:
                raise InvalidDrainRequest(
                    "issuedAt", "is too late: no deadline follows it"
                ) from None
        return cls(
            id=RequestId(request_id),
            count=count,
            window_seconds=float(window),
            quiet_millis=int(quiet),
            deadline=deadline,
            policy=policy,
            issued_at=issued_at,
            steer=steer,
        )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidDrainRequest(key, "given twice")
        seen[key] = value
    return seen


def _number(data: Mapping[str, object], key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidDrainRequest(key, "must be a number")
    # Only a float can be NaN or infinite; an int of any size compares exactly with the bounds.
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidDrainRequest(key, "must be a number")
    if not low <= value <= high:
        raise InvalidDrainRequest(key, f"must be between {low:g} and {high:g}")
    return float(value)


def _time(data: Mapping[str, object], key: str) -> datetime:
    value = data.get(key)
    if not isinstance(value, str):
        raise InvalidDrainRequest(key, "must be an RFC 3339 time such as 2026-11-30T08:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidDrainRequest(
            key, f"must be an RFC 3339 time such as 2026-11-30T08:00:00Z, not {value!r}"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidDrainRequest(key, "must carry a time zone (Z or +00:00)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidDrainRequest(key, f"is out of range in UTC: {value!r}") from None


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")
