"""The run folder: what one finished training run leaves in its `output_dir`, laid out in one place.

Every writer and reader of a run folder takes the names from here: `train()` writes the export and the
checkpoints, `write_result` writes the rest, and both `lingo train` and the orchestrator's Ray worker call
it; the worker then uploads exactly what it reports, so a trial's MLflow artifacts are this same tree.

  <output_dir>/
    adapter/                   the export (lingo_core.artifacts.save_adapter)          train(), rank 0
    checkpoints/step-NNNNNNN/  resumable checkpoints (lingo_core.train.checkpoint)     train(), save_checkpoints
    result.json                TrainResult.to_dict() without the predictions             write_result()
    test_predictions.json      labels, preds, probs of the one test pass                 write_result()
    plots/confusion_matrix.png test confusion matrix                                     write_result()
    plots/rank_heatmap.png     final rank per adapted matrix (ars, adalora only)         write_result()
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lingo_core.storage import atomic_file

if TYPE_CHECKING:
    from lingo_core.train.trainer import TrainResult

ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
RESULT_FILE = "result.json"
"""The run's summary: its MLflow artifact name too (orchestrator.tracking.RESULT_ARTIFACT re-exports it)."""
PREDICTIONS_FILE = "test_predictions.json"
PLOTS_DIR = "plots"
CONFUSION_PNG = "confusion_matrix.png"
RANK_HEATMAP_PNG = "rank_heatmap.png"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (nothing is created by naming them)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def adapter(self) -> Path:
        return self.root / ADAPTER_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS_FILE

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def confusion_matrix(self) -> Path:
        return self.plots / CONFUSION_PNG

    @property
    def rank_heatmap(self) -> Path:
        return self.plots / RANK_HEATMAP_PNG


@dataclass(frozen=True)
class WrittenRun:
    """What `write_result` left in a run folder, for callers that copy it elsewhere (MLflow)."""

    root: Path
    adapter: Path | None  # None: this process exported nothing (ranks other than 0)
    result: Path
    predictions: Path
    plots: tuple[Path, ...]

    def paths(self) -> list[Path]:
        """Every written file or folder: the adapter export (a folder), then the files."""
        return [*([self.adapter] if self.adapter is not None else []), self.result, self.predictions, *self.plots]

    def entries(self) -> list[tuple[Path, str | None]]:
        """(path, folder it sits in relative to the root, None for the root itself); a folder names
        itself. Copying each path into its folder reproduces the run folder's tree."""
        out: list[tuple[Path, str | None]] = []
        for path in self.paths():
            rel = path.resolve().relative_to(self.root.resolve())
            folder = rel if path.is_dir() else rel.parent
            out.append((path, None if folder == Path(".") else folder.as_posix()))
        return out


def write_result(result: TrainResult, root: str | Path) -> WrittenRun:
    """Write a finished run's summary, predictions and plots into `root` (rank 0's job) and return what was
    written; the adapter export `train()` wrote there is reported too. A plot this result has no data for
    (a rank heat map after a lora run) is removed, so the folder never shows a previous run's picture."""
    # matplotlib costs about a second to import; train(), which needs only the names above, stays free of it
    from lingo_core.plots import confusion_matrix_png, rank_heatmap

    folder = RunFolder(Path(root))
    folder.root.mkdir(parents=True, exist_ok=True)
    summary = result.to_dict()
    predictions = summary.pop("test_predictions")
    # default=str: a value JSON cannot hold (a numpy scalar from a metric) is written as text, not fatal
    # after a finished training
    _write_json(folder.result, summary, indent=1)
    _write_json(folder.predictions, predictions)
    plots: list[Path] = []
    cm = result.test_metrics.get("confusion_matrix")
    if cm is not None:
        plots.append(confusion_matrix_png(cm, result.label_names, folder.confusion_matrix,
                                          title=f"{result.task} [{result.method}] test"))
    else:
        folder.confusion_matrix.unlink(missing_ok=True)
    if result.rank_pattern:
        plots.append(rank_heatmap(result.rank_pattern, folder.rank_heatmap,
                                  title=f"{result.task} [{result.method}] final rank"))
    else:
        folder.rank_heatmap.unlink(missing_ok=True)
    adapter = Path(result.artifact_dir) if result.artifact_dir is not None else None
    return WrittenRun(folder.root, adapter, folder.result, folder.predictions, tuple(plots))


def _write_json(path: Path, data: Any, indent: int | None = None) -> None:
    """Through atomic_file: a reader (lingo report, a copy to MLflow) never sees half a file."""
    atomic_file(path, lambda tmp: tmp.write_text(json.dumps(data, indent=indent, default=str)))
