"""TrainConfig validation, step arithmetic and (de)serialization."""

import json

import pytest

from lingo_core.train import TrainConfig
from lingo_core.tuners.config import AdapterSettings


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("lr", 0.0, "TrainConfig.lr=0.0"),
        ("batch_size", 0, "TrainConfig.batch_size=0"),
        ("tokenization", "kmer", "TrainConfig.tokenization='kmer'"),
        ("warmup_ratio", 1.5, "TrainConfig.warmup_ratio=1.5"),
        ("max_train_samples", -3, "TrainConfig.max_train_samples=-3"),
        ("eval_every", 0, "TrainConfig.eval_every=0"),
        ("save_checkpoints", "yes", "TrainConfig.save_checkpoints='yes'"),
    ],
)
def test_validation_names_field_and_value(field, value, needle):
    with pytest.raises(ValueError, match="expected") as e:
        TrainConfig(**{field: value})
    assert needle in str(e.value)


def test_round_trip_is_json_safe():
    cfg = TrainConfig(task="tf/0", epochs=2, adapter=AdapterSettings(method="lora", lora_r=4))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["adapter"]["lora_r"] == 4
    assert TrainConfig.from_dict(d) == cfg


def test_from_dict_rejects_unknown_keys_with_path():
    with pytest.raises(ValueError, match="unknown key 'adapter.rank'"):
        TrainConfig.from_dict({"adapter": {"method": "ars", "rank": 4}})
    with pytest.raises(ValueError, match="unknown key 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="AdapterSettings.method"):
        TrainConfig.from_dict({"adapter": {"method": "dora"}})


def test_total_steps_counts_world_accum_and_cap():
    cfg = TrainConfig(epochs=3, batch_size=8, grad_accum=2)
    # 100 examples -> 13 micro-batches -> 6 full accumulation groups per epoch
    assert cfg.steps_per_epoch(100) == 6
    assert cfg.total_steps(100) == 18
    # two ranks: 50 each -> 7 micro-batches -> 3 steps per epoch
    assert cfg.total_steps(100, world_size=2) == 9
    assert TrainConfig(epochs=3, max_steps=5).total_steps(1000) == 5
    with pytest.raises(ValueError, match="fewer than grad_accum"):
        TrainConfig(batch_size=8, grad_accum=4).steps_per_epoch(16)


def test_log_and_eval_cadence_has_one_owner() -> None:
    """train() and train_group ask TrainConfig when to log and evaluate (steps 1..total)."""
    cfg = TrainConfig(task="t", log_every=4, eval_every=3)
    assert [s for s in range(1, 11) if cfg.logs_at(s, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if cfg.evaluates_at(s, 5, 10)] == [3, 6, 9, 10]
    by_epoch = TrainConfig(task="t")  # eval_every None: at each epoch end
    assert [s for s in range(1, 12) if by_epoch.evaluates_at(s, 4, 11)] == [4, 8, 11]
