"""The operator bench's load model: a rolling restart leaves the pool skewed, a drain moves its
count once to the least loaded pods that are not shedding, and the exporter's figure per pod
address is the model's."""

from __future__ import annotations

import json

from tests.benchop.loadmodel import LoadModel, SeenPod


def pod(uid: str, *, live: bool = True, drain: dict[str, object] | None = None) -> SeenPod:
    return SeenPod(uid=uid, name=f"auth-{uid}", ip=f"127.1.0.{uid[-1]}", group="auth-0",
                   live=live, drain=drain)  # fmt: skip


def filled(count: int = 3) -> LoadModel:
    model = LoadModel(per_pod=50)
    model.sync([pod(f"u{i}") for i in range(count)])
    model.filling = False
    return model


def test_a_restarted_pod_hands_its_connections_to_the_others_and_comes_back_empty():
    model = filled()
    model.sync([pod("u0", live=False), pod("u1"), pod("u2"), pod("u8")])  # u8 new as u0 goes
    model.sync([pod("u1"), pod("u2"), pod("u8"), pod("u9")])
    assert model.loads["u9"] == 0
    assert model.loads["u8"] > 0, "a new pod takes its share of the reconnects"
    assert model.loads["u1"] + model.loads["u2"] + model.loads["u8"] == 150
    assert sum(model.loads.values()) == 150


def test_a_drain_moves_its_count_once_to_the_least_loaded_pods_that_are_not_shedding():
    model = filled(4)
    model.loads.update(u0=80, u1=70, u2=20, u3=30)
    step = {"u0": {"id": "cb.e1.1.auth-u0", "count": 20},
            "u1": {"id": "cb.e1.1.auth-u1", "count": 10}}  # fmt: skip
    pods = [pod(u, drain=step.get(u)) for u in ("u0", "u1", "u2", "u3")]
    model.sync(pods)
    assert model.loads == {"u0": 60, "u1": 60, "u2": 40, "u3": 40}
    model.sync(pods)  # the same ids again: acted on once
    assert model.loads == {"u0": 60, "u1": 60, "u2": 40, "u3": 40}
    assert model.moved_by_drains == 30


def test_the_exporter_text_is_the_pods_figure_and_an_unknown_address_has_none():
    model = filled()
    text = model.text_for("127.1.0.1")
    assert text == 'teleport_connected_resources{type="node"} 50\n'
    assert model.text_for("127.1.9.9") is None
    assert json.dumps(model.groups()) == json.dumps(
        {"auth-0": {"auth-u0": 50, "auth-u1": 50, "auth-u2": 50}}
    )
