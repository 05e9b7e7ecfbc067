"""Ray Train worker: a DeepSpeed ZeRO implementation of `lingo_core.train.TrainBackend`, and the
per-worker function that runs `lingo_core.train.train` inside a Ray Train worker group.

The backend keeps the lingo_core loop unchanged: the trainer calls backward/is_boundary/step per
micro-batch and the rank controller reads full gradients and writes parameters through it. DeepSpeed
owns the optimizer step, the LR schedule, gradient accumulation and clipping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lingo_core.method_names import RANK_METHODS
from lingo_core.run_folder import WrittenRun, write_result
from lingo_core.selection import SELECTION
from lingo_core.startup import StartupClock
from lingo_core.train.backend import TorchBackend, linear_warmup_decay
from lingo_core.tuners.ars.shards import Shard, ShardAccess, WholeParams
from orchestrator.execution_spec import DeepSpeedSpec

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


@dataclass
class DeepSpeedSettings(DeepSpeedSpec):
    """One trial's DeepSpeed settings: the job's `deepspeed` block, whose fields, defaults and checks
    DeepSpeedSpec declares once, plus the three numbers the trial's TrainConfig decides.
    `DeepSpeedBackend.ds_config` turns them into DeepSpeed's config dict."""

    micro_batch_size: int = 8  # per worker; must equal TrainConfig.batch_size (the trainer's micro-batch)
    grad_accum: int = 1  # must equal TrainConfig.grad_accum: DeepSpeed decides the optimizer boundaries
    max_grad_norm: float | None = 1.0  # TrainConfig's clip, so results compare across backends

    @classmethod
    def for_train(cls, cfg: Any, job_deepspeed: DeepSpeedSpec | None = None) -> DeepSpeedSettings:
        """Settings of one trial: the job's `deepspeed` block + the TrainConfig's batch/accum/clip."""
        block = dataclasses.asdict(job_deepspeed) if job_deepspeed is not None else {}
        return cls(micro_batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                   max_grad_norm=cfg.max_grad_norm, **block)


class DeepSpeedBackend:
    """TrainBackend over a DeepSpeed engine. Inside Ray Train it reuses the worker group's process group;
    elsewhere it starts a 1-rank gloo group."""

    def __init__(self, settings: DeepSpeedSettings | None = None) -> None:
        import deepspeed
        import torch.distributed as dist

        self.settings = settings or DeepSpeedSettings()
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))  # set per worker by Ray Train
        self.device = _device()
        self.engine: Any = None
        self._params: list[nn.Parameter] = []
        self._names: dict[int, str] = {}

    # ---- set-up ------------------------------------------------------------------------------------------
    def ds_config(self) -> dict:
        s = self.settings
        zero: dict[str, Any] = {"stage": s.zero_stage}
        if s.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        if s.offload_param:
            zero["offload_param"] = {"device": "cpu"}
        cfg: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": s.micro_batch_size,
            "gradient_accumulation_steps": s.grad_accum,
            "gradient_clipping": float(s.max_grad_norm or 0.0),  # 0 disables clipping in DeepSpeed
            "zero_optimization": zero,
            # A plain torch AdamW (the same optimizer as TorchBackend; no fused op to build or match).
            "zero_allow_untested_optimizer": True,
            # With offload_optimizer the torch AdamW steps the CPU copy; DeepSpeedCPUAdam would need a
            # compiled op, and DeepSpeed refuses a client optimizer under offload unless told otherwise.
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9,  # the trainer logs; DeepSpeed's own step prints are noise
        }
        gpu_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        if s.bf16 is True or (s.bf16 == "auto" and gpu_bf16):
            cfg["bf16"] = {"enabled": True}
        return _merge(cfg, s.config)

    def prepare(self, model: nn.Module, params: list[nn.Parameter] | None = None, *, lr: float,
                weight_decay: float, warmup_steps: int, total_steps: int) -> nn.Module:
        import deepspeed

        model.to(self.device)
        self._params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("model has no trainable parameters; check the adapter method")
        ids = {id(p) for p in self._params}
        self._names = {id(p): n for n, p in model.named_parameters() if id(p) in ids}
        # As TorchBackend: no decay on biases / norm weights; foreach=False for grouping-independent numerics.
        decay = [p for p in self._params if p.ndim >= 2]
        no_decay = [p for p in self._params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=lr, foreach=False)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup_steps, total_steps))
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=self.ds_config(), dist_init_required=False)
        return self.engine

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # bf16 DeepSpeed casts the module itself; fp32 otherwise

    def gathered(self) -> contextlib.AbstractContextManager:
        """Whole parameters in the raw model (ZeRO-3); collective, so every rank enters it."""
        import deepspeed

        if self.settings.zero_stage == 3 and self.engine is not None:
            return deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()))
        return contextlib.nullcontext()

    # ---- the step ----------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # DeepSpeed divides by grad_accum itself: the loss goes in un-scaled

    def is_boundary(self) -> bool:
        return bool(self.engine.is_gradient_accumulation_boundary())

    def step(self) -> None:
        self.engine.step()

    def shard_access(self, params: list[nn.Parameter]) -> ShardAccess:
        """ZeRO-1/2: the slices of `params` this rank's optimizer partition owns (fp32 master values and
        reduced gradients, read in place: no collective); other setups: whole parameters."""
        if self.settings.zero_stage in (1, 2):
            return ZeroShards(params, self.engine.optimizer)
        if self.settings.zero_stage == 3:
            raise ValueError("ZeRO-3 shards adapter parameters per module; the rank controller needs ZeRO 0-2")
        return WholeParams(params)  # stage 0 without bf16: plain optimizer, .grad all-reduced by DeepSpeed

    def write_param_(self, p: nn.Parameter, value: torch.Tensor) -> None:
        """Write both copies: the module parameter (read by the next forward) and the fp32 master
        partition (copied back over the module parameter after every optimizer step)."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        value = value.detach()
        if hasattr(p, "ds_id"):  # ZeRO-3: the module param is a shard; gather, write, re-partition
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if self.rank == 0:
                    p.data.copy_(value.to(p.device, p.dtype))
        else:
            with torch.no_grad():
                p.data.copy_(value.to(p.device, p.dtype))
        safe_set_full_fp32_param(p, value.to(p.device, torch.float32))

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    # ---- state ---------------------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The fp32 master values (never the bf16 module copy: restoring those would round the master)."""
        from deepspeed.utils import safe_get_full_fp32_param

        out: dict[str, torch.Tensor] = {}
        for p in self._params:
            master = safe_get_full_fp32_param(p)  # collective: every rank walks the same list
            out[self._names[id(p)]] = (p.data if master is None else master).detach().float().cpu().clone()
        return out

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None:
        by_name = {self._names[id(p)]: p for p in self._params}
        missing = sorted(set(by_name) - set(sd))
        unexpected = sorted(set(sd) - set(by_name))
        if missing or unexpected:
            raise ValueError(f"trainable state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, p in by_name.items():
            self.write_param_(p, sd[name])

    def save_checkpoint(self, path: str | Path) -> None:
        """Every rank calls this and writes its own optimizer / master-weight shards. The tag must not be
        "latest", the name of DeepSpeed's pointer file in the same folder. Frozen base weights are not
        saved: they come from the base model."""
        step = int(self.engine.global_steps)
        self.engine.save_checkpoint(str(path), tag=f"step{step}", exclude_frozen_parameters=True)

    def load_checkpoint(self, path: str | Path) -> None:
        # Non-strict: the checkpoint holds only the trainable parameters (see save_checkpoint).
        load_path, _ = self.engine.load_checkpoint(str(path), load_module_strict=False)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}")


