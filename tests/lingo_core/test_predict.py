"""lingo_core.predict on the tiny random LLaMA: several adapters over one base load give what each
adapter gives on its own (load_adapter), in any batch size; bases are checked; and the input readers."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lingo_core.artifacts import load_adapter, save_adapter
from lingo_core.data.loading import DataError
from lingo_core.data.sequences import read_sequences
from lingo_core.data.task import TaskSpec
from lingo_core.modeling import load_classifier, model_identity, resolve_model
from lingo_core.predict import PredictError, Predictor, PredictSettings, prediction_columns
from lingo_core.tokenization import TEMPLATE
from lingo_core.tuners.config import AdapterSettings
from lingo_core.tuners.methods import build_model

SEQS = ["ACGTACGTTTGACCA" * 3, "gggcccatatatgcgc", "TTTTAAAACCCCGGGGACGT" * 2, "ACGTN", "CAT" * 30]


def export(tiny_model_dir: Path, out: Path, method: str, labels: tuple[str, ...], mode: str = "bbpe",
           seed: int = 0) -> Path:
    """A 'trained' export: every trainable tensor moved off its init, saved as training saves it."""
    ref = resolve_model(str(tiny_model_dir))
    torch.manual_seed(seed)
    settings = AdapterSettings(method=method, init_r=4, target_r=2, lora_r=4)
    model, ctrl = build_model(load_classifier(ref, len(labels)), settings, total_steps=20, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    task = TaskSpec(name=f"task_{method}_{len(labels)}", path=out, num_labels=len(labels), label_names=labels,
                    seq_len_bp=50, description=f"{method} test task")
    return save_adapter(model, out, task=task, tokenizer_mode=mode, template=TEMPLATE,
                        base_identity=model_identity(ref), metrics={}, method=method,
                        rank_pattern=ctrl.rank_pattern() if ctrl is not None else None, max_length=48)


def alone(folder: Path) -> np.ndarray:
    model, tok, meta = load_adapter(folder)
    batch = tok.collate([{"input_ids": tok.encode(s.upper(), meta["description"]).input_ids} for s in SEQS])
    with torch.no_grad():
        return torch.softmax(model(**batch).logits, -1).numpy()


@pytest.fixture(scope="module")
def exports(tiny_model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {"ars": export(tiny_model_dir, root / "ars", "ars", ("no", "yes")),
            "lora": export(tiny_model_dir, root / "lora", "lora", ("a", "b", "c"), mode="onehot", seed=1),
            "full": export(tiny_model_dir, root / "full", "full", ("x", "y"), seed=2)}


def test_one_base_many_adapters_equals_each_alone(exports: dict[str, Path]) -> None:
    folders = [exports["ars"], exports["lora"], exports["full"]]
    calls: list[int] = []
    pred = Predictor(folders, PredictSettings(batch_size=2))
    probs = pred.predict(SEQS, progress=calls.append)
    assert sum(calls) == len(SEQS) and len(calls) == 3
    for folder, p in zip(folders, probs, strict=True):
        np.testing.assert_allclose(p, alone(folder), atol=1e-5)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    assert probs[0].shape == (5, 2) and probs[1].shape == (5, 3)
    assert not np.allclose(probs[0], probs[2], atol=1e-3)  # different exports, different answers
    # the base was read once: both PEFT trees sit on the same embedding tensor; full has its own
    emb = [a.model.get_input_embeddings().weight for a in pred.adapters]
    assert emb[0].data_ptr() == emb[1].data_ptr() != emb[2].data_ptr()
    # batch size and order only change the schedule, not the numbers
    again = Predictor([exports["lora"]], PredictSettings(batch_size=16)).predict(SEQS[::-1])[0]
    np.testing.assert_allclose(again[::-1], probs[1], atol=1e-5)
    cols = prediction_columns(pred.adapters[1].label_names, probs[1], prefix="t.")
    assert list(cols) == ["t.label", "t.label_name", "t.prob_a", "t.prob_b", "t.prob_c"]
    assert [pred.adapters[1].label_names[i] for i in cols["t.label"]] == cols["t.label_name"]
    with pytest.raises(DataError, match="row 1: letter 'X' at position 3"):
        pred.predict(["ACGT", "ACXGT"])


def test_bases_are_checked(exports: dict[str, Path], tmp_path: Path) -> None:
    wrong = shutil.copytree(exports["lora"], tmp_path / "wrong")
    meta = json.loads((wrong / "lingo.json").read_text())
    meta["base_model"]["sha256"] = "0" * 64
    (wrong / "lingo.json").write_text(json.dumps(meta))
    with pytest.raises(PredictError, match=r"wrong: .*lingo.json: base_model.sha256: base model mismatch.*sha256 0000"):
        Predictor([wrong], names=["wrong"])
    with pytest.raises(PredictError, match="models with different bases in one call: ars .* wrong"):
        Predictor([exports["ars"], wrong], names=["ars", "wrong"])
    with pytest.raises(ValueError, match="batch_size=0"):
        PredictSettings(batch_size=0)


def test_read_sequences_formats_and_errors(tmp_path: Path) -> None:
    fa = tmp_path / "in.fa.gz"
    fa.write_bytes(gzip.compress(b">s1 first\nACGT\nacgt\n\n>s2\nNNAC\n"))
    t = read_sequences(fa)
    assert t.column_names == ["id", "sequence"] and t.to_pydict() == {"id": ["s1", "s2"],
                                                                       "sequence": ["ACGTACGT", "NNAC"]}
    csv = tmp_path / "in.csv"
    csv.write_text("sequence,label\nACGT,1\nccgg,0\n")
    assert read_sequences(csv).to_pydict() == {"id": ["1", "2"], "sequence": ["ACGT", "CCGG"]}
    pq.write_table(pa.table({"id": ["a", "b"], "sequence": ["AC", "GT"], "x": [1, 2]}), tmp_path / "in.parquet")
    assert read_sequences(tmp_path / "in.parquet").to_pydict() == {"id": ["a", "b"], "sequence": ["AC", "GT"]}

    (tmp_path / "bad.fasta").write_text(">a\nACGT\n>b\nACGT\nAC-GT\n")
    with pytest.raises(DataError, match=r"bad.fasta:3: letter '-' at position 7"):
        read_sequences(tmp_path / "bad.fasta")
    (tmp_path / "bad.csv").write_text("id,sequence\n\nx,ACGT\ny,ACGU\n")
    with pytest.raises(DataError, match=r"bad.csv:4: letter 'U' at position 4"):
        read_sequences(tmp_path / "bad.csv")
    pq.write_table(pa.table({"sequence": ["AC", "G T"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: row 2: letter ' ' at position 2"):
        read_sequences(tmp_path / "bad.parquet")
    (tmp_path / "cols.csv").write_text("seq\nACGT\n")
    with pytest.raises(DataError, match=r"cols.csv:1: no 'sequence' column"):
        read_sequences(tmp_path / "cols.csv")
    (tmp_path / "in.json").write_text("[]")
    with pytest.raises(DataError, match=r"in.json: unknown sequence file type"):
        read_sequences(tmp_path / "in.json")
