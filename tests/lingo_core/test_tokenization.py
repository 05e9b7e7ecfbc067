"""Prompt tokenisation with the real SmolLM2 tokenizer on real GUE sequences."""

from __future__ import annotations

import json
import string
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lingo_core.tokenization import (
    MODES,
    TEMPLATE,
    LingoTokenizer,
    PromptTemplate,
    suggest_max_length,
)

SAMPLED_TASKS = ["EMP/H3", "prom_core_all", "prom_300_tata", "splice/reconstructed", "tf/0"]
DESCRIPTION = "promoter region of a human gene"  # stands in for TaskSpec.description
dna_strings = st.text(alphabet="ACGTN", min_size=1, max_size=300)


def _read_split(gue_root: Path, task: str, split: str = "dev") -> pa.Table:
    # Read the GUE layout directly: this module must not depend on the data package's internals.
    spec = next(t for t in json.loads((gue_root / "tasks.json").read_text()) if t["name"] == task)
    return pacsv.read_csv(gue_root / spec["path"] / f"{split}.csv.gz")


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module", params=MODES)
def lingo(request, smollm2_tokenizer) -> LingoTokenizer:
    return LingoTokenizer(smollm2_tokenizer, mode=request.param)


@pytest.fixture(scope="module")
def sampled_sequences(gue_root) -> list[str]:
    seqs: list[str] = []
    for task in SAMPLED_TASKS:
        column = _read_split(gue_root, task).column("sequence").to_pylist()
        seqs += column[:: max(1, len(column) // 40)]  # ~40 spread over the split
    return seqs


def test_template_segments_render_the_lingo_prompt():
    template = PromptTemplate()
    assert template.render("ACGT", "x") == "Domain: DNA x\nSequence: ACGT\nAnnotation:"
    assert template.prefix("x") + "ACGT" + template.suffix == TEMPLATE.format(
        description="x", sequence="ACGT"
    )


@pytest.mark.parametrize(
    "text", ["no slot here", "{sequence} and {sequence}", "{sequence} {description}", "{other} {sequence}"]
)
def test_invalid_templates_are_rejected(text):
    with pytest.raises(ValueError, match="template|description"):
        PromptTemplate(text)


def test_real_tokenizer_facts(smollm2_tokenizer):
    lingo = LingoTokenizer(smollm2_tokenizer, mode="bbpe")
    enc = lingo.encode("ACGTACGGT", "x")
    assert enc.input_ids[slice(*enc.dna_span)] == [3144, 23321, 3144, 55, 23321]
    assert lingo.pad_token_id == smollm2_tokenizer.eos_token_id  # <|im_end|>: SmolLM2 pads with eos
    onehot = LingoTokenizer(smollm2_tokenizer, mode="onehot")
    assert onehot.nucleotide_ids == {"A": 49, "C": 51, "G": 55, "T": 68, "N": 62}


def test_gue_sequences_round_trip(lingo, sampled_sequences, smollm2_tokenizer):
    assert len(sampled_sequences) > 150
    for dna in sampled_sequences:
        enc = lingo.encode(dna, DESCRIPTION)
        start, end = enc.dna_span
        assert _decode(smollm2_tokenizer, enc.input_ids[start:end]) == dna
        assert _decode(smollm2_tokenizer, enc.input_ids) == PromptTemplate().render(dna, DESCRIPTION)
        assert not enc.truncated
        assert lingo.pad_token_id not in enc.input_ids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dna=dna_strings)
def test_generated_dna_round_trips(smollm2_tokenizer, dna):
    for mode in MODES:
        enc = LingoTokenizer(smollm2_tokenizer, mode=mode).encode(dna, "x")
        start, end = enc.dna_span
        assert _decode(smollm2_tokenizer, enc.input_ids[start:end]) == dna
        assert _decode(smollm2_tokenizer, enc.input_ids) == PromptTemplate().render(dna, "x")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dna=dna_strings)
