"""MultiTaskLoRA: K tasks routed over one frozen base behave as K separate single-task LoRA models.

Real parts only: the tiny random LLaMA saved with the real SmolLM2 tokenizer, real PEFT LoRA models as
the single-task reference, real right-padded prompts of different lengths.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model

from lingo_core.model_ref import resolve_model
from lingo_core.modeling import DEFAULT_TARGET_MODULES, load_classifier, load_tokenizer
from lingo_core.multitask import MultiTaskLoRA
from lingo_core.routed_lora import Routing, TaskAdapter
from lingo_core.task_optimizers import TaskOptimizers
from lingo_core.tokenization import LingoTokenizer

# Three tasks that differ in every per-task setting: classes, rank, and scale alpha / r (2, 2, 1).
TASKS = (TaskAdapter("a", num_labels=2, r=2, alpha=4), TaskAdapter("b", num_labels=3, r=4, alpha=8),
         TaskAdapter("c", num_labels=2, r=8, alpha=8))
ROWS = 3  # rows per task: small, and several rows per task so a row/task mix-up shows


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    return resolve_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def peft_models(ref):
    """One PEFT LoRA classifier per task with random (non-zero) B and head, so every task computes
    something different and a routing mistake changes the logits."""
    models = []
    for k, task in enumerate(TASKS):
        torch.manual_seed(100 + k)
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=task.r, lora_alpha=task.alpha, lora_dropout=0.0,
                            target_modules=DEFAULT_TARGET_MODULES["llama"])
        model = get_peft_model(load_classifier(ref, task.num_labels), config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or "modules_to_save" in name:
                    p.normal_(0.0, 0.5)
        models.append(model.eval())
    return models


@pytest.fixture(scope="module")
def packed(ref, peft_models):
    torch.manual_seed(0)
    model = MultiTaskLoRA(load_classifier(ref, 2), TASKS, dropout=0.0)
    for k, peft_model in enumerate(peft_models):
        model.load_peft_task(k, peft_model)
    return model.eval()


@pytest.fixture(scope="module")
def batches(ref):
    """Per task: its own right-padded batch (as single-task training sees it); and all rows together,
    task blocks in order, padded to the longest (the mixed batch)."""
    tok = LingoTokenizer(load_tokenizer(ref), mode="bbpe")
    gen = torch.Generator().manual_seed(0)
    rows_per_task = []
    for k, task in enumerate(TASKS):
        rows = []
        for i in range(ROWS):
            length = int(torch.randint(8, 60, (1,), generator=gen))
            dna = "".join("ACGT"[j] for j in torch.randint(0, 4, (length,), generator=gen).tolist())
            rows.append({"input_ids": tok.encode(dna, f"task {task.name}").input_ids,
                         "label": (i + k) % task.num_labels})
        rows_per_task.append(rows)
    single = [tok.collate(rows) for rows in rows_per_task]
    mixed = tok.collate([row for rows in rows_per_task for row in rows])
    assert len({b["input_ids"].shape[1] for b in single}) > 1, "tasks should pad to different widths"
    return single, mixed


def _forward(model, batch, routing):
    return model(batch["input_ids"], batch["attention_mask"], routing)


def _task_ids() -> torch.Tensor:
    return torch.arange(len(TASKS)).repeat_interleave(ROWS)


# ---- (a) equivalence with separately built PEFT models -------------------------------------------------
@pytest.mark.parametrize("path", ["blocks", "per_row"])
def test_routed_logits_equal_each_single_task_peft_model(packed, peft_models, batches, path):
    single, mixed = batches
    routing = Routing.blocks(ROWS) if path == "blocks" else Routing.per_row(_task_ids())
    with torch.no_grad():
        logits = _forward(packed, mixed, routing)
        for k, (task, peft_model) in enumerate(zip(TASKS, peft_models, strict=True)):
            want = peft_model(input_ids=single[k]["input_ids"], attention_mask=single[k]["attention_mask"]).logits
            got = logits[k * ROWS : (k + 1) * ROWS]
            torch.testing.assert_close(got[:, : task.num_labels], want, rtol=1e-4, atol=1e-5)
            assert torch.isneginf(got[:, task.num_labels :]).all()  # classes the task does not have


def test_task_losses_are_each_tasks_mean_cross_entropy(packed, peft_models, batches):
    single, mixed = batches
    labels = mixed["labels"]
    with torch.no_grad():
        blocks = packed.task_losses(_forward(packed, mixed, Routing.blocks(ROWS)), labels, Routing.blocks(ROWS))
        routing = Routing.per_row(_task_ids())
        per_row = packed.task_losses(_forward(packed, mixed, routing), labels, routing)
        want = torch.stack([
            torch.nn.functional.cross_entropy(m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                              b["labels"])
            for m, b in zip(peft_models, single, strict=True)])
    torch.testing.assert_close(blocks, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(per_row, want, rtol=1e-4, atol=1e-5)


def test_a_task_exports_to_a_peft_model_that_computes_the_same(ref, packed, peft_models, batches):
    """export_peft_task is the inverse of load_peft_task: a fresh PEFT model of task b's shape, filled
    from the packed slot, gives the logits of the PEFT model the slot was loaded from."""
    single, _ = batches
    task = TASKS[1]
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=task.r, lora_alpha=task.alpha, lora_dropout=0.0,
                        target_modules=DEFAULT_TARGET_MODULES["llama"])
    fresh = get_peft_model(load_classifier(ref, task.num_labels), config).eval()
    packed.export_peft_task(1, fresh)
    with torch.no_grad():
        got = fresh(input_ids=single[1]["input_ids"], attention_mask=single[1]["attention_mask"]).logits
        want = peft_models[1](input_ids=single[1]["input_ids"], attention_mask=single[1]["attention_mask"]).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    wrong_scale = get_peft_model(load_classifier(ref, task.num_labels), LoraConfig(
        task_type=TaskType.SEQ_CLS, r=task.r, lora_alpha=1, target_modules=DEFAULT_TARGET_MODULES["llama"]))
    with pytest.raises(ValueError, match="scaling"):
        packed.export_peft_task(1, wrong_scale)



def test_from_peft_models_routes_each_peft_model(ref, peft_models, batches):
    """The prediction constructor: slots sized from each PEFT model (ranks 2, 4, 8; 2 or 3 classes) and
    loaded from it compute what each PEFT model computes; DoRA, which routing would drop, is refused."""
    single, mixed = batches
    routed = MultiTaskLoRA.from_peft_models(load_classifier(ref, 2), peft_models, [t.name for t in TASKS])
    assert [(t.r, t.num_labels) for t in routed.tasks] == [(t.r, t.num_labels) for t in TASKS]
    with torch.no_grad():
        logits = _forward(routed, mixed, Routing.blocks(ROWS))
        for k, (task, peft_model) in enumerate(zip(TASKS, peft_models, strict=True)):
            want = peft_model(input_ids=single[k]["input_ids"], attention_mask=single[k]["attention_mask"]).logits
            torch.testing.assert_close(logits[k * ROWS : (k + 1) * ROWS, : task.num_labels], want, rtol=1e-4, atol=1e-5)
    dora = get_peft_model(load_classifier(ref, 2), LoraConfig(task_type=TaskType.SEQ_CLS, r=2, use_dora=True,
                                                              target_modules=DEFAULT_TARGET_MODULES["llama"]))
    with pytest.raises(ValueError, match="not plain LoRA"):
        MultiTaskLoRA.from_peft_models(load_classifier(ref, 2), [dora], ["dora"])

# ---- (c) any row order gives the same per-row outputs -------------------------------------------------
def test_permuted_rows_give_the_same_outputs_as_blocks(packed, batches):
    _, mixed = batches
    perm = torch.randperm(len(TASKS) * ROWS, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(_task_ids()[perm], _task_ids())
    shuffled = {k: v[perm] for k, v in mixed.items()}
    with torch.no_grad():
        blocks = _forward(packed, mixed, Routing.blocks(ROWS))
        permuted = _forward(packed, shuffled, Routing.per_row(_task_ids()[perm]))
    torch.testing.assert_close(permuted, blocks[perm], rtol=1e-4, atol=1e-5)


# ---- (b) gradient isolation -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["blocks", "per_row"])
def test_a_tasks_loss_reaches_only_its_own_factors_and_head(packed, batches, path):
    _, mixed = batches
    perm = torch.randperm(len(TASKS) * ROWS, generator=torch.Generator().manual_seed(2))
    if path == "blocks":
        batch, routing = mixed, Routing.blocks(ROWS)
    else:
        batch, routing = {k: v[perm] for k, v in mixed.items()}, Routing.per_row(_task_ids()[perm])
    stacked = packed.stacked_parameters()
    for j in range(len(TASKS)):
        packed.zero_grad(set_to_none=True)
        logits = _forward(packed, batch, routing)
        packed.task_losses(logits, batch["labels"], routing)[j].backward()
        for p in stacked:
            for k in range(len(TASKS)):
                if k != j:
                    assert torch.count_nonzero(p.grad[k]) == 0, f"task {j}'s loss reached task {k}"
        for _, layer in packed.routed_layers():
            assert layer.lora_A.grad[j].abs().sum() > 0 and layer.lora_B.grad[j].abs().sum() > 0
        assert packed.head.grad[j, : TASKS[j].num_labels].abs().sum() > 0
    packed.zero_grad(set_to_none=True)


def test_permuted_rows_give_the_same_gradients_as_blocks(packed, batches):
    """Training on a mixed batch in any row order (the per-row path) moves every task as the blocks path does."""
    _, mixed = batches
    perm = torch.randperm(len(TASKS) * ROWS, generator=torch.Generator().manual_seed(3))
    grads = []
    for batch, routing in ((mixed, Routing.blocks(ROWS)),
                           ({k: v[perm] for k, v in mixed.items()}, Routing.per_row(_task_ids()[perm]))):
        packed.zero_grad(set_to_none=True)
        packed.task_losses(_forward(packed, batch, routing), batch["labels"], routing).sum().backward()
        grads.append([p.grad.clone() for p in packed.stacked_parameters()])
    packed.zero_grad(set_to_none=True)
    for blocks, per_row in zip(*grads, strict=True):
        torch.testing.assert_close(per_row, blocks, rtol=1e-4, atol=1e-5)


# ---- training: packed equals each task trained alone ---------------------------------------------------
def test_packed_training_equals_each_task_trained_alone(ref, packed, batches):
    """Two tasks trained together (one backward of the summed losses, TaskOptimizers) end exactly where
    each task trained alone ends: own lr, own warm-up, own clipping (0.05 clips every step)."""
    single, mixed = batches
    tasks, steps = TASKS[:2], 3
    opt_kw = {"lr": [1e-2, 3e-3], "warmup_steps": [1, 0], "total_steps": steps, "max_grad_norm": 0.05}

    def build(slots):
        torch.manual_seed(0)
        model = MultiTaskLoRA(load_classifier(ref, 2), [tasks[k] for k in slots], dropout=0.0)
        for i, k in enumerate(slots):
            model.load_task_state(i, packed.task_state(k))
        return model

    together = build([0, 1])
    opt = TaskOptimizers(together, **opt_kw)
    rows = torch.arange(2 * ROWS)  # the first two task blocks of the mixed batch
    both = {k: v[rows] for k, v in mixed.items()}
    for step in range(steps):
        if step == steps - 1:
            together.zero_grad(set_to_none=True)  # the stacked gradients are replaced: must be relinked
        routing = Routing.blocks(ROWS)
        together.task_losses(_forward(together, both, routing), both["labels"], routing).sum().backward()
        opt.step()
    for k in range(2):
        alone = build([k])
        opt_alone = TaskOptimizers(alone, **{**opt_kw, "lr": opt_kw["lr"][k], "warmup_steps": opt_kw["warmup_steps"][k]})
        for _ in range(steps):
            routing = Routing.blocks(ROWS)
            alone.task_losses(_forward(alone, single[k], routing), single[k]["labels"], routing).sum().backward()
            opt_alone.step()
        want, got = alone.task_state(0), together.task_state(k)
        assert not torch.equal(got["head"], packed.task_state(k)["head"]), "training did not move the head"
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-3, atol=1e-4, msg=f"task {k} {key}")
    for _, layer in together.routed_layers():  # task 0 has rank 2 of 4: its spare rank stays exactly zero
        assert torch.count_nonzero(layer.lora_A[0, tasks[0].r :]) == 0
        assert torch.count_nonzero(layer.lora_B[0, :, tasks[0].r :]) == 0
    assert all(torch.count_nonzero(p.grad) == 0 for p in together.stacked_parameters())  # zeroed in place


def test_task_parameters_alias_the_stacked_tensors(packed):
    views = packed.task_parameters(1)
    stacked = packed.stacked_parameters()
    assert len(views) == len(stacked)
    for v, p in zip(views, stacked, strict=True):
        assert v.data_ptr() == p.detach()[1].data_ptr() and v.shape == p.shape[1:]
    lora = sum(TASKS[1].r * (m.base.in_features + m.base.out_features) for _, m in packed.routed_layers())
    assert packed.num_trainable(1) == lora + TASKS[1].num_labels * packed.head.shape[-1]


# ---- errors before work -----------------------------------------------------------------------------------
def test_bad_routings_are_refused(packed, batches):
    _, mixed = batches
    with pytest.raises(ValueError, match="expects 12 rows"):
        _forward(packed, mixed, Routing.blocks(4))
    with pytest.raises(ValueError, match="outside 0..2"):
        _forward(packed, mixed, Routing.per_row(_task_ids() + 1))
    with pytest.raises(ValueError, match="exactly one"):
        Routing()
    _, layer = packed.routed_layers()[0]
    with pytest.raises(RuntimeError, match="outside MultiTaskLoRA.forward"):
        layer(torch.zeros(1, 2, layer.base.in_features))


def test_task_slots_are_validated(ref):
    with pytest.raises(ValueError, match="repeat"):
        MultiTaskLoRA(load_classifier(ref, 2), [TaskAdapter("x", 2), TaskAdapter("x", 2)])
    with pytest.raises(ValueError, match="r=0"):
        TaskAdapter("x", 2, r=0)
    model = MultiTaskLoRA(load_classifier(ref, 2), [TaskAdapter("x", 2, r=2)])
    state = model.task_state(0)
    state[f"{model.layer_names[0]}.lora_A"] = torch.zeros(4, 64)  # rank 4 into a rank-2 slot
    with pytest.raises(ValueError, match="do not fit rank 2"):
        model.load_task_state(0, state)
    assert math.isclose(float(model.routed_layers()[0][1].scaling[0]), TaskAdapter("x", 2).alpha / 2)


# ---- the point of packing: a step's work does not grow with the number of tasks -----------------------
class _CountCalls(torch.overrides.TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_forward_issues_as_many_torch_calls_for_three_tasks_as_for_one(ref, batches):
    """The blocks path applies all tasks' factors with one batched matmul per layer: a per-task loop
    (launches growing with K, the overhead packing exists to amortise) fails this."""
    _, mixed = batches
    counts = []
    for tasks in (TASKS[:1], TASKS):
        model = MultiTaskLoRA(load_classifier(ref, 2), tasks, dropout=0.0)
        rows = {k: v[: len(tasks) * ROWS] for k, v in mixed.items()}
        with _CountCalls() as mode:
            model(rows["input_ids"], rows["attention_mask"], Routing.blocks(ROWS))
        counts.append(mode.calls)
    assert counts[0] == counts[1], f"torch calls per forward: {counts[0]} for 1 task, {counts[1]} for 3"
