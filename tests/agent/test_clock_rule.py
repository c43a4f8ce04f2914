"""The agent package's rule: it reads the time only through its injected clock."""

from __future__ import annotations

import ast
from pathlib import Path

import connbalance.agent

AGENT = Path(connbalance.agent.__file__).parent
FORBIDDEN = {
    ("time", "monotonic"),
    ("time", "time"),
    ("time", "perf_counter"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
}


def clock_reads(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            found.append(f"line {node.lineno}: from time import ...")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        name = owner.id if isinstance(owner, ast.Name) else ""
        if (name, node.func.attr) in FORBIDDEN:
            found.append(f"line {node.lineno}: {name}.{node.func.attr}()")
        timed = not (
            node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == 0
        )
        if (name, node.func.attr) == ("asyncio", "sleep") and timed:
            found.append(f"line {node.lineno}: asyncio.sleep() for some time")
    return found


def test_no_module_of_the_agent_reads_the_time_but_through_its_clock():
    offenders = {
        path.name: reads
        for path in sorted(AGENT.glob("*.py"))
        if (reads := clock_reads(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert offenders == {}


def test_the_rule_catches_each_way_of_reading_the_time():
    source = (
        "import asyncio, time\nfrom datetime import datetime\n"
        "time.monotonic()\ndatetime.now()\nasyncio.sleep(0.5)\nasyncio.sleep(0)\n"
    )
    assert clock_reads(ast.parse(source)) == [
        "line 3: time.monotonic()",
        "line 4: datetime.now()",
        "line 5: asyncio.sleep() for some time",
    ]
