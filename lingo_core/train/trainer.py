"""The training loop: one task, one adapter method, any TrainBackend.

Dev selects the checkpoint (by ``lingo_core.selection.SELECTION``, the rule the sweep, the summary and
the registry use too); test is evaluated exactly once, on the dev-selected weights.
Determinism: data order comes from (seed, epoch), dropout from (seed, micro-batch index), so a run
resumed from a checkpoint continues bit-for-bit like an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lingo_core.run_folder import RunFolder
from lingo_core.selection import SELECTION
from lingo_core.startup import StartupClock
from lingo_core.train.backend import TorchBackend, TrainBackend, barrier, check_backend
from lingo_core.train.checkpoint import ResumePoint, load_checkpoint, save_checkpoint
from lingo_core.train.config import TrainConfig
from lingo_core.train.metrics import classification_metrics
from lingo_core.tuners import budget
from lingo_core.tuners.config import AdapterSettings

if TYPE_CHECKING:
    from lingo_core.data.task import TaskSpec
    from lingo_core.tuners.ars import RankController

SCALARS = ("mcc", "f1", "accuracy", "auroc", "loss")  # metrics forwarded to hooks as dev_<name>


@dataclass
class EvalEvent:
    step: int
    epoch: int
    metrics: dict[str, float | None]  # dev_mcc, dev_f1, dev_accuracy, dev_auroc, dev_loss
    is_best: bool
    checkpoint_dir: Path | None = None  # resumable checkpoint of this step (cfg.save_checkpoints)


@dataclass
class TrainHooks:
    on_log: Callable[[int, dict], None] | None = None
    on_evaluate: Callable[[EvalEvent], None] | None = None


@dataclass
class TrainResult:
    task: str
    method: str
    best_step: int
    dev_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    test_predictions: dict[str, list]  # labels, preds, probs (for a confusion matrix / ROC)
    label_names: list[str]
    budget_history: list[dict[str, int]]  # RankController.history() (ars/adalora), else []
    rank_pattern: dict[str, list[bool]] | None  # of the selected (best) weights
    trainable_params: int
    total_params: int
    trainable_fraction: float
    total_steps: int
    num_dev_evals: int
    num_test_evals: int
    artifact_dir: Path | None
    model_identity: dict[str, Any]
    wall_time_s: float
    config: dict[str, Any] = field(default_factory=dict)
    # StartupClock.phases() of the run: seconds to reach each start-up mark, up to the first optimizer step
    # (empty when train() was given no clock)
    startup_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["artifact_dir"] = str(self.artifact_dir) if self.artifact_dir else None
        return d


# ---- data ------------------------------------------------------------------------------------------------
def stratified_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified subset of size min(n, len(labels))."""
    labels = np.asarray(labels)
    if n is None or n >= labels.size:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * n
    take = np.floor(exact).astype(int)
    # largest remainder: hand out the leftover slots to the classes that lost most to rounding
    for i in np.argsort(-(exact - take))[: n - take.sum()]:
        take[i] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picked))


def epoch_batches(n: int, epoch: int, cfg: TrainConfig, rank: int, world: int) -> list[list[int]]:
    """This rank's micro-batches for `epoch`: seeded permutation, padded by wrap-around to a multiple of
    world (like DistributedSampler), strided shard, incomplete accumulation group dropped."""
    perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
    pad = (-n) % world
    perm = np.concatenate([perm, perm[:pad]])[rank::world]
    batches = [perm[i : i + cfg.batch_size].tolist() for i in range(0, perm.size, cfg.batch_size)]
    return batches[: cfg.steps_per_epoch(n, world) * cfg.grad_accum]


def data_loader(examples: list[dict], batches: list[list[int]], collate, cfg: TrainConfig):
    return torch.utils.data.DataLoader(
        examples, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers
    )


