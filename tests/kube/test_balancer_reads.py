"""A tick reads its balancer as the watch last delivered it, with the status it last wrote: no
GET per tick, and a spec edit still acted on at the next tick."""

from __future__ import annotations

import asyncio
import copy
from types import SimpleNamespace
from typing import Any

import pytest

from connbalance.kube.balancers import Balancers
from connbalance.kube.reconcile import Apis, reconcile

KEY = ("ns", "auth")


def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


class Store:
    """The API server's copy of one ConnectionBalancer, counting GETs and status patches."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.body: dict[str, Any] = {
            "apiVersion": "connbalance.io/v1alpha1", "kind": "ConnectionBalancer",
            "metadata": {"name": "auth", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": spec,
        }  # fmt: skip
        self.gets = 0
        self.patches: list[dict[str, Any]] = []
        self.fail_next_patch = False

    def get_namespaced_custom_object(self, *_: object) -> dict[str, Any]:
        self.gets += 1
        return copy.deepcopy(self.body)

    def patch_namespaced_custom_object_status(self, *args: Any) -> dict[str, Any]:
        if self.fail_next_patch:
            self.fail_next_patch = False
            raise TimeoutError("the API server did not answer")
        self.patches.append(args[-1])
        merge(self.body, copy.deepcopy(args[-1]))
        return copy.deepcopy(self.body)

    def edit(self, spec: dict[str, Any]) -> None:
        self.body["spec"] = spec
        self.body["metadata"]["generation"] += 1


class NoPods:
    def list_namespaced_pod(self, *_: object, **__: object) -> SimpleNamespace:
        return SimpleNamespace(items=[])


PAUSED = {"selector": {"matchLabels": {"app": "auth"}}, "paused": True}
INVALID = {"selector": {"matchLabels": {"app": "auth"}}, "balance": {"tolerance": -1}}


def world(spec: dict[str, Any] = PAUSED) -> tuple[Store, Balancers, Apis]:
    store, balancers = Store(copy.deepcopy(spec)), Balancers()
    apis = Apis(core=NoPods(), apps=None, custom=store, post_event=lambda *a: None,
                balancers=balancers)  # fmt: skip
    balancers.seen(KEY, store.body)  # the watch's first event, as kopf delivers it
    return store, balancers, apis


def tick(apis: Apis) -> None:
    asyncio.run(reconcile(KEY, apis))


def test_only_the_first_tick_reads_the_balancer_with_a_get():
    store, _, apis = world()
    for _ in range(3):
        tick(apis)
    assert store.gets == 1
    assert len(store.patches) == 1  # the first status; the next ticks find it unchanged
    assert store.body["status"]["phase"] == "Paused"


def test_a_spec_edit_delivered_by_the_watch_is_acted_on_at_the_next_tick():
    store, balancers, apis = world()
    tick(apis)
    store.edit(copy.deepcopy(INVALID))
    balancers.seen(KEY, store.body)
    tick(apis)
    assert store.gets == 1
    status = store.body["status"]
    assert (status["phase"], status["observedGeneration"]) == ("Degraded", 2)
    assert "tolerance" in status["reason"]


def test_status_is_the_one_last_written_not_a_watch_event_that_trails_it():
    store, balancers, apis = world()
    trailing = copy.deepcopy(store.body)  # the event before the first write, delivered after it
    tick(apis)
    balancers.seen(KEY, trailing)
    tick(apis)
    assert len(store.patches) == 1


def test_a_write_that_failed_reads_status_again_with_a_get():
    store, _, apis = world()
    store.fail_next_patch = True
    with pytest.raises(TimeoutError):
        tick(apis)
    tick(apis)
    assert store.gets == 2
    assert store.body["status"]["phase"] == "Paused"


def test_leadership_lost_reads_every_status_again():
    store, balancers, apis = world()
    tick(apis)
    balancers.forget_status()
    tick(apis)
    assert store.gets == 2


def test_without_the_watched_bodies_every_tick_is_a_get():
    store, _, apis = world()
    plain = Apis(core=apis.core, apps=None, custom=store, post_event=lambda *a: None)
    for _ in range(3):
        tick(plain)
    assert store.gets == 3
