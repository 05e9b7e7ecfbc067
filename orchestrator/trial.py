"""Tune trial function: a thin driver that opens the trial's MLflow child run and runs one Ray Train
`TorchTrainer` (Train V2 pattern: the trainer is built inside the Tune trial, and Train reports reach
Tune through `TuneReportCallback`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lingo_core.startup import StartupClock
from orchestrator import journal, tracking

# Worker-group restarts per trial (a killed worker, a raised error) come from the job's `max_failures`
# (jobspec.py); each restart resumes from the last reported checkpoint.
# Restarts of the Train controller itself; it is light and failures there are infrastructure hiccups.
CONTROLLER_FAILURE_LIMIT = 1
TRIAL_CPU = 0.1  # the driver only waits on the worker group; Ray rejects a 0-CPU Tune trial
# How long a trial driver waits for an unreachable tracking server, to create its run before training
# and to send what the workers' journal still holds after it. Training itself never waits for it.
TRACKING_WAIT_S = float(os.environ.get("LINGO_TRACKING_WAIT_S", "900"))


@dataclass
class SweepContext:
    """What every trial needs from the sweep driver (passed via tune.with_parameters)."""

    job: Any  # orchestrator.jobspec.JobSpec, output_dir already absolute
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    storage_path: str  # absolute (or URI): Ray Train run storage of every trial


def trial_config(job: Any, config: dict, trial_id: str) -> Any:
    """The trial's TrainConfig; its output folder gets the trial id (num_samples > 1 draws of one cell
    would otherwise share it)."""
    # torch (through search) only in a trial process: sweep.py, which `lingo report` reads, imports this file
    from orchestrator.search import materialize_trial

    cfg = materialize_trial(job, config)
    cfg.output_dir = str(Path(cfg.output_dir).resolve() / trial_id)
    return cfg


def worker_config(job: Any, config: dict, cfg: Any, trial_id: str, tracking_uri: str, run_id: str,
                  startup: dict[str, float] | None = None) -> dict:
    """What every Train worker of the trial gets (train_worker_fn's config): the resolved TrainConfig and
    DeepSpeedSettings themselves, which Ray pickles and each worker uses as they are (never rebuilt), and
    the driver's start-up marks, which the worker's StartupClock continues (startup/<phase>_s metrics)."""
    from orchestrator.deepspeed_backend import DeepSpeedSettings  # torch, for the reason in trial_config

    cell = config["cell"]
    return {"train": cfg, "deepspeed": DeepSpeedSettings.for_train(cfg, job.deepspeed),
            "mlflow": {"tracking_uri": tracking_uri, "run_id": run_id},
            "trial": {"trial_id": trial_id, "task": cell["task"], "method": cell["method"], "seed": cell["seed"],
                      "budget": cell.get("budget") or {}, "grid": cell.get("grid") or {},
                      "search": config.get("params") or {}},
            "startup": startup}


def run_trial(config: dict, ctx: SweepContext) -> None:
    # Ray and torch (through worker) only in a trial process, for the reason in trial_config
    clock = StartupClock()
    clock.mark("entry")  # before the imports: they are part of a trial's start-up too
    import ray.tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.search import member_cells  # torch, for the reason in trial_config
    from orchestrator.worker import train_group_worker_fn, train_worker_fn

    job = ctx.job
    trial_id = ray.tune.get_context().get_trial_id()
    members = member_cells(config["cell"])  # one cell, or a group's (resources.tasks_per_trial)
    grouped = len(members) > 1
    cfgs = [trial_config(job, {**config, "cell": m}, trial_id) for m in members]
    c = tracking.client(ctx.tracking_uri)
    run_ids = [journal.patient(lambda m=m: tracking.find_or_create_child(
        c, ctx.experiment_id, ctx.parent_run_id, f"{trial_id}/{m['task']}" if grouped else trial_id,
        run_name=f"{m['task']}/{m['method']}/seed{m['seed']}/{trial_id}",
        tags={"task": m["task"], "method": m["method"], "seed": str(m["seed"])}), TRACKING_WAIT_S)
        for m in members]  # one MLflow run per task: summary and registry read a group's tasks as any others
    clock.mark("driver_ready")  # Ray's imports, the TrainConfig and the MLflow child run: the driver's share
    res = job.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker > 0:
        per_worker["GPU"] = res.gpus_per_worker
    loop_configs = [worker_config(job, {**config, "cell": m}, cfg, trial_id, ctx.tracking_uri, run_id, clock.marks)
                    for m, cfg, run_id in zip(members, cfgs, run_ids, strict=True)]
    trainer = TorchTrainer(
        train_group_worker_fn if grouped else train_worker_fn,
        train_loop_config={"group": loop_configs} if grouped else loop_configs[0],
        scaling_config=ScalingConfig(num_workers=res.workers_per_trial, use_gpu=res.gpus_per_worker > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"train-{trial_id}",  # stable across `--resume`: Train V2 restores the run of this name
            storage_path=ctx.storage_path,
            failure_config=FailureConfig(max_failures=job.max_failures,
                                         controller_failure_limit=CONTROLLER_FAILURE_LIMIT),
            callbacks=[TuneReportCallback()],
        ),
    )
    failure: BaseException | None = None
    try:
        trainer.fit()
    except Exception as e:  # beyond the retries (a Ctrl-C / Tune stop is no failure: --resume continues it)
        failure = e
        raise
    finally:
        # The worker group is gone after fit(): this driver is now the journal's only writer (read back
        # only now: the workers wrote it). It records a failure beyond the retries and sends what the
        # workers could not (tracking down at their end); training is over, so waiting here is harmless.
        for cfg, run_id in zip(cfgs, run_ids, strict=True):
            j = journal.open_for_run(cfg.output_dir, ctx.tracking_uri, run_id)
            if failure is not None:
                j.tags({"lingo.error": f"{type(failure).__name__}: {failure}"[:5000]})
                j.status("FAILED")
            j.commit()  # no attempt is left to log these steps again
            if not j.drain(TRACKING_WAIT_S):
                print(f"tracking unreachable: {j.pending()} record(s) left in {j.folder} for the next replay")
