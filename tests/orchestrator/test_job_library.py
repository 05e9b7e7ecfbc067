"""The job library in jobs/: every file validates through `lingo tune JOB --dry-run` (the command users run
before a sweep), the library jobs say what they promise, and every command's --help is complete."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main as lingo
from orchestrator.validate import load_job

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((REPO_ROOT / "jobs").glob("*.yaml"))
LIBRARY = {"smoke", "gue", "compare-methods", "search-ars"}


@pytest.fixture(autouse=True)
def _data_root(gue_root: Path, monkeypatch) -> None:
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_job_validates_with_dry_run(path: Path, capsys) -> None:
    assert lingo(["tune", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    m = re.search(r"^(\d+) trial\(s\); output runs/(\S+);", out, re.M)
    assert m and int(m.group(1)) > 0 and m.group(2) == path.stem, out[-500:]
    header = path.read_text().splitlines()[:2]
    assert all(line.startswith("# ") for line in header), f"{path.name}: starts without a comment saying what it is"


def test_library_jobs_exist() -> None:
    assert LIBRARY | {"default", "main_gpu", "quality_gpu", "lr_select_gpu"} <= {p.stem for p in JOBS}


def test_smoke_is_tiny() -> None:
    """What CI submits to a Ray head: a couple of tasks, a few steps, nothing to resume."""
    job = load_job(REPO_ROOT / "jobs" / "smoke.yaml")
    assert len(job.tasks) == 2 and len(job.seeds) == 1 and job.num_samples == 1
    assert job.train["max_train_samples"] // job.train["batch_size"] <= 8
    assert job.train["max_eval_samples"] <= 16 and not job.train["save_checkpoints"]
    assert job.scheduler.type == "fifo" and job.methods == ["ars"]


def test_compare_methods_is_at_equal_budget() -> None:
    job = load_job(REPO_ROOT / "jobs" / "compare-methods.yaml")
    assert set(job.methods) == {"ars", "lora", "adalora", "prefix", "full"} and len(job.seeds) == 3
    assert job.train["adapter"]["lora_r"] == job.budgets["default"].target_r  # LoRA = ARS/AdaLoRA final rank
    assert job.scheduler.type == "fifo" and job.num_samples == 1


def test_search_ars_searches_the_sampling_knobs_with_asha() -> None:
    job = load_job(REPO_ROOT / "jobs" / "search-ars.yaml")
    assert job.methods == ["ars"] and job.scheduler.type == "asha" and job.num_samples > 1
    assert {"lr", "adapter.exploration", "adapter.sampling", "adapter.resample_every"} <= set(job.search["ars"])


COMMANDS = {"data": ["data", "report"], "train": ["train"], "tune": ["tune"], "submit": ["submit"],
            "jobs": ["jobs"], "report": ["report"]}


def test_lingo_help_lists_every_command(capsys) -> None:
    assert lingo(["--help"]) == 0
    out = capsys.readouterr().out
    for name, argv in COMMANDS.items():
        assert re.search(rf"^  lingo {' '.join(argv)}\b", out, re.M), name


@pytest.mark.parametrize("argv, options", [
    (["report"], ["--out", "--tracking-uri", "--run-id", "--no-log", "SWEEP_DIR|EXPERIMENT", "rank_allocation.png"]),
    (["jobs"], ["list", "status", "logs", "stop"]),
    (["jobs", "list"], ["--address"]),
    (["jobs", "status"], ["--address", "ID"]),
    (["jobs", "logs"], ["--address", "--follow", "ID"]),
    (["jobs", "stop"], ["--address", "ID"]),
    (["submit"], ["--address", "--wait", "--env", "--no-validate"]),
    (["tune"], ["--dry-run", "--resume", "--address"]),
    (["train"], ["--task", "--adapter.FIELD"]),
    (["data", "report"], ["--root", "--out", "--tasks"]),
])
def test_subcommand_help_is_complete(argv: list[str], options: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as done:
        lingo([*argv, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lingo {' '.join(argv)}")
    for option in options:
        assert option in out, (argv, option)


def test_main_gpu_is_the_gpu_sized_main_job() -> None:
    """What `make run` runs on a GPU machine: several shared tasks on their whole training splits, a few
    methods with the learning rates chosen on GPU, 8 trials sharing one GPU."""
    job = load_job(REPO_ROOT / "jobs" / "main_gpu.yaml")
    assert job.tasks == ["prom_300_all", "prom_core_all", "tf/0", "EMP/H3"] and job.methods == ["ars", "lora"]
    assert job.seeds == [0] and job.num_samples == 1
    assert job.train.get("max_train_samples") is None and job.train.get("max_eval_samples") is None  # whole splits
    assert (job.train["max_steps"], job.train["batch_size"], job.train["eval_every"]) == (600, 32, 100)
    assert job.resources.gpus_per_worker == 0.125 and job.scheduler.type == "fifo"
    assert job.search["ars"] == {"lr": 1.0e-3, "adapter.sampling": "uniform"} and job.search["lora"] == {"lr": 1.0e-3}


def test_make_run_picks_the_cpu_job_without_a_gpu() -> None:
    """scripts/main_job.sh on this CPU-only machine (the test's own interpreter stands for .venv's)."""
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "main_job.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "LINGO_PYTHON": sys.executable}, check=True)
    assert done.stdout.strip() == ("jobs/main_gpu.yaml" if torch.cuda.is_available() else "jobs/default.yaml")
    assert (REPO_ROOT / done.stdout.strip()).is_file()
    assert "$(bash scripts/main_job.sh)" in (REPO_ROOT / "Makefile").read_text()  # what `make run` runs


def test_main_job_check_fails_loudly_without_torch(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "main_job.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "LINGO_PYTHON": str(tmp_path / "no-python")})
    assert done.returncode != 0 and done.stdout == "" and "make setup" in done.stderr
