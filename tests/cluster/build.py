"""Build the test cluster's binaries once: ``clusterbin`` (etcd, kube-apiserver,
kube-controller-manager, kubectl) and ``prometheus``.

The output goes to ``$CACHE/cluster-bin/<hash>/`` where the hash covers both go.mod and go.sum
files, every Go source here and this file, so a warm machine reuses it and any change rebuilds it.
Run as ``python -m tests.cluster.build``: prints the binary directory on its last line.

One change is made to Kubernetes' sources, in a copy outside the module cache: the API server's
check that an endpoint address is not loopback is dropped, since every pod in this cluster has a
127.x address and EndpointSlices must be able to list them.

Prometheus is built from its Go module (``prometheus/go.mod``, a ``tool`` line) with only its
Kubernetes service discovery (build tags ``remove_all_sd,enable_kubernetes_sd``): Debian's
package is built without Kubernetes discovery, since Debian does not package client-go.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KUBE_VERSION = "v1.35.4"
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMETHEUS_TAGS = "remove_all_sd,enable_kubernetes_sd"
CACHE = Path(os.environ.get("CACHE", Path.home() / ".cache" / "connbalance"))
VALIDATION = "pkg/apis/core/validation/validation.go"
LOOPBACK_CHECK = (
    "\tif ip.IsLoopback() {\n"
    "\t\tallErrs = append(allErrs, field.Invalid(fldPath, ipAddress,"
    ' "may not be in the loopback range (127.0.0.0/8, ::1/128)"))\n'
    "\t}\n"
)
LOOPBACK_NOTE = (
    "\t// connbalance test cluster: every pod has a loopback IP, so endpoints may too.\n"
)
PROGRESS_SECONDS = 20.0


def source_hash() -> str:
    digest = hashlib.sha256()
    files = [
        Path(__file__).resolve(),
        *(HERE / folder / name for folder in (".", "prometheus") for name in ("go.mod", "go.sum")),
        *sorted(HERE.rglob("*.go")),
    ]
    for path in files:
        digest.update(str(path.relative_to(HERE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def bin_dir() -> Path:
    return CACHE / "cluster-bin" / source_hash()


def kube_ldflags() -> str:
    major, minor = KUBE_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    # What `kubectl version` and the API server's /version report; the upstream build sets the same.
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={KUBE_VERSION}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


def go_env(name: str) -> str:
    return subprocess.run(
        ["go", "env", name], check=True, capture_output=True, text=True, cwd=HERE
    ).stdout.strip()


def patched_kubernetes() -> Path:
    """A copy of the k8s.io/kubernetes module with the loopback endpoint check removed."""
    target = CACHE / "cluster-src" / f"kubernetes@{KUBE_VERSION}-loopback"
    if (target / ".patched").exists():
        return target
    info = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBE_VERSION}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    source = Path(json.loads(info.stdout)["Dir"])
    partial = target.with_name(target.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    # copyfile, not copy2: the module cache is read-only and the copy must stay removable.
    shutil.copytree(source, partial, copy_function=shutil.copyfile)
    for folder in [partial, *(p for p in partial.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    validation = partial / VALIDATION
    text = validation.read_text()
    if text.count(LOOPBACK_CHECK) != 1:
        raise SystemExit(
            f"build: the loopback check in {VALIDATION} changed upstream; update build.py"
        )
    validation.write_text(text.replace(LOOPBACK_CHECK, LOOPBACK_NOTE))
    (partial / ".patched").touch()
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def build(out: Path) -> None:
    kubernetes = patched_kubernetes()
    work = out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    go_version = next(
        line.split()[1]
        for line in (HERE / "go.mod").read_text().splitlines()
        if line.startswith("go ")
    )
    # A workspace adds the patched copy and leaves go.mod as any importer of Kubernetes writes it.
    (work / "go.work").write_text(
        f"go {go_version}\n\nuse {HERE}\n\n"
        f"replace k8s.io/kubernetes {KUBE_VERSION} => {kubernetes}\n"
    )
    print(f"build: compiling into {out} (cold: many minutes on 2 cores)", flush=True)
    started = time.monotonic()
    go_build(
        ["go", "build", "-v", "-trimpath", "-ldflags", kube_ldflags(),
         "-o", str(work / "clusterbin"), "./cmd/clusterbin"],
        cwd=HERE,
        env={**os.environ, "GOWORK": str(work / "go.work"), "GOFLAGS": "-buildvcs=false"},
    )  # fmt: skip
    go_build(
        ["go", "build", "-v", "-trimpath", "-tags", PROMETHEUS_TAGS, "-ldflags",
         f"-s -w -X github.com/prometheus/common/version.Version={prometheus_version()}",
         "-o", str(work / "prometheus"), f"{PROMETHEUS_MODULE}/cmd/prometheus"],
        cwd=HERE / "prometheus",
        env={**os.environ, "GOWORK": "off", "GOFLAGS": "-buildvcs=false"},
    )  # fmt: skip
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in ("clusterbin", "prometheus"):
        (work / name).rename(tmp / name)
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
        (tmp / name).symlink_to("clusterbin")
    tmp.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"build: done in {time.monotonic() - started:.0f}s", flush=True)


def prometheus_version() -> str:
    """The release a module version stands for: module v0.310.0 is Prometheus 3.10.0."""
    for line in (HERE / "prometheus" / "go.mod").read_text().splitlines():
        words = line.split()
        if words and words[0] == PROMETHEUS_MODULE:
            _, minor, patch = words[1].lstrip("v").split(".")
            return f"{int(minor) // 100}.{int(minor) % 100}.{patch}"
    raise SystemExit("build: prometheus/go.mod does not require the Prometheus module")


def go_build(command: list[str], *, cwd: Path, env: dict[str, str]) -> None:
    """Run ``go build -v``, printing a line every 20 s so that CI logs show life."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    compiled = 0
    log: list[str] = []
    done = threading.Event()

    def report() -> None:
        while not done.wait(PROGRESS_SECONDS):
            print(
                f"build: still compiling {command[-1]}, {compiled} packages so far, "
                f"{time.monotonic() - started:.0f}s",
                flush=True,
            )

    threading.Thread(target=report, daemon=True).start()
    assert process.stderr is not None
    for line in process.stderr:
        compiled += 1
        log.append(line)
    status = process.wait()
    done.set()
    if status != 0:
        sys.stderr.write("".join(log[-60:]))
        raise SystemExit(f"build: go build {command[-1]} failed with status {status}")
    print(
        f"build: {command[-1]}: {compiled} packages in {time.monotonic() - started:.0f}s",
        flush=True,
    )


def ensure_built() -> Path:
    out = bin_dir()
    if (out / "clusterbin").exists():
        return out
    # One build at a time per machine: a second test run waits for the first instead of
    # compiling the same ~2,000 packages beside it on two cores.
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "clusterbin").exists():
            build(out)
            prune(keep=out)
    return out


def prune(*, keep: Path) -> None:
    """Drop the binaries of older sources (about 240 MB each): only the current build is used,
    and the Go build cache makes going back to an older one cheap."""
    for old in keep.parent.iterdir():
        if old != keep and old.is_dir() and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-dir", action="store_true", help="print the binary directory only")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(bin_dir())
        return 0
    print(ensure_built())
    return 0


if __name__ == "__main__":
    sys.exit(main())
