"""Fuzzing the drain request as it arrives in an annotation or a downward-API file.

Whatever the text, the parse either gives a request or raises ``InvalidDrainRequest`` naming the
field (never another exception), and a bad entry changes nothing: the agent records no request,
the node agent reads no policy and serves no pod, and the other lines of the file stand.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connbalance.agent import ProxyAgent
from connbalance.agent.intake import AnnotationIntake, parse_downward_annotations
from connbalance.agent.node import NodeAgent, NodePod
from connbalance.model import DRAIN_ANNOTATION, DrainRequest, InvalidDrainRequest
from tests.fuzz.drainwire import FUZZ, VALID, bad_wire, json_values

NOW = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=300) | json_values.map(json.dumps))
def test_any_text_is_a_request_or_an_invalid_drain_request(text):
    try:
        request = DrainRequest.from_json(text, now=NOW)
    except InvalidDrainRequest as exc:
        refusal = exc
    else:
        refusal = None
    if refusal is not None:
        assert refusal.field.strip(), refusal
        assert refusal.field.isprintable(), refusal
        assert str(refusal).startswith(f"{refusal.field}: ")
        return
    # Accepted: then it says what the protocol allows, and says it again the same way.
    assert 0 <= request.count <= 1_000_000
    assert DrainRequest.from_json(request.to_json(), now=NOW) == request


@FUZZ
@given(bad_wire)
def test_each_defect_is_refused_naming_its_field(case):
    text, field = case
    with pytest.raises(InvalidDrainRequest) as refused:
        DrainRequest.from_json(text, now=NOW)
    assert refused.value.field == field, (text[:200], str(refused.value))


def test_the_valid_base_of_the_defects_is_accepted():
    """The defects above are the only thing wrong with their requests."""
    request = DrainRequest.from_json(json.dumps(VALID), now=NOW)
    assert (request.id, request.count) == (VALID["id"], 1)


def test_a_key_given_twice_is_refused_even_with_the_same_value():
    text = '{"id": "a1", "count": 1, "count": 900}'
    with pytest.raises(InvalidDrainRequest) as refused:
        DrainRequest.from_json(text, now=NOW)
    assert (refused.value.field, refused.value.message) == ("count", "given twice")


def test_an_id_with_a_trailing_newline_is_refused():
    """A ``$`` anchor lets one newline through; an id goes into logs and Events."""
    with pytest.raises(InvalidDrainRequest) as refused:
        DrainRequest.from_wire({"id": "a1\n", "count": 1}, now=NOW)
    assert refused.value.field == "id"


# --- the downward-API file --------------------------------------------------------------------


def go_quote(value: str) -> str:
    """As the kubelet writes a value (Go's %q): JSON's escaping is a subset Go reads alike."""
    return json.dumps(value, ensure_ascii=False)


annotation_keys = st.from_regex(r"\A[a-z0-9][a-z0-9./-]{0,30}\Z")


@FUZZ
@given(st.text(max_size=400))
def test_any_file_text_parses_to_a_mapping_of_strings(text):
    parsed = parse_downward_annotations(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


@FUZZ
@given(
    st.dictionaries(annotation_keys, st.text(max_size=40), max_size=5),
    st.lists(st.text(max_size=40).filter(lambda t: "\n" not in t and "\r" not in t), max_size=4),
)
def test_damaged_lines_are_left_out_and_the_good_ones_stand(good, damaged):
    lines = [f"{key}={go_quote(value)}" for key, value in good.items()]
    # A broken escape, a missing quote, a line without "=": each one left out, alone.
    broken = ['bad.x="\\xZZ"', 'bad.u="\\U99999999"', 'bad.o="\\9"', "bad.q=unquoted",
              'bad.s="\\uD800"', *(f"junk{i} {t}" for i, t in enumerate(damaged))]  # fmt: skip
    text = "\n".join(lines[:1] + broken + lines[1:]) + "\n"
    parsed = parse_downward_annotations(text)
    assert {k: v for k, v in parsed.items() if k in good} == good
    assert not any(k.startswith("bad.") for k in parsed)


@FUZZ
@given(st.text(max_size=200))
def test_a_value_written_as_the_kubelet_writes_it_reads_back_the_same(value):
    text = f'{DRAIN_ANNOTATION}={go_quote(value)}\nother="x"\n'
    assert parse_downward_annotations(text) == {DRAIN_ANNOTATION: value, "other": "x"}


# --- what a bad entry changes: nothing --------------------------------------------------------


def test_bad_annotations_reach_neither_the_agent_nor_the_node_agent(tmp_path: Path):
    """Every bad entry hypothesis makes, offered through the agent's annotation intake and the
    node agent's: the agent records no request and closes nothing, the node agent reads no
    ConnectionBalancer and serves no pod."""
    collected: list[str] = []

    @FUZZ
    @given(bad_wire)
    def collect(case):
        collected.append(case[0])

    collect()
    # The intake skips a value equal to the last one it saw: offer each once.
    cases = list(dict.fromkeys(collected))
    assert len(cases) >= 100

    class NoPolicies:
        reads = 0

        def read(self, *, namespace, name):
            NoPolicies.reads += 1
            return None

    class NeverFinds:
        name = "never"

        def find(self, pod):
            raise AssertionError(f"looked for the network namespace of {pod}")

        def still(self, pod, found):
            raise AssertionError("never found")

    async def scenario() -> None:
        agent = ProxyAgent(listen=("127.0.12.2", 0), upstream=("127.0.12.2", 9), max_fraction=1.0,
                           state_file=tmp_path / "seen.json")  # fmt: skip
        await agent.start()
        node = NodeAgent(node="n", strategies=[NeverFinds()], policies=NoPolicies(),
                         max_fraction=1.0, state_dir=tmp_path)  # fmt: skip
        intake = AnnotationIntake(engine=agent, source="fuzz")
        try:
            for number, text in enumerate(cases):
                await intake.offer(text)
                await node.update(NodePod(uid=f"{number:036d}", namespace="ns", name=f"p{number}",
                                          ip="127.0.12.3", labels=(), drain=text))  # fmt: skip
            assert agent.status().requests == ()
            assert agent.cycled_total == 0
            assert node.status()["pods"] == []
            assert NoPolicies.reads == 0
            invalid = 'connbalance_agent_requests_total{result="invalid"} '
            assert f"{invalid}{float(len(cases))}" in agent.metrics.render().decode()
        finally:
            await node.stop()
            await agent.stop()

    asyncio.run(scenario())
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "seen.json"])
    if (tmp_path / "seen.json").exists():
        assert "cb." not in (tmp_path / "seen.json").read_text()
