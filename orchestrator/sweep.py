"""A whole sweep: Ray (local or a cluster), one MLflow parent run, a Tune run over task x method x
hyperparameters x seed, then per task the dev-best adapter is registered (`lingo-<task>`, `champion`
alias only on improvement, and above chance unless the job allows it) and the summary table is written
and logged to the parent run."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lingo_core.data.digest import task_digest
from lingo_core.selection import SELECTION
from lingo_core.typed import is_finite_number
from orchestrator import journal, tracking
from orchestrator.env import worker_env
from orchestrator.jobspec import JobSpec, resolve_tasks
from orchestrator.summary import write_summary
from orchestrator.trial import TRACKING_WAIT_S, TRIAL_CPU, SweepContext, run_trial

# Ray and torch (also through orchestrator.search and orchestrator.mlflow_model) are imported inside the
# functions that run a sweep: `lingo report` imports this module for STATE_FILE and collect_trials only.

STATE_FILE = "sweep.json"  # parent run id of the sweep in its output folder: `--resume` continues that run


class SweepError(RuntimeError):
    """A sweep-level problem with a message for the user (e.g. nothing to resume)."""


@dataclass
class SweepResult:
    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    output_dir: Path
    trials: list[dict] = field(default_factory=list)  # task, method, seed, run_id, status, dev_mcc, test_mcc
    registrations: dict[str, tracking.Registration] = field(default_factory=dict)  # task -> registration
    summary: dict[str, Path] = field(default_factory=dict)  # md / parquet / png
    errors: int = 0  # trials that ended in an error
    interrupted: bool = False  # stopped by Ctrl-C: nothing registered; `lingo tune --resume` continues


def trial_capacity(job: JobSpec, cpus: float, gpus: float) -> int:
    """How many trials' worker groups fit at once. Tune only sees each trial driver's TRIAL_CPU, not the
    Train workers it will ask for; more concurrent trials than this leaves worker groups waiting until
    Ray Train's start-up timeout fails them."""
    r = job.resources
    fits = [_how_many(cpus, r.workers_per_trial * r.cpus_per_worker)]
    if r.gpus_per_worker > 0:
        fits.append(_how_many(gpus, r.workers_per_trial * r.gpus_per_worker))
    return max(1, min(fits))


RAY_RESOURCE_UNIT = 1e-4  # Ray keeps resource amounts as integer multiples of this (fixed point)


def _how_many(total: float, need: float) -> int:
    """How many `need`s fit in `total` as Ray counts them: in float arithmetic 1.0 // 0.1 is 9.0, but
    Ray schedules ten 0.1-GPU workers on one GPU."""
    return int(round(total / RAY_RESOURCE_UNIT)) // max(1, int(round(need / RAY_RESOURCE_UNIT)))


def _init_ray(job: JobSpec, address: str | None) -> tuple[bool, int]:
    """Start or join Ray. Returns (this call started/connected Ray, trial concurrency that fits)."""
    import ray  # heavy: see the note at the top

    started = not ray.is_initialized()
    # Inside a Ray Job (`lingo submit`) the job's runtime env already sets some of these variables for every
    # worker, and Ray refuses a driver that sets one of them again (it does not compare values): the job's win.
    runtime_env = driver_runtime_env(job)
    address = address or job.ray.address
    if started and address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    if not started or address:
        res = ray.cluster_resources()
        return started, trial_capacity(job, res.get("CPU", 0.0), res.get("GPU", 0.0))
    cpus = job.ray.num_cpus or os.cpu_count() or 1
    gpus = job.ray.num_gpus if job.ray.num_gpus is not None else _local_gpus()
    cap = min(trial_capacity(job, cpus, gpus), job.max_concurrent_trials or 10**9)
    # The trial drivers only wait on their worker groups: give them logical CPUs of their own on top of
    # the cores the workers use. The dashboard stays on (default): Train's PlacementGroupCleaner and Tune
    # free a stopped trial's resources through the state API that it serves.
    ray.init(num_cpus=cpus + math.ceil(cap * TRIAL_CPU), num_gpus=gpus, runtime_env=runtime_env)
    return started, cap


def driver_runtime_env(job: JobSpec) -> dict:
    """The runtime env this driver gives `ray.init`: the workers' environment (orchestrator/env.py), minus
    the variables an enclosing Ray Job's runtime env already sets (see _init_ray)."""
    taken = _job_env_keys()
    return {"env_vars": {k: v for k, v in worker_env(job.resources.gpus_per_worker > 0).items() if k not in taken}}


