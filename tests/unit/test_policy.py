"""The policy table: defaults, bounds and errors that name the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connbalance.model import DrainRequest, InvalidDrainRequest, Policy, PolicyError, SecretKeyRef
from connbalance.model.drain import DEFAULT_DEADLINE_SLACK_SECONDS
from connbalance.model.settings import DEFAULT_SECRET_KEY, FIELDS, setting

NOW = datetime(2026, 11, 30, 7, 59, tzinfo=UTC)


def test_every_setting_has_a_default_within_its_bounds():
    policy = Policy.from_spec({"selector": {"matchLabels": {"app": "x"}}})
    assert policy.balance.tolerance == 0.10
    assert policy.balance.max_fraction_per_step == 0.25
    assert policy.actuation.method == "annotation"
    assert policy.dry_run is False
    assert policy.paused is False
    for declared in FIELDS:
        if isinstance(declared.default, int | float) and not isinstance(declared.default, bool):
            assert declared.minimum is None or declared.default >= declared.minimum, declared.path
            assert declared.maximum is None or declared.default <= declared.maximum, declared.path


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
        Policy.from_spec({"selector": {"matchLabels": {"app": "x"}}, **spec})
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
        },
        now=NOW,
    )
    again = DrainRequest.from_json(request.to_json(), now=NOW)
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
        DrainRequest.from_json(body, now=NOW)
    assert caught.value.field == field


def test_a_request_without_deadline_ends_its_slack_after_the_callers_now():
    request = DrainRequest.from_wire({"id": "x", "count": 1, "windowSeconds": 10}, now=NOW)
    assert request.deadline == NOW + timedelta(seconds=10 + DEFAULT_DEADLINE_SLACK_SECONDS)


def test_a_request_takes_its_defaults_and_bounds_from_the_policy_table():
    request = DrainRequest.from_wire({"id": "x", "count": 1}, now=NOW)
    assert request.window_seconds == setting("actuation.windowSeconds").default
    assert request.quiet_millis == setting("actuation.quietMillis").default
    too_long = setting("actuation.windowSeconds").upper_bound() + 1
    with pytest.raises(InvalidDrainRequest, match="windowSeconds"):
        DrainRequest.from_wire({"id": "x", "count": 1, "windowSeconds": too_long}, now=NOW)


POOL = {"selector": {"matchLabels": {"app": "auth"}}}
HTTP = {"method": "http", "tokenSecret": {"name": "agent-token"}}


def test_the_agent_is_reached_over_plain_http_with_no_ca_and_no_name_unless_asked():
    actuation = Policy.from_spec({**POOL, "actuation": HTTP}).actuation
    assert actuation.agent_scheme == "http"
    assert actuation.agent_server_name is None
    assert actuation.ca_secret is None


def test_https_takes_a_server_name_and_a_ca_secret_whose_key_defaults_like_the_others():
    actuation = Policy.from_spec(
        {**POOL, "actuation": {**HTTP, "agentScheme": "https", "caSecret": {"name": "agent-ca"},
                               "agentServerName": "agent.connbalance.local"}}
    ).actuation  # fmt: skip
    assert actuation.agent_scheme == "https"
    assert actuation.agent_server_name == "agent.connbalance.local"
    assert actuation.ca_secret == SecretKeyRef(name="agent-ca", key=DEFAULT_SECRET_KEY)
    assert actuation.token_secret == SecretKeyRef(name="agent-token", key=DEFAULT_SECRET_KEY)


def test_https_with_the_system_cas_needs_neither_a_ca_secret_nor_a_name():
    actuation = Policy.from_spec({**POOL, "actuation": {**HTTP, "agentScheme": "https"}}).actuation
    assert (actuation.agent_scheme, actuation.ca_secret, actuation.agent_server_name) == (
        "https", None, None
    )


@pytest.mark.parametrize(
    ("actuation", "field", "says"),
    [
        ({"agentScheme": "https"}, "spec.actuation.agentScheme",
         "can be https only when method is http"),
        ({**HTTP, "agentServerName": "agent.connbalance.local"}, "spec.actuation.agentServerName",
         "only used when agentScheme is https"),
        ({**HTTP, "caSecret": {"name": "agent-ca"}}, "spec.actuation.caSecret",
         "only used when agentScheme is https"),
        ({**HTTP, "agentScheme": "http", "caSecret": {"name": "agent-ca"}},
         "spec.actuation.caSecret", "only used when agentScheme is https"),
        ({**HTTP, "agentScheme": "tls"}, "spec.actuation.agentScheme",
         "must be one of http, https"),
        ({**HTTP, "agentScheme": "https", "agentServerName": ""},
         "spec.actuation.agentServerName", "must be a non-empty string"),
        ({**HTTP, "agentScheme": "https", "caSecret": {"key": "ca.crt"}},
         "spec.actuation.caSecret.name", "required"),
        ({**HTTP, "agentScheme": "https", "caSecret": {"name": "agent-ca", "key": ""}},
         "spec.actuation.caSecret.key", "must be a non-empty string"),
    ],
)  # fmt: skip
def test_agent_tls_settings_out_of_place_are_refused_naming_the_field(actuation, field, says):
    with pytest.raises(PolicyError) as caught:
        Policy.from_spec({**POOL, "actuation": actuation})
    assert caught.value.field == field
    assert says in caught.value.message
