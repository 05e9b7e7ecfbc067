"""`lingo jobs` and `lingo submit` against a Ray dashboard that is not there: one line, exit 2 (no cluster
started; the round trip against a real head is tests/integration/test_cluster_jobs.py)."""

from __future__ import annotations

import pytest

from orchestrator.cli import main as lingo
from orchestrator.submit import REPO_ROOT

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.mark.parametrize("argv", [
    ["jobs", "list"], ["jobs", "status", "raysubmit_x"], ["jobs", "logs", "raysubmit_x"],
    ["jobs", "logs", "raysubmit_x", "--follow"], ["jobs", "stop", "raysubmit_x"],
    ["submit", str(REPO_ROOT / "jobs" / "smoke.yaml"), "--no-validate"],
])
def test_unreachable_address_is_one_line_exit_2(argv: list[str], capsys) -> None:
    assert lingo([*argv, "--address", UNREACHABLE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot reach the Ray dashboard at {UNREACHABLE}" in err, err
