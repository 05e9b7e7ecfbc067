"""save_adapter -> load_adapter round trip (identical logits) for every method, base-model hash check,
and the PNG plots."""

import json

import pytest
import torch

from lingo_core.artifacts import load_adapter, save_adapter
from lingo_core.data.task import TaskSpec
from lingo_core.model_identity import model_identity
from lingo_core.model_ref import resolve_model
from lingo_core.modeling import load_classifier, load_tokenizer
from lingo_core.plots import confusion_matrix_png, rank_grid, rank_heatmap
from lingo_core.tokenization import TEMPLATE, LingoTokenizer
from lingo_core.tuners.config import AdapterSettings
from lingo_core.tuners.methods import build_model

SEQS = ["ACGTACGTTTGACCA" * 3, "GGGCCCATATATGCGC", "TTTTAAAACCCCGGGGACGT" * 2]


def _task(tmp_path):
    return TaskSpec(name="prom_core_tata", path=tmp_path, num_labels=2, label_names=("non-promoter", "promoter"),
                    seq_len_bp=70, description="promoter detection")


def _logits(model, tok):
    batch = tok.collate([{"input_ids": tok.encode(s, "promoter detection").input_ids} for s in SEQS])
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _trained_like(tiny_model_dir, method):
    ref = resolve_model(str(tiny_model_dir))
    torch.manual_seed(0)
    settings = AdapterSettings(method=method, init_r=4, target_r=2, lora_r=4, num_virtual_tokens=4)
    model, ctrl = build_model(load_classifier(ref, 2), settings, total_steps=20, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stand-in for training: every trainable tensor moves away from its init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    pattern = None
    if ctrl is not None:  # prune every other triplet, as an allocation would (E zeroed where masked)
        pattern = {k: [i % 2 == 0 for i in range(len(v))] for k, v in ctrl.rank_pattern().items()}
        params = dict(model.base_model.model.named_parameters())
        for key, bits in pattern.items():
            e = params[f"{key}.default"]
            with torch.no_grad():
                e[~torch.tensor(bits)] = 0.0
    return ref, model, pattern


@pytest.mark.parametrize("method", ["ars", "lora", "adalora", "prefix", "probe", "full"])
def test_save_load_identical_logits(method, tiny_model_dir, tmp_path):
    ref, model, pattern = _trained_like(tiny_model_dir, method)
    tok = LingoTokenizer(load_tokenizer(ref), mode="bbpe", max_length=64)
    before = _logits(model, tok)
    out = save_adapter(model, tmp_path / "export", task=_task(tmp_path), tokenizer_mode="bbpe", template=TEMPLATE,
                       base_identity=model_identity(ref), metrics={"test": {"mcc": 0.5}}, method=method,
                       rank_pattern=pattern, max_length=64)
    files = {p.name for p in out.iterdir()}
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)  # nothing to unpickle
    assert "lingo.json" in files and ("model.safetensors" in files) == (method == "full")
    assert ("adapter_model.safetensors" in files) == (method in ("ars", "lora", "adalora", "prefix"))
    meta = json.loads((out / "lingo.json").read_text())
    assert meta["label_names"] == ["non-promoter", "promoter"] and meta["method"] == method
    assert meta["base_model"]["sha256"] == model_identity(ref)["sha256"]
    if pattern is not None:
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert {k: sum(v) for k, v in cfg["rank_pattern"].items()} == {k: sum(v) for k, v in pattern.items()}
    loaded, tok2, meta2 = load_adapter(out)
    assert meta2["tokenization"] == "bbpe" and tok2.max_length == 64
    torch.testing.assert_close(_logits(loaded, tok2), before, atol=1e-5, rtol=1e-5)
    # and not trivially: the exported model differs from a freshly loaded base
    torch.manual_seed(123)
    fresh = load_classifier(ref, 2)
    assert not torch.allclose(_logits(fresh, tok2), before, atol=1e-3)


def test_load_refuses_wrong_base_weights(tiny_model_dir, tmp_path):
    ref, model, _ = _trained_like(tiny_model_dir, "lora")
    out = save_adapter(model, tmp_path / "export", task=_task(tmp_path), tokenizer_mode="bbpe", template=TEMPLATE,
                       base_identity={**model_identity(ref), "sha256": "0" * 64}, metrics={}, method="lora")
    with pytest.raises(ValueError, match="base model mismatch"):
        load_adapter(out)


def test_plots(tmp_path):
    pattern = {f"model.layers.{i}.self_attn.{m}.lora_E": [True] * (i + 1) + [False] * (3 - i)
               for i in range(3) for m in ("q_proj", "v_proj")}
    grid, layers, modules = rank_grid(pattern)
    assert layers == [0, 1, 2] and modules == ["q_proj", "v_proj"]
    assert grid[:, 0].tolist() == [1, 2, 3]
    png = rank_heatmap(pattern, tmp_path / "ranks.png")
    cm = confusion_matrix_png([[5, 1], [2, 7]], ["a", "b"], tmp_path / "cm.png")
    for p in (png, cm):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="does not match"):
        confusion_matrix_png([[1, 2]], ["a", "b"], tmp_path / "bad.png")
