"""Every `lingo` command turns a bad argument into one line on stderr and exit 2 (issue 10 item 5).
In process through orchestrator.cli.main (argparse's exits included), plus one real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[2]
JOB = str(REPO / "jobs" / "default.yaml")


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse exits; main() returns for everything else
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(("argv", "expected"), [
    (["frobnicate"], "lingo: error: unknown command 'frobnicate'; expected one of data, train, tune, submit"),
    (["data", "summary"], "usage: lingo data report"),
    (["data", "report", "--sample", "many"], "lingo data report: error: argument --sample: invalid int value: 'many'"),
    (["data", "report", "--tasks", "no_such_task", "--out", "{tmp}/r"], "lingo data report: error: unknown task "
                                                                       "'no_such_task'"),
    (["train", "--lr", "abc"], "lingo train: error: lr: expected a float, got 'abc' (see lingo train --help)"),
    (["train", "--epochs"], "lingo train: error: argument --epochs: expected one argument"),
    (["train", "--config", "{tmp}/absent.yaml"], "lingo train: error: [Errno 2] No such file or directory"),
    (["train", "--task", "prom_core_tata", "--data-root", "{tmp}/absent", "--output-dir", "{tmp}/run"],
     "lingo train: error: data root {tmp}/absent is not a folder"),
    (["tune"], "lingo tune: error: the following arguments are required: job"),
    (["tune", "{tmp}/absent.yaml", "--dry-run"], "lingo tune: error: {tmp}/absent.yaml: cannot read: No such file"),
    (["tune", JOB, "--dry-run", "train.epochs=abc"], f"lingo tune: error: {JOB} (override 'train.epochs=abc'): "
                                                     "train.epochs"),
    (["tune", JOB, "--dry-run", "--resmue"], "lingo tune: error: unrecognized arguments: --resmue"),
    (["submit", JOB, "--env", "NOEQUALS", "--address", "http://127.0.0.1:9"], "lingo submit: error: argument "
                                                                              "--env: expected KEY=VALUE"),
    (["submit", "{tmp}/absent.yaml", "--address", "http://127.0.0.1:9"], "lingo submit: error: "),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, expected, tmp_path, capsys, gue_root, monkeypatch):
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc, out, err = run(argv, capsys)
    assert rc == 2, (rc, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err  # exactly one line
    assert err.startswith(expected.replace("{tmp}", str(tmp_path))), err
    assert "Traceback" not in err and out == ""


def test_console_script_subprocess_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "tune"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("lingo tune: error: the following arguments are required: job")
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("(see lingo tune --help)\n")
