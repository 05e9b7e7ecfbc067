"""train_group: K tasks' LoRA adapters trained on one frozen base, each as train() would train it alone.

The tiny random LLaMA with real GUE rows, on CPU (fp32: the tolerances below are fp32 float noise).
Task A (prom_core_tata, 2 classes, 8 steps, dev every 2) is trained alone, with a task B that differs in
everything a task may differ in (3 classes, onehot prompts of one token per base, rank, lr, batch size,
and 4 steps, so it leaves halfway and A goes on with per-row routing), and next to failing tasks.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lingo_core.multitask import MultiTaskLoRA
from lingo_core.predict import Predictor, PredictSettings
from lingo_core.run_folder import RunFolder
from lingo_core.train import TorchBackend, TrainConfig, TrainHooks, TrainResult, train
from lingo_core.train.group import train_group
from lingo_core.train.trainer import prepare_data

pytestmark = pytest.mark.filterwarnings("ignore:.*test sequences also occur in train")


def _cfg(tiny_model_dir: Path, gue_root: Path, out: Path, **kw) -> TrainConfig:
    adapter = kw.pop("adapter", {})
    base = dict(task="prom_core_tata", data_root=str(gue_root), model=str(tiny_model_dir), epochs=2, eval_every=2,
                max_train_samples=32, max_eval_samples=16, batch_size=8, log_every=1, lr=5e-3, output_dir=str(out),
                adapter={"method": "lora", "lora_dropout": 0.0, **adapter})
    base.update(kw)
    return TrainConfig.from_dict(base)


def _task_b(tiny_model_dir, gue_root, out) -> TrainConfig:
    return _cfg(tiny_model_dir, gue_root, out, task="splice/reconstructed", epochs=1, batch_size=6, lr=1e-2,
                max_train_samples=24, seed=7, tokenization="onehot", adapter={"lora_r": 4, "lora_alpha": 4})


def _weights(result: TrainResult) -> dict[str, torch.Tensor]:
    """The exported adapter: PEFT's factors and the head."""
    return {**load_file(str(result.artifact_dir / "adapter_model.safetensors")),
            **load_file(str(result.artifact_dir / "head.safetensors"))}


def _assert_same_weights(got: TrainResult, want: TrainResult) -> None:
    a, b = _weights(got), _weights(want)
    assert a.keys() == b.keys()
    # Adam normalises each update to ~lr (5e-3), so summation-order noise (other batch widths, bmm shapes)
    # shows at a small fraction of lr; the weights moved by several steps.
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-2


@pytest.fixture(scope="module")
def runs(tiny_model_dir, gue_root, tmp_path_factory):
    """A alone; A with B; A's config trained by train()."""
    root = tmp_path_factory.mktemp("group")
    a_alone = _cfg(tiny_model_dir, gue_root, root / "alone")
    a, b = _cfg(tiny_model_dir, gue_root, root / "a"), _task_b(tiny_model_dir, gue_root, root / "b")
    events: dict[str, list] = {"a": [], "b": []}
    hooks = [TrainHooks(on_evaluate=events[n].append, on_log=lambda s, m, n=n: events[n].append((s, m)))
             for n in "ab"]
    (alone,) = train_group([a_alone], device="cpu")
    pair = train_group([a, b], hooks, device="cpu")
    single = train(_cfg(tiny_model_dir, gue_root, root / "single"), backend=TorchBackend("cpu"))
    return {"alone": alone, "pair": pair, "configs": (a, b), "events": events, "train": single}


def test_two_tasks_export_adapters_the_single_task_path_loads(runs):
    """Each export loads with plain PEFT (Predictor, routed off: lingo predict's reference path) and gives
    the probabilities the group model gave on the test rows; result.json is left to the caller, as by train()."""
    for cfg, result in zip(runs["configs"], runs["pair"], strict=True):
        assert isinstance(result, TrainResult), result
        _, tables, _ = prepare_data(cfg)
        sequences = tables["test"].column("sequence").to_pylist()
        (probs,) = Predictor([result.artifact_dir], PredictSettings(device="cpu", routed=False)).predict(sequences)
        assert probs.shape == (16, len(result.label_names))
        torch.testing.assert_close(torch.tensor(probs), torch.tensor(result.test_predictions["probs"],
                                                                     dtype=torch.float64), atol=1e-5, rtol=1e-4)
        folder = RunFolder(cfg.output_dir)
        assert folder.adapter.is_dir() and not folder.result.exists()
        assert result.task == cfg.task and result.method == "lora" and result.num_test_evals == 1
    a, b = runs["pair"]
    assert (a.total_steps, b.total_steps) == (8, 4) and (a.num_dev_evals, b.num_dev_evals) == (4, 2)
    assert b.label_names and len(b.label_names) == 3 and b.config["adapter"]["lora_r"] == 4
    # hooks: each task's own steps and evaluations
    assert [e.step for e in runs["events"]["a"] if not isinstance(e, tuple)] == [2, 4, 6, 8]
    assert [s for s, _ in (e for e in runs["events"]["b"] if isinstance(e, tuple))] == [1, 2, 3, 4]