def test_onehot_is_one_token_per_nucleotide(smollm2_tokenizer, dna):
    lingo = LingoTokenizer(smollm2_tokenizer, mode="onehot")
    enc = lingo.encode(dna, "x")
    start, end = enc.dna_span
    assert end - start == len(dna)
    letter_of = {token_id: letter for letter, token_id in lingo.nucleotide_ids.items()}
    assert "".join(letter_of[i] for i in enc.input_ids[start:end]) == dna


def test_onehot_rejects_non_nucleotides(smollm2_tokenizer):
    lingo = LingoTokenizer(smollm2_tokenizer, mode="onehot")
    with pytest.raises(ValueError, match=r"'x' at position 3"):
        lingo.encode("ACGxT", "x")


def test_onehot_needs_single_letter_tokens():
    tokenizer = _char_tokenizer(string.ascii_lowercase + " :\n")  # a vocabulary without upper-case letters
    with pytest.raises(ValueError, match="single-character token for 'A'"):
        LingoTokenizer(tokenizer, mode="onehot")


def test_bos_is_added_once_around_the_whole_prompt():
    tokenizer = _char_tokenizer(string.printable, bos=True)
    bos = tokenizer.bos_token_id
    for mode in MODES:
        enc = LingoTokenizer(tokenizer, mode=mode).encode("ACGTN", "x")
        assert enc.input_ids[0] == bos and enc.input_ids.count(bos) == 1
        start, end = enc.dna_span
        assert tokenizer.decode(enc.input_ids[start:end]) == "ACGTN"
        assert tokenizer.decode(enc.input_ids, skip_special_tokens=True) == PromptTemplate().render(
            "ACGTN", "x"
        )


def test_unknown_mode_and_bad_max_length(smollm2_tokenizer):
    with pytest.raises(ValueError, match="unknown tokenization mode 'kmer'"):
        LingoTokenizer(smollm2_tokenizer, mode="kmer")
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        LingoTokenizer(smollm2_tokenizer, max_length=0)


@pytest.mark.parametrize("mode", MODES)
def test_truncation_cuts_dna_3prime_and_keeps_template(smollm2_tokenizer, sampled_sequences, mode):
    full = LingoTokenizer(smollm2_tokenizer, mode=mode)
    dna = max(sampled_sequences, key=len)
    whole = full.encode(dna, DESCRIPTION)
    template_len = len(whole.input_ids) - (whole.dna_span[1] - whole.dna_span[0])
    max_length = template_len + 20
    cut = LingoTokenizer(smollm2_tokenizer, mode=mode, max_length=max_length).encode(dna, DESCRIPTION)
    assert cut.truncated and len(cut.input_ids) == max_length
    start, end = cut.dna_span
    assert end - start == 20
    assert cut.input_ids[:start] == whole.input_ids[: whole.dna_span[0]]  # prefix intact
    assert cut.input_ids[end:] == whole.input_ids[whole.dna_span[1] :]  # suffix intact
    assert cut.input_ids[start:end] == whole.input_ids[whole.dna_span[0] : whole.dna_span[0] + 20]  # 5' kept
    assert dna.startswith(_decode(smollm2_tokenizer, cut.input_ids[start:end]))


def test_template_that_does_not_fit_is_an_error(smollm2_tokenizer):
    lingo = LingoTokenizer(smollm2_tokenizer, max_length=5)
    with pytest.raises(ValueError, match="template alone takes"):
        lingo.encode("ACGT", DESCRIPTION)


def test_no_max_length_means_no_truncation(smollm2_tokenizer):
    dna = "ACGT" * 2000
    enc = LingoTokenizer(smollm2_tokenizer, mode="onehot", max_length=None).encode(dna, "x")
    assert not enc.truncated and enc.dna_span[1] - enc.dna_span[0] == len(dna)


