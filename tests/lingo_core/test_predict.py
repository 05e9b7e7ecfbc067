"""lingo_core.predict on the tiny random LLaMA: several adapters over one base load give what each
adapter gives on its own (load_adapter), in any batch size; the LoRA exports, routed through one
MultiTaskLoRA forward (ars/adalora folded into LoRA factors), give what the per-adapter path gives; bases are checked; and the input readers."""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
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
from lingo_core.model_identity import model_identity
from lingo_core.model_ref import resolve_model
from lingo_core.modeling import load_classifier
from lingo_core.predict import PredictError, Predictor, PredictSettings, prediction_columns
from lingo_core.tokenization import TEMPLATE
from lingo_core.tuners.config import AdapterSettings
from lingo_core.tuners.methods import build_model

SEQS = ["ACGTACGTTTGACCA" * 3, "gggcccatatatgcgc", "TTTTAAAACCCCGGGGACGT" * 2, "ACGTN", "CAT" * 30]


def export(tiny_model_dir: Path, out: Path, method: str, labels: tuple[str, ...], mode: str = "bbpe",
           seed: int = 0, template: str = TEMPLATE, max_length: int = 48, lora_r: int = 4,
           prune: bool = False, targets: list[str] | None = None) -> Path:
    """A 'trained' export: every trainable tensor moved off its init, saved as training saves it."""
    ref = resolve_model(str(tiny_model_dir))
    torch.manual_seed(seed)
    settings = AdapterSettings(method=method, init_r=4, target_r=2, lora_r=lora_r, target_modules=targets)
    model, ctrl = build_model(load_classifier(ref, len(labels)), settings, total_steps=20, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    task = TaskSpec(name=f"task_{method}_{len(labels)}_{seed}", path=out, num_labels=len(labels), label_names=labels,
                    seq_len_bp=50, description=f"{method} test task")
    pattern = ctrl.rank_pattern() if ctrl is not None else None
    if prune:  # what a run's rank allocation leaves: ranks cut to 2 of 4, the first matrix pruned away
        pattern = {name: [i < 2 and j > 0 for i in range(len(bits))] for j, (name, bits) in enumerate(pattern.items())}
    return save_adapter(model, out, task=task, tokenizer_mode=mode, template=template,
                        base_identity=model_identity(ref), metrics={}, method=method,
                        rank_pattern=pattern, max_length=max_length)


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
            "full": export(tiny_model_dir, root / "full", "full", ("x", "y"), seed=2),
            "adalora": export(tiny_model_dir, root / "adalora", "adalora", ("s", "t", "w"), seed=5),
            "prefix": export(tiny_model_dir, root / "prefix", "prefix", ("g", "h"), seed=6),
            "ars_pruned": export(tiny_model_dir, root / "ars_pruned", "ars", ("k", "l"), seed=7, prune=True),
            # two more LoRA tasks, each its own template, max length and rank (SEQS[4]: 90 bp, cut in "lora")
            "lora_b": export(tiny_model_dir, root / "lora_b", "lora", ("n", "p"), seed=3, max_length=128,
                             template="Task: {description}\nDNA: {sequence}\nLabel:", lora_r=2),
            "lora_c": export(tiny_model_dir, root / "lora_c", "lora", ("u", "v"), mode="onehot", seed=4,
                             max_length=40, template="{description} | {sequence} ->", lora_r=8)}


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
    # the base was read once: ars and lora are slots of the routed model, on the base's embedding; full has its own
    assert [a.slot for a in pred.adapters] == [0, 1, None] and pred.adapters[0].model is None
    emb = [pred.routed.backbone.get_input_embeddings().weight, pred.adapters[2].model.get_input_embeddings().weight]
    assert emb[0].data_ptr() != emb[1].data_ptr()
    # batch size and order only change the schedule, not the numbers
    again = Predictor([exports["lora"]], PredictSettings(batch_size=16)).predict(SEQS[::-1])[0]
    np.testing.assert_allclose(again[::-1], probs[1], atol=1e-5)
    cols = prediction_columns(pred.adapters[1].label_names, probs[1], prefix="t.")
    assert list(cols) == ["t.label", "t.label_name", "t.prob_a", "t.prob_b", "t.prob_c"]
    assert [pred.adapters[1].label_names[i] for i in cols["t.label"]] == cols["t.label_name"]
    with pytest.raises(DataError, match="row 1: letter 'X' at position 3"):
        pred.predict(["ACGT", "ACXGT"])


