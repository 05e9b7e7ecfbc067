"""MLflow helpers: store location, experiment, one parent run per sweep, one child run per trial,
metric/param logging, and the model registry (`lingo-<task>` versions + the `champion` alias).

Everything goes through an explicit `MlflowClient(tracking_uri)`: trials run in many processes at
once, and the fluent API's global "active run" / default URI would silently cross them.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network here; never phone home

from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from lingo_core.run_folder import ADAPTER_DIR, RESULT_FILE  # noqa: E402
from lingo_core.selection import SELECTION  # noqa: E402
from lingo_core.typed import is_finite_number  # noqa: E402

CHAMPION = "champion"  # alias of the best version of a task's registered model
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI shows children under the parent
TRIAL_TAG = "lingo.trial_id"  # finds a trial's child run again when the trial restarts or resumes
SWEEP_TAG = "lingo.sweep"
MODEL_ARTIFACT = "model"  # a trial's pyfunc model (orchestrator/mlflow_model.py); registered versions point here
# A trial's artifacts are its run folder's tree (lingo_core/run_folder.py owns the names):
ADAPTER_ARTIFACT = ADAPTER_DIR  # the export folder as lingo_core wrote it
RESULT_ARTIFACT = RESULT_FILE  # TrainResult.to_dict() without predictions: rank pattern, budget (lingo report)
METHODS_TAG = "lingo.methods"  # parent run: the job's methods, in its order (reports list them so)
CHANCE_TAG = "lingo.at_chance"  # version tag: dev MCC no better than chance (kept from champion by default)
MAX_BATCH = 100  # MLflow's per-request limit for params and tags (and a safe chunk for metrics)
PARAM_MAX = 6000  # MLflow's param value length limit
T = TypeVar("T")


# --------------------------------------------------------------------------------------- store


def missing_sqlite_store(tracking_uri: str) -> Path | None:
    """The sqlite file of a sqlite:/// URI when it does not exist, else None: MLflow would create an empty
    store there, so a lookup (lingo report, lingo predict) must refuse it instead of writing one."""
    db = Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None
    return db if db is not None and not db.is_file() else None


def default_artifact_location(output_dir: str | Path) -> str:
    return (Path(output_dir).resolve() / "mlruns").as_uri()


def is_local_store(tracking_uri: str) -> bool:
    return tracking_uri.startswith("sqlite:") or tracking_uri.startswith("file:") or "://" not in tracking_uri


def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def retry(fn: Callable[[], T], attempts: int = 5, delay_s: float = 0.5) -> T:
    """sqlite allows one writer at a time: concurrent trials can get 'database is locked'; retry those."""
    for i in range(attempts):
        try:
            return fn()
        except MlflowException as e:
            if "locked" not in str(e).lower() or i == attempts - 1:
                raise
            time.sleep(delay_s * (i + 1))
    raise AssertionError("unreachable")


def ensure_experiment(c: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created on first use. Called by the driver before any trial starts, so
    trials never race to create it."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by another sweep of the same job
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --------------------------------------------------------------------------------------- runs


def start_parent_run(c: MlflowClient, experiment_id: str, sweep: str, tags: Mapping[str, str] = ()) -> str:
    run = c.create_run(experiment_id, run_name=sweep, tags={SWEEP_TAG: sweep, **dict(tags)})
    return run.info.run_id


def find_or_create_child(c: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str,
                         run_name: str, tags: Mapping[str, str] = ()) -> str:
    """A trial's child run: the existing one when the trial restarts (worker failure, `--resume`),
    so its metric history continues instead of splitting over several runs."""
    found = c.search_runs([experiment_id],
                          filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
                          max_results=1)
    if found:
        c.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = retry(lambda: c.create_run(experiment_id, run_name=run_name,
                                     tags={PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id, **dict(tags)}))
    return run.info.run_id


def child_runs(c: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    return c.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                         max_results=10_000)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def log_params(c: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Flattened params; values as text. Re-logging an equal value is fine (resumed trials)."""
    items = [Param(k, str(v)[:PARAM_MAX]) for k, v in flatten(params).items()]
    for i in range(0, len(items), MAX_BATCH):
        retry(lambda chunk=items[i:i + MAX_BATCH]: c.log_batch(run_id, params=chunk))


