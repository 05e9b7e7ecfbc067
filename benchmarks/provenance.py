"""What every result file records about where it came from: the commit and the UTC time."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    """$LINGO_COMMIT when set (a device machine's copy of the tree can carry a stale .git: pass the
    commit that was sent), else HEAD of the checkout the benchmark runs from (None outside git)."""
    if os.environ.get("LINGO_COMMIT"):
        return os.environ["LINGO_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
