"""Adapters saved with save_pretrained load with plain PEFT on a fresh base and give identical logits."""

from __future__ import annotations

import json
import warnings
from dataclasses import fields

import pytest
import torch
from peft import AdaLoraConfig, PeftModel
from tuner_helpers import adam, batch, build, train_steps

from lingo_core.tuners import AdapterSettings, build_model


def _logits(model, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def _reload(make_base, path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(make_base(), path)
    unexpected = [str(w.message) for w in caught if "Unexpected keyword" in str(w.message)]
    assert unexpected == []  # the config is plain AdaLoRA / LoRA / prefix: nothing PEFT does not know
    return loaded


def test_ars_saves_final_rank_pattern_and_reloads_with_plain_peft(make_base, tmp_path):
    model, controller = build(make_base, sampling="importance", exploration=0.2, resample_every=4)
    train_steps(model, controller, range(1, 41), adam(model))  # full schedule, frozen final pattern
    model.peft_config["default"].rank_pattern = controller.rank_pattern()  # what save_adapter sets
    ranks = controller.ranks()
    assert sum(ranks.values()) == 28 and len(set(ranks.values())) > 1  # non-uniform allocation
    inputs = batch(model, torch.Generator().manual_seed(9))
    expected = _logits(model, inputs)
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA" and saved["task_type"] == "SEQ_CLS"
    assert not {"exploration", "resample_every", "sampling", "svd_init"} & saved.keys()
    assert set(saved) <= {f.name for f in fields(AdaLoraConfig)}
    assert saved["rank_pattern"] == controller.rank_pattern()
    assert "score" in saved["modules_to_save"]

    loaded = _reload(make_base, tmp_path)
    assert type(loaded.peft_config["default"]) is AdaLoraConfig
    loaded_ranks = {n.rsplit(".lora_E", 1)[0]: p.shape[0] for n, p in loaded.base_model.model.named_parameters()
                    if "lora_E" in n}
    assert loaded_ranks == ranks  # PEFT resized every matrix to its allocated rank
    torch.testing.assert_close(_logits(loaded, inputs), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_baselines_reload_with_plain_peft(make_base, tmp_path, method):
    model, _ = build_model(make_base(), AdapterSettings(method=method, lora_dropout=0.0), 10, 0)
    train_steps(model, None, range(1, 4), adam(model))  # LoRA B starts at zero: make the adapter matter
    inputs = batch(model, torch.Generator().manual_seed(9))
    expected = _logits(model, inputs)
    base_logits = _logits(make_base(), inputs)
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # the adapter (and head) changed the output
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == {"lora": "LORA", "prefix": "PREFIX_TUNING"}[method]
    torch.testing.assert_close(_logits(_reload(make_base, tmp_path), inputs), expected, rtol=0, atol=1e-6)
