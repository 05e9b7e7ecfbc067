"""The training loop on the tiny random LLaMA with real GUE rows: every method, dev selection,
a single test pass, gradient accumulation and resume equivalence."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from lingo_core.method_names import METHODS
from lingo_core.train import TorchBackend, TrainConfig, TrainHooks, train
from lingo_core.train.trainer import epoch_batches, stratified_subset


def _cfg(tiny_model_dir, gue_root, tmp_path, **kw):
    adapter = kw.pop("adapter", {})
    base = dict(task="prom_core_tata", data_root=str(gue_root), model=str(tiny_model_dir), epochs=1,
                max_train_samples=32, max_eval_samples=16, batch_size=8, log_every=1,
                output_dir=str(tmp_path / "run"), adapter={"method": "ars", **adapter})
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_stratified_subset_is_seeded_balanced_and_bounded():
    import numpy as np

    labels = np.array([0] * 90 + [1] * 10)
    idx = stratified_subset(labels, 20, seed=3)
    assert len(idx) == 20 and len(set(idx)) == 20
    assert (labels[idx] == 1).sum() == 2  # 10% of 20
    assert (idx == stratified_subset(labels, 20, seed=3)).all()
    assert not (idx == stratified_subset(labels, 20, seed=4)).all()
    assert len(stratified_subset(labels, None, 0)) == 100


def test_epoch_batches_shard_disjointly_across_ranks():
    cfg = TrainConfig(batch_size=4, seed=1)
    shards = [sum(epoch_batches(30, 0, cfg, r, 2), []) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 15
    assert set(shards[0]) | set(shards[1]) == set(range(30))
    assert epoch_batches(30, 0, cfg, 0, 2) != epoch_batches(30, 1, cfg, 0, 2)  # reshuffled per epoch


@pytest.mark.parametrize("method", METHODS)
def test_loop_each_method(method, tiny_model_dir, gue_root, tmp_path):
    events, logs = [], []
    cfg = _cfg(tiny_model_dir, gue_root, tmp_path, epochs=2, eval_every=2, lr=5e-3, adapter={"method": method})
    result = train(cfg, hooks=TrainHooks(on_log=lambda s, m: logs.append((s, m)), on_evaluate=events.append))
    assert result.total_steps == 8
    assert [e.step for e in events] == [2, 4, 6, 8]
    assert [s for s, _ in logs] == list(range(1, 9))
    rank_keys = {"budget", "active_ranks", "regrown", "dropped"}
    assert all(set(m) >= {"loss", "lr"} for _, m in logs)
    assert all((set(m) >= rank_keys) == (method in ("ars", "adalora")) for _, m in logs)
    assert all(set(e.metrics) == {"dev_mcc", "dev_f1", "dev_accuracy", "dev_auroc", "dev_loss"} for e in events)
    # dev selects: the best step is the first one reaching the highest dev MCC. ars/adalora: only weights
    # under the final rank pattern (from step 8 - tfinal 1 = 7 on) are candidates, so the export has
    # exactly the target budget.
    candidates = [e for e in events if method not in ("ars", "adalora") or e.step >= 7]
    best = max(candidates, key=lambda e: e.metrics["dev_mcc"])
    assert result.best_step == best.step and result.dev_metrics["mcc"] == best.metrics["dev_mcc"]
    assert sum(e.is_best for e in events) >= 1 and candidates[0].is_best
    assert not any(e.is_best for e in events if e not in candidates)
    # test is evaluated exactly once, on the selected weights, and never reported as a dev event
    assert result.num_dev_evals == 4 and result.num_test_evals == 1
    assert len(result.test_predictions["labels"]) == 16 == result.test_metrics["n"]
    assert 0 < result.trainable_fraction <= 1
    assert (result.trainable_fraction == 1) == (method == "full")
    assert (result.artifact_dir / "lingo.json").is_file()
    if method in ("ars", "adalora"):
        assert result.rank_pattern and result.budget_history
        assert result.budget_history[-1]["budget"] <= result.budget_history[0]["budget"]
    else:
        assert result.rank_pattern is None


def test_gradient_accumulation_matches_large_batch(tiny_model_dir, gue_root, tmp_path):
    """accum 2 x bs 4 sees the same 8 examples per step as bs 8 -> (nearly) the same weights."""
    states = []
    for bs, accum in ((8, 1), (4, 2)):
        backend = TorchBackend("cpu", grad_accum=accum, max_grad_norm=1.0)
        captured = {}
        cfg = _cfg(tiny_model_dir, gue_root, tmp_path / f"b{bs}", batch_size=bs, grad_accum=accum, max_steps=3,
                   lr=1e-2, adapter={"method": "lora", "lora_dropout": 0.0})
        res = train(cfg, backend=backend,
                    hooks=TrainHooks(on_evaluate=lambda e, b=backend, c=captured: c.update(b.trainable_state())))
        assert res.total_steps == 3
        states.append(captured)
    assert states[0].keys() == states[1].keys()
    # Adam normalises each update to ~lr, so float summation-order noise shows up at a small fraction of
    # lr (1e-2): allow 1% of one step, while the weights moved by ~3 steps (lora_B starts at zero).
    for k, v in states[0].items():
        torch.testing.assert_close(v, states[1][k], atol=1e-4, rtol=1e-3)
    moved = max(float(v.abs().max()) for k, v in states[0].items() if "lora_B" in k)
    assert moved > 1e-2


def test_resume_equals_uninterrupted(tiny_model_dir, gue_root, tmp_path):
    """Train 12 steps with checkpoints; resume from step 6; the final weights match bit for bit.

    ARS schedule of 12 steps: warm-up 1, exploration drawn at every step from 2 to 8 (resample period 1),
    settled at 9, final selection at 10. After the resume at 6, steps 7 and 8 draw from the restored
    generator and step 10 selects from the restored importance EMAs."""
    kept = tmp_path / "kept"

    def run(out, resume_from=None):
        backend = TorchBackend("cpu", grad_accum=1, max_grad_norm=1.0)
        final, evs = {}, []

        def on_eval(e):
            evs.append(e)
            if e.step == 6 and resume_from is None:  # what Ray does with a reported checkpoint: persist it
                shutil.copytree(e.checkpoint_dir, kept)
            if e.step == 12:
                final.update(backend.trainable_state())

        cfg = _cfg(tiny_model_dir, gue_root, out, epochs=3, eval_every=3, save_checkpoints=True, lr=5e-3,
                   adapter={"method": "ars", "exploration": 0.3, "resample_every": 1})
        return train(cfg, backend=backend, hooks=TrainHooks(on_evaluate=on_eval), resume_from=resume_from), final, evs

    full, w_full, ev_full = run(tmp_path / "a")
    assert (kept / "trainer_state.json").is_file() and (kept / "controller.rank0.safetensors").is_file()
    resumed, w_res, ev_res = run(tmp_path / "b", resume_from=kept)
    assert [e.step for e in ev_res] == [9, 12]  # continued from the step after the checkpoint
    assert sum(h["regrown"] + h["dropped"] for h in full.budget_history) > 0  # exploration happened
    assert w_full.keys() == w_res.keys()
    for k in w_full:
        assert torch.equal(w_full[k], w_res[k]), k
    assert resumed.best_step == full.best_step
    assert resumed.rank_pattern == full.rank_pattern
    assert resumed.budget_history == full.budget_history
    assert resumed.test_predictions == full.test_predictions
    a = load_file(str(full.artifact_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.artifact_dir / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_budget_history_has_one_owner_the_controller(tiny_model_dir, gue_root, tmp_path, monkeypatch):
    """The run's budget history is the rank controller's record, not a copy the trainer keeps: the result
    holds the very list controller.history() returned, and every logged budget is that record's."""
    from lingo_core.tuners.ars import RankController

    returned = []
    history = RankController.history

    def spy(self):
        returned.append(history(self))
        return returned[-1]

    monkeypatch.setattr(RankController, "history", spy)
    logs = {}
    cfg = _cfg(tiny_model_dir, gue_root, tmp_path, epochs=2, lr=5e-3)
    result = train(cfg, hooks=TrainHooks(on_log=lambda s, m: logs.setdefault(s, m)))
    assert returned and result.budget_history is returned[-1]  # the controller's object, not a rebuilt copy
    assert [h["step"] for h in result.budget_history] == list(range(1, result.total_steps + 1)) == sorted(logs)
    for h in result.budget_history:
        assert {k: logs[h["step"]][k] for k in ("budget", "active_ranks", "regrown", "dropped")} == \
            {k: h[k] for k in ("budget", "active_ranks", "regrown", "dropped")}