MIXED = ("lora", "ars", "lora_b", "full", "lora_c", "prefix", "adalora", "ars_pruned")  # 6 routed, 2 not


def _predict(pred: Predictor) -> tuple[list[np.ndarray], list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probs = pred.predict(SEQS)
    return probs, sorted(str(w.message) for w in caught if "were cut" in str(w.message))


def test_routed_lora_equals_the_per_adapter_path(exports: dict[str, Path]) -> None:
    """Three LoRA exports (different tasks, templates, tokenizations, max lengths, ranks, class counts) and
    ars/adalora (SVD form folded into factors; one ars export rank-pruned) in one routed forward per batch give the per-adapter path's
    probabilities and truncation warnings; prefix and full keep their own forward."""
    folders = [exports[k] for k in MIXED]
    routed = Predictor(folders, PredictSettings(batch_size=2))
    reference = Predictor(folders, PredictSettings(batch_size=2, routed=False))
    assert [a.slot for a in routed.adapters] == [0, 1, 2, None, 3, None, 4, 5] and reference.routed is None
    assert [a.model is None for a in routed.adapters] == [a.slot is not None for a in routed.adapters]
    forwards: list[int] = []
    routed.routed.backbone.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0] if i else 0))
    got, got_cut = _predict(routed)
    want, want_cut = _predict(reference)
    assert len(forwards) == 3  # one forward per batch of 2 (5 sequences), all six routed exports in it
    for name, g, w in zip(MIXED, got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, err_msg=name)  # fp32 sums in another order
    assert got_cut == want_cut and any("task_lora_3_1" in m for m in got_cut)  # "lora" cuts SEQS[4]
    for name in ("lora_b", "lora_c", "ars", "adalora", "ars_pruned"):
        np.testing.assert_allclose(got[MIXED.index(name)], alone(exports[name]), atol=1e-5, err_msg=name)


def test_lora_over_other_layers_keeps_the_per_adapter_path(exports: dict[str, Path], tmp_path: Path,
                                                             tiny_model_dir: Path) -> None:
    """Exports adapting different layers cannot share one routed model: each keeps its own forward."""
    qv = export(tiny_model_dir, tmp_path / "qv", "lora", ("a", "b"), seed=8, targets=["q_proj", "v_proj"])
    pred = Predictor([exports["lora"], qv], PredictSettings(batch_size=2))
    assert pred.routed is None and all(a.slot is None and a.model is not None for a in pred.adapters)
    probs = pred.predict(SEQS)
    for folder, p in zip((exports["lora"], qv), probs, strict=True):
        np.testing.assert_allclose(p, alone(folder), atol=1e-5)


@pytest.mark.parametrize("swap", ["heads", "factors"])
def test_a_misrouted_block_is_caught(exports: dict[str, Path], swap: str) -> None:
    """The equality above is sharp enough to see a routing mistake: swapping two LoRA slots' heads (both
    2-class) or one layer's factors makes the routed path disagree with the per-adapter path."""
    folders = [exports[k] for k in ("lora", "lora_b", "lora_c")]
    pred = Predictor(folders, PredictSettings(batch_size=8))
    want = Predictor(folders, PredictSettings(batch_size=8, routed=False)).predict(SEQS)
    with torch.no_grad():
        tensors = [pred.routed.head] if swap == "heads" else [pred.routed.routed_layers()[0][1].lora_B]
        for t in tensors:
            t[[1, 2]] = t[[2, 1]].clone()
    got = pred.predict(SEQS)
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)  # slot 0 untouched
    for k in (1, 2):
        with pytest.raises(AssertionError):
            np.testing.assert_allclose(got[k], want[k], atol=1e-4)


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
