"""End to end: a real local Ray (2 CPUs) runs 3 GUE tasks x {ars, lora}, 2 DeepSpeed ZeRO-2 workers per
trial, on a tiny random LLaMA with the real tokenizer; everything is checked through MlflowClient."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import yaml

from orchestrator import tracking
from orchestrator.ray_utils import ray_daemon_pids, wait_gone

TASKS = ["prom_core_tata", "tf/0", "prom_300_tata"]  # the shortest prompts of GUE: fast on CPU


def write_job(tmp: Path, name: str, model: Path, *, tasks=TASKS, methods=("ars", "lora"), lr: float = 5e-3,
              workers: int = 2, mlflow_uri: str | None = None, epochs: int = 2) -> Path:
    job = {
        "name": name,
        "tasks": list(tasks),
        "methods": list(methods),
        "seeds": [0],
        "model": str(model),
        "output_dir": str(tmp / name),
        "max_concurrent_trials": 2,  # two trials side by side on the 2 CPUs
        "train": {"epochs": epochs, "batch_size": 8, "max_train_samples": 64, "max_eval_samples": 32,
                  "eval_every": 2, "log_every": 1, "save_checkpoints": True},
        "search": {"ars": {"lr": lr}, "lora": {"lr": lr, "adapter.lora_r": 2}},
        "budgets": {"default": {"init_r": 4, "target_r": 2}},
        "scheduler": {"type": "fifo"},  # every trial to the end: the test checks all six
        # 2 x 0.45 CPU workers + 0.1 for the trial driver = 1 CPU per trial, 2 trials on 2 CPUs
        "resources": {"workers_per_trial": workers, "cpus_per_worker": 0.45},
        "deepspeed": {"zero_stage": 2},
        # the tiny random LLaMA can sit at chance (dev MCC 0): let such a version be champion, so the
        # registry checks below always find one (the gate itself: tests/orchestrator/test_tracking.py)
        "mlflow": {"tracking_uri": mlflow_uri, "experiment": "itest", "allow_chance_champion": True},
        "ray": {"num_cpus": 2},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.integration
def test_sweep_end_to_end(tmp_path: Path, tiny_model_dir: Path, gue_root: Path, capsys) -> None:
    from lingo_core.artifacts import load_adapter
    from lingo_core.data.loading import load_split
    from lingo_core.data.task import TaskRegistry
    from orchestrator.sweep import run_sweep
    from orchestrator.validate import load_job

    t0 = time.perf_counter()
    job = load_job(write_job(tmp_path, "sweep1", tiny_model_dir))
    res = run_sweep(job)
    printed = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n[timing] first sweep (6 trials x 2 workers): {time.perf_counter() - t0:.0f} s")
    assert not wait_gone(ray_daemon_pids()), "the sweep left Ray daemons running"
    assert res.errors == 0

    c = tracking.client(res.tracking_uri)
    parent = c.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[tracking.SWEEP_TAG] == "sweep1"
    kids = tracking.child_runs(c, res.experiment_id, res.parent_run_id)
    assert len(kids) == 6
    assert sorted((k.data.tags["task"], k.data.tags["method"]) for k in kids) == sorted(
        (t, m) for t in TASKS for m in ("ars", "lora"))
    for k in kids:
        rid, method = k.info.run_id, k.data.tags["method"]
        assert k.info.status == "FINISHED"
        p = k.data.params
        assert p["task"] == k.data.tags["task"] and p["method"] == method and p["world_size"] == "2"
        assert p["train.lr"] == "0.005" and p["deepspeed.zero_stage"] == "2"
        dev = c.get_metric_history(rid, "dev_mcc")
        # 64 rows / 2 workers / batch 8 = 4 steps per epoch, 2 epochs, eval every 2 steps
        assert [m.step for m in sorted(dev, key=lambda m: m.step)] == [2, 4, 6, 8]
        m = k.data.metrics
        assert -1 <= m["test_mcc"] <= 1 and m["num_test_evals"] == 1
        assert m["best_dev_mcc"] == max(x.value for x in dev)
        assert "base_model.sha256" in k.data.tags
        # start-up phases, from the trial driver's entry (trial.py) through the worker to the first step
        assert {"startup/driver_ready_s", "startup/worker_start_s", "startup/first_step_s", "startup/total_s"} <= set(m)
        arts = {a.path for a in c.list_artifacts(rid, "adapter")} | {a.path for a in c.list_artifacts(rid, "plots")}
        assert {"adapter/lingo.json", "adapter/head.safetensors", "plots/confusion_matrix.png"} <= arts
        if method == "ars":
            budget = c.get_metric_history(rid, "rank_budget")
            assert len(budget) >= 4 and budget[0].value >= budget[-1].value  # pruned on the cubic schedule
            assert c.get_metric_history(rid, "active_ranks")
            assert "plots/rank_heatmap.png" in arts
            assert p["budget.init_r"] == "4" and p["budget.target_r"] == "2"

    # registry: one version per task, the champion is the dev-best child
    for task in TASKS:
        name = tracking.model_name(task)
        versions = c.search_model_versions(f"name='{name}'")
        assert len(versions) == 1
        champ = c.get_model_version_by_alias(name, tracking.CHAMPION)
        runs = {k.info.run_id: k for k in kids if k.data.tags["task"] == task}
        best_mcc = max(k.data.metrics["best_dev_mcc"] for k in runs.values())
        best = runs[champ.run_id]  # a child of this task holds the champion ...
        assert best.data.metrics["best_dev_mcc"] == best_mcc == float(champ.tags["dev_mcc"])  # ... the dev-best
        assert champ.tags["method"] == best.data.tags["method"]
        assert champ.tags["base_model.path"] == str(tiny_model_dir) and champ.tags["base_model.sha256"]
        assert math.isclose(float(champ.tags["test_mcc"]), best.data.metrics["test_mcc"])

    # summary written and logged to the parent; the table was printed
    assert {Path(p).name for p in res.summary.values()} == {"summary.md", "summary.parquet", "summary.png"}
    assert {a.path for a in c.list_artifacts(res.parent_run_id, "summary")} >= {"summary/summary.md"}
    assert "| prom_core_tata" in printed and "registered lingo-tf_0 v1" in printed

    # the registered model downloads; its adapter loads and predicts
    import mlflow.artifacts
    import torch

    name = tracking.model_name("tf/0")
    champ = c.get_model_version_by_alias(name, tracking.CHAMPION)
    local = mlflow.artifacts.download_artifacts(artifact_uri=c.get_model_version_download_uri(name, champ.version),
                                                dst_path=str(tmp_path / "download"), tracking_uri=res.tracking_uri)
    assert champ.source.endswith("/model")  # the version is the trial's MLflow pyfunc model
    from orchestrator.predict_cli import adapter_folder

    model, tok, meta = load_adapter(adapter_folder(Path(local)))  # the export inside it, unchanged
    spec = TaskRegistry.from_root(gue_root).get("tf/0")
    table = load_split(spec, "test").slice(0, 4)
    batch = tok.collate(tok.encode_table(table, spec.description))
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (4, spec.num_labels) and torch.isfinite(logits).all()
    assert labels.tolist() == table.column("label").to_pylist()

    # a second sweep into the same store: a new version per task; champion moves only if dev MCC improves
    t1 = time.perf_counter()
    job2 = load_job(write_job(tmp_path, "sweep2", tiny_model_dir, tasks=["tf/0"], methods=["lora"], lr=1e-6,
                              workers=1, mlflow_uri=res.tracking_uri, epochs=1))
    res2 = run_sweep(job2)
    with capsys.disabled():
        print(f"[timing] second sweep (1 trial): {time.perf_counter() - t1:.0f} s")
    reg = res2.registrations["tf/0"]
    assert reg.previous_champion == str(champ.version) and reg.version != str(champ.version)
    assert reg.champion == (reg.dev_mcc > float(champ.tags["dev_mcc"]))
    now = c.get_model_version_by_alias(name, tracking.CHAMPION)
    assert str(now.version) == (reg.version if reg.champion else str(champ.version))
    assert len(c.search_model_versions(f"name='{name}'")) == 2
    assert not wait_gone(ray_daemon_pids())


@pytest.mark.integration
def test_packed_sweep_trains_a_group_per_trial(tmp_path: Path, tiny_model_dir: Path, gue_root: Path,
                                               monkeypatch) -> None:
    """resources.tasks_per_trial 3: the three lora tasks train in one trial on one frozen base, each with
    its own MLflow run, summary row and champion; a task that fails leaves the other two finished."""
    from orchestrator.sweep import run_sweep
    from orchestrator.validate import load_job
    from orchestrator.worker import FAIL_TASK_ENV

    monkeypatch.setenv(FAIL_TASK_ENV, "tf/0")  # forwarded to the Ray workers by the sweep's runtime env
    t0 = time.perf_counter()
    job = load_job(write_job(tmp_path, "packed", tiny_model_dir, methods=["lora"], workers=1),
                   ["resources.tasks_per_trial=3", "deepspeed.enabled=false", "train.save_checkpoints=false"])
    res = run_sweep(job)
    print(f"\n[timing] packed sweep (1 trial, 3 tasks): {time.perf_counter() - t0:.0f} s")
    assert not wait_gone(ray_daemon_pids())
    assert res.errors == 0  # the group trial itself finished: one failed task does not fail it

    c = tracking.client(res.tracking_uri)
    kids = {k.data.tags["task"]: k for k in tracking.child_runs(c, res.experiment_id, res.parent_run_id)}
    assert set(kids) == set(TASKS)
    trial_ids = {k.data.tags[tracking.TRIAL_TAG].split("/", 1)[0] for k in kids.values()}
    assert len(trial_ids) == 1  # one Tune trial trained all three
    failed = kids.pop("tf/0")
    assert failed.info.status == "FAILED" and FAIL_TASK_ENV in failed.data.tags["lingo.error"]
    for task, k in kids.items():
        rid = k.info.run_id
        assert k.info.status == "FINISHED", task
        assert k.data.params["packed_tasks"] == "prom_core_tata,tf/0,prom_300_tata"  # by sequence length
        dev = sorted(c.get_metric_history(rid, "dev_mcc"), key=lambda m: m.step)
        assert [m.step for m in dev] == [2, 4, 6, 8, 10, 12, 14, 16]  # 64 rows / batch 8 x 2 epochs, every 2
        assert k.data.metrics["best_dev_mcc"] == max(m.value for m in dev) and k.data.metrics["num_test_evals"] == 1
        arts = {a.path for a in c.list_artifacts(rid, "adapter")}
        assert {"adapter/lingo.json", "adapter/adapter_model.safetensors"} <= arts
        champ = c.get_model_version_by_alias(tracking.model_name(task), tracking.CHAMPION)
        assert champ.run_id == rid
    assert not c.search_model_versions(f"name='{tracking.model_name('tf/0')}'")  # nothing finished to register
    assert "prom_300_tata" in Path(res.summary["md"]).read_text()
