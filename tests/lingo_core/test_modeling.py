"""Model resolution, loading and identity, on the real SmolLM2 files and a tiny random LLaMA on disk."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from lingo_core.model_identity import model_identity
from lingo_core.model_ref import DEFAULT_MODEL, BaseModelRef, resolve_model
from lingo_core.modeling import (
    DEFAULT_TARGET_MODULES,
    family,
    load_classifier,
    load_tokenizer,
    save_tiny_random_model,
)
from lingo_core.tokenization import LingoTokenizer


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- resolve_model ---------------------------------------------------------------------------------


def test_alias_resolves_to_the_packaged_gguf(smollm2_ref):
    assert smollm2_ref.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(smollm2_ref.path) / smollm2_ref.gguf_file).is_file()
    assert resolve_model("SmolLM2-135M") == BaseModelRef(
        "SmolLM2-135M", smollm2_ref.path, smollm2_ref.gguf_file
    )
    assert resolve_model(DEFAULT_MODEL) == smollm2_ref


def test_hf_folder_resolves_without_gguf(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir))
    assert ref.path == str(tiny_model_dir.resolve()) and ref.gguf_file is None and ref.is_local


def test_gguf_file_and_single_gguf_folder(smollm2_ref, tmp_path):
    gguf = Path(smollm2_ref.path) / smollm2_ref.gguf_file
    by_file = resolve_model(str(gguf))
    assert (by_file.path, by_file.gguf_file) == (smollm2_ref.path, smollm2_ref.gguf_file)
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(gguf)  # a link, not a 98 MB copy
    by_folder = resolve_model(str(folder))
    assert (by_folder.path, by_folder.gguf_file) == (str(folder.resolve()), "model.gguf")
    (folder / "other.gguf").symlink_to(gguf)
    with pytest.raises(ValueError, match="several .gguf files"):
        resolve_model(str(folder))


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="neither config.json nor a .gguf"):
        resolve_model(str(tmp_path))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .gguf"):
        resolve_model(str(tmp_path / "weights.txt"))


def test_hub_id_is_passed_through():
    ref = resolve_model("facebook/opt-350m")
    assert ref == BaseModelRef("facebook/opt-350m", "facebook/opt-350m", None)
    assert not ref.is_local


@pytest.mark.parametrize("missing", ["/no/such/model", "./no-such-dir", "models/absent.gguf", "a/b/c"])
def test_missing_local_path_is_a_clear_error(missing):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(missing)


def test_empty_names_are_rejected():
    with pytest.raises(ValueError, match="empty model name"):
        resolve_model("  ")
    with pytest.raises(ValueError, match="bare file name"):
        BaseModelRef("x", "/tmp", "sub/model.gguf")


# --- model_identity --------------------------------------------------------------------------------


def test_identity_of_gguf_is_the_file_hash(smollm2_ref):
    first = model_identity(smollm2_ref)
    assert first == model_identity(smollm2_ref)
    assert first["sha256"] == _sha256(Path(smollm2_ref.path) / smollm2_ref.gguf_file)
    assert (first["name"], first["path"], first["gguf_file"]) == (
        smollm2_ref.name,
        smollm2_ref.path,
        smollm2_ref.gguf_file,
    )
    start = time.perf_counter()
    model_identity(smollm2_ref)
    assert time.perf_counter() - start < 0.05  # cached per (path, mtime, size), not re-read


def test_identity_of_folders(tiny_model_dir, tmp_path):
    ref = resolve_model(str(tiny_model_dir))
    ident = model_identity(ref)
    assert ident == model_identity(ref) and ident["gguf_file"] is None
    assert ident["sha256"] == _sha256(tiny_model_dir / "model.safetensors")
    same = model_identity(resolve_model(str(save_tiny_random_model(tmp_path / "same"))))
    other = model_identity(resolve_model(str(save_tiny_random_model(tmp_path / "other", seed=1))))
    assert same["sha256"] == ident["sha256"]  # the seed fixes the weights, hence the hash
    assert other["sha256"] != ident["sha256"]
    # Rewriting a folder in place must not serve a stale cached hash.
    save_tiny_random_model(tmp_path / "same", seed=2)
    assert model_identity(resolve_model(str(tmp_path / "same")))["sha256"] != ident["sha256"]


def test_identity_of_sharded_folder_is_order_stable(tmp_path):
    for name, data in [("b.safetensors", b"second"), ("a.safetensors", b"first")]:
        (tmp_path / name).write_bytes(data)
    (tmp_path / "config.json").write_text("{}")
    lines = "".join(
        f"{hashlib.sha256(d).hexdigest()}  {n}\n"
        for n, d in [("a.safetensors", b"first"), ("b.safetensors", b"second")]
    )
    assert (
        model_identity(resolve_model(str(tmp_path)))["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    )


def test_identity_of_uncached_hub_id_has_no_hash():
    ident = model_identity(resolve_model("lingo-tests/not-a-cached-model"))
    assert ident == {
        "name": "lingo-tests/not-a-cached-model",
        "path": "lingo-tests/not-a-cached-model",
        "gguf_file": None,
        "sha256": None,
    }


# --- tokenizer / classifier ------------------------------------------------------------------------


def test_tokenizer_pads_right_with_eos(smollm2_tokenizer):
    assert smollm2_tokenizer.pad_token == smollm2_tokenizer.eos_token == "<|im_end|>"
    assert smollm2_tokenizer.padding_side == "right"
    assert len(smollm2_tokenizer) == 49152


def test_tokenizer_copies_are_independent(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir))
    first = load_tokenizer(ref)
    first.padding_side = "left"
    assert load_tokenizer(ref).padding_side == "right"


def test_missing_pad_token_falls_back_to_eos(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    reloaded = load_tokenizer(resolve_model(str(tmp_path)))
    assert reloaded.pad_token_id == reloaded.eos_token_id is not None


def test_tiny_model_is_fast_and_well_formed(tmp_path, tiny_model_dir):
    load_tokenizer(resolve_model(DEFAULT_MODEL))  # the tokenizer template is shared with the fixture
    start = time.perf_counter()
    out = save_tiny_random_model(tmp_path / "tiny", num_layers=3)
    assert time.perf_counter() - start < 5
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    with pytest.raises(ValueError, match="num_kv_heads"):
        save_tiny_random_model(tmp_path / "bad", num_heads=4, num_kv_heads=3)


def test_classifier_is_fp32_with_pad_id_and_batch_consistent(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir))
    torch.manual_seed(0)
    model = load_classifier(ref, num_labels=3).eval()
    tokenizer = load_tokenizer(ref)
    assert family(model) == "llama" and model.config.num_labels == 3
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert all(p.dtype == torch.float32 for p in model.parameters())

    lingo = LingoTokenizer(tokenizer, mode="bbpe")
    rows = [
        {"input_ids": lingo.encode(dna, "x").input_ids} for dna in ["ACGTACGGTTA" * 6, "ACG", "TTGCA" * 3]
    ]
    with torch.no_grad():
        batched = model(**lingo.collate(rows)).logits
        alone = torch.cat([model(**lingo.collate([row])).logits for row in rows])
    assert batched.shape == (3, 3)
    # Right padding + last-non-pad head: padding must not change any prompt's logits.
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1])  # the head does read different tokens


def test_classifier_rejects_bad_num_labels(tiny_model_dir):
    with pytest.raises(ValueError, match="num_labels"):
        load_classifier(resolve_model(str(tiny_model_dir)), num_labels=0)


# --- families and default adapter targets ----------------------------------------------------------


def _linear_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}


def _conv1d_names(model: nn.Module) -> set[str]:
    from transformers.pytorch_utils import Conv1D  # GPT-2 projections are Conv1D, not Linear

    return {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, Conv1D)}


def test_default_targets_exist_in_each_family(tiny_model_dir):
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        OPTConfig,
        OPTForSequenceClassification,
    )

    llama = load_classifier(resolve_model(str(tiny_model_dir)), num_labels=2)
    opt = OPTForSequenceClassification(
        OPTConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            word_embed_proj_dim=16,
            max_position_embeddings=32,
        )
    )
    gpt2 = GPT2ForSequenceClassification(
        GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    )
    for model, names in [
        (llama, _linear_names(llama)),
        (opt, _linear_names(opt)),
        (gpt2, _conv1d_names(gpt2)),
    ]:
        targets = DEFAULT_TARGET_MODULES[family(model)]
        assert set(targets) <= names, f"{family(model)}: {set(targets) - names} missing"
    assert (family(opt), family(gpt2)) == ("opt", "gpt2")
    assert (
        DEFAULT_TARGET_MODULES["mistral"]
        == DEFAULT_TARGET_MODULES["qwen2"]
        == DEFAULT_TARGET_MODULES["llama"]
    )


# --- the real model --------------------------------------------------------------------------------


@pytest.mark.integration
def test_real_smollm2_classifier(smollm2_ref, capfd):
    model = load_classifier(smollm2_ref, num_labels=2)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # De-quantised into a plain dense model, not flagged as GGUF-quantized (which blocks training/saving).
    assert not getattr(model, "is_quantized", False) and getattr(model.config, "quantization_config", None) is None
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 134.5e6) < 0.5e6, n_params
    assert model.config.pad_token_id == load_tokenizer(smollm2_ref).pad_token_id is not None
    assert "de-quantizing" not in capfd.readouterr().err  # progress bars silenced


@pytest.mark.integration
def test_gguf_is_dequantized_once_into_the_cache(smollm2_ref, tmp_path, monkeypatch):
    """Catches: a cached base that differs from the GGUF (weights, head init from the seed, tokenizer), a
    cache rebuilt on every load, or a cache that keeps the task head."""
    from safetensors import safe_open

    from lingo_core.modeling import CACHE_ENV, dense_ref

    prompt = ["Domain: DNA promoter\nSequence: ACGTTGCANNACGT\nAnnotation:", "A" * 40]
    monkeypatch.setenv(CACHE_ENV, "")  # the GGUF itself
    torch.manual_seed(0)
    direct = load_classifier(smollm2_ref, num_labels=2).state_dict()
    direct_ids = load_tokenizer(smollm2_ref)(prompt, padding=True)["input_ids"]
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    torch.manual_seed(0)
    cached = load_classifier(smollm2_ref, num_labels=2).state_dict()
    folder = Path(dense_ref(smollm2_ref).path)
    assert folder.parent == tmp_path / "dense" and (folder / "lingo-dense.json").is_file()
    assert direct.keys() == cached.keys() and all(torch.equal(direct[k], cached[k]) for k in direct)
    assert load_tokenizer(smollm2_ref)(prompt, padding=True)["input_ids"] == direct_ids
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("score")]  # the head is new for every task
    built = (folder / "model.safetensors").stat().st_mtime_ns
    load_classifier(smollm2_ref, num_labels=3)
    assert (folder / "model.safetensors").stat().st_mtime_ns == built  # read, not rebuilt
