"""The Ray Jobs round trip on a real cluster: `ray start --head` on 127.0.0.1 (its own temp dir and ports,
2 CPUs), `lingo submit jobs/smoke.yaml`, `lingo jobs status` until SUCCEEDED, then the sweep's runs in its
MLflow store, and `lingo jobs list|logs|stop` against the same head.

The head is stopped by pid, not with `ray stop`: `ray stop` ends every Ray process of this user on the host,
which here includes other sessions' clusters. Ours are the descendants of the `ray start --block` process and
any process whose command line names our private temp dir (a worker re-parented after its parent died)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import tracking
from orchestrator.cli import main as lingo
from orchestrator.execution_spec import default_tracking_uri
from orchestrator.submit import REPO_ROOT

RAY = Path(sys.executable).with_name("ray")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ours(head: subprocess.Popen, temp: Path) -> list:
    import psutil

    procs = {}
    try:
        procs.update({p.pid: p for p in psutil.Process(head.pid).children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp) in arg for arg in p.info["cmdline"] or ()):
                procs[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    procs.pop(os.getpid(), None)
    return list(procs.values())


def _stop(head: subprocess.Popen, temp: Path) -> list[int]:
    """SIGTERM then SIGKILL to exactly this cluster's processes; returns the pids still alive after."""
    import psutil

    procs = _ours(head, temp)
    for p in [*procs, psutil.Process(head.pid)] if head.poll() is None else procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)  # some Ray daemons ignore SIGTERM: do not wait long for them
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        head.wait(timeout=15)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    psutil.wait_procs(alive, timeout=10)
    return [p.pid for p in _ours(head, temp) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture()
def ray_head() -> Iterator[str]:
    # Short: Ray's unix-socket paths under the temp dir must stay below 108 characters.
    temp = Path(tempfile.mkdtemp(prefix="lingo-ray-", dir="/tmp"))
    gcs, dash, client, agent, agent_grpc, env_agent, metrics, nm, om = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # entrypoint `python` = ours
    env.pop("PYTHONPATH", None)  # the job must run the uploaded working_dir, not this checkout
    cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", str(temp), "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
           "--node-manager-port", str(nm), "--object-manager-port", str(om),
           "--object-store-memory", str(200 * 1024**2), "--disable-usage-stats"]
    log = open(temp.with_suffix(".log"), "w")  # noqa: SIM115 (closed in finally)
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_dashboard(address, head, temp)
        yield address
    finally:
        left = _stop(head, temp)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        temp.with_suffix(".log").unlink(missing_ok=True)
        assert not left, f"Ray processes of the test cluster still alive: {left}"


def _wait_for_dashboard(address: str, head: subprocess.Popen, temp: Path, timeout_s: float = 120) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited {head.returncode}: {temp.with_suffix('.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                return
        except urllib.error.HTTPError:  # 401 without the auth token: the dashboard is up
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"no dashboard at {address} after {timeout_s} s")


def _status(address: str, job_id: str, capsys) -> str:
    assert lingo(["jobs", "status", job_id, "--address", address]) == 0
    return capsys.readouterr().out.splitlines()[0].split(": ", 1)[1]


@pytest.mark.integration
def test_submit_smoke_job_and_follow_it(ray_head: str, tmp_path: Path, tiny_model_dir: Path, gue_root: Path,
                                        capsys, monkeypatch) -> None:
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))  # forwarded to the job: the same path on this host
    t0 = time.perf_counter()
    out = tmp_path / "smoke"
    overrides = [f"model={tiny_model_dir}", f"output_dir={out}"]  # the tiny random LLaMA: seconds per trial
    assert lingo(["submit", str(REPO_ROOT / "jobs" / "smoke.yaml"), *overrides, "--address", ray_head]) == 0
    printed = capsys.readouterr().out
    job_id = printed.split()[1]
    assert printed.startswith(f"submitted {job_id} to {ray_head}") and f"lingo jobs status {job_id}" in printed

    deadline = time.monotonic() + 400
    status = _status(ray_head, job_id, capsys)
    while status not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
        time.sleep(3)
        status = _status(ray_head, job_id, capsys)
    with capsys.disabled():
        print(f"\n[timing] smoke job on the Ray head: {status} after {time.perf_counter() - t0:.0f} s")
    assert lingo(["jobs", "logs", job_id, "--address", ray_head]) == 0
    logs = capsys.readouterr().out
    assert status == "SUCCEEDED", logs[-4000:]
    assert "registered lingo-prom_core_tata" in logs and "MLflow: sqlite:" in logs

    # the sweep's runs, in the store the job wrote (output_dir is a path on this host)
    c = tracking.client(default_tracking_uri(out))
    exp = c.get_experiment_by_name("smoke")
    parents = [r for r in c.search_runs([exp.experiment_id]) if tracking.PARENT_TAG not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kids = tracking.child_runs(c, exp.experiment_id, parents[0].info.run_id)
    assert sorted((k.data.tags["task"], k.data.tags["method"]) for k in kids) == [("prom_core_tata", "ars"),
                                                                                   ("tf/0", "ars")]
    assert all(k.info.status == "FINISHED" and "test_mcc" in k.data.metrics for k in kids)
    # and `lingo report` reads that real sweep (ARS trials: all four plots)
    assert lingo(["report", str(out)]) == 0
    assert {p.name for p in (out / "report").iterdir()} == {"report.md", "mcc_by_method.png", "rank_allocation.png",
                                                            "budget.png", "dev_mcc.png"}
    capsys.readouterr()

    # list shows it; status of an unknown id and stop of a finished job are plain answers
    assert lingo(["jobs", "list", "--address", ray_head]) == 0
    listed = capsys.readouterr().out
    assert job_id in listed and "SUCCEEDED" in listed and "smoke.yaml" in listed
    assert lingo(["jobs", "stop", job_id, "--address", ray_head]) == 0
    assert "already SUCCEEDED" in capsys.readouterr().out
    assert lingo(["jobs", "status", "raysubmit_nosuchjob", "--address", ray_head]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "raysubmit_nosuchjob: no such job" in err

    # stop of a running job
    from orchestrator.submit import submit

    sleeper = submit(ray_head, "sleep 120", {})
    assert lingo(["jobs", "stop", sleeper, "--address", ray_head]) == 0
    assert "stop requested" in capsys.readouterr().out
    deadline = time.monotonic() + 60
    while _status(ray_head, sleeper, capsys) != "STOPPED" and time.monotonic() < deadline:
        time.sleep(1)
    assert _status(ray_head, sleeper, capsys) == "STOPPED"
