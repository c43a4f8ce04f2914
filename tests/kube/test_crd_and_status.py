"""The generated CRD and the status written from a tick (no cluster needed)."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from connbalance.controller import Condition, Controller, ControllerState, Seen, TickResult
from connbalance.kube.crd import build_crd, render_yaml
from connbalance.kube.status import conditions, status_patch
from connbalance.model import Phase, Policy, PolicyName
from connbalance.model.settings import FIELDS
from tests.unit.fakes import AnnotatingActuator, DictLoads, FakeClock, ListEvents, ListFleet

ROOT = Path(__file__).resolve().parents[2]


def test_the_checked_in_crd_is_the_generated_one():
    assert (ROOT / "manifests" / "crd.yaml").read_text() == render_yaml()


def test_every_policy_setting_is_in_the_schema_with_its_bounds():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for setting in FIELDS:
        node = spec
        for part in setting.path.split("."):
            node = node["properties"][part]
        if setting.minimum is not None:
            assert node["minimum"] == setting.minimum, setting.path
        if setting.default is not None:
            assert node["default"] == setting.default, setting.path
        if setting.choices:
            assert node["enum"] == list(setting.choices)


def test_the_schema_defaults_make_a_valid_policy():
    """What the API server stores after defaulting must parse: walk the schema's defaults."""

    def defaults(node, *, top=False):
        if node.get("type") != "object" or "properties" not in node:
            return node.get("default")
        if not top and "default" not in node:
            return None  # the API server defaults inside an object only when it is present
        out = {}
        for key, child in node["properties"].items():
            value = defaults(child)
            if value is not None and value != {}:
                out[key] = value
        return out

    spec_schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    spec = defaults(spec_schema, top=True)
    spec["selector"] = {"matchLabels": {"app": "auth"}}
    policy = Policy.from_spec(spec)
    assert policy == Policy.from_spec({"selector": {"matchLabels": {"app": "auth"}}})


def test_conditions_keep_their_transition_time_until_their_status_changes():
    earlier = datetime(2026, 1, 1, tzinfo=UTC)
    later = datetime(2026, 1, 2, tzinfo=UTC)
    first = conditions([Condition("Balanced", "False", "Skewed")], [], generation=1, now=earlier)
    same = conditions([Condition("Balanced", "False", "Skewed")], first, generation=2, now=later)
    flipped = conditions(
        [Condition("Balanced", "True", "WithinTolerance")], same, generation=2, now=later
    )
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert flipped[0]["lastTransitionTime"] == "2026-01-02T00:00:00Z"


def first_tick_on_a_skewed_pool(name: str) -> TickResult:
    clock = FakeClock()
    fleet = ListFleet.ready(["a", "b", "c"], since=clock.now - 1000)
    policy = Policy.from_spec(
        {"selector": {"matchLabels": {"app": "x"}}, "balance": {"settleSeconds": 10}}
    )
    controller = Controller(
        name=PolicyName(name),
        policy=policy,
        loads=DictLoads(clock, {"a": 364, "b": 236, "c": 0}),
        fleet=fleet,
        actuator=AnnotatingActuator(fleet),
        events=ListEvents(),
        clock=clock,
    )
    return asyncio.run(controller.tick(ControllerState()))


def test_a_tick_becomes_a_status_with_per_pod_load_and_the_controller_memory():
    result = first_tick_on_a_skewed_pool("ns/x")
    status = status_patch(result, policy=PolicyName("ns/x"), generation=3, previous=None)
    assert status["phase"] == "Rebalancing"
    assert status["podCount"] == 3
    assert status["observedGeneration"] == 3
    assert {p["name"]: p.get("load") for p in status["pods"]} == {"a": 364, "b": 236, "c": 0}
    assert ControllerState.from_status(status["controller"]) == result.state
    assert_plain_json(status)


def assert_plain_json(value: object, where: str = "status") -> None:
    """Only what JSON holds, of exactly the built-in types (no str enums, tuples or datetimes,
    which a client would serialise in its own way or not at all), and no NaN or infinity."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, f"{where}: key {key!r}"
            assert_plain_json(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_plain_json(item, f"{where}[{index}]")
    else:
        assert value is None or type(value) in (str, int, float, bool), (
            f"{where}: {type(value).__name__} {value!r}"
        )
        assert not (type(value) is float and not math.isfinite(value)), f"{where}: {value!r}"


def test_status_of_every_phase_is_plain_json():
    """Ticks that end in each kind of phase, not only the happy one, write plain data."""
    first = first_tick_on_a_skewed_pool("ns/plain")
    for result in (
        first,
        replace(first, state=first.state.with_(phase=Phase.DEGRADED, skew=None)),
        replace(first, seen=Seen()),
    ):
        status = status_patch(result, policy=PolicyName("ns/plain"), generation=None, previous={})
        assert_plain_json(status)
        assert json.loads(json.dumps(status, allow_nan=False)) == status


def test_a_tick_is_recorded_in_the_operator_metrics():
    from connbalance.kube.metrics import REGISTRY, forget, record

    result = first_tick_on_a_skewed_pool("ns/metrics")
    record("ns/metrics", result)

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"namespace": "ns", "balancer": "metrics", **labels})

    assert value("connbalance_skew") == result.state.skew
    assert value("connbalance_pod_load", pod="a") == 364
    assert value("connbalance_phase", phase="Rebalancing") == 1
    assert value("connbalance_phase", phase="Balanced") == 0
    assert value("connbalance_drains_total") == len(result.issued)
    assert value("connbalance_cycled_connections_total", outcome="requested") == sum(
        r.count for r in result.issued
    )
    assert value("connbalance_reconciles_total") == 1
    record("ns/metrics", replace(result, issued=()))  # a tick that issues nothing counts too
    assert value("connbalance_reconciles_total") == 2
    forget("ns/metrics")
    assert value("connbalance_skew") is None
    assert value("connbalance_pod_load", pod="a") is None
    assert value("connbalance_drains_total") == len(result.issued), "counters keep their total"
