"""Drain requests broken on purpose, each with the one field its defect is in.

Each defect comes from the documented protocol (connbalance.model.drain's docstring: id of 1-253
letters, digits and ``._:-``; a whole ``count``; bounded numbers; RFC 3339 times with a zone; a
string ``policy``; a boolean ``steer``; no other key, none twice), not from the parser's code, so
the parser can be wrong about it.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Reproducible in CI (derandomize, no example database), modest in time.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID: dict[str, Any] = {
    "id": "cb.default.web.3f2a9c1e.2.web-0",
    "count": 1,
    "windowSeconds": 1,
    "quietMillis": 50,
    "deadline": "2999-01-01T00:00:00Z",
    "policy": "default/web",
}
KEYS = ("id", "count", "windowSeconds", "quietMillis", "deadline", "policy", "issuedAt", "steer")

# JSON values of every shape, for "the wrong type".
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
huge_ints = st.integers(min_value=10**20, max_value=10**400) | st.integers(
    max_value=-(10**20), min_value=-(10**400)
)
not_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])

_ID_FORBIDDEN = " /\\\"'\n\t\r\x00é漢🙂@#%&*+=,;!?()[]{}<>|~`$^"
bad_ids = st.one_of(
    st.just(""),
    st.builds(lambda lead, rest: lead + rest, st.sampled_from("-._:"), st.text("ab1", max_size=5)),
    st.builds(
        lambda head, bad, tail: head + bad + tail,
        st.text("abc123", min_size=1, max_size=5),
        st.sampled_from(list(_ID_FORBIDDEN)),
        st.text("abc123._:-", max_size=5),
    ),
    st.integers(min_value=254, max_value=2000).map(lambda n: "a" * n),
    json_values.filter(lambda v: not isinstance(v, str)),
)
bad_counts = st.one_of(
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.integers(max_value=-1),
    st.integers(min_value=1_000_001),
    huge_ints,
    st.none(),
    st.lists(st.integers(), max_size=2),
)


def bad_number(high: float) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.booleans(),
        st.text(max_size=8),
        st.none(),
        st.lists(st.integers(), max_size=2),
        not_finite,
        st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
        st.floats(min_value=high + 1e-6, allow_nan=False, allow_infinity=False),
        huge_ints,
    )


bad_times = st.one_of(
    json_values.filter(lambda v: not isinstance(v, str)),
    st.text(max_size=30),
    st.sampled_from(
        [
            "2026-11-30T08:00:00",  # no zone
            "2026-13-30T08:00:00Z",
            "2026-11-31T08:00:00Z",
            "yesterday",
            "0001-01-01T00:00:00+23:59",  # out of range once in UTC
            "9999-12-31T23:59:59-23:59",
            "",
        ]
    ),
).filter(lambda v: not (isinstance(v, str) and _is_zoned_time(v)))


def _is_zoned_time(text: str) -> bool:
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return False
    return parsed.tzinfo is not None


def _with(key: str, value: Any) -> tuple[str, str]:
    return json.dumps({**VALID, key: value}), key


def _without(key: str) -> tuple[str, str]:
    return json.dumps({k: v for k, v in VALID.items() if k != key}), key


def _twice(key: str, value: Any) -> tuple[str, str]:
    text = json.dumps(VALID)
    return text[:-1] + f", {json.dumps(key)}: {json.dumps(value)}" + "}", key


unknown_keys = st.text(min_size=1, max_size=12).filter(
    lambda k: k not in KEYS and k.isprintable() and bool(k.strip())
)

# (wire text, the field it is wrong in): one defect each.
bad_objects = st.one_of(
    st.just(_without("id")),
    bad_ids.map(lambda v: _with("id", v)),
    st.just(_without("count")),
    bad_counts.map(lambda v: _with("count", v)),
    bad_number(3600).map(lambda v: _with("windowSeconds", v)),
    bad_number(60000).map(lambda v: _with("quietMillis", v)),
    st.floats(min_value=0.001, max_value=59999.999)
    .filter(lambda v: v != int(v))
    .map(lambda v: _with("quietMillis", v)),
    bad_times.map(lambda v: _with("deadline", v)),
    bad_times.map(lambda v: _with("issuedAt", v)),
    json_values.filter(lambda v: not isinstance(v, str)).map(lambda v: _with("policy", v)),
    json_values.filter(lambda v: not isinstance(v, bool)).map(lambda v: _with("steer", v)),
    st.tuples(unknown_keys, json_values).map(lambda kv: _with(*kv)),
    st.sampled_from(["", " ", "\n", "\x00"]).map(lambda k: (_with(k, 1)[0], "body")),
    st.tuples(st.sampled_from(list(VALID)), json_values).map(lambda kv: _twice(*kv)),
    # So late that no default deadline can follow it.
    st.just(_without("deadline")).map(
        lambda case: (case[0][:-1] + ', "issuedAt": "9999-12-31T23:59:59Z"}', "issuedAt")
    ),
)

not_objects = st.one_of(
    json_values.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
    st.integers(min_value=1, max_value=20_000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=20_000).map(lambda n: '[{"a":' * n + "1" + "}]" * n),
    st.text(max_size=200).filter(lambda t: not _is_json(t)),
)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# (wire text, the field named): every bad body, objects or not.
bad_wire = bad_objects | not_objects.map(lambda text: (text, "body"))