def _job_env_keys() -> set[str]:
    """Environment variable names the enclosing Ray Job's runtime env sets (none outside a Ray Job)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # the job config Ray injects into a job's driver
    if not raw:
        return set()
    try:
        return set((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return set()


def _local_gpus() -> int:
    import torch  # heavy: see the note at the top

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _tracking(job: JobSpec, resume: bool) -> tuple[str, str, str]:
    out = Path(job.output_dir)
    uri = job.tracking_uri
    c = tracking.client(uri)
    artifacts = tracking.default_artifact_location(out) if tracking.is_local_store(uri) else None
    exp = tracking.ensure_experiment(c, job.mlflow.experiment or job.name, artifacts)
    state = out / STATE_FILE
    if resume and state.is_file():
        parent = json.loads(state.read_text())["parent_run_id"]
        c.update_run(parent, status="RUNNING")
        return uri, exp, parent
    parent = tracking.start_parent_run(c, exp, job.name, tags={"lingo.tasks": ",".join(job.tasks),
                                                                tracking.METHODS_TAG: ",".join(job.methods)})
    tracking.log_params(c, parent, {k: v for k, v in job.to_dict().items() if k not in ("search", "budgets")})
    (out / "job.json").write_text(json.dumps(job.to_dict(), indent=1, default=str))
    tracking.log_artifacts(c, parent, [(out / "job.json", None)])
    state.write_text(json.dumps({"parent_run_id": parent, "experiment_id": exp, "tracking_uri": uri}))
    return uri, exp, parent


def _scheduler(job: JobSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # heavy: see the note at the top

    s = job.scheduler
    if s.type == "fifo":
        return FIFOScheduler()
    # time_attr = training_iteration: one Tune result per dev evaluation (the worker reports nothing else)
    return ASHAScheduler(time_attr="training_iteration", grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, max_t=s.max_t)


def _reporter():
    from ray.tune import CLIReporter  # heavy: see the note at the top

    return CLIReporter(
        parameter_columns={"cell/task": "task", "cell/method": "method", "cell/seed": "seed"},
        metric_columns={"training_iteration": "evals", "step": "step", SELECTION.dev_key: SELECTION.dev_key,
                        "test_mcc": "test_mcc"},
        max_report_frequency=30,  # a table every 30 s: readable on a console, still live
    )


def _tuner(job: JobSpec, ctx: SweepContext, resume: bool, concurrency: int):
    # heavy (Ray; torch through search): see the note at the top
    from ray import tune

    from orchestrator.search import build_param_space

    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": TRIAL_CPU})
    space = build_param_space(job, resolve_tasks(job))
    path = str(Path(job.storage_path) / job.name) if "://" not in job.storage_path else f"{job.storage_path}/{job.name}"
    if resume:
        if not tune.Tuner.can_restore(path):
            raise SweepError(f"nothing to resume at {path}; run without --resume first")
        return tune.Tuner.restore(path, trainable=trainable, param_space=space, resume_unfinished=True,
                                  resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=space,
        # job.scheduler.metric/mode were checked to equal SELECTION: one rule, read from its owner
        tune_config=tune.TuneConfig(metric=SELECTION.dev_key, mode=SELECTION.mode, scheduler=_scheduler(job),
                                    num_samples=job.num_samples, max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=job.name, storage_path=job.storage_path, progress_reporter=_reporter(),
                                  failure_config=tune.FailureConfig(max_failures=0)),  # Train retries workers
    )


def collect_trials(c, experiment_id: str, parent_run_id: str) -> list[dict]:
    """One dict per child run, from MLflow (the record that survives restarts and resumes)."""
    rows = []
    for r in tracking.child_runs(c, experiment_id, parent_run_id):
        m, t = r.data.metrics, r.data.tags
        rows.append({"task": t.get("task"), "method": t.get("method"), "seed": t.get("seed"),
                     "trial_id": t.get(tracking.TRIAL_TAG), "run_id": r.info.run_id, "status": r.info.status,
                     SELECTION.dev_key: m.get(SELECTION.best_key), "test_mcc": m.get("test_mcc"),
                     "base_model": {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("base_model.")}})
    return rows


def register(c, job: JobSpec, trials: list[dict]) -> dict[str, tracking.Registration]:
    """Per task: the finished trial best under SELECTION becomes a new version of lingo-<task>."""
    out: dict[str, tracking.Registration] = {}
    key = SELECTION.dev_key
    done = [t for t in trials
            if t["status"] == "FINISHED" and is_finite_number(t[key]) and is_finite_number(t["test_mcc"])]
    from orchestrator.mlflow_model import DATA_TAG, GIT_TAG, git_commit  # torch: see the note at the top

    specs = {spec.name: spec for spec in resolve_tasks(job)}
    commit = git_commit()
    for task in dict.fromkeys(t["task"] for t in done):
        best = SELECTION.best((t for t in done if t["task"] == task), lambda t: t[key])
        # what reproduces the version: the code, the exact data files, the base weights (base_model.sha256)
        tags = {"method": best["method"], "seed": best["seed"], "test_mcc": repr(best["test_mcc"]),
                "sweep": job.name, GIT_TAG: commit, **{f"base_model.{k}": v for k, v in best["base_model"].items()}}
        if task in specs:
            tags[DATA_TAG] = task_digest(specs[task])
        out[task] = tracking.register_best(c, task, best["run_id"], best[key], tags=tags,
                                           allow_chance=job.mlflow.allow_chance_champion)
    return out


def registration_line(reg: tracking.Registration) -> str:
    """What `lingo tune` prints per task: where the champion alias is now, and why."""
    head = f"registered {reg.name} v{reg.version} (dev MCC {reg.dev_mcc:.3f})"
    if reg.champion:
        return f"{head}: champion"
    stays = f"champion stays v{reg.previous_champion}" if reg.previous_champion else "no champion yet"
    if reg.at_chance:
        return (f"{head}: not champion, no better than chance (dev MCC <= {SELECTION.chance:g}; "
                f"mlflow.allow_chance_champion: true allows it); {stays}")
    return f"{head}: {stays}"


class _InterruptProbe:
    """Was fit() ended by Ctrl-C? Ray Tune's SIGINT handler saves the experiment state, ends fit() without
    an exception, and puts back the handler it found (this probe's); it is left in place otherwise. The
    ResultGrid's trial counts did not show the interruption in test_interrupt, this does."""

    def __init__(self) -> None:
        self.interrupted = False
        self._before = None

    def _handler(self, sig: int, frame: Any) -> None:  # reached only on a second Ctrl-C: abort as usual
        raise KeyboardInterrupt

    def __enter__(self) -> _InterruptProbe:
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            self._before = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._before is not None:
            self.interrupted = signal.getsignal(signal.SIGINT) == self._handler
            signal.signal(signal.SIGINT, self._before)


def run_sweep(job: JobSpec, resume: bool = False, address: str | None = None) -> SweepResult:
    import ray  # heavy: see the note at the top

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # use the CLIReporter table (task/method/dev_mcc)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    job.output_dir = str(Path(job.output_dir).resolve())  # workers run in other folders
    Path(job.output_dir).mkdir(parents=True, exist_ok=True)
    uri, exp, parent = _tracking(job, resume)
    c = tracking.client(uri)
    storage = job.storage_path
    ctx = SweepContext(job=job, tracking_uri=uri, experiment_id=exp, parent_run_id=parent,
                       storage_path=f"{storage}/{job.name}-train" if "://" in storage
                       else str(Path(storage) / f"{job.name}-train"))
    started, concurrency = _init_ray(job, address)
    if job.max_concurrent_trials and concurrency < job.max_concurrent_trials:
        print(f"max_concurrent_trials {job.max_concurrent_trials} -> {concurrency}: that many trials' workers fit")
    probe = _InterruptProbe()
    try:
        with probe:
            grid = _tuner(job, ctx, resume, min(concurrency, job.max_concurrent_trials or concurrency)).fit()
        errors = grid.num_errors
        interrupted = probe.interrupted or grid.num_terminated + grid.num_errors < len(grid)
    except BaseException:
        c.set_terminated(parent, "FAILED")
        raise
    finally:
        if started:
            ray.shutdown()
    # what trial drivers could not send (killed with the sweep, or tracking still down at their end)
    left = journal.replay_all(job.output_dir, uri, TRACKING_WAIT_S)
    if left:
        print(f"tracking: {left} record(s) still unsent; they stay in the trials' {journal.JOURNAL_DIR}/ "
              "folders and are sent by the next `lingo tune --resume`")
    trials = journal.patient(lambda: collect_trials(c, exp, parent), TRACKING_WAIT_S)
    for t in trials:  # stopped by ASHA or killed with the driver: the worker never closed the run
        if t["status"] == "RUNNING":
            c.set_terminated(t["run_id"], "KILLED")
            t["status"] = "KILLED"
    result = SweepResult(job.name, uri, exp, parent, Path(job.output_dir), trials, errors=errors,
                         interrupted=interrupted)
    if interrupted:
        # No registration or summary from a partial sweep: --resume would register its trials again.
        c.set_terminated(parent, "KILLED")
        print(f"interrupted: {len(grid) - grid.num_terminated - grid.num_errors} trial(s) unfinished; "
              f"continue with `lingo tune <job> --resume` (MLflow: {uri}, parent run {parent})")
        return result
    if job.mlflow.register:
        result.registrations = register(c, job, trials)
    rows = [t for t in trials if t["status"] == "FINISHED"]
    try:
        result.summary = write_summary(rows, job.output_dir,
                                       not_finished=[t for t in trials if t["status"] != "FINISHED"])
        tracking.log_artifacts(c, parent, [(p, "summary") for p in result.summary.values()])
    except ValueError as e:  # no finished trial: nothing to summarise
        print(f"no summary: {e}")
    for reg in result.registrations.values():
        print(registration_line(reg))
    tracking.log_metrics(c, parent, {"trials": len(trials), "trials_finished": len(rows), "trials_errored": errors})
    c.set_terminated(parent, "FINISHED" if errors == 0 else "FAILED")
    print(f"MLflow: {uri} (experiment {job.mlflow.experiment}, parent run {parent})")
    return result