def test_a_group_of_one_trains_as_train_does(runs):
    """Same start (train()'s seeded init), data order, schedule, clip and selection: the same run."""
    alone, single = runs["alone"], runs["train"]
    _assert_same_weights(alone, single)
    assert alone.best_step == single.best_step
    assert math.isclose(alone.dev_metrics["loss"], single.dev_metrics["loss"], rel_tol=1e-4)
    assert (alone.trainable_params, alone.total_params) == (single.trainable_params, single.total_params)
    assert set(alone.to_dict()) == set(single.to_dict())
    assert {**alone.config, "output_dir": ""} == {**single.config, "output_dir": ""}


def test_a_task_trains_the_same_next_to_another(runs):
    """Isolation: A next to B (other classes, rank, lr, batch size, tokenization; leaving at step 4) ends with
    A's weights when trained alone."""
    a = runs["pair"][0]
    _assert_same_weights(a, runs["alone"])
    assert a.best_step == runs["alone"].best_step
    assert a.test_metrics["confusion_matrix"] == runs["alone"].test_metrics["confusion_matrix"]


def test_a_failing_task_leaves_the_others_complete(runs, tiny_model_dir, gue_root, tmp_path, monkeypatch):
    """A task without data, one whose loss turns NaN at step 3 and one whose hook raises end with their
    exception; A finishes as it does alone, and the failed tasks leave no export."""
    real = MultiTaskLoRA.task_losses
    calls = []

    def losses_nan_for_slot_1(self, logits, labels, routing):
        out = real(self, logits, labels, routing)
        calls.append(1)
        return out + torch.tensor([0.0, math.nan, 0.0]) if len(calls) >= 3 else out

    monkeypatch.setattr(MultiTaskLoRA, "task_losses", losses_nan_for_slot_1)

    def boom(event):
        raise RuntimeError("hook failed")

    configs = [_cfg(tiny_model_dir, gue_root, tmp_path / "a"),
               _cfg(tiny_model_dir, gue_root, tmp_path / "missing", task="no_such_task"),
               _task_b(tiny_model_dir, gue_root, tmp_path / "nan"),
               _cfg(tiny_model_dir, gue_root, tmp_path / "hook", seed=3)]
    hooks = [TrainHooks(), TrainHooks(), TrainHooks(), TrainHooks(on_evaluate=boom)]
    out = train_group(configs, hooks, device="cpu")
    assert isinstance(out[1], ValueError) and "no_such_task" in str(out[1])
    assert isinstance(out[2], FloatingPointError) and "step 3" in str(out[2])
    assert isinstance(out[3], RuntimeError) and str(out[3]) == "hook failed"
    assert isinstance(out[0], TrainResult)
    _assert_same_weights(out[0], runs["alone"])
    assert RunFolder(tmp_path / "a").adapter.is_dir()
    assert not any((tmp_path / name).exists() for name in ("missing", "nan", "hook"))


@pytest.mark.parametrize(("change", "message"), [
    ({"model": "other-model"}, r"configs\[1\]\.model='other-model' differs from configs\[0\]\.model='.*tiny"),
    ({"max_grad_norm": 0.5}, r"configs\[1\]\.max_grad_norm=0\.5 differs from configs\[0\]\.max_grad_norm=1\.0"),
    ({"adapter": {"lora_dropout": 0.1}},
     r"configs\[1\]\.adapter\.lora_dropout=0\.1 differs from configs\[0\]\.adapter\.lora_dropout=0\.0"),
    ({"adapter": {"method": "ars"}}, r"configs\[1\]\.adapter\.method='ars'; a group trains 'lora'"),
    ({"output_dir": "SAME"}, r"configs\[1\]\.output_dir=.* is also configs\[0\]'s"),
])
def test_configs_that_cannot_share_a_group_are_refused_before_work(tiny_model_dir, gue_root, tmp_path, change,
                                                                    message):
    first = _cfg(tiny_model_dir, gue_root, tmp_path / "a")
    change = {**change, "output_dir": str(tmp_path / "a")} if change.get("output_dir") == "SAME" else change
    adapter = {"method": "lora", "lora_dropout": 0.0, **change.pop("adapter", {})}
    other = _cfg(tiny_model_dir, gue_root, tmp_path / "b", **{**change, "adapter": adapter})
    with pytest.raises(ValueError, match=message):
        train_group([first, other], device="cpu")
    assert not any(tmp_path.iterdir())  # nothing was written


def test_gradient_accumulation_steps_as_train_does(tiny_model_dir, gue_root, tmp_path):
    """grad_accum 2 x batch 4: two mixed micro-batches per optimizer step, as train() accumulates them."""
    kw = dict(batch_size=4, grad_accum=2, max_steps=3, eval_every=3, lr=1e-2)
    (grouped,) = train_group([_cfg(tiny_model_dir, gue_root, tmp_path / "group", **kw)], device="cpu")
    cfg = _cfg(tiny_model_dir, gue_root, tmp_path / "train", **kw)
    alone = train(cfg, backend=TorchBackend.for_config(cfg, "cpu"))
    assert grouped.total_steps == alone.total_steps == 3
    _assert_same_weights(grouped, alone)
