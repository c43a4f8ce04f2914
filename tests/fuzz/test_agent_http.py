"""Fuzzing the agent's HTTP intake through its real HTTP server (agent/httpserve.py) on loopback.

Bodies, headers (Authorization variants, content types, lengths, chunked) and sizes around and
above ``MAX_BODY_BYTES`` are written byte for byte (``rawhttp``). Whatever is sent: never a 5xx;
each refusal of ``POST /v1/drain`` is a 4xx whose JSON error names the field; and nothing
reaches the drain engine: no request recorded, no connection of the clients held through the
agent cycled. A count above the ceiling is refused whatever else the request says.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import count

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connbalance.agent.http import MAX_BODY_BYTES
from tests.fuzz.agentrig import CLIENTS, HOST, TOKEN, AgentRig, start_rig
from tests.fuzz.drainwire import FUZZ, VALID, bad_wire
from tests.fuzz.rawhttp import Answer, exchange

GOOD_AUTH = (b"Authorization", b"Bearer " + TOKEN.encode())
_IDS = count(1)


@pytest.fixture(scope="module")
def rig() -> Iterator[AgentRig]:
    # A ceiling of half the connections: a count of 1 would be cycled if it got through.
    started = start_rig(max_fraction=0.5)
    yield started
    untouched(started)
    started.stop()


def untouched(rig: AgentRig) -> None:
    status = rig.status()
    assert status.requests == (), status.requests
    assert status.cycled_total == 0
    assert status.active == CLIENTS


def post(rig: AgentRig, body: bytes, headers: list[tuple[bytes, bytes]], **how) -> Answer:
    return exchange(HOST, rig.port, method="POST", path="/v1/drain", headers=headers, body=body,
                    **how)  # fmt: skip


def refused_naming(answer: Answer, status: int, field: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()
    assert error["error"], error
    assert error["field"] == field, error


content_types = st.sampled_from(
    [b"application/json", b"text/plain", b"application/x-www-form-urlencoded",
     b"multipart/form-data; boundary=x", b"application/json; charset=latin-1", b"", b"\xff/\xfe"]
)  # fmt: skip
# Header value bytes an HTTP parser accepts: visible ASCII, space, tab, obs-text.
header_bytes = st.binary(max_size=80).map(
    lambda b: bytes(c for c in b if c in (9, 32) or 33 <= c <= 126 or c >= 128)
)
token = TOKEN.encode()


def _not_the_token(value: bytes) -> bool:
    return value.strip(b" \t") != token


wrong_authorization = st.one_of(
    st.just(None),
    st.just(b""),
    st.just(token),  # no scheme
    st.just(b"Basic " + token),
    st.just(b"Bearer"),
    st.just(b"Bearer "),
    st.just(b"Bearer " + token.upper()),
    st.just(b"Bearer " + token[:-1]),
    st.builds(lambda extra: b"Bearer " + token + extra, header_bytes.filter(lambda b: b.strip())),
    st.builds(lambda extra: b"Bearer " + extra + token, header_bytes.filter(lambda b: b.strip())),
    header_bytes.map(lambda b: b"Bearer " + b).filter(lambda v: _not_the_token(v[7:])),
    header_bytes,
    st.binary(min_size=1, max_size=8).map(lambda b: b"Bearer " + bytes(0x80 | c for c in b)),
)


@FUZZ
@given(wrong_authorization, content_types, st.booleans())
def test_a_missing_or_wrong_token_is_a_401_naming_authorization(rig, authorization, kind,
                                                                 chunked):  # fmt: skip
    headers = [(b"Content-Type", kind)]
    if authorization is not None:
        headers.append((b"Authorization", authorization))
    body = json.dumps({**VALID, "id": f"unauth-{next(_IDS)}"}).encode()
    refused_naming(post(rig, body, headers, chunked=chunked), 401, "Authorization")
    untouched(rig)


@FUZZ
@given(bad_wire.filter(lambda case: len(case[0].encode("utf-8", "surrogatepass")) <= 8192),
       content_types, st.booleans())  # fmt: skip
def test_each_bad_body_is_a_400_naming_its_field(rig, case, kind, chunked):
    text, field = case
    answer = post(rig, text.encode("utf-8", "surrogatepass"),
                  [GOOD_AUTH, (b"Content-Type", kind)], chunked=chunked)  # fmt: skip
    refused_naming(answer, 400, field)
    untouched(rig)


@FUZZ
@given(st.binary(max_size=2000), st.booleans())
def test_random_bytes_are_a_400_naming_the_body(rig, body, chunked):
    try:
        json.loads(body)
    except ValueError:
        pass
    else:
        return  # valid JSON: bad_wire covers those, defect by defect
    refused_naming(post(rig, body, [GOOD_AUTH], chunked=chunked), 400, "body")
    untouched(rig)


def padded(size: int) -> bytes:
    """A request wrong only in its id, padded with spaces (valid JSON) to exactly ``size``."""
    core = json.dumps({**VALID, "id": ""}).encode()
    return core + b" " * (size - len(core))


sizes = st.one_of(
    st.integers(min_value=MAX_BODY_BYTES - 64, max_value=MAX_BODY_BYTES + 64),
    st.integers(min_value=MAX_BODY_BYTES + 1, max_value=4 * MAX_BODY_BYTES),
    st.integers(min_value=200, max_value=MAX_BODY_BYTES),
)


@FUZZ
@given(sizes, st.booleans())
def test_a_body_is_read_up_to_the_limit_and_refused_above_it(rig, size, chunked):
    answer = post(rig, padded(size), [GOOD_AUTH], chunked=chunked)
    if size <= MAX_BODY_BYTES:
        refused_naming(answer, 400, "id")  # read whole, and judged on what it says
    else:
        refused_naming(answer, 413, "body")  # Payload Too Large
    untouched(rig)


def test_a_body_one_byte_over_the_limit_is_refused_and_one_at_it_is_read():
    """The boundary itself, whatever hypothesis drew above."""
    started = start_rig(max_fraction=0.5)
    try:
        refused_naming(post(started, padded(MAX_BODY_BYTES + 1), [GOOD_AUTH]), 413, "body")
        refused_naming(post(started, padded(MAX_BODY_BYTES), [GOOD_AUTH]), 400, "id")
        untouched(started)
    finally:
        started.stop()


paths = st.one_of(
    st.sampled_from(["/", "/v1", "/v1/drain/", "/v1/drainx", "/v2/drain", "/status/x", "/%00",
                     "/v1/%2e%2e/drain", "//v1/drain", "/v1/drain?x=1", "/" + "a" * 4000]),
    st.text("abc/%._~-", max_size=40).map(lambda t: "/" + t),
)  # fmt: skip
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"])


@FUZZ
@given(methods, paths)
def test_other_methods_and_paths_are_4xx_and_reach_nothing(rig, method, path):
    # Authorized, and wrong only in its id: the drain route refuses it naming the id.
    answer = exchange(HOST, rig.port, method=method, path=path, headers=[GOOD_AUTH],
                      body=json.dumps({**VALID, "id": ""}).encode())  # fmt: skip
    route = path.split("?")[0]
    if method == "GET" and route in ("/status", "/healthz", "/metrics"):
        assert answer.status == 200
    elif method == "POST" and route == "/v1/drain":
        refused_naming(answer, 400, "id")
    else:
        assert 400 <= answer.status < 500, answer
    untouched(rig)


# --- the ceiling --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ceiling_rig() -> Iterator[AgentRig]:
    started = start_rig(max_fraction=0.5)
    yield started
    status = started.status()
    assert status.cycled_total == 0
    assert status.active == CLIENTS
    started.stop()


valid_extras = st.fixed_dictionaries(
    {},
    optional={
        "windowSeconds": st.floats(min_value=0, max_value=3600),
        "quietMillis": st.integers(min_value=0, max_value=60000),
        "policy": st.text(max_size=30),
        "steer": st.booleans(),
        "issuedAt": st.just("2026-11-30T08:00:00Z"),
    },
)


@FUZZ
@given(st.integers(min_value=CLIENTS // 2 + 1, max_value=1_000_000), valid_extras)
def test_a_count_above_the_ceiling_is_refused_whatever_the_request_says(ceiling_rig, n, extras):
    request_id = f"over-{next(_IDS)}"
    body = json.dumps({**VALID, **extras, "id": request_id, "count": n}).encode()
    answer = post(ceiling_rig, body, [GOOD_AUTH])
    assert answer.status == 422, answer
    refusal = answer.json()
    assert (refusal["id"], refusal["state"], refusal["cycled"]) == (request_id, "rejected", 0)
    assert f"exceeds this agent's ceiling of {CLIENTS // 2}" in refusal["reason"]
    status = ceiling_rig.status()
    assert status.cycled_total == 0
    assert status.active == CLIENTS
