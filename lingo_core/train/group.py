"""Several tasks' LoRA adapters trained in one process, on one frozen base: `train_group`.

Each task is the run `train()` would make of its config (its data subsets, data order, step count,
schedule, clip, dev selection, one test pass, its own run folder); what the tasks share is the frozen
base and the forward. One optimizer step is one mixed batch with each active task's micro-batch:

    config 0 --prepare_data, tokenize--> rows 0 --+                        +--> AdamW 0 (its lr, warm-up, clip)
    config 1 --prepare_data, tokenize--> rows 1 --+--> one mixed batch --> | MultiTaskLoRA | --> per-task
      ...                                         |    (blocks / per_row)  |  frozen base  |     mean losses
    config K-1 -----------------------> rows K-1 -+                        +--> AdamW K-1
                                                        sum of the finite losses --> one backward
    per task, at its own steps: dev eval (its slot) -> best task_state on CPU (SELECTION)
    per task, at its last step: best state back in the slot -> test once -> PEFT LoRA export (adapter/)

* Start: every slot begins from the weights `train()` would start that config from (its seeded head and
  PEFT LoRA init, copied in with `load_peft_task`), so a task's run depends only on its own config.
* Routing: `Routing.blocks` while every slot has a micro-batch of one size; once a task has left (done or
  failed), or sizes differ (a short last micro-batch, other batch sizes), `Routing.per_row`. Re-blocking
  would need a model without the departed slots; per_row computes the same over the rows present.
* Leaving: a task leaves at its last step, when exported; the others go on. A task's loss, logits and
  gradient touch only its own slot, so nothing a task does reaches another task's weights.
* Failure: an exception in a task's own part (data, its hooks, eval, export) or a non-finite training loss
  ends that task only: its slot of the returned list holds the exception. A non-finite loss is noted on
  the device at the step it appears and read on the host at the next step where some task logs, evaluates
  or ends (no host read per step); from then on the task's rows leave the batch. Until that read its loss
  is masked out of the summed loss; the others' gradients would not see it anyway, as above. An exception
  in the shared forward/backward ends every task still running (it is in all their slots); tasks already
  finished keep their results.
* Determinism: data and init from each config's seed; dropout from all seeds and the micro-batch index.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from lingo_core.method_names import PACKABLE_METHODS
from lingo_core.multitask import MultiTaskLoRA
from lingo_core.routed_lora import Routing, TaskAdapter
from lingo_core.run_folder import RunFolder
from lingo_core.selection import SELECTION
from lingo_core.task_optimizers import TaskOptimizers
from lingo_core.train.backend import TorchBackend
from lingo_core.train.config import TrainConfig
from lingo_core.train.trainer import (
    SCALARS,
    EvalEvent,
    TrainHooks,
    TrainResult,
    data_loader,
    epoch_batches,
    eval_metrics,
    evaluate,
    prepare_data,
    resolve_adapter,
)

if TYPE_CHECKING:
    from lingo_core.data.task import TaskSpec
    from lingo_core.model_ref import BaseModelRef
    from lingo_core.tokenization import LingoTokenizer
    from lingo_core.tuners.config import AdapterSettings

__all__ = ["SHARED_FIELDS", "train_group"]

SHARED_FIELDS = ("model", "grad_accum", "max_grad_norm", "weight_decay", "adapter.lora_dropout",
                 "adapter.target_modules")
"""Config fields every task of a group must agree on, and why: one frozen base (model); one optimizer
step for all tasks, so one accumulation count (grad_accum); TaskOptimizers takes one clip threshold and
one weight decay for all tasks (each task is still clipped by its own norm); MultiTaskLoRA has one dropout
and one set of adapted layers. Free per task: task, data_root, seed, lr, warm-up, epochs/max_steps,
batch sizes (per_row routing mixes any sizes), lora_r/lora_alpha, max_length and tokenization (each task
tokenizes its own rows; onehot uses single-character tokens of the same vocabulary, so one pad id and one
embedding serve both), eval/log cadence, subsets, output_dir (distinct). No TrainConfig field sets the
device or precision: like train(), the group runs where TorchBackend puts it (bf16 autocast on a GPU)."""


@dataclass
class _Task:
    """One task of the group: its config, data and selection state (the weights live in its slot)."""

    index: int  # position in `configs` and in the returned list
    cfg: TrainConfig
    hooks: TrainHooks
    spec: TaskSpec
    settings: AdapterSettings
    tok: LingoTokenizer
    max_length: int
    data: dict[str, list[dict]]
    total_steps: int
    steps_per_epoch: int
    micro: Iterator[list[int]]  # its micro-batches in train()'s order, epoch after epoch
    slot: int = -1
    best_step: int = 0
    best_value: float = SELECTION.worst
    best_state: dict[str, torch.Tensor] | None = None
    best_dev: dict[str, Any] = field(default_factory=dict)
    num_dev_evals: int = 0
    loss_n: int = 0  # micro-batches in the running loss since its last log


class _TaskView(nn.Module):
    """Slot k of a MultiTaskLoRA called as a single-task classifier, so `evaluate` runs on it unchanged."""

    def __init__(self, model: MultiTaskLoRA, k: int, num_labels: int) -> None:
        super().__init__()
        self.model, self.k, self.num_labels = model, k, num_labels

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SequenceClassifierOutput:
        routing = Routing.per_row(torch.full((input_ids.shape[0],), self.k, dtype=torch.long))
        return SequenceClassifierOutput(logits=self.model(input_ids, attention_mask, routing)[:, : self.num_labels])


def train_group(configs: Sequence[TrainConfig], hooks: Sequence[TrainHooks] | None = None, *,
                device: str | torch.device | None = None) -> list[TrainResult | BaseException]:
    """Train every config's LoRA adapter in one process on one shared frozen base (see the module doc).

    Returns one entry per config, in order: its TrainResult (its run folder holds adapter/, as after
    train(); the caller writes result.json with `lingo_core.run_folder.write_result`, as after train()),
    or the exception that ended that task. A config the group cannot train
    (another method, a shared field that differs, a repeated output_dir) is a ValueError before any work;
    a base that does not load raises, as in train(). `device`: None picks as train() does (the GPU when
    there is one)."""
    from lingo_core.model_identity import model_identity
    from lingo_core.model_ref import resolve_model
    from lingo_core.modeling import load_classifier, load_tokenizer

    t0 = time.perf_counter()
    hooks = list(hooks) if hooks is not None else [TrainHooks() for _ in configs]
    check_group(configs, hooks)
    ref = resolve_model(configs[0].model)
    hf_tokenizer = load_tokenizer(ref)
    out: list[TrainResult | BaseException | None] = [None] * len(configs)
    tasks: list[_Task] = []
    for i, (cfg, hook) in enumerate(zip(configs, hooks, strict=True)):
        try:
            tasks.append(_setup(i, cfg, hook, hf_tokenizer))
        except Exception as e:  # noqa: BLE001 - this task's own data: the others still train
            out[i] = e
    if not tasks:
        return out  # type: ignore[return-value]

    backend = TorchBackend(device)  # the device and its autocast, as train() decides them; not its optimizer
    slots = [TaskAdapter(f"{t.index}:{t.spec.name}", t.spec.num_labels, r=t.settings.lora_r,
                         alpha=t.settings.lora_alpha) for t in tasks]
    first = tasks[0].settings
    model = MultiTaskLoRA(load_classifier(ref, max(s.num_labels for s in slots)), slots,
                          target_modules=first.target_modules, dropout=first.lora_dropout)
    for k, t in enumerate(tasks):
        t.slot = k
        model.load_peft_task(k, _peft_classifier(ref, t))  # train()'s own start for this config
    model.place(backend.device)
    opt = TaskOptimizers(model, total_steps=[t.total_steps for t in tasks], lr=[t.cfg.lr for t in tasks],
                         weight_decay=configs[0].weight_decay, max_grad_norm=configs[0].max_grad_norm,
                         warmup_steps=[t.cfg.warmup_steps(t.total_steps) for t in tasks])
    identity = model_identity(ref)
    seed = int(np.random.SeedSequence([c.seed for c in configs]).generate_state(1)[0])  # dropout of the group
    grad_accum, device = configs[0].grad_accum, backend.device
    loss_sum = torch.zeros(len(tasks), device=device)  # running losses stay on device until a log
    bad_step = torch.full((len(tasks),), -1, dtype=torch.long, device=device)  # first non-finite loss's step
    step, micro, active = 0, 0, list(tasks)
    while active:
        try:
            for _ in range(grad_accum):
                batch, routing = _mixed_batch(active, len(tasks))
                model.train()
                torch.manual_seed(seed * 1_000_003 + micro)
                micro += 1
                with backend.autocast():
                    logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device), routing)
                losses = model.task_losses(logits, batch["labels"].to(device), routing)
                finite = torch.isfinite(losses)
                bad_step = torch.where((bad_step < 0) & ~finite, step + 1, bad_step)
                kept = torch.where(bad_step < 0, losses, torch.zeros_like(losses))  # a failed task's loss: out of the sum
                (kept.sum() / grad_accum).backward()
                loss_sum += kept.detach()
            opt.step()
        except Exception as e:  # noqa: BLE001 - the shared step failed: every running task ends with it
            for t in active:
                out[t.index] = e
            break
        step += 1
        for t in active:
            t.loss_n += grad_accum
        events = [t for t in active if _logs(t, step) or _evaluates(t, step) or step == t.total_steps]
        bad = bad_step.tolist() if events else [-1] * len(tasks)  # the host read of the step, only with events
        for t in list(active):
            try:
                if bad[t.slot] >= 0:
                    raise FloatingPointError(f"{t.spec.name} (config {t.index}): non-finite training loss at "
                                             f"step {bad[t.slot]}; lower lr or check the data")
                if t not in events:
                    continue
                epoch = (step - 1) // t.steps_per_epoch
                if _logs(t, step):
                    logs = {"loss": float(loss_sum[t.slot]) / max(1, t.loss_n), "lr": opt.current_lr(t.slot),
                            "epoch": epoch}
                    loss_sum[t.slot], t.loss_n = 0.0, 0
                    if t.hooks.on_log is not None:
                        t.hooks.on_log(step, logs)
                if _evaluates(t, step):
                    _dev_eval(model, t, backend, step, epoch)
                if step == t.total_steps:
                    # wall time: from the group's start to this task's result, start-up shared with the others
                    out[t.index] = _finish(model, t, backend, ref, identity, time.perf_counter() - t0)
                    active.remove(t)
            except Exception as e:  # noqa: BLE001 - this task's own hooks, eval or export
                out[t.index] = e
                active.remove(t)
    assert all(r is not None for r in out), "every task ends with a result or an exception"
    return out  # type: ignore[return-value]


def check_group(configs: Sequence[TrainConfig], hooks: Sequence[TrainHooks]) -> None:
    """ValueError, before any work, for configs that cannot train as one group (see SHARED_FIELDS)."""
    if not configs:
        raise ValueError("train_group needs at least one TrainConfig")
    if len(hooks) != len(configs):
        raise ValueError(f"train_group: {len(hooks)} TrainHooks for {len(configs)} configs; give one per config")
    dirs: dict[Path, int] = {}
    for i, cfg in enumerate(configs):
        if cfg.adapter.method not in PACKABLE_METHODS:
            raise ValueError(f"train_group: configs[{i}].adapter.method={cfg.adapter.method!r}; a group trains "
                             f"{' or '.join(map(repr, PACKABLE_METHODS))} adapters only (MultiTaskLoRA routes plain LoRA factors)")
        if cfg.save_checkpoints:
            raise ValueError(f"train_group: configs[{i}].save_checkpoints=True; a group writes no resumable "
                             "checkpoints, train the task alone with train() for that")
        for name in SHARED_FIELDS:
            mine, theirs = _field(cfg, name), _field(configs[0], name)
            if mine != theirs:
                raise ValueError(f"train_group: configs[{i}].{name}={mine!r} differs from configs[0].{name}="
                                 f"{theirs!r}; tasks of one group share it (SHARED_FIELDS)")
        folder = Path(cfg.output_dir).resolve()
        if folder in dirs:
            raise ValueError(f"train_group: configs[{i}].output_dir={cfg.output_dir!r} is also configs"
                             f"[{dirs[folder]}]'s; each task needs its own run folder")
        dirs[folder] = i


def _field(cfg: TrainConfig, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


# ---- one task's parts -------------------------------------------------------------------------------------
def _setup(index: int, cfg: TrainConfig, hooks: TrainHooks, hf_tokenizer) -> _Task:
    """A task's data, prompts and step counts, exactly as train() derives them from its config."""
    from lingo_core.tokenization import LingoTokenizer, suggest_max_length

    spec, tables, split_rows = prepare_data(cfg)
    max_length = cfg.max_length or suggest_max_length(spec.seq_len_bp, cfg.tokenization)
    tok = LingoTokenizer(hf_tokenizer, mode=cfg.tokenization, max_length=max_length)
    data = {s: tok.encode_table(t, spec.description) for s, t in tables.items()}
    n_train = len(data["train"])

    def micro_batches() -> Iterator[list[int]]:
        epoch = 0
        while True:  # epoch_batches gives whole steps only: steps_per_epoch x grad_accum micro-batches
            yield from epoch_batches(n_train, epoch, cfg, 0, 1)
            epoch += 1

    return _Task(index=index, cfg=cfg, hooks=hooks, spec=spec, settings=resolve_adapter(cfg, spec, split_rows),
                 tok=tok, max_length=max_length, data=data, total_steps=cfg.total_steps(n_train),
                 steps_per_epoch=cfg.steps_per_epoch(n_train), micro=micro_batches())


