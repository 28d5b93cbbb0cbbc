"""The Waxwing binary the interop tests run (both conftests use it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_checked_bin: Path | None = None


def waxwing_bin() -> Path:
    """$WAXWING_BIN, which must be an executable file; without it target/debug/waxwing,
    built (once per run) with `cargo build --bins` so the tests run the current code."""
    global _checked_bin
    if _checked_bin is not None:
        return _checked_bin
    given = os.environ.get("WAXWING_BIN")
    path = Path(given or "target/debug/waxwing")
    path = path if path.is_absolute() else REPO_ROOT / path
    if not given:
        build = subprocess.run(["cargo", "build", "--quiet", "--bins"], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=1800, stdin=subprocess.DEVNULL)
        if build.returncode != 0:
            raise RuntimeError(f"cargo build --bins failed:\n{build.stderr}")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(f"WAXWING_BIN={path} is not an executable file"
                           + ("" if given else " (after cargo build --bins)"))
    _checked_bin = path
    return path
