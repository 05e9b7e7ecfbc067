"""The worker's end of a trial without Ray: it uploads what lingo_core's write_result reports, as it lies in
the run folder (result.json at the top under tracking.RESULT_ARTIFACT, plots/, adapter/), then the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from lingo_core.run_folder import RunFolder, write_result
from lingo_core.train.trainer import TrainResult
from orchestrator import tracking, worker
from orchestrator.worker import MODEL_ERROR_TAG, _log_result


class _Logger:
    """Records what the worker would put into the trial's journal (the model: see `_log_model` below)."""

    def __init__(self, model_error: Exception | None = None) -> None:
        self.artifacts_sent: list[tuple[Path, str | None]] = []
        self.tags_sent: dict = {}
        self.models: list[Path] = []
        self.model_error = model_error

    def metrics(self, metrics: dict, step: int) -> None:
        pass

    def tags(self, tags: dict) -> None:
        self.tags_sent.update(tags)

    def artifacts(self, pairs: list) -> None:
        self.artifacts_sent.extend(pairs)

    def model(self, adapter_dir: Path) -> None:
        if self.model_error is not None:
            raise self.model_error
        self.models.append(adapter_dir)


@pytest.fixture(autouse=True)
def _log_model(monkeypatch) -> None:
    """worker._log_model packages a real MLflow Model; here the logger records the call instead."""
    monkeypatch.setattr(worker, "_log_model", lambda logger, adapter_dir: logger.model(adapter_dir))


def _result(root: Path) -> TrainResult:
    adapter = RunFolder(root).adapter
    adapter.mkdir(parents=True)
    (adapter / "lingo.json").write_text("{}")
    return TrainResult(
        task="tf/0", method="lora", best_step=1, dev_metrics={"mcc": 0.1},
        test_metrics={"mcc": 0.2, "confusion_matrix": [[1, 0], [0, 1]]},
        test_predictions={"labels": [0, 1], "preds": [0, 1], "probs": [[1.0, 0.0], [0.0, 1.0]]},
        label_names=["a", "b"], budget_history=[], rank_pattern=None, trainable_params=1, total_params=2,
        trainable_fraction=0.5, total_steps=2, num_dev_evals=1, num_test_evals=1, artifact_dir=adapter,
        model_identity={"name": "tiny", "sha256": None}, wall_time_s=0.1)


def test_the_worker_uploads_exactly_what_write_result_reports(tmp_path: Path) -> None:
    result = _result(tmp_path)
    written = write_result(result, tmp_path)
    logger = _Logger()
    _log_result(logger, result, written)  # type: ignore[arg-type]
    assert logger.artifacts_sent == written.entries()
    assert (tmp_path / tracking.RESULT_ARTIFACT, None) in logger.artifacts_sent  # the name lingo report reads
    assert (tmp_path / "plots" / "confusion_matrix.png", "plots") in logger.artifacts_sent
    assert (tmp_path / tracking.ADAPTER_ARTIFACT, tracking.ADAPTER_ARTIFACT) in logger.artifacts_sent
    assert logger.models == [result.artifact_dir] and logger.tags_sent == {"base_model.name": "tiny"}


def test_a_model_that_cannot_be_packaged_tags_the_run_and_keeps_the_files(tmp_path: Path) -> None:
    result = _result(tmp_path)
    logger = _Logger(model_error=RuntimeError("no metadata"))
    _log_result(logger, result, write_result(result, tmp_path))  # type: ignore[arg-type]
    assert logger.tags_sent[MODEL_ERROR_TAG] == "RuntimeError: no metadata"
    assert (tmp_path / tracking.RESULT_ARTIFACT, None) in logger.artifacts_sent