def _peft_classifier(ref: BaseModelRef, t: _Task) -> nn.Module:
    """The PEFT LoRA classifier train() builds for this config, with its seeded head and adapter init: the
    slot starts from its weights, and the export is written through one."""
    from lingo_core.modeling import load_classifier
    from lingo_core.tuners.methods import build_model

    with torch.random.fork_rng(devices=[]):  # the group's own RNG stream (dropout) is left as it was
        torch.manual_seed(t.cfg.seed)  # as train(): the head is initialised from the global RNG
        peft_model, _ = build_model(load_classifier(ref, t.spec.num_labels), t.settings, t.total_steps, t.cfg.seed)
    return peft_model


def _mixed_batch(active: list[_Task], num_slots: int) -> tuple[dict[str, torch.Tensor], Routing]:
    """The next micro-batch of every active task, in slot order, as one right-padded batch."""
    picks = [(t, next(t.micro)) for t in active]
    rows = [t.data["train"][i] for t, idx in picks for i in idx]
    sizes = {len(idx) for _, idx in picks}
    if len(active) == num_slots and len(sizes) == 1:
        routing = Routing.blocks(sizes.pop())
    else:
        routing = Routing.per_row([t.slot for t, idx in picks for _ in idx])
    return active[0].tok.collate(rows), routing  # one base tokenizer: every task pads with the same id


