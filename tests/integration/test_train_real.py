"""ARS and LoRA on a real GUE task with the real SmolLM2-135M, on CPU: both learn, and ARS keeps up.

prom_core_tata: 70 bp core promoters with/without a TATA box, the shortest GUE prompts (~50 tokens),
and a signal an LM's byte-level tokens can pick up within a few dozen steps. Equal budget: LoRA rank 4;
ARS starts at rank 8 and prunes to an average of 4. Same data, steps, learning rate and seed.
Accuracy can be met by predicting the majority class; MCC cannot (a one-class predictor scores 0).

Measured here (2 cores, df43671): lora dev MCC 0.384 / test 0.329 (669 s), ars dev 0.384 / test 0.246
(507 s). At 80 steps of 8 both models are still near the start of learning, so the comparison is
coarse; the GPU proof in BENCHMARKS.md is the real one. At lr 2e-3 ars trailed by 0.039 (0.335 vs 0.374).
With adapter.orth_reg_weight 0.0 (f425b21, 2026-12-04) ars reached dev 0.323 / test 0.287 against lora's
0.384 / 0.329 and this test failed: why the library default stays 0.5 although a 600-step GPU dev screen
preferred 0.0 by 0.004.
"""

import pytest

from lingo_core.train import TrainConfig, TrainHooks, train

pytestmark = pytest.mark.integration

MIN_DEV_MCC = 0.2  # chance is 0 +- ~0.06 on 320 dev rows
ARS_MARGIN = 0.02  # ARS may trail LoRA by at most this much dev MCC at the same step budget


def _run(method: str, adapter: dict, gue_root, tmp_path):
    logs = []
    cfg = TrainConfig(
        task="prom_core_tata",
        data_root=str(gue_root),
        model="smollm2",
        epochs=1,
        max_train_samples=640,  # 80 steps of 8 (~1-2 s each on 2 idle cores): enough to learn
        max_eval_samples=320,  # dev MCC resolution ~0.03; eval ~10 s per split
        batch_size=8,
        lr=1e-3,  # the lr at which ARS and LoRA matched on GPU (prom_core_tata, 462 steps); 2e-3 overshoots
        log_every=8,
        output_dir=str(tmp_path / method),
        adapter={"method": method, **adapter},
    )
    result = train(cfg, hooks=TrainHooks(on_log=lambda s, m: logs.append(round(m["loss"], 3))))
    print(f"\n{method}: dev MCC {result.dev_metrics['mcc']:.3f} test MCC {result.test_metrics['mcc']:.3f} "
          f"trainable {result.trainable_params:,} {result.wall_time_s:.0f} s losses {logs}")
    assert result.total_steps == 80 and result.num_test_evals == 1
    assert (result.artifact_dir / "adapter_model.safetensors").is_file()
    return result


def test_ars_learns_as_well_as_lora(gue_root, tmp_path):
    lora = _run("lora", {"lora_r": 4}, gue_root, tmp_path)
    ars = _run("ars", {"init_r": 8, "target_r": 4}, gue_root, tmp_path)
    assert lora.dev_metrics["mcc"] > MIN_DEV_MCC
    assert ars.dev_metrics["mcc"] > MIN_DEV_MCC
    assert ars.dev_metrics["mcc"] >= lora.dev_metrics["mcc"] - ARS_MARGIN
    assert ars.test_metrics["mcc"] > 0.0 and lora.test_metrics["mcc"] > 0.0  # held-out: signal, not dev luck
    assert sum(sum(bits) for bits in ars.rank_pattern.values()) == 4 * len(ars.rank_pattern)  # target budget
    assert 0 < ars.trainable_fraction < 0.05
