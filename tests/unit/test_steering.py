"""Steering as a choice: agent, readinessGate or none, and the old boolean steer still read."""

from __future__ import annotations

import asyncio

import pytest

from connbalance.controller.issuer import DrainIssuer, RecordingActuator
from connbalance.model import (
    Drain,
    Plan,
    PodLoad,
    PodName,
    PodState,
    Policy,
    PolicyError,
    PolicyName,
)
from connbalance.planner import plan
from tests.unit.fakes import ListEvents

NOW = 50_000.0
SELECTOR = {"matchLabels": {"app": "x"}}


def policy(**actuation: object) -> Policy:
    return Policy.from_spec({"selector": SELECTOR, "actuation": actuation,
                             "balance": {"maxFractionPerStep": 1, "maxPoolFractionPerStep": 1}})


def test_steering_is_agent_when_neither_field_is_given():
    assert policy().actuation.steering == "agent"


@pytest.mark.parametrize(("steer", "steering"), [(True, "agent"), (False, "none")])
def test_the_old_boolean_is_read_as_the_new_choice(steer, steering):
    assert policy(steer=steer).actuation.steering == steering


@pytest.mark.parametrize("steering", ["agent", "readinessGate", "none"])
def test_each_choice_is_taken_as_given(steering):
    assert policy(steering=steering).actuation.steering == steering


@pytest.mark.parametrize(
    ("steer", "steering"), [(True, "agent"), (True, "readinessGate"), (False, "none")]
)
def test_both_fields_are_accepted_when_they_agree(steer, steering):
    """Every object stored under the old CRD holds steer: true (its default), so a steering
    method set beside it by a merge patch must not be refused."""
    assert policy(steer=steer, steering=steering).actuation.steering == steering


@pytest.mark.parametrize(
    ("steer", "steering"), [(False, "agent"), (False, "readinessGate"), (True, "none")]
)
def test_both_fields_disagreeing_are_refused_naming_both(steer, steering):
    with pytest.raises(PolicyError) as caught:
        policy(steer=steer, steering=steering)
    assert caught.value.field == "spec.actuation.steering"
    assert str(caught.value).startswith("spec.actuation.steering: disagrees with steer")
    assert "remove steer" in str(caught.value)


def test_a_bad_choice_is_refused_naming_the_field():
    with pytest.raises(PolicyError) as caught:
        policy(steering="gate")
    assert caught.value.field == "spec.actuation.steering"
    assert "agent, readinessGate, none" in str(caught.value)


def snapshot(values: dict[str, float]) -> tuple[dict[PodName, PodLoad], list[PodState]]:
    pods = [PodState(name=PodName(n), ready=True, ready_since=0.0) for n in values]
    loads = {PodName(n): PodLoad(pod=PodName(n), load=v, timestamp=NOW) for n, v in values.items()}
    return loads, pods


def counts(pol: Policy) -> dict[str, int]:
    loads, pods = snapshot({"a": 364, "b": 236, "c": 0})
    return {d.pod: d.count for d in plan(loads=loads, pods=pods, policy=pol, now=NOW).drains}


def test_the_planner_lands_reconnects_steered_for_agent_and_readiness_gate():
    steered, gated, unsteered = (counts(policy(steering=s))
                                 for s in ("agent", "readinessGate", "none"))
    assert gated == steered
    # Landing uniformly, the shedding pods take back part of what they shed: more is cycled.
    assert sum(unsteered.values()) > sum(steered.values())
    assert counts(policy(steer=False)) == unsteered
    assert counts(policy(steer=True)) == steered


@pytest.mark.parametrize(
    ("steering", "wire_steer"), [("agent", True), ("readinessGate", None), ("none", None)]
)
def test_the_drain_request_asks_the_agent_to_steer_only_for_agent(steering, wire_steer):
    """With readinessGate the pod leaves the endpoints; its agent must not also refuse."""
    actuator = RecordingActuator()
    issuer = DrainIssuer(name=PolicyName("ns/x"), policy=policy(steering=steering),
                         actuator=actuator, events=ListEvents())
    pod = PodState(name=PodName("a"), ready=True, ready_since=0.0, uid="u-a")
    step = Plan(act=True, reason="", mean=200, skew=1.8,
                drains=(Drain(pod=PodName("a"), count=40, reason=""),))
    asyncio.run(issuer.issue(plan=step, pods={pod.name: pod}, loads={pod.name: 364.0},
                             episode="e1", step=1, now=NOW))
    [(_, request)] = actuator.delivered
    assert request.steer is (wire_steer is True)
    assert request.to_wire().get("steer") is wire_steer
