"""`lingo data report` on a few real GUE tasks with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json

import pytest

from lingo_core.data import report as report_module
from lingo_core.data.report import build_report, format_table, main, write_report

SUBSET = ["prom_core_tata", "tf/0", "splice/*"]


@pytest.fixture(scope="module")
def report(gue_root, smollm2_tokenizer):
    return build_report(gue_root, SUBSET, tokenizer=smollm2_tokenizer, sample_size=300, seed=1)


def test_report_statistics(report, gue_root):
    listed = {e["name"]: e for e in json.loads((gue_root / "tasks.json").read_text())}
    assert [t.name for t in report.tasks] == ["prom_core_tata", "splice/reconstructed", "tf/0"]
    for t in report.tasks:
        assert t.rows == listed[t.name]["sizes"]
        assert [sum(c) for c in t.label_counts.values()] == list(t.rows.values())
        assert t.bp["median"] == listed[t.name]["seq_len_bp"]
        assert t.bbpe["n"] == 300 == len(t.bbpe_sample)
        # one-hot: one token per base plus a fixed template, so its spread equals the bp spread
        assert t.onehot["max"] - t.bp["max"] == t.onehot["median"] - t.bp["median"] > 0
        # byte-level BPE merges bases, so prompts are shorter than one token per base
        assert t.bbpe["median"] < t.onehot["median"]
    splice = report.tasks[1]
    assert len(splice.label_counts["train"]) == 3 and min(splice.label_counts["train"]) > 0
    assert report.tasks[0].test_in_train == 16  # known overlap of the published prom_core_tata split


def test_sample_is_deterministic(report, gue_root, smollm2_tokenizer):
    again = build_report(gue_root, ["prom_core_tata"], tokenizer=smollm2_tokenizer, sample_size=300, seed=1)
    assert (again.tasks[0].bbpe_sample == report.tasks[0].bbpe_sample).all()


def test_write_report_files(report, tmp_path):
    paths = write_report(report, tmp_path / "out")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "| prom_core_tata | 4904 | 613 | 613 |" in md and "sample of up to 300" in md
    data = json.loads(paths["json"].read_text())
    assert [t["name"] for t in data["tasks"]] == [t.name for t in report.tasks]
    assert data["tasks"][0]["bbpe"]["n"] == 300
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "report.json",
        "report.md",
        "token_lengths.png",
    ]


def test_table_is_aligned(report):
    lines = format_table(report).splitlines()
    assert len(lines) == 2 + len(report.tasks)
    assert len({len(line) for line in lines}) == 1  # every row padded to the same width
    assert "≤300 sampled" in lines[0]


def test_main_cli(gue_root, tmp_path, capsys, smollm2_tokenizer):
    out = tmp_path / "cli"
    rc = main(["--root", str(gue_root), "--out", str(out), "--tasks", "tf/1", "--sample", "50"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tf/1" in printed and "30672" in printed
    assert (out / "token_lengths.png").is_file() and (out / "report.md").is_file()


def test_main_unknown_task_is_a_clean_error(gue_root, tmp_path, capsys):
    rc = main(["--root", str(gue_root), "--out", str(tmp_path), "--tasks", "EMQ/*"])
    assert rc == 2
    assert "pattern 'EMQ/*' matches no task" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.fixture()
def no_work(monkeypatch):
    """Fails the test if the report starts computing: the checks must come before the minutes of work."""
    def refuse(*args, **kwargs):
        raise AssertionError("build_report ran before the --out check")

    monkeypatch.setattr(report_module, "build_report", refuse)


@pytest.mark.parametrize("below", ["", "sub/dir"])
def test_out_that_is_a_file_fails_before_any_work(gue_root, tmp_path, capsys, no_work, below):
    existing = tmp_path / "report.txt"
    existing.write_text("keep me")
    out = existing / below if below else existing
    rc = main(["--root", str(gue_root), "--out", str(out), "--tasks", "tf/0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    expected = "is a file, not a folder" if not below else f"{existing} is a file, so the folder cannot be made"
    assert err.startswith(f"lingo data report: error: --out {out}: {expected}; expected a folder for report.md")
    assert existing.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_bad_tasks_json_is_one_line_naming_file_task_and_key(tmp_path, capsys):
    root, out = tmp_path / "root", tmp_path / "out"
    (root / "a").mkdir(parents=True)
    (root / "tasks.json").write_text(json.dumps([{"name": "a", "path": "a", "num_labels": "two", "seq_len_bp": 70}]))
    rc = main(["--root", str(root), "--out", str(out)])
    assert rc == 2
    assert capsys.readouterr().err == (f"lingo data report: error: {root / 'tasks.json'}: task 'a': key 'num_labels': "
                                       'expected a positive integer, got "two"\n')
    assert not out.exists()
