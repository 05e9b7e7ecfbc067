"""Task registry on the real GUE data: every task loads with its listed sizes; lookup and selection."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lingo_core.data import (
    DataError,
    DataOverlapWarning,
    TaskRegistry,
    TaskSpec,
    UnknownTaskError,
    default_data_root,
    load_split,
    load_task,
)

REPO = Path(__file__).resolve().parents[3]
# Read at collection time for parametrize ids; the same place the gue_root fixture looks.
_GUE = Path(os.environ.get("LINGO_DATA_ROOT", REPO.parent / "shared" / "data" / "gue"))
GUE_TASKS = json.loads((_GUE / "tasks.json").read_text()) if (_GUE / "tasks.json").is_file() else []


@pytest.fixture(scope="module")
def registry(gue_root) -> TaskRegistry:
    return TaskRegistry.from_root(gue_root)


def test_registry_lists_all_gue_tasks_in_file_order(registry, gue_root):
    listed = [e["name"] for e in json.loads((gue_root / "tasks.json").read_text())]
    assert registry.names() == listed
    assert len(registry) == 22


@pytest.mark.parametrize("entry", GUE_TASKS, ids=[e["name"] for e in GUE_TASKS])
def test_every_gue_task_loads_with_listed_sizes(registry, entry):
    task = registry.get(entry["name"])
    assert task.num_labels == entry["num_labels"] and task.seq_len_bp == entry["seq_len_bp"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataOverlapWarning)  # some published splits share a few sequences
        splits = load_task(task)
    for split, table in splits.items():
        assert table.num_rows == entry["sizes"][split], split
        assert table.schema == pa.schema([("sequence", pa.string()), ("label", pa.int64())])
        assert pc.all(pc.match_substring_regex(table["sequence"], "^[ACGTN]+$")).as_py()
        assert pc.min(table["label"]).as_py() >= 0
        assert pc.max(table["label"]).as_py() == task.num_labels - 1


def test_biggest_task_loads_fast(registry):
    task = registry.get("prom_core_all")
    load_split(task, "dev")  # warm up pyarrow's compute kernels once
    t0 = time.perf_counter()
    table = load_split(task, "train")
    assert time.perf_counter() - t0 < 1.0
    assert table.num_rows == 47356


def test_get_exact_and_unique_short_names(registry):
    assert registry.get("EMP/H3").name == "EMP/H3"
    assert registry.get("prom_core_tata").name == "prom_core_tata"
    assert registry.get("tf/0").name == "tf/0"
    assert registry.get("H3K4me3").name == "EMP/H3K4me3"
    assert registry.get("reconstructed").name == "splice/reconstructed"


def test_get_unknown_lists_close_matches(registry):
    with pytest.raises(KeyError) as err:
        registry.get("H3K4me9")
    assert "unknown task 'H3K4me9'" in str(err.value)
    assert "EMP/H3K4me3" in str(err.value).split("known tasks")[0]  # offered as a close match
    with pytest.raises(ValueError):  # CLIs catch ValueError for user mistakes
        registry.get("prom_core_tatta")


def test_get_ambiguous_short_name_names_both(tmp_path):
    def spec(name):
        return TaskSpec(name, tmp_path, 2, ("a", "b"), 10, "x")

    reg = TaskRegistry([spec("a/x"), spec("b/x")])
    with pytest.raises(UnknownTaskError, match=r"ambiguous: a/x, b/x"):
        reg.get("x")


def test_select_patterns(registry):
    assert len(registry.select(["all"])) == 22
    emp = registry.select(["EMP/*"])
    assert len(emp) == 10 and all(t.name.startswith("EMP/") for t in emp)
    assert [t.name for t in registry.select(["prom_core_*", "tf/0"])] == [
        "prom_core_all",
        "prom_core_notata",
        "prom_core_tata",
        "tf/0",
    ]
    assert len(registry.select(["prom/*"])) == 6  # globs also match the folder path
    # registry order and no duplicates, however the patterns overlap
    assert [t.name for t in registry.select(["tf/3", "tf/*", "H3"])] == ["EMP/H3"] + [
        f"tf/{i}" for i in range(5)
    ]


def test_select_without_match_names_the_pattern(registry):
    with pytest.raises(UnknownTaskError, match=r"pattern 'EMQ/\*' matches no task"):
        registry.select(["EMP/*", "EMQ/*"])
    with pytest.raises(UnknownTaskError, match="unknown task 'nope'"):
        registry.select(["nope"])


def test_label_names_and_descriptions(registry):
    assert registry.get("splice/reconstructed").label_names == ("acceptor", "donor", "neither")
    assert registry.get("prom_core_tata").label_names == ("non-promoter", "promoter")
    assert registry.get("prom_core_tata").description == "promoter detection (core, TATA box, 70 bp)"
    assert registry.get("prom_300_notata").description == "promoter detection (full, no TATA box, 300 bp)"
    assert registry.get("EMP/H3K4me3").description == "histone H3K4me3 mark (yeast, 500 bp)"
    assert registry.get("EMP/H3K4me3").label_names == ("unmodified", "H3K4me3 modified")
    assert registry.get("tf/0").description == "transcription factor binding site (human, set 0)"
    assert registry.get("tf/0").label_names == ("no binding site", "binding site")


def test_splice_label_convention_matches_the_data(registry):
    """Label 0 = acceptor (intron ends in AG before the centre), 1 = donor (GT after the centre)."""
    train = load_split(registry.get("splice/reconstructed"), "train").to_pandas()
    ag = train.sequence.str[198:200] == "AG"
    gt = train.sequence.str[200:202] == "GT"
    assert ag[train.label == 0].mean() > 0.95
    assert gt[train.label == 1].mean() > 0.95
    assert ag[train.label == 2].mean() < 0.6 and gt[train.label == 2].mean() < 0.6


def test_taskspec_validation(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        TaskSpec("t", tmp_path, 1, ("a",), 10, "x")
    with pytest.raises(ValueError, match="one name per label"):
        TaskSpec("t", tmp_path, 3, ("a", "b"), 10, "x")
    with pytest.raises(ValueError, match="source='bam'"):
        TaskSpec("t", tmp_path, 2, ("a", "b"), 10, "x", source="bam")
    with pytest.raises(ValueError, match="seq_len_bp=0"):
        TaskSpec("t", tmp_path, 2, ("a", "b"), 0, "x")
    spec = TaskSpec("t", str(tmp_path), 2, ["a", "b"], 10, "x", sizes={"train": 3})
    assert spec.path == tmp_path and spec.label_names == ("a", "b")
    assert {spec: 1}[spec] == 1  # hashable despite the sizes dict


def test_default_data_root(monkeypatch, tmp_path, gue_root):
    monkeypatch.setenv("LINGO_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("LINGO_DATA_ROOT")
    assert default_data_root() == (REPO.parent / "shared" / "data" / "gue").resolve()


def test_from_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        TaskRegistry.from_root(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no tasks under"):
        TaskRegistry.from_root(tmp_path)
    (tmp_path / "tasks.json").write_text('[{"name": "x", "path": "x", "num_labels": 1, "seq_len_bp": 5}]')
    with pytest.raises(DataError, match=r"tasks.json: task 'x': num_labels=1; .*at least 2"):
        TaskRegistry.from_root(tmp_path)


ENTRY = {"name": "a", "path": "a", "num_labels": 2, "seq_len_bp": 70}


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("num_labels", None, "key 'num_labels': expected a positive integer, got null"),
    ("num_labels", "two", "key 'num_labels': expected a positive integer, got \"two\""),
    ("num_labels", True, "key 'num_labels': expected a positive integer, got true"),
    ("sizes", [1, 2], "key 'sizes': expected a mapping of split -> row count"),
    ("sizes", {"train": -3}, "key 'sizes': expected a mapping of split -> row count"),
    ("path", 7, "key 'path': expected a folder path relative to the data root (a string), got 7"),
    ("label_names", "ab", "key 'label_names': expected a list of strings"),
])
def test_manifest_wrong_types_name_file_task_and_key(tmp_path, key, value, expected):
    (tmp_path / "tasks.json").write_text(json.dumps([ENTRY, {**ENTRY, "name": "b", key: value}]))
    with pytest.raises(DataError) as info:
        TaskRegistry.from_root(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'tasks.json'}: task 'b': {expected}")


def test_manifest_shape_errors_name_file_and_entry(tmp_path):
    manifest = tmp_path / "tasks.json"
    manifest.write_text(json.dumps([ENTRY, {**ENTRY, "name": 5}]))
    with pytest.raises(DataError, match=r"tasks.json: entry 1: key 'name': expected a non-empty string"):
        TaskRegistry.from_root(tmp_path)
    manifest.write_text(json.dumps([ENTRY, "b"]))
    with pytest.raises(DataError, match=r"tasks.json: entry 1: expected a task object"):
        TaskRegistry.from_root(tmp_path)
    manifest.write_text('[{"name": "a",\n "path": "a" "num_labels": 2}]')
    with pytest.raises(DataError, match=r"tasks.json:2: not valid JSON"):
        TaskRegistry.from_root(tmp_path)
    manifest.write_bytes(b'[{"name": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"tasks.json: not valid UTF-8 text \(byte 14\)"):
        TaskRegistry.from_root(tmp_path)


def test_scan_csv_folders_without_tasks_json(tmp_path):
    task = tmp_path / "mine" / "enhancers"
    task.mkdir(parents=True)
    rows = ["ACGTA,0", "ACG,2", "ACGTACG,1", "ACGTAC,1"]
    for split in ("train", "dev", "test"):
        (task / f"{split}.csv").write_text("sequence,label\n" + "\n".join(rows) + "\n")
    reg = TaskRegistry.from_root(tmp_path)
    spec = reg.get("enhancers")
    assert spec.name == "mine/enhancers" and spec.source == "csv"
    assert spec.num_labels == 3 and spec.label_names == ("label_0", "label_1", "label_2")
    assert spec.seq_len_bp == 5  # median of 3, 5, 6, 7 rounded down
    assert load_split(spec, "test")["label"].to_pylist() == [0, 2, 1, 1]
