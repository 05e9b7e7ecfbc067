"""CSV loading: each kind of bad input gives one DataError naming file, line and problem."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from lingo_core.data import DataError, DataOverlapWarning, TaskSpec, load_split, load_task

GOOD = "sequence,label\nACGT,0\nGGCA,1\nTTAN,1\n"


def make_task(folder: Path, train: str | bytes, *, gz: bool = False, num_labels: int = 2, **kw) -> TaskSpec:
    """A task folder whose train split is ``train`` (text, or raw bytes written as-is)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "train.csv.gz" if gz else "train.csv"
    if isinstance(train, str):
        data = train.encode()
        train = gzip.compress(data) if gz else data
    (folder / name).write_bytes(train)
    labels = tuple(f"c{i}" for i in range(num_labels))
    return TaskSpec("t", folder, num_labels, labels, 4, "test task", **kw)


def error_of(task: TaskSpec, split: str = "train") -> str:
    with pytest.raises(DataError) as err:
        load_split(task, split)
    return str(err.value)


# (file body, 1-based line, problem text expected in the message)
BAD_CSV = {
    "missing column": ("sequence\nACGT\n", 1, "missing column ['label']; found columns ['sequence']"),
    "extra column": ("sequence,label,extra\nACGT,1,x\nGGGG,0,y\n", 1, "extra column ['extra']"),
    "renamed column": ("seq,label\nACGT,1\n", 1, "expected exactly ['sequence', 'label']"),
    "ragged row": ("sequence,label\nACGT,1\nACGT,0,5\nGG,0\n", 3, "row has 3 fields"),
    "empty sequence": ("sequence,label\nACGT,1\n,0\n", 3, "empty sequence"),
    "bad letter": ("sequence,label\nACGT,1\nACGT,0\nACXT,0\n", 4, "letter 'X' at position 3"),
    "bad lower-case letter": ("sequence,label\nacgt,1\nacgu,0\n", 3, "letter 'u' at position 4"),
    "label not integer": ("sequence,label\nACGT,1\nACGT,1.5\n", 3, "label '1.5' is not an integer"),
    "label text": ("sequence,label\nACGT,yes\nACGT,1\n", 2, "label 'yes' is not an integer"),
    "empty label": ("sequence,label\nACGT,1\nACGT,\n", 3, "label '' is not an integer"),
    "label too big": (
        "sequence,label\nACGT,1\nACGT,0\nACGT,2\n",
        4,
        "label 2 is out of range; expected 0..1",
    ),
    "negative label": ("sequence,label\nACGT,-1\nACGT,0\n", 2, "label -1 is out of range"),
    "blank lines counted": ("sequence,label\nACGT,0\n\n\nACGT,1\nAC-T,0\n", 6, "letter '-'"),
    "earliest row wins": ("sequence,label\nACGT,0\nACGT,x\nACZT,1\n", 3, "not an integer"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["csv", "csv.gz"])
@pytest.mark.parametrize("case", list(BAD_CSV))
def test_bad_rows_name_file_line_and_problem(tmp_path, case, gz):
    body, line, problem = BAD_CSV[case]
    task = make_task(tmp_path, body, gz=gz)
    msg = error_of(task)
    name = "train.csv.gz" if gz else "train.csv"
    assert f"{tmp_path / name}:{line}: " in msg
    assert problem in msg


def test_single_class_split(tmp_path):
    msg = error_of(make_task(tmp_path, "sequence,label\nACGT,1\nGGGG,1\n"))
    assert str(tmp_path / "train.csv") in msg and "only one class (label 1) in 2 rows" in msg


def test_header_only(tmp_path):
    assert "no data rows" in error_of(make_task(tmp_path, "sequence,label\n"))


def test_empty_file(tmp_path):
    assert f"{tmp_path / 'train.csv'}:1: empty file" in error_of(make_task(tmp_path, ""))


def test_truncated_gzip_names_file(tmp_path):
    body = "sequence,label\n" + "".join(f"ACGTACGTAC{'ACGT'[i % 4]},{i % 2}\n" for i in range(2000))
    whole = gzip.compress(body.encode())
    task = make_task(tmp_path, whole[: len(whole) // 2], gz=True)
    msg = error_of(task)
    assert str(tmp_path / "train.csv.gz") in msg and "truncated gzip" in msg


def test_not_gzip_names_file(tmp_path):
    msg = error_of(make_task(tmp_path, b"sequence,label\nACGT,1\n", gz=True))  # plain text named .gz
    assert str(tmp_path / "train.csv.gz") in msg and "unreadable or truncated gzip" in msg


def test_missing_split_names_expected_path(tmp_path):
    task = make_task(tmp_path, GOOD)
    msg = error_of(task, "dev")
    assert str(tmp_path / "dev.csv.gz") in msg and str(tmp_path / "dev.csv") in msg and "not found" in msg


def test_both_csv_and_gz_is_ambiguous(tmp_path):
    task = make_task(tmp_path, GOOD)
    make_task(tmp_path, GOOD, gz=True)
    assert "both train.csv.gz and train.csv exist" in error_of(task)


def test_csv_and_gz_read_identically_and_lower_case_is_normalised(tmp_path):
    body = "sequence,label\nacgtn,0\nAcGt,1\nGGCA,1\n"
    plain = load_split(make_task(tmp_path / "a", body), "train")
    packed = load_split(make_task(tmp_path / "b", body, gz=True), "train")
    assert plain.equals(packed)
    assert plain["sequence"].to_pylist() == ["ACGTN", "ACGT", "GGCA"]
    assert plain["label"].to_pylist() == [0, 1, 1]


def test_column_order_does_not_matter(tmp_path):
    table = load_split(make_task(tmp_path, "label,sequence\n0,ACGT\n1,GGCA\n"), "train")
    assert table.column_names == ["sequence", "label"] and table["sequence"].to_pylist() == ["ACGT", "GGCA"]


def test_size_mismatch_with_tasks_json(tmp_path):
    task = make_task(tmp_path, GOOD, sizes={"train": 4})
    assert "has 3 rows; expected 4 as listed in tasks.json" in error_of(task)


def test_overlap_warning_counts_shared_sequences(tmp_path):
    task = make_task(tmp_path, "sequence,label\nAAAA,0\nCCCC,1\nGGGG,0\n")
    (tmp_path / "dev.csv").write_text("sequence,label\nAAAA,0\nTTTT,1\n")
    # lower-case "aaaa" must still count as the train sequence "AAAA"
    (tmp_path / "test.csv").write_text("sequence,label\naaaa,0\nCCCC,1\nTTTT,1\n")
    with pytest.warns(DataOverlapWarning, match="t: 2 of 3 test sequences also occur in train"):
        splits = load_task(task)
    assert {s: t.num_rows for s, t in splits.items()} == {"train": 3, "dev": 2, "test": 3}
