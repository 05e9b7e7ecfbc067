"""Fault tolerance in one sweep of two concurrent trials (2 DeepSpeed workers each):
  * prom_core_tata: rank 0 SIGKILLs its own process mid-epoch, one log step after its first checkpoint;
    Ray Train restarts the worker group, the trial resumes from that checkpoint and completes, and its
    MLflow run holds one continuous history (each step once, nothing stale from the killed attempt);
  * tf/0: every attempt raises at start-up, so the trial fails beyond its retries (max_failures 1): it
    is FAILED in MLflow and in the summary, and the other task still finishes and registers."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from test_sweep import write_job  # same folder: pytest puts it on sys.path (rootdir-relative, no package)

from orchestrator import tracking
from orchestrator.ray_utils import ray_daemon_pids, wait_gone
from orchestrator.worker import FAIL_TASK_ENV, KILL_ENV


@pytest.mark.integration
def test_killed_worker_resumes_from_checkpoint(tmp_path: Path, tiny_model_dir: Path, gue_root: Path,
                                               monkeypatch) -> None:
    from orchestrator.sweep import run_sweep
    from orchestrator.validate import load_job

    marker = tmp_path / "killed.txt"
    monkeypatch.setenv(KILL_ENV, str(marker))  # forwarded to the Ray workers by the sweep's runtime env
    monkeypatch.setenv(FAIL_TASK_ENV, "tf/0")
    t0 = time.perf_counter()
    job = load_job(write_job(tmp_path, "resume", tiny_model_dir, tasks=["prom_core_tata", "tf/0"], methods=["ars"]),
                   ["max_failures=1"])
    res = run_sweep(job)
    print(f"\n[timing] resume test sweep: {time.perf_counter() - t0:.0f} s")
    assert not wait_gone(ray_daemon_pids())

    assert marker.is_file(), "the fault was never injected"
    assert "at step 3" in marker.read_text()  # mid-epoch 0 (4 steps per epoch), after the step-2 checkpoint
    assert res.errors == 1  # tf/0
    c = tracking.client(res.tracking_uri)
    kids = {k.data.tags["task"]: k for k in tracking.child_runs(c, res.experiment_id, res.parent_run_id)}
    kid, failed = kids["prom_core_tata"], kids["tf/0"]
    assert kid.info.status == "FINISHED"
    rid = kid.info.run_id
    resumed = c.get_metric_history(rid, "resumed_from_step")
    assert [m.value for m in resumed] == [2.0]  # restarted once, from the step-2 checkpoint, not from 0
    assert kid.data.tags["lingo.resumed_from_step"] == "2"
    # One continuous history: every logged step exactly once. The killed attempt logged step 3 before
    # dying; that record was never sent (no checkpoint covered it) and the retry's step 3 replaced it.
    for key in ("loss", "lr", "rank_budget", "active_ranks", "dev_mcc", "dev_is_best"):
        steps = Counter(m.step for m in c.get_metric_history(rid, key))
        assert all(n == 1 for n in steps.values()), (key, steps)
        want = set(range(1, 9)) if key in ("loss", "lr", "rank_budget", "active_ranks") else {2, 4, 6, 8}
        assert set(steps) == want, (key, sorted(steps))
    assert kid.data.metrics["num_test_evals"] == 1 and "test_mcc" in kid.data.metrics
    # the rank budget continues from the restored sampler state instead of restarting at init_r
    budget = {m.step: m.value for m in c.get_metric_history(rid, "rank_budget")}
    assert max(budget) == 8 and budget[8] <= budget[min(budget)]
    # Ray Train recorded the failure and the restart; one Train run per trial
    train_runs = list((Path(job.output_dir) / "ray" / "resume-train").glob("train-*"))
    assert len(train_runs) == 2

    # the trial that failed beyond its retries: FAILED with the error, listed in the summary, not registered
    assert failed.info.status == "FAILED"
    assert "injected start-up failure" in failed.data.tags["lingo.error"]
    summary = res.summary["md"].read_text()
    assert "| tf/0 | ars | 0 | FAILED |" in summary and "| prom_core_tata |" in summary
    assert set(res.registrations) == {"prom_core_tata"}
    assert c.get_model_version_by_alias(tracking.model_name("prom_core_tata"), tracking.CHAMPION).run_id == rid
    assert c.get_run(res.parent_run_id).info.status == "FAILED"  # a sweep with a failed trial says so
