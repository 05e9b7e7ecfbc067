"""FASTA tasks in both conventions: labels in headers, and one file per class."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from lingo_core.data import DataError, TaskRegistry, load_split, load_task
from lingo_core.data.fasta import header_label


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())


def headers_task(root: Path) -> Path:
    folder = root / "promoters"
    write(folder / "train.fa", ">r1 label=1 chr1:10-20\nACGT\nacgt\n\n>r2|0\nGGGG\n>r3 src=x label=0\nTTNN\n")
    write(folder / "dev.fasta", ">d1|1\nAAAA\n>d2|0\nCCCC\n")
    write(folder / "test.fa.gz", ">t1 label=0\nCCCA\n>t2 label=1\nCCCT\n")
    return folder


def per_class_task(root: Path) -> Path:
    folder = root / "enh"
    for split in ("train", "dev", "test"):
        write(folder / split / "enhancer.fa", ">e1\nACGTAC\n>e2\nACG\nTAC\n")
        write(folder / split / "background.fna", ">b1\nTTTTTT\n")
    return folder


def test_header_label_forms():
    assert header_label("id label=3") == "3"
    assert header_label("id|7 free text") == "7"
    assert header_label("a|9 label=2") == "2"  # label= wins
    assert header_label("plain id") is None


def test_labels_in_headers_task_loads(tmp_path):
    headers_task(tmp_path)
    spec = TaskRegistry.from_root(tmp_path).get("promoters")
    assert spec.source == "fasta" and spec.num_labels == 2 and spec.seq_len_bp == 4
    splits = load_task(spec)
    assert splits["train"]["sequence"].to_pylist() == ["ACGTACGT", "GGGG", "TTNN"]  # multi-line, upper-cased
    assert splits["train"]["label"].to_pylist() == [1, 0, 0]
    assert splits["dev"]["label"].to_pylist() == [1, 0]
    assert splits["test"]["sequence"].to_pylist() == ["CCCA", "CCCT"]  # .fa.gz read like .fa


def test_one_file_per_class_task_loads(tmp_path):
    per_class_task(tmp_path)
    spec = TaskRegistry.from_root(tmp_path).get("enh")
    assert spec.source == "fasta"
    assert spec.label_names == ("background", "enhancer")  # sorted class file stems
    table = load_split(spec, "test")
    assert sorted(zip(table["sequence"].to_pylist(), table["label"].to_pylist(), strict=True)) == [
        ("ACGTAC", 1),
        ("ACGTAC", 1),
        ("TTTTTT", 0),
    ]


def test_mixed_root_scans_csv_and_both_fasta_conventions(tmp_path):
    headers_task(tmp_path)
    per_class_task(tmp_path)
    csv = tmp_path / "group" / "csvtask"
    for split in ("train", "dev", "test"):
        write(csv / f"{split}.csv.gz", "sequence,label\nAC,0\nGT,1\n")
    reg = TaskRegistry.from_root(tmp_path)
    assert reg.names() == ["enh", "group/csvtask", "promoters"]
    assert [t.source for t in reg] == ["fasta", "csv", "fasta"]
    assert [t.name for t in reg.select(["group/*"])] == ["group/csvtask"]


def test_header_without_label(tmp_path):
    folder = headers_task(tmp_path)
    write(folder / "dev.fasta", ">d1|1\nAAAA\n>d2 nolabel\nCCCC\n")
    spec = TaskRegistry.from_root(tmp_path).get("promoters")
    with pytest.raises(DataError, match=rf"{folder / 'dev.fasta'}:3: header '>d2 nolabel' has no label"):
        load_split(spec, "dev")


def test_bad_letter_names_record_header_line(tmp_path):
    folder = headers_task(tmp_path)
    write(folder / "dev.fasta", ">d1|1\nAAAA\n>d2|0\nCCCC\nCCXC\n")
    spec = TaskRegistry.from_root(tmp_path).get("promoters")
    with pytest.raises(DataError, match=rf"{folder / 'dev.fasta'}:3: letter 'X' at position 7"):
        load_split(spec, "dev")


def test_label_out_of_range_in_header(tmp_path):
    folder = headers_task(tmp_path)
    write(folder / "test.fa.gz", ">t1 label=0\nCCCA\n>t2 label=5\nCCCT\n")
    spec = TaskRegistry.from_root(tmp_path).get("promoters")
    with pytest.raises(
        DataError, match=rf"{folder / 'test.fa.gz'}:3: label 5 is out of range; expected 0..1"
    ):
        load_split(spec, "test")


def test_sequence_before_first_header(tmp_path):
    folder = headers_task(tmp_path)
    write(folder / "dev.fasta", "ACGT\n>d1|1\nAAAA\n")
    spec = TaskRegistry.from_root(tmp_path).get("promoters")
    with pytest.raises(DataError, match=rf"{folder / 'dev.fasta'}:1: sequence text before the first header"):
        load_split(spec, "dev")


def test_unknown_class_in_dev(tmp_path):
    folder = per_class_task(tmp_path)
    spec = TaskRegistry.from_root(tmp_path).get("enh")
    write(folder / "dev" / "silencer.fa", ">s1\nACGT\n")
    with pytest.raises(DataError, match=r"silencer.fa: class 'silencer' is not a train class"):
        load_split(spec, "dev")


def test_missing_fasta_split(tmp_path):
    folder = headers_task(tmp_path)
    (folder / "dev.fasta").unlink()
    spec = TaskRegistry.from_root(tmp_path).get("promoters")
    with pytest.raises(DataError, match=rf"{folder / 'dev.fa'}: split file not found"):
        load_split(spec, "dev")


def test_truncated_fasta_gzip(tmp_path):
    folder = headers_task(tmp_path)
    body = "".join(f">t{i} label={i % 2}\n{'ACGT' * 30}\n" for i in range(500))
    packed = gzip.compress(body.encode())
    (folder / "test.fa.gz").write_bytes(packed[: len(packed) // 2])
    spec = TaskRegistry.from_root(tmp_path).get("promoters")
    with pytest.raises(DataError, match=rf"{folder / 'test.fa.gz'}: unreadable or truncated gzip"):
        load_split(spec, "test")
