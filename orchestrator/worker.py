"""Ray Train worker: the per-worker function that runs `lingo_core.train.train` inside a Ray Train worker
group (`train_worker_fn`), the hooks that report its dev evaluations and checkpoints to Ray Train
(`RayTrainHooks`), and rank 0's tracking of the run through the trial's journal. The backend it trains
with is `orchestrator.deepspeed_backend`'s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from lingo_core.method_names import RANK_METHODS
from lingo_core.run_folder import WrittenRun, write_result
from lingo_core.selection import SELECTION
from lingo_core.startup import StartupClock
from orchestrator.deepspeed_backend import DeepSpeedBackend, build_backend

if TYPE_CHECKING:
    from orchestrator.journal import RunJournal


# Fault injection for the resume test: when set to a path, rank 0 SIGKILLs its own process at the first
# log step after the first checkpoint it reports, once (the marker file makes the retry run through):
# mid-epoch, with metrics logged after the checkpoint that the retry logs again.
KILL_ENV = "LINGO_FAULT_KILL_AFTER_CHECKPOINT"
# Fault injection for the failed-trial test: every attempt of a trial of this task raises at start-up,
# so the trial fails beyond its retries.
FAIL_TASK_ENV = "LINGO_FAULT_FAIL_TASK"
# How long a finishing worker tries to send what its journal still holds; the rest is the trial
# driver's to send (orchestrator/trial.py), so a tracking outage never holds a worker's resources.
WORKER_DRAIN_S = 10.0
MODEL_ERROR_TAG = "lingo.model_error"  # why a finished trial has no MLflow model (adapter/ only)


class RayTrainHooks:
    """TrainHooks for a Ray Train worker: dev evaluations (+ checkpoints) go to Ray Train -> Tune on every
    rank (report is a barrier); MLflow logging happens on rank 0 only."""

    def __init__(self, rank: int, local_rank: int, logger: RunJournal | None, rank_method: bool) -> None:
        self.rank, self.local_rank, self.logger, self.rank_method = rank, local_rank, logger, rank_method
        self.reports = 0
        self._kill_armed = False

    def on_log(self, step: int, logs: dict) -> None:
        # Metrics only, and only to MLflow: a Tune result without SELECTION's metric would fail Tune's metric
        # check and count as an ASHA rung, and each ray.train.report is a barrier over all workers.
        if self.logger is None:
            return
        m = {"loss": logs.get("loss"), "lr": logs.get("lr"), "epoch": logs.get("epoch")}
        if self.rank_method:
            m.update(rank_budget=logs.get("budget"), active_ranks=logs.get("active_ranks"),
                     regrown=logs.get("regrown"), dropped=logs.get("dropped"))
        self.logger.metrics(m, step)
        if self._kill_armed:
            Path(os.environ[KILL_ENV]).write_text(f"killed pid {os.getpid()} at step {step}\n")
            os.kill(os.getpid(), signal.SIGKILL)  # a real process death, not an exception

    def on_evaluate(self, event: Any) -> None:
        import ray.train

        metrics = {k: v for k, v in event.metrics.items() if v is not None}
        metrics.update(step=event.step, epoch=event.epoch, is_best=int(event.is_best))
        if self.logger is not None:
            self.logger.metrics({**metrics, "dev_is_best": int(event.is_best)}, event.step)
        checkpoint = None
        local = _local_checkpoint_dir(event.checkpoint_dir) if self.local_rank == 0 else None
        if local is not None:
            # One uploader per node: that node's folder holds the shards of all its ranks, and two
            # ranks copying the same files into the same destination would race.
            checkpoint = ray.train.Checkpoint.from_directory(str(local))
        ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=False)
        self.reports += 1
        if self.logger is not None and event.checkpoint_dir is not None:
            # The checkpoint of this step is reported: a restart resumes here or later, so the metrics up
            # to it are final and may reach MLflow (later ones wait: a restart may log them again).
            self.logger.commit(event.step)
        marker = os.environ.get(KILL_ENV)
        if marker and self.rank == 0 and event.checkpoint_dir is not None and not Path(marker).exists():
            # The Train controller collects reports by polling the workers (every 2 s by default); dying
            # before that poll would lose this checkpoint, so give it three polls first.
            time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
            self._kill_armed = True


def _local_checkpoint_dir(path: Path | None) -> Path | None:
    return Path(path) if path is not None and Path(path).is_dir() else None


def _open_journal(tracking_uri: str, run_id: str, trial_dir: Path, resumed_step: int) -> RunJournal:
    """Rank 0's writes to the trial's MLflow child run (created by the trial driver) go through the
    trial's journal (orchestrator/journal.py): fsynced locally, sent in the background, so a tracking
    outage never blocks or fails training."""
    from orchestrator import journal  # imports mlflow: only rank 0 of a tracked trial needs it

    j = journal.open_for_run(trial_dir, tracking_uri, run_id)
    j.restart(resumed_step)  # a previous attempt's unsent tail after the checkpoint is void
    return j.start()


def _log_model(logger: RunJournal, adapter_dir: Path) -> None:
    """The export as an MLflow Model under `model/`: saved here, then sent through the journal like
    every other artifact (an outage delays it, never loses it)."""
    import tempfile

    from orchestrator.mlflow_model import save_pyfunc
    from orchestrator.tracking import MODEL_ARTIFACT

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pyfunc(adapter_dir, Path(tmp) / MODEL_ARTIFACT)
        logger.artifacts([(folder, MODEL_ARTIFACT)])  # copied into the journal before tmp goes


def _log_result(logger: RunJournal, result: Any, written: WrittenRun) -> None:
    """Final metrics of the dev-selected weights, model identity, and what `write_result` wrote into the
    run folder, uploaded as it lies there (MLflow's tree is the run folder's: adapter/, result.json,
    test_predictions.json, plots/)."""
    logger.metrics({**{f"test_{k}": v for k, v in result.test_metrics.items()},
                    **{f"best_dev_{k}": v for k, v in result.dev_metrics.items()},
                    "best_step": result.best_step, "total_steps": result.total_steps,
                    "trainable_params": result.trainable_params, "trainable_fraction": result.trainable_fraction,
                    "num_test_evals": result.num_test_evals, "wall_time_s": result.wall_time_s,
                    **startup_metrics(result.startup_s)},
                   result.total_steps)
    logger.tags({f"base_model.{k}": v for k, v in result.model_identity.items() if v is not None})
    logger.artifacts(written.entries())
    if result.artifact_dir is not None:  # the same export as an MLflow Model: what the registry serves
        try:
            _log_model(logger, Path(result.artifact_dir))
        except Exception as e:
            # Packaging must not throw away a finished training (the retry would train it again): the
            # run keeps its adapter/, which the registry then registers instead (tracking.register_best).
            logger.tags({MODEL_ERROR_TAG: f"{type(e).__name__}: {e}"[:5000]})
            print(f"warning: the MLflow model of {written.root} was not saved ({type(e).__name__}: {e}); "
                  "the run keeps its adapter/ artifact")


def startup_metrics(startup_s: dict[str, float]) -> dict[str, float]:
    """TrainResult.startup_s as MLflow metrics: `startup/<phase>_s` (benchmarks/trial_start.py reads them)."""
    return {f"startup/{phase}_s": seconds for phase, seconds in startup_s.items()}


def train_worker_fn(config: dict) -> None:
    """Ray Train per-worker function. config (built by orchestrator/trial.py, which resolves both objects
    once): {"train": the trial's TrainConfig, "deepspeed": its DeepSpeedSettings, "mlflow": {"tracking_uri",
    "run_id"} | None, "trial": {...} (logged as params), "startup": the trial driver's StartupClock marks}."""
    clock = StartupClock(config.get("startup"))
    clock.mark("worker_start")
    import ray.train

    from lingo_core.train import TrainConfig, TrainHooks, train
    from lingo_core.train.checkpoint import resume_point

    clock.mark("imports")
    cfg: TrainConfig = config["train"]
    ctx = ray.train.get_context()
    rank, local_rank = ctx.get_world_rank(), ctx.get_local_rank()
    trial = config.get("trial", {})
    if os.environ.get(FAIL_TASK_ENV) and os.environ[FAIL_TASK_ENV] == trial.get("task"):
        raise RuntimeError(f"{FAIL_TASK_ENV}={trial['task']}: injected start-up failure")
    backend = build_backend(cfg, config["deepspeed"])
    clock.mark("backend_built")  # DeepSpeed: its import and the process group (init_distributed)
    ml = config.get("mlflow") or None

    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as resume_dir:
        # Picked once (manifest verified, a damaged newest skipped for its intact sibling) and handed to
        # train() as picked: the journal's restart point and the logged resumed_from_step name the
        # checkpoint really restored.
        resume = resume_point(resume_dir) if resume_dir is not None else None
        resumed_step = resume.step if resume is not None else 0
        logger = (_open_journal(ml["tracking_uri"], ml["run_id"], Path(cfg.output_dir), resumed_step)
                  if ml and rank == 0 else None)
        hooks = RayTrainHooks(rank, local_rank, logger, cfg.adapter.method in RANK_METHODS)
        if logger is not None:
            logger.params({**trial, "train": cfg.to_dict(), "world_size": backend.world_size,
                           "deepspeed": {"zero_stage": backend.settings.zero_stage}
                           if isinstance(backend, DeepSpeedBackend) else {"enabled": False}})
            if resume is not None:
                logger.metrics({"resumed_from_step": resumed_step}, resumed_step)
                logger.tags({"lingo.resumed_from_step": resumed_step})
        try:
            result = train(cfg, backend, TrainHooks(on_log=hooks.on_log, on_evaluate=hooks.on_evaluate),
                           resume_from=resume, clock=clock)
        except BaseException:
            if logger is not None:
                logger.tags({"lingo.error_rank0": "train() raised; see the Ray trial log"})
            raise
    final = {SELECTION.dev_key: result.dev_metrics.get(SELECTION.metric), "test_mcc": result.test_metrics.get("mcc"),
             "best_step": result.best_step, "step": result.total_steps, "resumed_from_step": resumed_step,
             "final": 1}
    if rank == 0:  # the run folder is complete with or without tracking; the logger uploads what it holds
        written = write_result(result, cfg.output_dir)
        if logger is not None:
            _log_result(logger, result, written)
            logger.status("FINISHED")
            logger.drain(WORKER_DRAIN_S)
    # Last result of the trial: the dev-selected dev MCC and its test MCC (what the sweep summarises).
    ray.train.report({k: v for k, v in final.items() if v is not None})


