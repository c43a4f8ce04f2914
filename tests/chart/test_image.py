"""The Dockerfile: what the image is labelled and runs as, and its own install steps, run here.

No container engine is needed: the build context is made as Docker makes it (the repository
filtered by .dockerignore), each COPY is done into a staging directory, and each `pip` step of
the Dockerfile is run as written, with its paths moved into that directory and the final stage's
pip pointed at a fresh venv. What that venv ends up holding is what the image would.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chart.helmrun import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
OCI_LABELS = {"title", "description", "version", "revision", "created", "source", "licenses"}
# None of these belongs in the image: the simulator, plotting, test tools.
NOT_IN_THE_IMAGE = {"connbalance-sim", "grpcio", "matplotlib", "pytest", "hypothesis", "pyroute2"}


@dataclass(frozen=True, slots=True)
class Instruction:
    stage: int
    name: str
    args: str


def instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    stage = -1
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    for line in joined.splitlines():
        if not line.strip():
            continue
        name, _, args = line.strip().partition(" ")
        if name.upper() == "FROM":
            stage += 1
        out.append(Instruction(stage, name.upper(), " ".join(args.split())))
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parents, decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for raw in patterns:
        keep = raw.startswith("!")
        regex = _pattern(raw[1:] if keep else raw)
        if any(regex.fullmatch(c) for c in candidates):
            verdict = not keep
    return verdict


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Go's filepath.Match reads it, plus `**` for any depth."""
    out, text = "", pattern.strip("/")
    while text:
        if text.startswith("**/"):
            out, text = out + "(?:.*/)?", text[3:]
        elif text.startswith("**"):
            out, text = out + ".*", text[2:]
        elif text[0] == "*":
            out, text = out + "[^/]*", text[1:]
        elif text[0] == "?":
            out, text = out + "[^/]", text[1:]
        else:
            out, text = out + re.escape(text[0]), text[1:]
    return re.compile(out)


def build_context() -> list[str]:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    found: list[str] = []
    for folder, dirs, files in os.walk(ROOT):
        relative = os.path.relpath(folder, ROOT)
        dirs[:] = [d for d in dirs if d != ".git" and not os.path.islink(os.path.join(folder, d))]
        for name in files:
            path = os.path.normpath(os.path.join(relative, name))
            if not ignored(path, patterns):
                found.append(path)
    return sorted(found)


INSTRUCTIONS = instructions(DOCKERFILE.read_text())
STAGES = max(i.stage for i in INSTRUCTIONS) + 1


def test_the_image_carries_the_oci_labels():
    labels = " ".join(i.args for i in INSTRUCTIONS if i.name == "LABEL" and i.stage == STAGES - 1)
    named = set(re.findall(r"org\.opencontainers\.image\.([a-z]+)=", labels))
    assert named >= OCI_LABELS


def test_the_image_runs_as_a_non_root_user_by_default():
    users = [i.args for i in INSTRUCTIONS if i.name == "USER" and i.stage == STAGES - 1]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric UID, so runAsNonRoot can check it"
    assert int(uid) != 0


def test_the_image_carries_what_both_agent_modes_run():
    apt = " ".join(i.args for i in INSTRUCTIONS if i.name == "RUN" and "apt-get install" in i.args)
    assert {"nftables", "iproute2"} <= set(apt.split())


def test_the_build_context_holds_the_product_and_nothing_else():
    context = build_context()
    assert "pyproject.toml" in context
    assert "operator/connbalance/cli/main.py" in context
    assert not [p for p in context if p.startswith(("operator/connbalance_sim", "sim/", "tests/"))]
    assert not [p for p in context if "__pycache__" in p or p.startswith((".venv", "out/"))]


def test_the_ignore_rules_read_as_docker_reads_them():
    patterns = ["*", "!keep/", "keep/**/*.pyc"]
    assert ignored("other.txt", patterns)
    assert not ignored("keep/a.py", patterns)
    assert ignored("keep/deep/b.pyc", patterns)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv that the Dockerfile's pip steps installed into."""
    staging = tmp_path_factory.mktemp("image")
    venv = staging / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    context = build_context()
    workdir = staging
    for step in INSTRUCTIONS:
        stage_pip = f"{shlex.quote(sys.executable)} -m pip"
        if step.stage == STAGES - 1:  # the final stage installs into the image's Python: the venv
            stage_pip += f" --python {shlex.quote(str(venv / 'bin' / 'python'))}"
        if step.name == "WORKDIR":
            workdir = staging / step.args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.name == "COPY" and not step.args.startswith("--from"):
            *sources, dest = step.args.split()
            target = workdir / dest if not dest.startswith("/") else staging / dest.lstrip("/")
            for source in (s.rstrip("/") for s in sources):
                if source in context:  # a file
                    copies = {source: target / Path(source).name if dest.endswith("/") else target}
                else:  # a directory: its contents
                    copies = {
                        p: target / os.path.relpath(p, source)
                        for p in context
                        if p.startswith(source + "/")
                    }
                assert copies, f"COPY {source}: not in the build context"
                for path, out in copies.items():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes((ROOT / path).read_bytes())
        elif step.name == "RUN" and "pip " in step.args:
            command = re.sub(r"(?<![\w/.-])/wheels\b", str(staging / "wheels"), step.args)
            command = re.sub(r"\bpip (?=wheel|install)", stage_pip + " ", command)
            # The one change besides paths: pip's cache is used, or every run downloads it all.
            command = command.replace(" --no-cache-dir", "")
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            done = subprocess.run(
                ["sh", "-ec", command],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=480,
                check=False,
            )
            assert done.returncode == 0, f"RUN {step.args}\n{done.stdout}\n{done.stderr}"
        elif step.name == "RUN":
            assert step.args.startswith("apt-get update"), f"a step this test cannot run: {step}"
    return venv


pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize("command", ["run", "agent"])
def test_the_images_install_runs_the_operator_and_the_agent(image_venv, tmp_path, command):
    done = subprocess.run(
        [str(image_venv / "bin" / "connbalance"), command, "--help"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: connbalance {command}")


def test_the_images_install_holds_only_runtime_dependencies(image_venv):
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(image_venv / "bin" / "python"), "list",
         "--format=freeze"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.split()}
    assert "connbalance" in installed
    assert not installed & NOT_IN_THE_IMAGE