def _logs(t: _Task, step: int) -> bool:
    return t.cfg.logs_at(step, t.total_steps)


def _evaluates(t: _Task, step: int) -> bool:
    return t.cfg.evaluates_at(step, t.steps_per_epoch, t.total_steps)


def _loader(t: _Task, split: str):
    n, size = len(t.data[split]), t.cfg.eval_batch
    return data_loader(t.data[split], [list(range(i, min(i + size, n))) for i in range(0, n, size)],
                       t.tok.collate, t.cfg)


def _dev_eval(model: MultiTaskLoRA, t: _Task, backend: TorchBackend, step: int, epoch: int) -> None:
    view = _TaskView(model, t.slot, t.spec.num_labels)
    m = eval_metrics(evaluate(view, _loader(t, "dev"), backend, f"dev@{step} {t.spec.name}"), t.spec.num_labels,
                     t.spec.label_names)
    t.num_dev_evals += 1
    is_best = SELECTION.better(m[SELECTION.metric], t.best_value)  # strict: on ties the earlier step stays
    if is_best:
        t.best_step, t.best_value, t.best_dev, t.best_state = step, m[SELECTION.metric], m, model.task_state(t.slot)
    if t.hooks.on_evaluate is not None:
        t.hooks.on_evaluate(EvalEvent(step=step, epoch=epoch, metrics={f"dev_{k}": m[k] for k in SCALARS},
                                      is_best=is_best))


