"""Tiny models and a real training loop for the tuner tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import OPTConfig, OPTForSequenceClassification


@pytest.fixture(autouse=True)
def _one_thread():
    """Two shared cores: intra-op threads only fight each other on these tiny matrices."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama_ref(tiny_model_dir):
    from lingo_core.model_ref import resolve_model

    return resolve_model(str(tiny_model_dir))


@pytest.fixture
def make_base(tiny_llama_ref) -> Callable[[str], torch.nn.Module]:
    """kind ("llama" | "opt") -> a fresh, identically initialised 2-label classifier."""

    def make(kind: str = "llama") -> torch.nn.Module:
        torch.manual_seed(1234)  # the head is initialised from global RNG: same base on every call
        if kind == "llama":
            from lingo_core.modeling import load_classifier

            return load_classifier(tiny_llama_ref, num_labels=2)
        config = OPTConfig(
            vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=1, num_labels=2,
        )
        return OPTForSequenceClassification(config).float()

    return make
