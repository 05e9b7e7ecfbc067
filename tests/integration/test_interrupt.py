"""Driver interruption and a tracking outage, on one sweep of two single-worker trials (one at a time)
against a real `mlflow server` with MLflow's own HTTP retries off, so the project's journal is what
carries the records across the outage:
  1. `lingo tune` (a real subprocess) gets SIGINT, as from Ctrl-C, while the second trial trains: it
     exits 130 and leaves no process behind;
  2. `lingo tune --resume` finishes the second trial from its checkpoint without re-running the first;
     while it trains the server is stopped for 30 s and restarted: nothing is lost or duplicated and
     training kept going while tracking was down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from mlflow_server import MlflowServer  # same folder: pytest puts it on sys.path
from test_sweep import write_job

from orchestrator import journal, tracking

REPO = Path(__file__).resolve().parents[2]
OUTAGE_S = 30.0  # the outage length


def _records(job_out: Path) -> dict[str, list[dict]]:
    """trial folder -> its journal records."""
    out = {}
    # os.walk, not glob: checkpoint temp folders appear and vanish while the trial trains
    for folder, dirs, _ in os.walk(job_out / "trials"):
        dirs[:] = [d for d in dirs if d != "checkpoints"]
        log = Path(folder) / journal.JOURNAL_DIR / "journal.jsonl"
        if log.is_file():
            out[folder] = [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")]  # not torn
    return out


def _wait(what: str, cond, timeout_s: float, proc: subprocess.Popen, poll_s: float = 0.5):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        assert proc.poll() is None, f"lingo tune exited ({proc.returncode}) before {what}"
        time.sleep(poll_s)
    pytest.fail(f"timed out waiting for {what}")


def _lingo(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    # its own process group, so SIGINT reaches it and every process it started, as Ctrl-C in a terminal does
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "tune", *args], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.integration
def test_sigint_then_resume_through_a_tracking_outage(tmp_path: Path, tiny_model_dir: Path, gue_root: Path,
                                                     monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # this test's own client, too
    t0 = time.monotonic()
    server = MlflowServer(tmp_path / "server")
    procs: list[subprocess.Popen] = []
    try:
        server.start()
        job = write_job(tmp_path, "intr", tiny_model_dir, tasks=["prom_core_tata", "tf/0"], methods=["lora"],
                        workers=1, mlflow_uri=server.url, epochs=3)  # 8 steps per epoch, 24 in all
        args = [str(job), "max_concurrent_trials=1", "train.eval_every=4"]
        out = tmp_path / "intr"
        c = tracking.client(server.url)

        # ---- 1. Ctrl-C while the second trial trains (after its first checkpoint) ----
        first = _lingo(args, tmp_path / "tune1.log")
        procs.append(first)

        def second_trial_checkpointed():
            done = [k for r in _records(out).values() for k in r if k["kind"] == "status"]
            ckpt = [f for f, r in _records(out).items() if any(k["kind"] == "commit" for k in r)
                    and not any(k["kind"] == "status" for k in r)]
            return done and ckpt and ckpt[0]

        second = _wait("the second trial's first checkpoint", second_trial_checkpointed, 1500, first)
        children = _descendants(first.pid)
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(timeout=600) == 130, (tmp_path / "tune1.log").read_text()[-3000:]
        leftover = _alive(children)
        end = time.monotonic() + 30  # Ray's daemons end asynchronously after ray.shutdown()
        while leftover and time.monotonic() < end:
            time.sleep(0.5)
            leftover = _alive(leftover)
        assert not leftover, f"processes left behind by the interrupted sweep: {leftover}"
        print(f"\n[timing] interrupted sweep done at {time.monotonic() - t0:.0f} s")

        kids = {k.data.tags["task"]: k for k in c.search_runs(
            [c.get_experiment_by_name("itest").experiment_id], "tags.`lingo.trial_id` != ''")}
        finished = [k for k in kids.values() if k.info.status == "FINISHED"]
        assert len(finished) == 1 and len(kids) == 2
        done_id = finished[0].info.run_id
        done_loss = len(c.get_metric_history(done_id, "loss"))
        before = {f: len(r) for f, r in _records(out).items()}
        assert not c.search_registered_models()  # an interrupted sweep registers nothing

        # ---- 2. --resume; the server goes away for 30 s while the second trial trains ----
        resumed = _lingo([*args, "--resume"], tmp_path / "tune2.log")
        procs.append(resumed)
        _wait("the resumed trial's first logged step",
              lambda: any(k["kind"] == "metrics" for k in _records(out)[second][before[second]:]), 1500, resumed,
              poll_s=0.2)
        down = time.time()
        server.stop()
        time.sleep(OUTAGE_S)
        restart_s = server.start()
        up = time.time()
        assert resumed.wait(timeout=1500) == 0, (tmp_path / "tune2.log").read_text()[-3000:]
        print(f"[timing] outage {up - down:.0f} s (server start-up {restart_s:.0f} s); "
              f"test total {time.monotonic() - t0:.0f} s")

        # the finished trial was not redone: its run and its journal are as they were
        assert len(_records(out)[str(Path(second))]) > before[second]
        others = [f for f in before if f != second]
        assert [len(_records(out)[f]) for f in others] == [before[f] for f in others]
        assert len(c.get_metric_history(done_id, "loss")) == done_loss
        assert c.get_run(done_id).data.metrics["num_test_evals"] == 1

        # the resumed trial: one run, FINISHED, every record there exactly once
        kids = {k.data.tags["task"]: k for k in c.search_runs(
            [c.get_experiment_by_name("itest").experiment_id], "tags.`lingo.trial_id` != ''")}
        assert {k.info.status for k in kids.values()} == {"FINISHED"}
        rec = _records(out)[second]
        rid = json.loads((Path(second) / journal.JOURNAL_DIR / "run.json").read_text())["run_id"]
        run = c.get_run(rid)
        assert int(run.data.tags["lingo.resumed_from_step"]) >= 4  # from its checkpoint, not from 0
        for key in ("loss", "lr"):
            assert Counter(m.step for m in c.get_metric_history(rid, key)) == {s: 1 for s in range(1, 25)}, key
        assert Counter(m.step for m in c.get_metric_history(rid, "dev_mcc")) == {s: 1 for s in range(4, 25, 4)}
        assert run.data.params["train.lr"] == "0.005" and run.data.metrics["num_test_evals"] == 1
        arts = {a.path for a in c.list_artifacts(rid, "adapter")} | {a.path for a in c.list_artifacts(rid, "plots")}
        assert {"adapter/lingo.json", "adapter/head.safetensors", "plots/confusion_matrix.png"} <= arts
        assert {a.path for a in c.list_artifacts(rid)} >= {"result.json"}
        for folder in _records(out):  # every journal fully sent, nothing set aside as rejected
            j = journal.RunJournal(Path(folder) / journal.JOURNAL_DIR, server.url, "-")
            assert j.pending() == 0 and not (Path(folder) / journal.JOURNAL_DIR / "rejected.jsonl").exists()
        # training went on while the server was down: steps were logged (locally) inside the outage
        during = [r["step"] for r in rec if r["kind"] == "metrics" and down * 1000 < r["ts"] < up * 1000]
        assert during, "no training step was logged while tracking was down"
        # both tasks registered once, by the resumed sweep
        for task in ("prom_core_tata", "tf/0"):
            assert len(c.search_model_versions(f"name='{tracking.model_name(task)}'")) == 1
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        server.stop()
