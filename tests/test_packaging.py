"""The product's wheel: no simulator inside, and a plain install of it runs without grpcio.

The wheel is built from a copy of pyproject.toml, README.md and all of ``operator/``, the simulator
included (the Dockerfile copies only ``operator/connbalance``), so a stale ``build/`` in the
checkout cannot leak into it and the package selection alone must keep the simulator out. It is
installed into a fresh venv from the package index (quick with the pip cache), without the
``sim`` extra.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "operator", source / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".mypy_cache"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, timeout=120)
    (built,) = out.glob("connbalance-*.whl")
    return built


@pytest.fixture(scope="module")
def plain_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a fresh venv holding the wheel and its runtime dependencies, nothing else."""
    venv = tmp_path_factory.mktemp("venv")
    # This venv's pip installs into it (pip --python): no pip of its own to set up, and no
    # bytecode compiled, which keeps the test well under two minutes.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=60)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-compile", "--disable-pip-version-check", str(wheel)],
                   check=True, timeout=240)
    return venv / "bin"


def _run(command: list[str | Path], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Away from the checkout, and with nothing on PYTHONPATH, so only the install is importable.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_wheel_holds_connbalance_and_no_simulator_module(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if name.endswith(".py")}
    assert packages == {"connbalance"}
    assert "connbalance/cli/main.py" in names
    assert not [n for n in names if "/sim/" in n or n.endswith(("/sim.py", "/scrape.py"))]


def test_a_plain_install_imports_the_operator_and_the_agent_without_grpc(
    plain_install: Path, tmp_path: Path
):
    check = ("import importlib.util, sys, connbalance.kube.handlers, connbalance.agent; "
             "assert 'grpc' not in sys.modules and 'matplotlib' not in sys.modules; "
             "assert importlib.util.find_spec('grpc') is None, 'grpcio was installed'; "
             "assert importlib.util.find_spec('connbalance_sim') is None")
    done = _run([plain_install / "python", "-c", check], cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", ["run", "agent"])
def test_a_plain_install_runs_the_product_commands(
    plain_install: Path, tmp_path: Path, command: str
):
    done = _run([plain_install / "connbalance", command, "--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: connbalance {command}")


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_a_plain_install_says_which_extra_the_simulator_needs(
    plain_install: Path, tmp_path: Path, command: str
):
    done = _run([plain_install / "connbalance", command], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"connbalance {command}: the simulator is not installed")
    assert "pip install 'connbalance[sim]' connbalance-sim" in line
    assert f"make {command}" in line