def prepare_data(cfg: TrainConfig):
    from lingo_core.data.loading import load_task
    from lingo_core.data.task import TaskRegistry

    spec = TaskRegistry.from_root(cfg.data_root).get(cfg.task)
    tables = load_task(spec)
    split_rows = tables["train"].num_rows  # before the subset: what the rank budget rule counts from
    for split, n, salt in (("train", cfg.max_train_samples, 0), ("dev", cfg.max_eval_samples, 1),
                           ("test", cfg.max_eval_samples, 2)):
        labels = tables[split].column("label").to_numpy()
        tables[split] = tables[split].take(stratified_subset(labels, n, cfg.seed + salt))
    return spec, tables, split_rows


def resolve_adapter(cfg: TrainConfig, spec: TaskSpec, split_rows: int | None = None) -> AdapterSettings:
    """The adapter settings a run of `cfg` on `spec` trains with: ranks left None (ars/adalora) filled by
    the one default budget rule, lingo_core.tuners.budget, on the rows it counts (the sweep records the
    same budget for the trial). `split_rows`: the loaded train split's size, to spare a second read."""
    return budget.resolve_adapter(cfg.adapter, spec, cfg.max_train_samples, split_rows)


# ---- evaluation ------------------------------------------------------------------------------------------
def evaluate(model: nn.Module, loader, backend: TrainBackend, desc: str) -> dict[str, np.ndarray | float]:
    """Full pass over `loader` on this rank (every rank evaluates everything: forward is collective
    under ZeRO-3, and dev/test are small)."""
    model.eval()
    labels, logits_all, loss_sum = [], [], 0.0
    with torch.no_grad(), _autocast(backend):
        for batch in tqdm(loader, desc=desc, leave=False, disable=backend.rank != 0):
            y = batch.pop("labels").to(backend.device)
            out = model(**{k: v.to(backend.device) for k, v in batch.items()})
            logits = out.logits.float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            labels.append(y.cpu())
            logits_all.append(logits.cpu())
    y = torch.cat(labels).numpy()
    probs = torch.softmax(torch.cat(logits_all), dim=-1).numpy()
    return {"labels": y, "preds": probs.argmax(-1), "probs": probs, "loss": loss_sum / max(1, y.size)}


def eval_metrics(ev: dict, num_labels: int, label_names) -> dict[str, Any]:
    m = classification_metrics(ev["labels"], ev["preds"], ev["probs"], num_labels, label_names)
    m["loss"] = float(ev["loss"])
    return m


def _autocast(backend) -> contextlib.AbstractContextManager:
    fn = getattr(backend, "autocast", None)
    return fn() if fn is not None else contextlib.nullcontext()


def _mark(clock: StartupClock | None, name: str, device: torch.device | None = None) -> None:
    if clock is not None:
        clock.mark(name, device)


# ---- the loop ------------------------------------------------------------------------------------------------
def micro_step(model: nn.Module, batch: dict[str, torch.Tensor], backend: TrainBackend,
               controller: RankController | None) -> tuple[torch.Tensor, bool]:
    """Forward, loss, backward and, at an accumulation boundary, the optimizer step of one micro-batch.

    Returns the detached task loss (on device: nothing is read back) and whether an optimizer step
    happened; after one the caller calls `controller.allocate(step)`. The model is called without labels
    so the trainer owns the loss: cross-entropy in fp32 plus the rank controller's regulariser."""
    labels = batch.pop("labels").to(backend.device, non_blocking=True)
    with _autocast(backend):
        logits = model(**{k: v.to(backend.device, non_blocking=True) for k, v in batch.items()}).logits
    task_loss = nn.functional.cross_entropy(logits.float(), labels)
    backend.backward(task_loss + controller.regularization() if controller is not None else task_loss)
    boundary = backend.is_boundary()
    if boundary and controller is not None:
        controller.capture_grads()  # between the last backward and the step: the step may free the grads
    backend.step()
    return task_loss.detach(), boundary


