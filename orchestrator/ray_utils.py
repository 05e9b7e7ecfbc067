"""Ray process bookkeeping for tests and the CLI: which raylet / gcs_server processes exist, and
ending the ones a given session started (by pid, never by name: other Ray clusters may share the host)."""

from __future__ import annotations

import os
import signal
import time

import psutil  # installed with ray[default]

RAY_DAEMONS = ("raylet", "gcs_server")  # the two long-lived daemons of every Ray node


def ray_daemon_pids(root: int | None = None) -> set[int]:
    """pids of the raylet / gcs_server processes descending from process `root` (default: this one).
    `ray.init()` starts a local cluster's daemons as children of the driver, so this finds exactly the
    clusters this process started, and never another session's on the same host."""
    try:
        procs = psutil.Process(root or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    pids = set()
    for p in procs:
        try:
            if p.name() in RAY_DAEMONS and p.status() != psutil.STATUS_ZOMBIE:
                pids.add(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def wait_gone(pids: set[int], timeout_s: float = 20.0) -> set[int]:
    """The pids still alive after waiting up to timeout_s (ray.shutdown ends daemons asynchronously)."""

    deadline = time.time() + timeout_s
    alive = set(pids)
    while alive and time.time() < deadline:
        alive = {p for p in alive if _running(p)}
        if alive:
            time.sleep(0.5)
    return alive


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_pids(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
