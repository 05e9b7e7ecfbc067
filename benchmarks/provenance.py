"""What every result file records about where it came from (the commit, the UTC time), and how it is written."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path

from lingo_core.storage import atomic_file

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


def write_report(report: dict, out: Path) -> None:
    """The result JSON, written through a temp name (a cut-off run leaves the previous file whole)."""
    atomic_file(out, lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
    print(f"wrote {out}")
