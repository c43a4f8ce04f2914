"""How a run is shown: a live rich view, plain log lines for CI, and the final summary."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Mapping
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from connbalance_sim import measures
from connbalance_sim.measures import Event, Record, Sample
from connbalance_sim.scenario import Context

BAR_WIDTH = 50
SHOWN_KINDS = frozenset({"rollout", "restart", "ready", "drain", "phase", "close"})


def _skew_text(skew: float | None) -> str:
    return "-" if skew is None else f"{skew:.2f}"


class PlainView:
    """One line of loads per ``every`` seconds, and one per event: for CI logs and pipes."""

    def __init__(self, *, out: TextIO = sys.stdout, every: float = 1.0, prefix: str = "") -> None:
        self._out = out
        self._every = every
        self._prefix = prefix
        self._last = -1e9

    def sample(self, sample: Sample, ctx: Context) -> None:
        if sample.t - self._last < self._every:
            return
        self._last = sample.t
        loads = "  ".join(f"{pod} {int(load):4d}" for pod, load in sorted(sample.loads.items()))
        phase = ctx.status.get("phase", "")
        phase_text = f"  phase {phase}" if phase else ""
        print(f"{self._prefix}t={sample.t:6.1f}s  skew {_skew_text(sample.skew):>5}"
              f"{phase_text}  {loads}", file=self._out, flush=True)

    def event(self, event: Event) -> None:
        if event.kind in SHOWN_KINDS:
            print(f"{self._prefix}t={event.t:6.1f}s  {event.kind:8} {event.text}",
                  file=self._out, flush=True)


class LiveView:
    """Bars of load per pod, the phase, the skew and each drain as it happens."""

    def __init__(self, *, title: str, console: Console | None = None) -> None:
        self._title = title
        self._console = console or Console()
        self._events: deque[Event] = deque(maxlen=10)
        self._sample: Sample | None = None
        self._status: dict[str, str] = {}
        self._pods: list[str] = []
        self._scale = 1.0
        self._live = Live(self._render(), console=self._console, refresh_per_second=4,
                          transient=False)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.update(self._render())
        self._live.__exit__(None, None, None)

    def sample(self, sample: Sample, ctx: Context) -> None:
        self._sample = sample
        self._status = dict(ctx.status)
        self._pods = [str(p) for p in ctx.fleet.names]
        self._scale = max(self._scale, *sample.loads.values(), 1.0)
        self._live.update(self._render())

    def event(self, event: Event) -> None:
        if event.kind in SHOWN_KINDS:
            self._events.append(event)
            self._live.update(self._render())

    def _render(self) -> Group:
        sample = self._sample
        head = Text(self._title, style="bold")
        if sample is None:
            return Group(head, Text("starting the fleet..."))
        skew = sample.skew
        style = "green" if skew is not None and skew <= measures.BALANCED else "red"
        status = Text.assemble(
            (f"t={sample.t:5.1f}s  ", "dim"), "skew ", (_skew_text(skew), f"bold {style}"),
            f"  mean {sample.mean:.0f}  total {sample.total:.0f}",
            ("  phase " + self._status["phase"]) if "phase" in self._status else "")
        bars = Table.grid(padding=(0, 1))
        mean_at = int(BAR_WIDTH * sample.mean / self._scale)
        for pod in self._pods:
            load = sample.loads.get(pod)
            if load is None:
                bars.add_row(pod, Text("(restarting)", style="yellow"), "")
                continue
            filled = int(BAR_WIDTH * load / self._scale)
            bar = Text("█" * filled, style="cyan")
            bar.append(" " * (BAR_WIDTH - filled))
            if 0 <= mean_at < BAR_WIDTH:
                bar.stylize("on grey23", mean_at, mean_at + 1)
            bars.add_row(pod, bar, f"{int(load):4d}")
        log = Table.grid()
        for event in self._events:
            colour = {"drain": "magenta", "restart": "yellow", "phase": "blue"}.get(event.kind, "")
            log.add_row(Text(f"{event.t:6.1f}s {event.kind:8} {event.text}", style=colour,
                             no_wrap=True, overflow="ellipsis"))
        return Group(head, status, bars, Text("the shaded cell marks the mean", style="dim"), log)


def summary(record: Record) -> list[str]:
    """The final words of a demo: the skew before and after, the time, the cost."""
    result = measures.result(record)
    before = measures.skew_before(record)
    ttb = result["time_to_balance_s"]
    ratio = result["cycled_ratio"]
    lines = [
        f"strategy            {record.strategy}",
        f"skew after rollout  {_skew_text(before)}  (max/mean; 1.00 is perfectly even)",
        f"skew at the end     {_skew_text(result['final_skew'])}",
        "time to balance     " + ("never (still over 1.10 at the end)" if ttb is None
                                  else f"{ttb:.1f}s after the rollout finished"),
        f"connections cycled  {result['cycled']} against {result['needed']} needed"
        + ("" if ratio is None else f" (ratio {ratio:.2f}; 1.00 is the least possible)"),
        f"churn when balanced {result['churn_when_balanced']}",
        f"failed calls        {record.failed_calls} of {record.calls} unary calls"
        + _failure_causes(record.extra.get("harm")),
        *_failures_by_group(record.extra.get("harm")),
    ]
    return lines


CAUSE_WORDS = {
    "restart": "during the rollout (the restarts)",
    "close_during_call": "on a connection closed during the call",
    "refused_connect": "on a refused reconnect",
    "backoff": "while the channel waited out its reconnect backoff after a refused connect",
    "deadline": "past their deadline with no failed connect (a slow server or machine)",
    "other": "for another reason",
}
GROUP_WORDS = {"retry": "with the retry policy", "failfast": "fail-fast"}


def _failure_causes(harm: Mapping[str, Any] | None) -> str:
    """What the clients blamed each failure on, largest first; nothing if not counted."""
    if not harm:
        return ""
    causes = sorted(((n, c) for c, n in harm["failed_by_cause"].items() if n > 0), reverse=True)
    if not causes:
        return ""
    return ": " + "; ".join(f"{n} {CAUSE_WORDS.get(c, c)}" for n, c in causes)


def _failures_by_group(harm: Mapping[str, Any] | None) -> list[str]:
    if not harm:
        return []
    return [f"  {GROUP_WORDS.get(name, name) + ':':<24}{g['failed_calls']} of {g['calls']} "
            f"({g['failed_after_rollout']} after the rollout; "
            f"{g['failed_connects_after_rollout']} failed connects after it)"
            for name, g in sorted(harm["groups"].items())]
