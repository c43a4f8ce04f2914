"""Leader election through a Lease: the rules with a fake clock, the hand-over on a real API
server with a leader SIGKILLed."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connbalance.kube.leader import LeaseRecord, Move, Timing, decide
from tests.cluster.cluster import Cluster
from tests.kube.lease_candidate import TIMING

ROOT = Path(__file__).resolve().parents[2]


def held_by(holder: str | None, *, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration_seconds=duration, transitions=0,
                       resource_version="7")


def test_a_candidate_creates_the_lease_when_there_is_none():
    assert decide(record=None, identity="a", seen_changing_at=0, now=0) is Move.CREATE


def test_the_holder_renews_its_own_lease():
    assert decide(record=held_by("a"), identity="a", seen_changing_at=0, now=100) is Move.RENEW


def test_a_fresh_lease_of_another_holder_is_left_alone_until_it_expires_as_seen_here():
    record = held_by("b", duration=15)
    assert decide(record=record, identity="a", seen_changing_at=100, now=114.9) is Move.WAIT
    assert decide(record=record, identity="a", seen_changing_at=100, now=115) is Move.TAKE


def test_a_released_lease_is_taken_at_once():
    assert decide(record=held_by(None), identity="a", seen_changing_at=100, now=100) is Move.TAKE


def test_timing_must_let_a_leader_give_up_before_another_may_take_over():
    with pytest.raises(ValueError, match="lease_duration > renew_deadline"):
        Timing(lease_duration=10, renew_deadline=10, retry_period=2)


class Candidate:
    def __init__(self, cluster: Cluster, namespace: str, identity: str) -> None:
        self.identity = identity
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.kube.lease_candidate", str(cluster.kubeconfig),
             namespace, "connbalance-leader", identity],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )

    def first_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            pytest.fail(f"{self.identity} said nothing within {timeout} s")
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def candidates(cluster: Cluster, namespace: str) -> Iterator[list[Candidate]]:
    started: list[Candidate] = []
    yield started
    for candidate in started:
        candidate.stop()


@pytest.mark.cluster
def test_exactly_one_leads_and_the_standby_takes_over_after_a_sigkill(
    cluster, namespace, candidates
):
    first = Candidate(cluster, namespace, "first")
    candidates.append(first)
    assert first.first_line(timeout=30) == "leading"
    second = Candidate(cluster, namespace, "second")
    candidates.append(second)
    assert second.first_line(timeout=30) == "standby"
    holder = cluster.run_kubectl(
        "get", "lease", "connbalance-leader", "-n", namespace,
        "-o", "jsonpath={.spec.holderIdentity}",
    ).stdout
    assert holder == "first"

    first.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert second.first_line(timeout=30) == "leading"
    # The bound is leaseDuration + retryPeriod; a slow API server adds its own latency.
    assert time.monotonic() - killed_at <= TIMING.lease_duration + TIMING.retry_period + 3
