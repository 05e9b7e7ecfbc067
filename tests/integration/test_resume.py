"""Fault tolerance: rank 0 of a 2-worker DeepSpeed trial SIGKILLs its own process right after its first
checkpoint; Ray Train restarts the worker group, the trial resumes from that checkpoint and completes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_sweep import write_job  # same folder: pytest puts it on sys.path (rootdir-relative, no package)

from orchestrator import tracking
from orchestrator.ray_utils import ray_daemon_pids, wait_gone
from orchestrator.worker import KILL_ENV


@pytest.mark.integration
def test_killed_worker_resumes_from_checkpoint(tmp_path: Path, tiny_model_dir: Path, gue_root: Path,
                                               monkeypatch) -> None:
    from orchestrator.jobspec import load_job
    from orchestrator.sweep import run_sweep

    marker = tmp_path / "killed.txt"
    monkeypatch.setenv(KILL_ENV, str(marker))  # forwarded to the Ray workers by the sweep's runtime env
    t0 = time.perf_counter()
    job = load_job(write_job(tmp_path, "resume", tiny_model_dir, tasks=["prom_core_tata"], methods=["ars"]))
    res = run_sweep(job)
    print(f"\n[timing] resume test sweep: {time.perf_counter() - t0:.0f} s")
    assert not wait_gone(ray_daemon_pids())

    assert marker.is_file(), "the fault was never injected"
    killed = marker.read_text()
    assert "after step 2" in killed  # the first checkpoint: eval_every 2
    assert res.errors == 0
    c = tracking.client(res.tracking_uri)
    (kid,) = tracking.child_runs(c, res.experiment_id, res.parent_run_id)
    assert kid.info.status == "FINISHED"
    resumed = c.get_metric_history(kid.info.run_id, "resumed_from_step")
    assert [m.value for m in resumed] == [2.0]  # restarted once, from the step-2 checkpoint, not from 0
    assert kid.data.tags["lingo.resumed_from_step"] == "2"
    # the resumed run went on to the end: every evaluation step appears, and the test ran once
    assert {m.step for m in c.get_metric_history(kid.info.run_id, "dev_mcc")} == {2, 4, 6, 8}
    assert kid.data.metrics["num_test_evals"] == 1 and "test_mcc" in kid.data.metrics
    # the rank budget continues from the restored sampler state instead of restarting at init_r
    budget = {m.step: m.value for m in c.get_metric_history(kid.info.run_id, "rank_budget")}
    assert max(budget) == 8 and budget[8] <= budget[min(budget)]
    # Ray Train recorded the failure and the restart
    train_runs = list((Path(job.output_dir) / "ray" / "resume-train").glob("train-*"))
    assert len(train_runs) == 1
