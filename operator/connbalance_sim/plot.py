"""Plots of load per pod over time, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display, ever
import matplotlib.pyplot as plt

from connbalance_sim import measures
from connbalance_sim.measures import Record


def draw(ax: Any, record: Record) -> None:
    pods = sorted({pod for s in record.samples for pod in s.loads})
    # Time from the finished rollout, so that panels side by side line up.
    zero = record.rollout_finished
    times = [s.t - zero for s in record.samples]
    for pod in pods:
        ax.plot(times, [s.loads.get(pod, math.nan) for s in record.samples], label=pod,
                linewidth=1.5)
    # The mean over every pod, restarting ones included: the level all should come back to.
    ax.plot(times, [s.total / len(pods) for s in record.samples], "k--", linewidth=0.8,
            label="mean")
    ax.axvspan(record.rollout_started - zero, 0.0, color="orange", alpha=0.15,
               label="rolling restart")
    labelled = False
    for event in record.events:
        if event.kind in ("drain", "close"):
            ax.axvline(event.t - zero, color="purple", alpha=0.3, linewidth=0.8,
                       label=None if labelled else "closes asked")
            labelled = True
    result = measures.result(record)
    ttb = result["time_to_balance_s"]
    ax.set_title(f"{record.strategy}: final skew {result['final_skew']:.2f}, "
                 + ("not balanced" if ttb is None else f"balanced in {ttb:.0f}s")
                 + f", cycled {result['cycled']}/{result['needed']}", fontsize=9)
    ax.set_xlabel("seconds after the rollout finished")
    ax.set_ylabel("connections")
    ax.grid(alpha=0.3)


def save_one(record: Record, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    draw(ax, record)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_panels(records: Sequence[Record], path: Path) -> None:
    columns = 2 if len(records) > 1 else 1
    rows = math.ceil(len(records) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 3.2 * rows), squeeze=False,
                             sharey=True)
    for index, record in enumerate(records):
        draw(axes[index // columns][index % columns], record)
    for index in range(len(records), rows * columns):
        axes[index // columns][index % columns].axis("off")
    axes[0][0].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