@pytest.mark.parametrize("mode", MODES)
def test_encode_table_warns_once_with_the_cut_count(smollm2_tokenizer, mode):
    table = pa.table({"sequence": ["ACGT" * 50, "AC", "GGGG" * 40, "T"], "label": [0, 1, 1, 0]})
    probe = LingoTokenizer(smollm2_tokenizer, mode=mode).encode("", "x")
    max_length = len(probe.input_ids) + 10  # room for 10 DNA tokens: only the two long sequences are cut
    lingo = LingoTokenizer(smollm2_tokenizer, mode=mode, max_length=max_length)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = lingo.encode_table(table, "x")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert f"2 of 4 sequences were cut to max_length={max_length} tokens" in messages[0]
    assert [row["label"] for row in rows] == [0, 1, 1, 0]
    assert all(len(row["input_ids"]) <= max_length for row in rows)


def test_encode_table_is_silent_when_nothing_is_cut_and_matches_encode(smollm2_tokenizer, gue_root):
    table = _read_split(gue_root, "tf/0").slice(0, 300)
    lingo = LingoTokenizer(smollm2_tokenizer, max_length=suggest_max_length(101, "bbpe"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = lingo.encode_table(table, DESCRIPTION)
    sequences = table.column("sequence").to_pylist()
    for row, dna in zip(rows, sequences, strict=True):
        assert row["input_ids"] == lingo.encode(dna, DESCRIPTION).input_ids  # batch path == single path
    assert [row["label"] for row in rows] == table.column("label").to_pylist()


@pytest.mark.parametrize("mode", MODES)
def test_suggested_max_length_fits_real_tasks(smollm2_tokenizer, gue_root, mode):
    for task, bp in [("prom_core_all", 70), ("tf/0", 101), ("prom_300_tata", 300), ("EMP/H3", 500)]:
        table = _read_split(gue_root, task)
        lingo = LingoTokenizer(smollm2_tokenizer, mode=mode, max_length=suggest_max_length(bp, mode))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lingo.encode_table(table, DESCRIPTION)
        cut = int(str(caught[0].message).split(" of ")[0]) if caught else 0
        assert cut <= 0.01 * table.num_rows, f"{task}/{mode}: {cut} of {table.num_rows} cut"
    assert suggest_max_length(500, "onehot") > 500 > suggest_max_length(500, "bbpe")
    assert suggest_max_length(70, "bbpe") % 8 == 0


def test_collate_right_pads(smollm2_tokenizer, sampled_sequences):
    lingo = LingoTokenizer(smollm2_tokenizer, mode="bbpe")
    dnas = [sampled_sequences[0][:30], sampled_sequences[1], sampled_sequences[2][:5]]
    rows = lingo.encode_table(pa.table({"sequence": dnas, "label": [1, 0, 1]}), DESCRIPTION)
    batch = lingo.collate(rows)
    lengths = [len(row["input_ids"]) for row in rows]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, max(lengths))
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0, 1]
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert batch["input_ids"][i, :n].tolist() == rows[i]["input_ids"]
        assert (batch["input_ids"][i, n:] == lingo.pad_token_id).all()  # pads only after the prompt
        assert lingo.pad_token_id not in rows[i]["input_ids"]  # ...and never inside it
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()


def test_collate_without_labels_and_mixed(smollm2_tokenizer):
    lingo = LingoTokenizer(smollm2_tokenizer)
    rows = lingo.encode_table(pa.table({"sequence": ["ACGT", "AC"]}), "x")
    assert "labels" not in lingo(rows)
    with pytest.raises(ValueError, match="some rows have a label"):
        lingo.collate([rows[0], {**rows[1], "label": 1}])
    with pytest.raises(ValueError, match="empty batch"):
        lingo.collate([])


def test_pad_token_in_description_is_rejected(smollm2_tokenizer):
    lingo = LingoTokenizer(smollm2_tokenizer)
    with pytest.raises(ValueError, match="contains the pad token"):
        lingo.encode("ACGT", f"x {smollm2_tokenizer.pad_token}")


def _char_tokenizer(alphabet: str, bos: bool = False):
    """A real (tiny) character-level fast tokenizer, for vocabularies SmolLM2 cannot stand in for."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(alphabet)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>" if bos else None
    )