class ZeroShards:
    """ShardAccess under DeepSpeed ZeRO-1/2: the parameter slices in this rank's optimizer partition,
    through DeepSpeed's own low-precision -> fp32 fragment mapping (`param._hp_mapping`)."""

    def __init__(self, params: list[nn.Parameter], optimizer: Any) -> None:
        import torch.distributed as dist

        self._owned = [(i, p) for i, p in enumerate(params) if getattr(p, "_hp_mapping", None) is not None]
        self.shards = [Shard(i, p._hp_mapping.lp_fragment_address.start, p._hp_mapping.lp_fragment_address.numel)
                       for i, p in self._owned]
        self._group = getattr(optimizer, "dp_process_group", None)
        self._reduce = dist.is_initialized() and dist.get_world_size(self._group) > 1

    def values(self) -> list[torch.Tensor]:
        return [p._hp_mapping.get_hp_fragment() for _, p in self._owned]

    def grads(self) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for shard, (_, p) in zip(self.shards, self._owned, strict=True):
            grad = p._hp_mapping.get_lp_grad_fragment(p._index_in_param_group).reshape(-1)
            if grad.numel() != shard.numel:  # a rank keeping a whole-parameter buffer: take its slice
                grad = grad.narrow(0, shard.start, shard.numel)
            out.append(grad)
        return out

    def all_reduce_(self, tensor: torch.Tensor) -> None:
        if self._reduce:
            import torch.distributed as dist

            dist.all_reduce(tensor, group=self._group)


def _device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        import ray.train.torch

        return ray.train.torch.get_device()  # Ray sets CUDA_VISIBLE_DEVICES per worker
    except Exception:  # outside a Ray Train worker
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# =========================================================================================== Ray Train side


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


def build_backend(cfg: Any, settings: DeepSpeedSettings) -> DeepSpeedBackend | TorchBackend:
    """The trial's backend: DeepSpeed with the trial's settings, or with `enabled: false` the plain
    single-process TorchBackend on this worker's device (job validation allows that with one worker only)."""
    if not settings.enabled:
        return TorchBackend.for_config(cfg, _device())
    return DeepSpeedBackend(settings)


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
