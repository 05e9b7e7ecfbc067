"""Job spec loading: every problem is reported with the file (or override) and the key path, before
any trial runs. Uses the real GUE registry in ../shared (task sizes come from its tasks.json)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.jobspec import Dist, JobSpecError, resolve_tasks
from orchestrator.validate import load_job

REPO = Path(__file__).resolve().parents[2]
JOBS = sorted((REPO / "jobs").glob("*.yaml"))

BASE = {
    "name": "t",
    "tasks": ["prom_core_tata", "tf/0"],
    "methods": ["ars", "lora"],
    "train": {"epochs": 1, "batch_size": 8, "max_train_samples": 256},
}


@pytest.fixture(autouse=True)
def _data_root(gue_root, monkeypatch):
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))


def write(tmp_path: Path, spec: dict, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def merged(**parts) -> dict:
    spec = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in parts.items():
        spec[key] = value
    return spec


def error_of(path: Path, overrides=()) -> str:
    with pytest.raises(JobSpecError) as info:
        load_job(path, list(overrides))
    return str(info.value)


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_shipped_job_validates(path):
    job = load_job(path)
    assert job.name == path.stem
    assert resolve_tasks(job)


def test_shipped_jobs_exist():
    assert {p.name for p in JOBS} >= {"default.yaml", "gue_all.yaml", "ars_ablation.yaml"}


def test_defaults_and_derived_fields(tmp_path):
    job = load_job(write(tmp_path, BASE))
    assert job.output_dir == "runs/t"
    assert job.mlflow.experiment == "t"
    assert job.tracking_uri.startswith("sqlite:///") and job.tracking_uri.endswith("runs/t/mlflow.db")
    assert job.scheduler.type == "asha" and job.scheduler.metric == "dev_mcc"
    assert job.deepspeed.zero_stage == 2 and job.deepspeed.bf16 == "auto"


def test_unknown_top_level_key_suggests(tmp_path):
    msg = error_of(write(tmp_path, merged(method=["ars"])))
    assert "job.yaml: method: unknown key" in msg and "'methods'" in msg


def test_unknown_nested_key_names_path(tmp_path):
    msg = error_of(write(tmp_path, merged(scheduler={"grace_perod": 2})))
    assert "scheduler.grace_perod: unknown key" in msg and "grace_period" in msg


def test_unknown_train_key_names_path(tmp_path):
    msg = error_of(write(tmp_path, merged(train={"epoch": 2})))
    assert "train.epoch: unknown TrainConfig key" in msg and "'epochs'" in msg
    msg = error_of(write(tmp_path, merged(train={"adapter": {"exploraton": 0.2}})))
    assert "train.adapter.exploraton: unknown TrainConfig key" in msg and "adapter.exploration" in msg


@pytest.mark.parametrize("where", ["train", "search"])
def test_renamed_sampling_key_says_what_to_write(tmp_path, where):
    spec = merged(train={"adapter": {"p_regrow": 0.2}}) if where == "train" else merged(
        search={"ars": {"adapter.p_drop": 0.1}})
    msg = error_of(write(tmp_path, spec))
    assert "adapter.exploration" in msg and ("p_regrow" in msg or "p_drop" in msg)


def test_unknown_key_via_override_names_override(tmp_path):
    msg = error_of(write(tmp_path, BASE), ["train.epoch=2"])
    assert "override 'train.epoch=2'" in msg and "train.epoch: unknown TrainConfig key" in msg
    msg = error_of(write(tmp_path, BASE), ["resources.gpus=1"])
    assert "override 'resources.gpus=1'" in msg and "resources.gpus: unknown key" in msg


def test_wrong_types_name_path(tmp_path):
    msg = error_of(write(tmp_path, merged(search={"ars": {"lr": "abc"}})))
    assert "search.ars.lr: expected a float or a search distribution" in msg and "'abc'" in msg
    msg = error_of(write(tmp_path, merged(resources={"workers_per_trial": "two"})))
    assert "resources.workers_per_trial: expected an integer, got 'two'" in msg
    msg = error_of(write(tmp_path, merged(train={"epochs": True})))
    assert "train.epochs: expected an integer" in msg
    msg = error_of(write(tmp_path, merged(seeds=[0, "x"])))
    assert "seeds[1]" in msg


def test_float_strings_from_yaml_are_floats(tmp_path):
    # PyYAML reads `1e-4` (no dot) as a string; it must still count as a float
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(BASE) + "search:\n  ars:\n    lr: {loguniform: [1e-4, 1e-2]}\n")
    job = load_job(path)
    assert job.search["ars"]["lr"] == Dist("loguniform", (1e-4, 1e-2))


def test_unknown_task_and_method_named(tmp_path):
    msg = error_of(write(tmp_path, merged(tasks=["prom_core_tata", "prom_core_tatta"])))
    assert "tasks[1]" in msg and "prom_core_tatta" in msg
    msg = error_of(write(tmp_path, merged(methods=["ars", "loar"])))
    assert "methods[1]: unknown method 'loar'" in msg and "'lora'" in msg
    msg = error_of(write(tmp_path, merged(search={"lroa": {"lr": 1e-3}})))
    assert "search.lroa: unknown method" in msg


def test_impossible_budgets_named(tmp_path):
    msg = error_of(write(tmp_path, merged(budgets={"prom_core_tata": {"init_r": 4, "target_r": 8}})))
    assert "budgets.prom_core_tata.target_r" in msg and "exceeds init_r" in msg
    msg = error_of(write(tmp_path, merged(budgets={"default": {"init_r": -1, "target_r": 1}})))
    assert "budgets.default.init_r: must be >= 1" in msg
    msg = error_of(write(tmp_path, merged(budgets={"prom_cor_*": {"init_r": 8, "target_r": 4}})))
    assert "budgets.prom_cor_*: matches no task" in msg
    msg = error_of(write(tmp_path, merged(search={"ars": {"adapter.init_r": 8}})))
    assert "search.ars.adapter.init_r" in msg and "budgets" in msg


def test_schedule_longer_than_training_named(tmp_path):
    # 256 rows / batch 8 = 32 steps; tinit 20 + tfinal 20 leaves no pruning phase
    spec = merged(search={"ars": {"adapter.tinit": 20, "adapter.tfinal": 20}})
    msg = error_of(write(tmp_path, spec))
    assert "search.ars.adapter.tinit" in msg and "total_steps (32)" in msg and "prom_core_tata" in msg
    # a distribution's extreme value is checked too
    spec = merged(search={"ars": {"adapter.tinit": {"randint": [1, 30]}}})
    assert "search.ars.adapter.tinit" in error_of(write(tmp_path, spec))


def test_search_range_checked_by_trainconfig(tmp_path):
    msg = error_of(write(tmp_path, merged(search={"ars": {"adapter.exploration": {"uniform": [0.0, 1.5]}}})))
    assert "search.ars.adapter.exploration" in msg and "probability" in msg
    msg = error_of(write(tmp_path, merged(search={"lora": {"lr": {"loguniform": [0, 1e-2]}}})))
    assert "search.lora.lr: loguniform needs low > 0" in msg
    msg = error_of(write(tmp_path, merged(search={"lora": {"lr": {"logunifrom": [1e-4, 1e-2]}}})))
    assert "search.lora.lr: unknown distribution 'logunifrom'" in msg
    msg = error_of(write(tmp_path, merged(search={"all": {"task": "tf/0"}})))
    assert "search.all.task: set by the job's top-level `tasks`" in msg


def test_overrides_apply(tmp_path):
    job = load_job(write(tmp_path, BASE), [
        "train.epochs=2", "methods=[ars, adalora]", "resources.workers_per_trial=2",
        "search.ars.adapter.exploration=0.3", "search.lora.lr={loguniform: [1e-4, 1e-3]}",
        "budgets.tf/0.init_r=6", "budgets.tf/0.target_r=3", "mlflow.tracking_uri=http://x:5000",
    ])
    assert job.train["epochs"] == 2
    assert job.methods == ["ars", "adalora"]
    assert job.resources.workers_per_trial == 2
    assert job.search["ars"]["adapter.exploration"] == 0.3
    assert job.search["lora"]["lr"] == Dist("loguniform", (1e-4, 1e-3))
    assert (job.budgets["tf/0"].init_r, job.budgets["tf/0"].target_r) == (6, 3)
    assert job.tracking_uri == "http://x:5000"


def test_bad_override_syntax(tmp_path):
    assert "expected key=value" in error_of(write(tmp_path, BASE), ["train.epochs"])


def test_to_dict_round_trip(tmp_path):
    for path in JOBS:
        job = load_job(path)
        again = load_job(write(tmp_path, job.to_dict(), "again.yaml"))
        assert again == job


def test_zero3_with_rank_methods_rejected(tmp_path):
    msg = error_of(write(tmp_path, merged(methods=["ars", "lora"], deepspeed={"zero_stage": 3})))
    assert "deepspeed.zero_stage" in msg and "ars" in msg
    job = load_job(write(tmp_path, merged(methods=["lora"], deepspeed={"zero_stage": 3})))
    assert job.deepspeed.zero_stage == 3


def test_plain_backend_needs_one_worker_per_trial(tmp_path):
    msg = error_of(write(tmp_path, merged(deepspeed={"enabled": False}, resources={"workers_per_trial": 2})))
    assert "deepspeed.enabled" in msg and "workers_per_trial" in msg
    job = load_job(write(tmp_path, merged(deepspeed={"enabled": False, "zero_stage": 3}, methods=["ars"])))
    assert job.deepspeed.enabled is False  # no ZeRO at all, so stage 3's limit on rank methods does not apply


# ---- issue 10: user errors in the job file and the command line give one line and exit 2 --------------


def tune_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from orchestrator.cli import main

    rc = main(["tune", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_invalid_utf8_job_file_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: t\ntasks: [tf/0]\nmethods: [lora]\n# caf\xe9\n")  # Latin-1 e-acute at byte 43
    rc, out, err = tune_cli([str(path), "--dry-run"], capsys)
    assert rc == 2 and out == ""
    assert err.strip() == f"lingo tune: error: {path}:4: not valid UTF-8 text (byte 43: 0xe9); save the file as UTF-8"


def test_duplicate_key_names_line_and_key_at_every_level(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: t\ntasks: [tf/0]\nmethods: [lora]\ntrain:\n  epochs: 1\n  max_train_samples: 64\n"
                    "train:\n  epochs: 3\n")
    assert error_of(path).startswith(f"{path}:7: train: duplicate key (first at line 4)")
    path.write_text("name: t\ntasks: [tf/0]\nmethods: [lora]\ntrain:\n  epochs: 1\n  epochs: 2\n")
    assert error_of(path).startswith(f"{path}:6: train.epochs: duplicate key (first at line 5)")
    path.write_text("name: t\ntasks: [tf/0]\nmethods: [lora]\nsearch: {lora: {lr: 1.0e-3, lr: 2.0e-3}}\n")
    assert "search.lora.lr: duplicate key" in error_of(path)
    # a merge key overriding what it merged is YAML's intent, not a duplicate
    path.write_text("name: t\ntasks: [tf/0]\nmethods: [lora]\nbase: &b {epochs: 1, max_train_samples: 64}\n"
                    "train: {<<: *b, epochs: 2}\n")
    assert "base: unknown key" in error_of(path)  # got past the YAML reader


def test_yaml_errors_and_python_tags_are_one_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: t\nx: !!python/object/apply:os.system ['echo hi']\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}:2: not valid YAML: could not determine a constructor") and "python tags are refused" in msg
    assert "\n" not in msg
    path.write_text("name: t\ntasks: [a\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}:3: not valid YAML:") and "flow sequence at line 2" in msg and "\n" not in msg
    msg = error_of(write(tmp_path, BASE), ["train={epochs: 1, epochs: 2}"])  # overrides are read as strictly
    assert "override 'train={epochs: 1, epochs: 2}': train.epochs: duplicate key" in msg and "\n" not in msg


def test_negative_seed_rejected_as_the_trainer_would(tmp_path):
    msg = error_of(write(tmp_path, merged(seeds=[0, -1], methods=["lora"])))
    assert msg == f"{tmp_path / 'job.yaml'}: seeds[1]: TrainConfig.seed=-1: expected an int >= 0"


def test_tune_overrides_before_or_after_flags(tmp_path, capsys):
    path = str(write(tmp_path, BASE))
    for argv in ([path, "--dry-run", "seeds=[7, 8]"], [path, "seeds=[7, 8]", "--dry-run"]):
        rc, out, err = tune_cli(argv, capsys)
        assert (rc, err) == (0, "")
        assert "8 trial(s)" in out  # 2 tasks x 2 methods x the 2 overridden seeds


def test_fractional_gpus_need_one_worker_per_trial(tmp_path):
    msg = error_of(write(tmp_path, merged(resources={"workers_per_trial": 2, "gpus_per_worker": 0.5})))
    assert "job.yaml: resources.gpus_per_worker: 0.5 with workers_per_trial=2" in msg
    assert "whole GPUs per worker (1 or more)" in msg and "workers_per_trial: 1" in msg
    assert load_job(write(tmp_path, merged(resources={"workers_per_trial": 1, "gpus_per_worker": 0.5})))
    assert load_job(write(tmp_path, merged(resources={"workers_per_trial": 2, "gpus_per_worker": 1})))


# ---- issue 9 item 5: one selection rule; scheduler.metric/mode may only name it ------------------------


def test_scheduler_metric_and_mode_other_than_the_selection_rule_exit_2(tmp_path, capsys):
    # {dev_loss, min} would have Tune rank trials one way while checkpoints and champions use dev MCC
    path = write(tmp_path, merged(scheduler={"type": "fifo", "metric": "dev_loss", "mode": "min"}))
    rc, out, err = tune_cli([str(path), "--dry-run"], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"lingo tune: error: {path}: scheduler.metric: expected 'dev_mcc', got 'dev_loss'")
    msg = error_of(write(tmp_path, merged(scheduler={"mode": "min"})))
    assert msg.startswith(f"{path}: scheduler.mode: expected 'max', got 'min'")
    assert "override 'scheduler.metric=dev_f1'" in error_of(write(tmp_path, BASE), ["scheduler.metric=dev_f1"])
    job = load_job(write(tmp_path, merged(scheduler={"metric": "dev_mcc", "mode": "max"})))  # the rule itself
    assert (job.scheduler.metric, job.scheduler.mode) == ("dev_mcc", "max")
    assert job.mlflow.allow_chance_champion is False  # the chance gate is on unless the job asks