def scalar_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric, finite entries (MLflow rejects None; lists such as confusion matrices are artifacts)."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if is_finite_number(v)}


def log_metrics(c: MlflowClient, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
    now = int(time.time() * 1000)
    items = [Metric(k, v, now, int(step)) for k, v in scalar_metrics(metrics).items()]
    for i in range(0, len(items), MAX_BATCH):
        retry(lambda chunk=items[i:i + MAX_BATCH]: c.log_batch(run_id, metrics=chunk))


def log_artifacts(c: MlflowClient, run_id: str, paths: Iterable[tuple[str | Path, str | None]]) -> None:
    """(local file or folder, artifact sub-path) pairs."""
    for local, sub in paths:
        local = Path(local)
        if local.is_dir():
            c.log_artifacts(run_id, str(local), sub)
        elif local.is_file():
            c.log_artifact(run_id, str(local), sub)


# --------------------------------------------------------------------------------------- registry


def model_name(task: str) -> str:
    """Registered model name of a task: "tf/0" -> "lingo-tf_0" (registry names cannot hold "/")."""
    return "lingo-" + re.sub(r"[^A-Za-z0-9_.-]", "_", task)


@dataclass
class Registration:
    name: str
    version: str
    dev_mcc: float
    champion: bool  # the alias moved to this version
    previous_champion: str | None  # version that held the alias before (None: no champion yet)
    at_chance: bool = False  # dev MCC no better than chance: kept from the alias (allow_chance=False)


def champion_version(c: MlflowClient, name: str):
    try:
        return c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no alias yet (or no model): there is no champion to beat
        return None


def has_pyfunc(c: MlflowClient, run_id: str) -> bool:
    """The run logged a pyfunc model (runs from before models were logged hold only `adapter/`)."""
    return any(f.path == f"{MODEL_ARTIFACT}/MLmodel" for f in c.list_artifacts(run_id, MODEL_ARTIFACT))


def register_best(c: MlflowClient, task: str, run_id: str, dev_mcc: float, *, artifact_path: str | None = None,
                  tags: Mapping[str, Any] = (), allow_chance: bool = False) -> Registration:
    """Register the run's MLflow model (``artifact_path`` None: `model/` when the run logged one, else the
    bare `adapter/` folder of older runs) as a new version of `lingo-<task>`; move `champion` to it only
    if its dev MCC beats the current champion's under SELECTION (ties keep the incumbent: no churn
    without evidence) and, unless ``allow_chance``, beats chance: a one-class predictor (MCC 0) is
    recorded as a version but is no model to serve."""
    name = model_name(task)
    try:
        c.create_registered_model(name, description=f"Lingo adapters for GUE task {task}")
    except MlflowException as e:
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
    if artifact_path is None:
        artifact_path = MODEL_ARTIFACT if has_pyfunc(c, run_id) else ADAPTER_ARTIFACT
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    at_chance = not SELECTION.beats_chance(float(dev_mcc))
    all_tags = {"task": task, SELECTION.dev_key: repr(float(dev_mcc)), **{k: str(v) for k, v in dict(tags).items()}}
    if at_chance:  # says in the registry UI why this version never became champion
        all_tags[CHANCE_TAG] = "true"
    mv = retry(lambda: c.create_model_version(name, source=source, run_id=run_id, tags=all_tags))
    current = champion_version(c, name)
    current_mcc = version_dev_mcc(c, current) if current is not None else SELECTION.worst
    moved = SELECTION.better(float(dev_mcc), current_mcc) and (allow_chance or not at_chance)
    if moved:
        c.set_registered_model_alias(name, CHAMPION, mv.version)
    return Registration(name, str(mv.version), float(dev_mcc), moved,
                        None if current is None else str(current.version), at_chance)


def version_dev_mcc(c: MlflowClient, mv) -> float:
    """The champion's dev MCC: its version tag, else the best_dev_mcc metric of its run."""
    if SELECTION.dev_key in (mv.tags or {}):
        return float(mv.tags[SELECTION.dev_key])
    if mv.run_id:
        m = c.get_run(mv.run_id).data.metrics
        if SELECTION.best_key in m:
            return float(m[SELECTION.best_key])
    return SELECTION.worst