def train(
    cfg: TrainConfig,
    backend: TrainBackend | None = None,
    hooks: TrainHooks | None = None,
    resume_from: ResumePoint | str | Path | None = None,
    clock: StartupClock | None = None,
) -> TrainResult:
    """Train `cfg` on `backend` (plain PyTorch when None). `clock`: the caller's start-up marks, continued
    here with data, tokenized, model, backend_ready and first_step (lingo_core/startup.py)."""
    from lingo_core.model_identity import model_identity
    from lingo_core.model_ref import resolve_model
    from lingo_core.modeling import load_classifier, load_tokenizer
    from lingo_core.tokenization import TEMPLATE, LingoTokenizer, suggest_max_length
    from lingo_core.tuners.methods import build_model

    t0 = time.perf_counter()
    hooks = hooks or TrainHooks()
    backend = backend or TorchBackend.for_config(cfg)
    check_backend(backend, cfg)  # before any work: a hand-built backend may accumulate or clip otherwise
    rank, world = backend.rank, backend.world_size
    folder = RunFolder(Path(cfg.output_dir))  # the layout's one owner: lingo_core/run_folder.py
    spec, tables, split_rows = prepare_data(cfg)
    _mark(clock, "data")
    ref = resolve_model(cfg.model)
    if rank == 0:  # only once the task, its data and the model are known to exist: a bad name leaves nothing
        folder.root.mkdir(parents=True, exist_ok=True)
    max_length = cfg.max_length or suggest_max_length(spec.seq_len_bp, cfg.tokenization)
    tok = LingoTokenizer(load_tokenizer(ref), mode=cfg.tokenization, max_length=max_length)
    data = {s: tok.encode_table(t, spec.description) for s, t in tables.items()}
    _mark(clock, "tokenized")
    n_train = len(data["train"])
    total_steps = cfg.total_steps(n_train, world)
    spe = cfg.steps_per_epoch(n_train, world)
    settings = resolve_adapter(cfg, spec, split_rows)

    torch.manual_seed(cfg.seed)  # the classification head and adapter inits are random
    raw = load_classifier(ref, spec.num_labels)
    raw, controller = build_model(raw, settings, total_steps, cfg.seed)
    _mark(clock, "model")
    params = [p for p in raw.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in raw.parameters())
    model = backend.prepare(raw, params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            warmup_steps=cfg.warmup_steps(total_steps), total_steps=total_steps)
    if controller is not None:  # after prepare: the controller's state lives where the model now is
        controller.bind(backend.shard_access(controller.params))
    _mark(clock, "backend_ready", backend.device)  # synced: prepare's copies to the GPU are done

    size = cfg.eval_batch
    eval_loaders = {s: data_loader(data[s], [list(range(i, min(i + size, len(data[s])))) for i in range(0, len(data[s]), size)],
                                   tok.collate, cfg)
                    for s in ("dev", "test")}
    # best_mcc holds the SELECTION metric's best dev value (the name is kept: checkpoints store it so)
    step, best_step, best_mcc, best_state, best_dev = 0, 0, SELECTION.worst, None, {}
    n_dev_evals = 0
    if resume_from is not None:
        st, best_state = load_checkpoint(resume_from, backend, controller)
        step, best_step, best_mcc = st["step"], st["best_step"], st["best_mcc"]
        best_dev, n_dev_evals = st["best_dev_metrics"], st["num_dev_evals"]

    def dev_eval(epoch: int) -> None:
        nonlocal best_step, best_mcc, best_state, best_dev, n_dev_evals
        m = eval_metrics(evaluate(model, eval_loaders["dev"], backend, f"dev@{step}"), spec.num_labels,
                     spec.label_names)
        n_dev_evals += 1
        # ars/adalora: only weights under the final rank pattern are candidates, so the exported adapter
        # has exactly the target budget (a mid-pruning checkpoint would carry more ranks).
        selectable = controller is None or controller.final
        # strict: on ties the earlier (cheaper-to-reach) step wins
        is_best = selectable and SELECTION.better(m[SELECTION.metric], best_mcc)
        if is_best:
            best_step, best_mcc, best_dev, best_state = step, m[SELECTION.metric], m, backend.trainable_state()
        ckpt = None
        if cfg.save_checkpoints:
            state = {"step": step, "epoch": epoch, "best_step": best_step, "best_mcc": best_mcc,
                     "best_dev_metrics": best_dev, "num_dev_evals": n_dev_evals, "total_steps": total_steps,
                     "rng": {"seed": cfg.seed, "data_order": "default_rng([seed, epoch])",
                             "dropout": "manual_seed(seed * 1000003 + micro_batch_index)"},
                     "config": cfg.to_dict()}
            ckpt = save_checkpoint(folder.checkpoints, step, backend, controller, state, best_state)
        if hooks.on_evaluate is not None:
            dev = {f"dev_{k}": m[k] for k in SCALARS}
            hooks.on_evaluate(EvalEvent(step=step, epoch=epoch, metrics=dev, is_best=is_best, checkpoint_dir=ckpt))

    bar = tqdm(total=total_steps, initial=step, desc=f"train {spec.name} [{settings.method}]",
               disable=rank != 0, dynamic_ncols=True)
    zero = torch.zeros((), device=backend.device)  # running loss stays on device: no sync per micro-batch
    loss_sum, loss_n = zero.clone(), 0
    while step < total_steps:
        epoch, offset = divmod(step, spe)
        batches = epoch_batches(n_train, epoch, cfg, rank, world)
        first_micro = offset * cfg.grad_accum
        micro = epoch * spe * cfg.grad_accum + first_micro  # global micro-batch index (dropout seed)
        for batch in data_loader(data["train"], batches[first_micro:], tok.collate, cfg):
            model.train()
            torch.manual_seed(cfg.seed * 1_000_003 + micro)
            micro += 1
            task_loss, boundary = micro_step(model, batch, backend, controller)
            loss_sum += task_loss
            loss_n += 1
            if not boundary:
                continue
            step += 1
            bar.update(1)
            if clock is not None and not clock.has("first_step"):
                clock.mark("first_step", backend.device)  # synced: the step's GPU work, not its launch
            if controller is not None:
                controller.allocate(step)
            if cfg.logs_at(step, total_steps):  # the only host reads of the step
                logs = {"loss": float(loss_sum) / max(1, loss_n), "lr": backend.current_lr(), "epoch": epoch,
                        **(controller.stats() if controller is not None else {})}
                bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
                if hooks.on_log is not None:
                    hooks.on_log(step, logs)
                loss_sum, loss_n = zero.clone(), 0
            if cfg.evaluates_at(step, spe, total_steps):
                dev_eval(epoch)
            if step >= total_steps or step % spe == 0:  # the run's end, or the epoch's
                break
    bar.close()

    if best_state is not None:
        backend.load_trainable_state(best_state)
    test_ev = evaluate(model, eval_loaders["test"], backend, "test")
    n_test_evals = 1  # the only test pass of the run, on the dev-selected weights
    test_metrics = eval_metrics(test_ev, spec.num_labels, spec.label_names)
    identity = model_identity(ref)
    final_pattern = controller.rank_pattern() if controller is not None else None  # == the selected weights'
    # The controller's own record, its one owner (restored with it on resume, so it covers every step);
    # the trainer keeps no copy.
    budget_history = controller.history() if controller is not None else []
    artifact_dir = None
    with (getattr(backend, "gathered", None) or contextlib.nullcontext)():
        if rank == 0:
            from lingo_core.artifacts import save_adapter

            artifact_dir = save_adapter(
                raw, folder.adapter, task=spec, tokenizer_mode=cfg.tokenization, template=TEMPLATE,
                base_identity=identity, metrics={"dev": best_dev, "test": test_metrics},
                method=settings.method, rank_pattern=final_pattern, max_length=max_length)
    barrier()
    return TrainResult(
        task=spec.name, method=settings.method, best_step=best_step, dev_metrics=best_dev,
        test_metrics=test_metrics, label_names=list(spec.label_names),
        test_predictions={"labels": test_ev["labels"].tolist(), "preds": test_ev["preds"].tolist(),
                          "probs": test_ev["probs"].tolist()},
        budget_history=budget_history, rank_pattern=final_pattern, trainable_params=n_trainable,
        total_params=n_total, trainable_fraction=n_trainable / n_total, total_steps=total_steps,
        num_dev_evals=n_dev_evals, num_test_evals=n_test_evals, artifact_dir=artifact_dir, model_identity=identity,
        wall_time_s=time.perf_counter() - t0, config={**cfg.to_dict(), "adapter": dataclasses.asdict(settings),
                                                      "max_length": max_length},
        startup_s=clock.phases() if clock is not None else {})
