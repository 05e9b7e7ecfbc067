"""The run folder's one layout (lingo_core/run_folder.py): what write_result writes, what it reports, and
that copying what it reports rebuilds the folder (how the worker fills a trial's MLflow run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lingo_core.run_folder import RunFolder, write_result
from lingo_core.train.trainer import TrainResult

PATTERN = {"model.layers.0.self_attn.q_proj.lora_E.default": [True, False, True]}


def _result(root: Path, method: str = "ars", rank_pattern: dict | None = PATTERN) -> TrainResult:
    adapter = RunFolder(root).adapter
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "lingo.json").write_text("{}")  # what train() exports there
    return TrainResult(
        task="prom_core_tata", method=method, best_step=3, dev_metrics={"mcc": 0.5},
        test_metrics={"mcc": 0.25, "accuracy": 0.75, "confusion_matrix": [[3, 1], [0, 4]]},
        test_predictions={"labels": [0, 1], "preds": [0, 1], "probs": [[0.9, 0.1], [0.2, 0.8]]},
        label_names=["no", "yes"], budget_history=[{"budget": 2}], rank_pattern=rank_pattern,
        trainable_params=10, total_params=100, trainable_fraction=0.1, total_steps=4, num_dev_evals=2,
        num_test_evals=1, artifact_dir=adapter, model_identity={"name": "tiny"}, wall_time_s=1.5,
        config={"task": "prom_core_tata"})


def test_write_result_writes_the_layout_and_reports_it(tmp_path):
    result = _result(tmp_path)
    written = write_result(result, tmp_path)
    folder = RunFolder(tmp_path)
    assert written.paths() == [folder.adapter, folder.result, folder.predictions, folder.confusion_matrix,
                               folder.rank_heatmap]
    assert all(p.exists() for p in written.paths())
    summary = json.loads(folder.result.read_text())
    assert summary == {k: v for k, v in result.to_dict().items() if k != "test_predictions"}
    assert json.loads(folder.predictions.read_text()) == result.test_predictions
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writes leave no temp files


def test_copying_what_is_reported_rebuilds_the_folder(tmp_path):
    """The worker hands written.entries() to MLflow as (path, artifact folder): the trial's artifact tree
    must be the run folder's (adapter/, result.json at the top, plots/)."""
    run = tmp_path / "run"
    written = write_result(_result(run), run)
    copy = tmp_path / "copy"
    for path, folder in written.entries():
        dest = copy / (folder or "")
        if path.is_dir():
            shutil.copytree(path, dest)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / path.name)

    def tree(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    assert tree(copy) == tree(run)
    assert {"adapter/lingo.json", "result.json", "test_predictions.json", "plots/confusion_matrix.png",
            "plots/rank_heatmap.png"} == tree(copy)


def test_a_plot_without_data_is_removed_not_left_from_a_previous_run(tmp_path):
    write_result(_result(tmp_path, "ars"), tmp_path)
    assert RunFolder(tmp_path).rank_heatmap.is_file()
    written = write_result(_result(tmp_path, "lora", rank_pattern=None), tmp_path)  # same --output-dir
    assert not RunFolder(tmp_path).rank_heatmap.exists()  # would show the ARS run's ranks beside LoRA's result
    assert RunFolder(tmp_path).rank_heatmap not in written.paths()


def test_rank_other_than_zero_reports_no_adapter(tmp_path):
    result = _result(tmp_path)
    result.artifact_dir = None  # ranks other than 0 export nothing
    written = write_result(result, tmp_path)
    assert written.adapter is None and RunFolder(tmp_path).adapter not in written.paths()
