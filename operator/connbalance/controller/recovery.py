"""Adopting a step the pods carry but status lost: a crash between delivering a step and writing
status leaves the step's id on the pods only. The id is never issued again; the step is resumed
as the current episode only while it is recent enough to belong to one."""

from __future__ import annotations

from connbalance.controller.state import ControllerState, IssuedStep

# A lost step is resumed only while this recent, in cooldowns and at least the floor in seconds:
# an operator restarted on a busy node, or after a crash loop's backoff, comes back long after a
# short cooldown. An older step belongs to an episode that has ended.
RESUME_HORIZON_COOLDOWNS = 3
RESUME_FLOOR_SECONDS = 300.0


def resume_horizon(cooldown: float) -> float:
    """How long after it was issued a lost step still resumes its episode, in seconds."""
    return max(RESUME_HORIZON_COOLDOWNS * cooldown, RESUME_FLOOR_SECONDS)


def recover(
    state: ControllerState, newest: IssuedStep | None, *, now: float, cooldown: float
) -> ControllerState:
    """``state`` with the newest step on the pods adopted, if status does not know it yet."""
    if newest is None or (
        state.last_step_at is not None and newest.issued_at <= state.last_step_at + 1e-3
    ):
        return state
    # Its requests were asked of the agents: status counts them, as if it had been written.
    recovered = state.with_(
        last_step_at=newest.issued_at,
        requested_total=state.requested_total + newest.requested,
    )
    if now - newest.issued_at < resume_horizon(cooldown):
        recovered = recovered.with_(episode=newest.episode, step=max(newest.step, state.step))
    return recovered
