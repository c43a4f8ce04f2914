"""The policy table: defaults, bounds and errors that name the field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connbalance.model import DrainRequest, InvalidDrainRequest, Policy, PolicyError
from connbalance.model.policy import FIELDS


def test_every_setting_has_a_default_within_its_bounds():
    policy = Policy.from_spec({"selector": {"app": "x"}})
    assert policy.balance.tolerance == 0.10
    assert policy.balance.max_fraction_per_step == 0.25
    assert policy.actuation.method == "annotation"
    assert policy.dry_run is False
    assert policy.paused is False
    for setting in FIELDS:
        if isinstance(setting.default, int | float) and not isinstance(setting.default, bool):
            assert setting.minimum is None or setting.default >= setting.minimum, setting.path
            assert setting.maximum is None or setting.default <= setting.maximum, setting.path


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"balance": {"tolerance": 0}}, "spec.balance.tolerance"),
        ({"balance": {"maxFractionPerStep": 1.5}}, "spec.balance.maxFractionPerStep"),
        ({"balance": {"maxConnectionsPerStep": 2.5}}, "spec.balance.maxConnectionsPerStep"),
        ({"balance": {"mode": "sometimes"}}, "spec.balance.mode"),
        ({"balance": {"targetTolerance": 0.5}}, "spec.balance.targetTolerance"),
        ({"metrics": {"preset": "custom"}}, "spec.metrics.query"),
        ({"metrics": {"query": "up"}}, "spec.metrics.query"),
        (
            {"metrics": {"prometheus": {"headers": {"X Bad": "1"}}}},
            "spec.metrics.prometheus.headers",
        ),
        ({"actuation": {"steer": "yes"}}, "spec.actuation.steer"),
        (
            {"actuation": {"windowSeconds": 100, "deadlineSeconds": 50}},
            "spec.actuation.deadlineSeconds",
        ),
        ({"workloadRef": {"kind": "DaemonSet", "name": "x"}}, "spec.workloadRef.kind"),
        ({"paused": 1}, "spec.paused"),
        ({"surprise": True}, "spec.surprise"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(spec, field):
    with pytest.raises(PolicyError) as caught:
        Policy.from_spec({"selector": {"app": "x"}, **spec})
    assert caught.value.field.startswith(field)
    assert str(caught.value).startswith(field)


def test_selector_accepts_match_labels():
    policy = Policy.from_spec({"selector": {"matchLabels": {"app": "auth"}}})
    assert policy.selector == (("app", "auth"),)


def test_a_drain_request_round_trips_through_its_wire_form():
    request = DrainRequest.from_wire(
        {
            "id": "x1",
            "count": 10,
            "windowSeconds": 2,
            "quietMillis": 100,
            "deadline": "2026-11-30T08:00:00Z",
        }
    )
    again = DrainRequest.from_json(request.to_json())
    assert again == request
    assert again.deadline == datetime(2026, 11, 30, 8, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"count": 1}', "id"),
        ('{"id": "x", "count": -1}', "count"),
        ('{"id": "x", "count": true}', "count"),
        ('{"id": "x", "count": 1, "deadline": "tomorrow"}', "deadline"),
        ('{"id": "x", "count": 1, "deadline": "2026-11-30T08:00:00"}', "deadline"),
        ('{"id": "x", "count": 1, "windowSeconds": "2"}', "windowSeconds"),
        ('{"id": "x", "count": 1, "extra": 1}', "extra"),
        ('{"id": "has space", "count": 1}', "id"),
        ("[1, 2]", "body"),
        ("{", "body"),
    ],
)
def test_a_bad_drain_request_names_its_field(body, field):
    with pytest.raises(InvalidDrainRequest) as caught:
        DrainRequest.from_json(body)
    assert caught.value.field == field
