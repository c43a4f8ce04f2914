"""The planner: from one snapshot of loads, pods and policy to a Plan.

Rule: pure arithmetic. No I/O, no clock (``now`` is an argument), no randomness, and no imports
but ``model`` and the standard library. The same input always gives the same plan, which is
what makes the controller restart-safe and the planner testable with hypothesis.
"""

from connbalance.planner.landing import Landing, expected_loads, shed_targets
from connbalance.planner.plan import Verdict, plan

__all__ = ["Landing", "Verdict", "expected_loads", "plan", "shed_targets"]
