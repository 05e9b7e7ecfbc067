"""The job spec's execution blocks: how a sweep runs, not what it trains. ``scheduler`` (ASHA or FIFO
on the dev metric), ``resources`` (Ray Train workers per trial), ``deepspeed`` (ZeRO), ``mlflow``
(tracking store, registration) and ``ray`` (the cluster). ``orchestrator.jobspec.JobSpec`` holds one of
each; a block's ``__post_init__`` names its field, ``lingo_core.typed.build`` prefixes the block's key.
A leaf: it imports nothing of the orchestrator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lingo_core.selection import SELECTION
from lingo_core.typed import FieldError


@dataclass
class SchedulerSpec:
    type: str = "asha"
    """"asha" stops weak trials early on the dev metric; "fifo" runs every trial to the end."""
    metric: str = SELECTION.dev_key  # fixed: the trainer's best step, the summary and the champion use it too
    mode: str = SELECTION.mode  # fixed like metric: another value is refused rather than half-applied
    grace_period: int = 1  # evaluations a trial always gets; 1 keeps short CPU sweeps meaningful
    reduction_factor: int = 2  # halve the field per rung: gentle for few trials per cell
    max_t: int = 100  # ASHA's top rung, in evaluations (Ray's own default); trials end earlier anyway

    def __post_init__(self) -> None:
        if self.type not in ("asha", "fifo"):
            raise FieldError("type", f"expected 'asha' or 'fifo', got {self.type!r}")
        # Tune alone could follow another metric; the checkpoint, summary and registry could not
        for name, rule in (("metric", SELECTION.dev_key), ("mode", SELECTION.mode)):
            if getattr(self, name) != rule:
                raise FieldError(name, f"expected {rule!r}, got {getattr(self, name)!r}: trials, checkpoints "
                                 f"and champions are all selected by {SELECTION.dev_key} ({SELECTION.mode})")
        at_least(self, 1, "grace_period", "max_t")
        at_least(self, 2, "reduction_factor")
        if self.grace_period > self.max_t:
            raise FieldError("grace_period", f"{self.grace_period} exceeds max_t={self.max_t}")


@dataclass
class ResourcesSpec:
    workers_per_trial: int = 1  # data-parallel Ray Train workers; 1 = no gradient all-reduce
    cpus_per_worker: float = 1.0  # one core per worker: the tokenizer and loop are single-threaded
    gpus_per_worker: float = 0.0  # CPU by default; fractions (0.5) pack two small-model trials per GPU
    tasks_per_trial: int = 1  # 1: one task per trial, the default path (checkpoints, resume, ASHA)
    """lora trials that differ only in task are trained this many at a time in one trial: one process, one
    frozen base, one forward over a mixed batch (lingo_core.train.group), each task still with its own
    optimizer, schedule, dev selection, MLflow run and registered champion. Needs fifo scheduling and one
    plain-PyTorch worker per trial; a group has no checkpoints (a restarted group trial trains again)."""

    def __post_init__(self) -> None:
        at_least(self, 1, "workers_per_trial", "tasks_per_trial")
        if self.cpus_per_worker <= 0:
            raise FieldError("cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        at_least(self, 0, "gpus_per_worker")
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            # Ray only packs fractions below one GPU; 1.5 GPUs cannot be placed
            raise FieldError("gpus_per_worker", f"above 1 must be a whole number, got {self.gpus_per_worker}")
        if self.workers_per_trial > 1 and 0 < self.gpus_per_worker < 1:
            # Ray may pack two fractional workers of one trial onto one GPU, and NCCL refuses two ranks
            # on the same device: the trial would fail at its first all-reduce, after the sweep started
            raise FieldError("gpus_per_worker", f"{self.gpus_per_worker} with workers_per_trial="
                             f"{self.workers_per_trial}: multi-worker trials need whole GPUs per worker "
                             "(1 or more), or set workers_per_trial: 1 to pack trials by fractions")


@dataclass
class DeepSpeedSpec:
    """The job's `deepspeed` block: the one declaration of these fields (deepspeed_backend.DeepSpeedSettings
    extends it with the trial's batch size, accumulation and clip)."""

    enabled: bool = True  # false: each trial trains in one plain PyTorch process (workers_per_trial 1 only);
    # with one worker ZeRO shards nothing, and the plain step skips DeepSpeed's per-parameter hooks
    zero_stage: int = 2  # shards optimizer state + grads; stage 3 (params too) only pays off for large LMs
    bf16: bool | str = "auto"  # "auto": on iff the worker has a GPU with bf16 (CPU bf16 matmuls are slow here)
    offload_optimizer: bool = False  # CPU offload trades speed for memory; adapters' states are tiny
    offload_param: bool = False  # stage-3 only; off because the frozen LM fits on one GPU
    config: dict = field(default_factory=dict)  # raw DeepSpeed entries merged last: an escape hatch

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise FieldError("zero_stage", f"expected 0, 1, 2 or 3, got {self.zero_stage}")
        if isinstance(self.bf16, str) and self.bf16 != "auto":
            raise FieldError("bf16", f"expected true, false or 'auto', got {self.bf16!r}")
        if self.offload_param and self.zero_stage != 3:
            raise FieldError("offload_param", f"needs zero_stage 3, got {self.zero_stage}")


def default_tracking_uri(output_dir: str | Path) -> str:
    """sqlite file in the sweep folder; four slashes = absolute path, so every process agrees."""
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


@dataclass
class MlflowSpec:
    tracking_uri: str | None = None  # None -> sqlite:///<output_dir>/mlflow.db: no server needed
    experiment: str | None = None  # None -> the job name, so sweeps of one job share an experiment
    register: bool = True  # register each task's best adapter as lingo-<task> (+ champion alias)
    allow_chance_champion: bool = False
    """A version whose dev MCC is <= 0 (no better than chance: e.g. it predicts one class) is registered
    but never made `champion`; true lets it take the alias (still only if it beats the incumbent)."""

    def __post_init__(self) -> None:
        # A secret in the URI would be logged as the parent run's `mlflow.tracking_uri` param, written into
        # job.json and shown by --dry-run; MLflow reads credentials from the environment instead.
        if self.tracking_uri and urlsplit(self.tracking_uri).username is not None:  # user:secret@ or token@
            raise FieldError("tracking_uri", "contains credentials (user:secret@ or token@ before the host); "
                             "expected a URI without credentials: set MLFLOW_TRACKING_TOKEN (or "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD) in the environment, never "
                             "in the job spec")


@dataclass
class RaySpec:
    address: str | None = None  # None -> start a local Ray; "auto" or ray://host:10001 joins a cluster
    num_cpus: int | None = None  # None -> all cores of the local machine (ignored on a cluster)
    num_gpus: int | None = None  # None -> all GPUs Ray detects (ignored on a cluster)
    storage_path: str | None = None  # None -> <output_dir>/ray; a shared FS / s3:// URI on a cluster

    def __post_init__(self) -> None:
        at_least(self, 0, "num_cpus", "num_gpus", optional=True)


def at_least(spec: Any, low: int, *names: str, optional: bool = False) -> None:
    """FieldError for the first of `spec`'s fields `names` below `low`; optional: None ("not set") passes."""
    for name in names:
        value = getattr(spec, name)
        if not (optional and value is None) and value < low:
            raise FieldError(name, f"must be >= {low}, got {value}")