def _finish(model: MultiTaskLoRA, t: _Task, backend: TorchBackend, ref: BaseModelRef, identity: dict[str, Any],
            wall_time_s: float) -> TrainResult:
    """Test once on the dev-selected weights, export them as train() does."""
    from lingo_core.artifacts import save_adapter
    from lingo_core.tokenization import TEMPLATE
    from lingo_core.tuners.methods import trainable_summary

    if t.best_state is not None:
        model.load_task_state(t.slot, t.best_state)
    test_ev = evaluate(_TaskView(model, t.slot, t.spec.num_labels), _loader(t, "test"), backend, "test")
    test_metrics = eval_metrics(test_ev, t.spec.num_labels, t.spec.label_names)
    peft_model = _peft_classifier(ref, t)
    model.export_peft_task(t.slot, peft_model)
    n_trainable, n_total, fraction = trainable_summary(peft_model)
    folder = RunFolder(Path(t.cfg.output_dir))
    artifact_dir = save_adapter(
        peft_model, folder.adapter, task=t.spec, tokenizer_mode=t.cfg.tokenization, template=TEMPLATE,
        base_identity=identity, metrics={"dev": t.best_dev, "test": test_metrics}, method=t.settings.method,
        rank_pattern=None, max_length=t.max_length)
    result = TrainResult(
        task=t.spec.name, method=t.settings.method, best_step=t.best_step, dev_metrics=t.best_dev,
        test_metrics=test_metrics, label_names=list(t.spec.label_names),
        test_predictions={k: test_ev[k].tolist() for k in ("labels", "preds", "probs")},
        budget_history=[], rank_pattern=None, trainable_params=n_trainable, total_params=n_total,
        trainable_fraction=fraction, total_steps=t.total_steps, num_dev_evals=t.num_dev_evals, num_test_evals=1,
        artifact_dir=artifact_dir, model_identity=identity, wall_time_s=wall_time_s,
        config={**t.cfg.to_dict(), "adapter": dataclasses.asdict(t.settings), "max_length": t.max_length})
    return result