class _GroupTaskHooks:
    """TrainHooks of one task in a group trial: its logs and dev evaluations go to its own MLflow run only.
    Nothing is reported to Ray Train per evaluation (a group has no checkpoint to report, and Tune would
    read one task's dev metric as the trial's); the trial's one report is the group's final mean."""

    def __init__(self, logger: RunJournal | None, fail: bool) -> None:
        self.logger, self.fail = logger, fail

    def on_log(self, step: int, logs: dict) -> None:
        if self.fail:  # FAIL_TASK_ENV: this task of the group fails at its first log, the others train on
            raise RuntimeError(f"{FAIL_TASK_ENV}: injected failure of one task in a group trial")
        if self.logger is not None:
            self.logger.metrics({"loss": logs.get("loss"), "lr": logs.get("lr"), "epoch": logs.get("epoch")}, step)

    def on_evaluate(self, event: Any) -> None:
        if self.logger is not None:
            metrics = {k: v for k, v in event.metrics.items() if v is not None}
            self.logger.metrics({**metrics, "step": event.step, "epoch": event.epoch,
                                 "dev_is_best": int(event.is_best)}, event.step)


def train_group_worker_fn(config: dict) -> None:
    """Ray Train per-worker function of a group trial (resources.tasks_per_trial > 1): the tasks' LoRA
    adapters trained together by `lingo_core.train.group.train_group` in this one plain-PyTorch worker.
    config: {"group": [train_worker_fn's config per task]}. Each task logs to, and finishes or fails,
    its own MLflow run; the trial fails only when every task failed."""
    clock = StartupClock(config["group"][0].get("startup"))
    clock.mark("worker_start")
    import ray.train

    from lingo_core.train import TrainHooks
    from lingo_core.train.group import train_group

    clock.mark("imports")
    members = config["group"]
    loggers, hooks = [], []
    for m in members:
        cfg, ml = m["train"], m.get("mlflow") or None
        # a group writes no checkpoint: an attempt always starts at step 0 and voids an earlier one's tail
        logger = _open_journal(ml["tracking_uri"], ml["run_id"], Path(cfg.output_dir), 0) if ml else None
        if logger is not None:
            logger.params({**m["trial"], "train": cfg.to_dict(), "world_size": 1, "deepspeed": {"enabled": False},
                           "packed_tasks": ",".join(x["trial"]["task"] for x in members)})
        h = _GroupTaskHooks(logger, os.environ.get(FAIL_TASK_ENV) == m["trial"]["task"])
        loggers.append(logger)
        hooks.append(TrainHooks(on_log=h.on_log, on_evaluate=h.on_evaluate))
    results = train_group([m["train"] for m in members], hooks)
    done = []
    for m, logger, result in zip(members, loggers, results, strict=True):
        if isinstance(result, BaseException):
            print(f"group trial: {m['trial']['task']} failed ({type(result).__name__}: {result}); the others go on")
            if logger is not None:
                logger.tags({"lingo.error": f"{type(result).__name__}: {result}"[:5000]})
                logger.status("FAILED")
                logger.drain(WORKER_DRAIN_S)
            continue
        done.append(result)
        written = write_result(result, m["train"].output_dir)
        if logger is not None:
            logger.commit()  # the whole run is final: no attempt will log these steps again
            _log_result(logger, result, written)
            logger.status("FINISHED")
            logger.drain(WORKER_DRAIN_S)
    if not done:
        raise RuntimeError(f"every task of the group failed: {'; '.join(map(str, results))}"[:5000])
    # The trial's one result: the mean over its finished tasks (FIFO only: nothing ranks it against others)
    ray.train.report({SELECTION.dev_key: fmean(r.dev_metrics.get(SELECTION.metric, 0.0) for r in done),
                      "test_mcc": fmean(r.test_metrics.get("mcc", 0.0) for r in done),
                      "step": max(r.total_steps for r in done), "tasks_finished": len(done), "final": 1})
