"""Running the chart through real helm, and reading what it renders."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "connbalance"


@dataclass(frozen=True, slots=True)
class Helm:
    binary: str

    def run(
        self, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env=None if env is None else dict(env),
        )

    def template(
        self,
        *sets: str,
        values: str | None = None,
        release: str = "cb",
        namespace: str = "ops",
        extra: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """`helm template`; ``values`` is a values document passed on stdin (``-f -``)."""
        args = ["template", release, str(CHART), "--namespace", namespace, *extra]
        for item in sets:
            args += ["--set", item]
        if values is not None:
            args += ["-f", "-"]
        return self.run(*args, stdin=values)

    def render(self, *sets: str, **options: Any) -> list[dict[str, Any]]:
        done = self.template(*sets, **options)
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    def notes(self, *sets: str, extra: Sequence[str] = ()) -> str:
        """NOTES.txt as an install would print it (client-side dry run: no cluster needed)."""
        args = ["install", "cb", str(CHART), "--namespace", "ops", "--dry-run=client", *extra]
        for item in sets:
            args += ["--set", item]
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout.split("NOTES:", 1)[1]


def by_kind(docs: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind}s rendered"
    return found[0]


def operator_args(docs: Sequence[dict[str, Any]]) -> list[str]:
    args: list[str] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    return args
