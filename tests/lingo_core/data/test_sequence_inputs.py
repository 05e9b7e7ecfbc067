"""Prediction inputs (issue 10 item 5): sequence files handed to lingo_core.data.sequences.read_sequences.
Each bad file is one DataError naming the file, the line (or Parquet row) and what was expected; fuzzing
the readers (and the labelled CSV/FASTA loaders) with arbitrary bytes finds no other exception."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lingo_core.data import DataError, TaskSpec, load_split
from lingo_core.data.sequences import read_sequences


def _write(path: Path, content: str | bytes | pa.Table) -> Path:
    if isinstance(content, pa.Table):
        pq.write_table(content, path)
        return path
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def test_every_format_reads_ids_and_upper_cases(tmp_path):
    want = {"id": ["a", "b"], "sequence": ["ACGT", "GGNN"]}
    files = [
        _write(tmp_path / "s.csv", "id,sequence,note\na,acgt,x\n\nb,GGNN,y\n"),
        _write(tmp_path / "s.csv.gz", "sequence,id\nacgt,a\nGGNN,b\n"),
        _write(tmp_path / "s.fa", ">a first\nAC\ngt\n\n>b\nGGNN\n"),
        _write(tmp_path / "s.parquet", pa.table({"sequence": ["acgt", "GGNN"], "id": ["a", "b"]})),
    ]
    for f in files:
        assert read_sequences(f).to_pydict() == want, f
    assert read_sequences(_write(tmp_path / "s.txt", "acgt\n\nGGNN\n")).to_pydict() == {"id": ["1", "2"],
                                                                                      "sequence": want["sequence"]}


# (file name, content, expected message after "<file>")
BAD = {
    "csv invalid letter": ("p.csv", "sequence\nACGT\n\nACUT\n", ":4: letter 'U' at position 3 of the sequence; "
                                                             "expected only A, C, G, T or N"),
    "csv empty file": ("p.csv", "", ":1: empty file; expected a header line with a 'sequence' column"),
    "csv wrong columns": ("p.csv", "seq,label\nACGT,1\n", ":1: no 'sequence' column (found ['seq', 'label'])"),
    "csv undecodable bytes": ("p.csv", b"sequence\nACGT\nAC\xffT\n", ":3: not UTF-8 text (byte 0xff)"),
    "csv empty sequence": ("p.csv", 'id,sequence\na,ACGT\nb,""\n', ":3: empty sequence"),
    "csv ragged row": ("p.csv", "id,sequence\na,ACGT\nb,AC,GT\n", ": not a readable CSV"),
    "csv.gz truncated": ("p.csv.gz", None, ": unreadable or truncated gzip"),
    "fasta invalid letter": ("p.fa", ">r1\nACGT\n>r2\nAC\nGXT\n", ":3: letter 'X' at position 4"),
    "fasta undecodable bytes": ("p.fasta", b">r1\nACGT\n>r\xe92\nACGT\n", ":3: not UTF-8 text (byte 0xe9)"),
    "fasta empty file": ("p.fa", "\n\n", ":1: no FASTA records"),
    "fasta text before header": ("p.fa", "ACGT\n>r1\nACGT\n", ":1: sequence text before the first header"),
    "parquet not parquet": ("p.parquet", b"PAR1 but not really", ": not a readable Parquet file"),
    "parquet wrong type": ("p.parquet", pa.table({"sequence": [1, 2]}), ": column 'sequence' has type int64; "
                                                                         "expected string"),
    "parquet null": ("p.parquet", pa.table({"sequence": ["ACGT", None]}), ": row 2: missing sequence (null)"),
    "parquet wrong columns": ("p.parquet", pa.table({"dna": ["ACGT"]}), ":1: no 'sequence' column"),
    "txt invalid letter": ("p.txt", "ACGT\n\nAC GT\n", ":3: letter ' ' at position 3"),
    "unknown type": ("p.xlsx", b"PK", ": unknown sequence file type; expected .csv"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sequence_file_names_file_line_and_expectation(tmp_path, case):
    name, content, expected = BAD[case]
    path = tmp_path / name
    if content is None:  # a gzip cut in half
        whole = gzip.compress(("sequence\n" + "".join(f"{'ACGT'[i % 4]}{'ACGT'[i * 7 % 13 % 4]}{'ACGT'[i % 3]}\n"
                                                          for i in range(3000))).encode())
        path.write_bytes(whole[: len(whole) // 2])
    else:
        _write(path, content)
    with pytest.raises(DataError) as info:
        read_sequences(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}{expected}"), msg
    assert "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"no\.csv: no such file; expected a sequence file"):
        read_sequences(tmp_path / "no.csv")


# ---- fuzzing: arbitrary bytes under every name give DataError or a valid table, nothing else ---------------

_FUZZ = settings(max_examples=40, derandomize=True, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
# bytes biased towards what parsers branch on: separators, quotes, headers, FASTA marks, letters, bad UTF-8
_PIECES = st.sampled_from([b"sequence", b"id", b"label", b",", b"\n", b"\r\n", b'"', b">", b"|", b"label=1",
                           b"ACGT", b"acgtn", b"X", b" ", b"0", b"1", b"-1", b"\xff", b"\xe9", b"\x00", b"PAR1"])
_CONTENT = st.one_of(st.binary(max_size=120), st.lists(_PIECES, max_size=30).map(b"".join))


@_FUZZ
@given(content=_CONTENT, name=st.sampled_from(["f.csv", "f.csv.gz", "f.fa", "f.fa.gz", "f.parquet", "f.txt"]))
def test_fuzz_sequence_readers_raise_only_data_error(content, name):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(gzip.compress(content) if name.endswith(".gz") and content[:1] != b"\xff" else content)
        try:
            table = read_sequences(path)
        except DataError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            return
        assert table.column_names == ["id", "sequence"] and table.num_rows > 0
        assert all(set(s) <= set("ACGTN") and s for s in table.column("sequence").to_pylist())


@_FUZZ
@given(content=_CONTENT, name=st.sampled_from(["train.csv", "train.csv.gz", "train.fa"]))
def test_fuzz_labelled_split_loaders_raise_only_data_error(content, name):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / name).write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
        task = TaskSpec("t", folder, 2, ("a", "b"), 4, "test task", source="fasta" if name.endswith(".fa") else "csv")
        try:
            table = load_split(task, "train")
        except DataError as e:
            assert "\n" not in str(e) and str(folder) in str(e)
            return
        assert set(table.column("label").to_pylist()) <= {0, 1}
