"""The watch index (which balancer a pod or workload wakes) and Events on transitions only."""

from __future__ import annotations

from connbalance.kube.events import TransitionEvents
from connbalance.kube.index import BalancerIndex, PodSummary, Watched, rollout_complete
from connbalance.kube.reconcile import _differs, _merge_patch, pause_source

SPEC = {
    "selector": {"matchLabels": {"app": "auth"}},
    "workloadRef": {"kind": "Deployment", "name": "auth"},
}


def pod(*, ready: bool, restarts: int = 0, deleting: bool = False) -> dict:
    return {
        "metadata": {"deletionTimestamp": "2026-12-02T00:00:00Z"} if deleting else {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"restartCount": restarts}],
        },
    }


def deployment(*, generation=2, observed=2, replicas=3, updated=3, ready=3, available=3) -> dict:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "updatedReplicas": updated,
                   "readyReplicas": ready, "availableReplicas": available},
    }


def test_a_balancer_is_woken_by_the_pods_it_selects_in_its_own_namespace_only():
    index = BalancerIndex()
    index.put(("ns", "auth"), Watched.from_spec("ns", SPEC))
    assert index.for_pod("ns", {"app": "auth", "pod-template-hash": "x"}) == [("ns", "auth")]
    assert index.for_pod("other", {"app": "auth"}) == []
    assert index.for_pod("ns", {"app": "proxy"}) == []


def test_a_spec_without_labels_selects_nothing_rather_than_everything():
    index = BalancerIndex()
    index.put(("ns", "broken"), Watched.from_spec("ns", {"selector": "nonsense"}))
    assert index.for_pod("ns", {"app": "auth"}) == []


def test_only_readiness_restarts_and_coming_and_going_are_news_about_a_pod():
    index = BalancerIndex()
    assert index.pod_changed("u1", PodSummary.from_body(pod(ready=False)))
    assert not index.pod_changed("u1", PodSummary.from_body(pod(ready=False)))
    assert index.pod_changed("u1", PodSummary.from_body(pod(ready=True)))
    assert index.pod_changed("u1", PodSummary.from_body(pod(ready=True, restarts=1)))
    assert index.pod_changed("u1", PodSummary.from_body(pod(ready=True, restarts=1, deleting=True)))
    assert index.pod_changed("u1", None)
    assert not index.pod_changed("u1", None)


def test_a_rollout_is_complete_when_every_count_lines_up_with_the_generation_seen():
    assert rollout_complete("Deployment", deployment())
    assert not rollout_complete("Deployment", deployment(observed=1))
    assert not rollout_complete("Deployment", deployment(updated=2))
    assert not rollout_complete("Deployment", deployment(available=2))
    sts = deployment()
    sts["status"].update(currentRevision="a", updateRevision="b")
    assert not rollout_complete("StatefulSet", sts)
    sts["status"]["currentRevision"] = "b"
    assert rollout_complete("StatefulSet", sts)


def test_a_workload_wakes_its_balancer_once_when_its_rollout_finishes():
    index = BalancerIndex()
    index.put(("ns", "auth"), Watched.from_spec("ns", SPEC))
    assert index.for_workload("ns", "Deployment", "auth") == [("ns", "auth")]
    assert index.for_workload("ns", "StatefulSet", "auth") == []
    assert not index.rollout_finished("ns", "Deployment", "auth", True)  # first sight: no news
    assert not index.rollout_finished("ns", "Deployment", "auth", False)
    assert index.rollout_finished("ns", "Deployment", "auth", True)
    assert not index.rollout_finished("ns", "Deployment", "auth", True)


def test_a_warning_repeated_at_every_reconcile_is_posted_once_per_step():
    posted: list[tuple[str, str]] = []
    first = TransitionEvents.resuming(lambda k, r, m: posted.append((r, m)), scope="1/e/0",
                                      posted=[])
    first.emit(kind="Warning", reason="MetricsUnavailable", message="stale by 61 s")
    again = TransitionEvents.resuming(lambda k, r, m: posted.append((r, m)), scope="1/e/0",
                                      posted=first.posted)
    again.emit(kind="Warning", reason="MetricsUnavailable", message="stale by 93 s")
    later = TransitionEvents.resuming(lambda k, r, m: posted.append((r, m)), scope="1/e/1",
                                      posted=again.posted)
    later.emit(kind="Warning", reason="MetricsUnavailable", message="stale by 95 s")
    assert posted == [("MetricsUnavailable", "stale by 61 s"),
                      ("MetricsUnavailable", "stale by 95 s")]


def test_normal_events_of_one_step_are_posted_per_pod():
    posted: list[str] = []
    events = TransitionEvents.resuming(lambda k, r, m: posted.append(m), scope="1/e/0", posted=[])
    events.emit(kind="Normal", reason="DrainRequested", message="asked a to cycle 3")
    events.emit(kind="Normal", reason="DrainRequested", message="asked b to cycle 2")
    events.emit(kind="Normal", reason="DrainRequested", message="asked a to cycle 3")
    assert posted == ["asked a to cycle 3", "asked b to cycle 2"]


def test_pause_comes_from_the_spec_or_the_annotation_and_says_which():
    assert pause_source({"paused": True}, {}) == "spec.paused"
    annotated = {"annotations": {"connbalance.io/paused": "true"}}
    assert pause_source({}, annotated) == "annotation connbalance.io/paused"
    assert pause_source({}, {"annotations": {"connbalance.io/paused": "false"}}) is None
    assert pause_source({"paused": False}, {}) is None


def test_a_status_patch_holds_what_changed_and_nulls_what_went():
    previous = {"phase": "Balanced", "skew": 1.01, "reason": "ok"}
    new = {"phase": "Balanced", "skew": 1.02}
    assert _merge_patch(previous, new) == {"skew": 1.02, "reason": None}


def test_a_status_the_api_server_already_holds_is_not_written_again():
    """A merge patch's nulls remove keys, so the stored controller state lacks its None members;
    the same state again is no change (it was re-sent every tick: found by make bench-operator)."""
    new = {"phase": "Balanced", "skew": None,
           "controller": {"phase": "Balanced", "episode": None, "step": 0, "skews": []}}
    stored = {"phase": "Balanced", "controller": {"phase": "Balanced", "step": 0, "skews": []}}
    assert not _differs(stored, new)
    assert _merge_patch(stored, new) == {}
    moved = {**new, "controller": {**new["controller"], "episode": "e1"}}
    assert _differs(stored, moved)
    assert _merge_patch(stored, moved) == {"controller": moved["controller"]}
