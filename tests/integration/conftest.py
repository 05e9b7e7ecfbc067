"""Session guard: every Ray daemon (raylet, gcs_server) that tests started in this process is gone when the
suite ends. Leftovers are killed by pid (never `ray stop`, which would also end other sessions' clusters on
this host) and fail the session."""

from __future__ import annotations

import pytest

from orchestrator.ray_utils import kill_pids, ray_daemon_pids, wait_gone

LEAKS: list[int] = []


@pytest.fixture(scope="session", autouse=True)
def no_ray_left_behind():
    yield
    import ray

    ours = ray_daemon_pids()  # children of this pytest process, collected before the shutdown
    ray.shutdown()
    leaked = wait_gone(ours)
    if leaked:
        LEAKS.extend(sorted(leaked))
        kill_pids(leaked)


def pytest_sessionfinish(session, exitstatus):
    if LEAKS:
        print(f"\nRay daemons left running by tests (now killed): pids {LEAKS}")
        session.exitstatus = 1
