"""Build the Go client fleet (``goclients``, this folder's Go module) once, as the test cluster's
binaries are built: into ``$CACHE/goclients-bin/<hash>/goclients``, where the hash covers go.mod,
go.sum, every Go source here and this file. A warm machine reuses it, any change rebuilds it, and a
cold one builds it from the Go module proxy (grpc-go and what it needs, nothing else).

Run as ``python -m tests.goclients.build``: prints the binary's path on its last line.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CACHE", Path.home() / ".cache" / "connbalance"))
NAME = "goclients"


def source_hash() -> str:
    digest = hashlib.sha256()
    sources = sorted(HERE.glob("*.go"))
    for path in [Path(__file__).resolve(), HERE / "go.mod", HERE / "go.sum", *sources]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def binary() -> Path:
    return CACHE / f"{NAME}-bin" / source_hash() / NAME


def build(out: Path) -> None:
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    print(f"build: compiling {NAME} into {out.parent}", flush=True)
    started = time.monotonic()
    done = subprocess.run(
        ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."],
        cwd=HERE, env={**os.environ, "GOWORK": "off", "GOFLAGS": "-buildvcs=false -mod=readonly"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        sys.stderr.write(done.stderr[-6000:])
        raise SystemExit(f"build: go build {NAME} failed with status {done.returncode}")
    # A rename, so a build running beside this one never sees half a binary.
    tmp.rename(out)
    print(f"build: done in {time.monotonic() - started:.0f}s", flush=True)


def ensure_built() -> Path:
    out = binary()
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        build(out)
        prune(keep=out.parent)
    return out


def prune(*, keep: Path) -> None:
    """Drop the binaries of older sources: only the current one is used, and the Go build cache
    makes going back to an older one cheap."""
    for old in keep.parent.iterdir():
        if old != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-path", action="store_true", help="print the binary's path only")
    args = parser.parse_args(argv)
    print(binary() if args.print_path else ensure_built())
    return 0


if __name__ == "__main__":
    sys.exit(main())
