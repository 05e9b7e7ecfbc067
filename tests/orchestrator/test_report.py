"""`lingo report` on a real sqlite MLflow store, filled through the project's own tracking functions the way a
sweep fills it (parent run, child runs with tags, dev curves, final metrics, result.json, registry), no Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator import tracking
from orchestrator.cli import main as lingo
from orchestrator.execution_spec import default_tracking_uri
from orchestrator.jobspec import JobSpec
from orchestrator.sweep import STATE_FILE, collect_trials, register

FILES = {"report.md", "mcc_by_method.png", "rank_allocation.png", "budget.png", "dev_mcc.png"}
# (task, method, seed, trial, best dev MCC, test MCC). Two draws of tf/0 ars seed 0: the dev-best one
# (dev 0.5) must be reported, never the other (test 0.99): test never selects.
TRIALS = [
    ("prom_core_tata", "ars", 0, "t0", 0.40, 0.50), ("prom_core_tata", "ars", 1, "t1", 0.30, 0.70),
    ("prom_core_tata", "lora", 0, "t2", 0.20, 0.30), ("prom_core_tata", "lora", 1, "t3", 0.25, 0.10),
    ("tf/0", "ars", 0, "t4", 0.50, 0.40), ("tf/0", "ars", 0, "t5", 0.10, 0.99),
    ("tf/0", "lora", 0, "t6", 0.45, 0.35),
]


def _pattern(layer_ranks: list[int]) -> dict[str, list[bool]]:
    return {f"model.layers.{i}.self_attn.{m}.lora_E.default": [j < r for j in range(4)]
            for i, r in enumerate(layer_ranks) for m in ("q_proj", "v_proj")}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty sqlite store, made once: MLflow's schema migrations take ~5 s per new file."""
    folder = tmp_path_factory.mktemp("empty_store")
    tracking.client(default_tracking_uri(folder)).search_experiments()
    return folder / "mlflow.db"


def _sweep(tmp: Path, empty_store: Path, gue_root: Path, name: str = "rep") -> tuple[Path, object, str]:
    """A finished sweep's folder: store, sweep.json, parent + children, registrations (as sweep.py does)."""
    out = tmp / name
    out.mkdir()
    shutil.copyfile(empty_store, out / "mlflow.db")
    uri = default_tracking_uri(out)
    c = tracking.client(uri)
    exp = tracking.ensure_experiment(c, name, tracking.default_artifact_location(out))
    parent = tracking.start_parent_run(c, exp, name, tags={tracking.METHODS_TAG: "ars,lora"})
    tracking.log_params(c, parent, {"output_dir": str(out), "name": name})
    (out / STATE_FILE).write_text(json.dumps({"parent_run_id": parent, "experiment_id": exp, "tracking_uri": uri}))
    for task, method, seed, trial, dev, test in TRIALS:
        rid = tracking.find_or_create_child(c, exp, parent, trial, f"{task}/{method}/{trial}",
                                            tags={"task": task, "method": method, "seed": str(seed)})
        for step, value in ((2, dev / 2), (4, dev)):
            tracking.log_metrics(c, rid, {"dev_mcc": value}, step)
        tracking.log_metrics(c, rid, {"best_dev_mcc": dev, "test_mcc": test}, 4)
        folder = out / trial
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "lingo.json").write_text("{}")
        pairs = [(folder / "adapter", "adapter")]
        if method == "ars":
            result = {"rank_pattern": _pattern([3, 1] if task == "tf/0" else [2, 2]),
                      "budget_history": [{"step": s, "budget": 16 - 2 * s, "active_ranks": 16 - 2 * s + s % 2,
                                          "regrown": 0, "dropped": 0} for s in range(1, 5)]}
            (folder / tracking.RESULT_ARTIFACT).write_text(json.dumps(result))
            pairs.append((folder / tracking.RESULT_ARTIFACT, None))
        tracking.log_artifacts(c, rid, pairs)
        c.set_terminated(rid, "FINISHED")
    failed = tracking.find_or_create_child(c, exp, parent, "t9", "failed", tags={"task": "tf/0", "method": "lora",
                                                                                  "seed": "0"})
    c.set_terminated(failed, "FAILED")
    job = JobSpec(name, ["prom_core_tata", "tf/0"], ["ars", "lora"], data_root=str(gue_root))
    register(c, job, collect_trials(c, exp, parent))
    c.set_terminated(parent, "FINISHED")
    return out, c, parent


def test_report_files_and_their_mlflow_copies(tmp_path: Path, empty_store: Path, gue_root: Path, capsys) -> None:
    out, c, parent = _sweep(tmp_path, empty_store, gue_root)
    assert lingo(["report", str(out)]) == 0
    report = out / "report"
    assert {p.name for p in report.iterdir()} == FILES
    for name in FILES - {"report.md"}:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (report / "report.md").read_text()
    # mean ± std over seeds of the dev-best draw: prom ars (0.5, 0.7), tf/0 ars only t4 (0.40, not 0.99)
    assert "| prom_core_tata | **0.600 ± 0.141** | 0.200 ± 0.141 |" in md
    assert "| tf/0 | **0.400** | 0.350 |" in md
    assert "0.990" not in md
    # registry: one version per task from this sweep; the dev-best trial of the task is champion
    assert "| prom_core_tata | lingo-prom_core_tata | 1 | v1 | v1 | ars | 0.400 | 0.500 |" in md
    assert "| tf/0 | lingo-tf_0 | 1 | v1 | v1 | ars | 0.500 | 0.400 |" in md
    assert "7 FINISHED, 1 FAILED" in md
    # the same files on the parent run, byte for byte
    logged = {Path(a.path).name for a in c.list_artifacts(parent, "report")}
    assert logged == FILES
    copy = Path(c.download_artifacts(parent, "report/report.md", str(tmp_path / "dl")))
    assert copy.read_text() == md
    printed = capsys.readouterr().out
    assert str(report) in printed

    # a second report replaces the first in place and leaves no temp folder behind
    (report / "stale.txt").write_text("old")
    assert lingo(["report", str(out), "--no-log"]) == 0
    assert {p.name for p in report.iterdir()} == FILES
    assert not [p for p in out.iterdir() if p.name.startswith(".report")]

    # a failure while building keeps the previous report whole (nothing half-written, no temp folder)
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    (out / "t0" / tracking.RESULT_ARTIFACT).write_text("{not json")
    rid = tracking.child_runs(c, c.get_run(parent).info.experiment_id, parent)
    t0 = next(r.info.run_id for r in rid if r.data.tags[tracking.TRIAL_TAG] == "t0")
    tracking.log_artifacts(c, t0, [(out / "t0" / tracking.RESULT_ARTIFACT, None)])
    with pytest.raises(json.JSONDecodeError):
        lingo(["report", str(out), "--no-log"])
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".report")]


def test_report_by_experiment_name(tmp_path: Path, empty_store: Path, gue_root: Path, monkeypatch) -> None:
    out, _, parent = _sweep(tmp_path, empty_store, gue_root, name="byname")
    uri = default_tracking_uri(out)
    dest = tmp_path / "elsewhere"
    assert lingo(["report", "byname", "--tracking-uri", uri, "--out", str(dest), "--no-log"]) == 0
    assert {p.name for p in dest.iterdir()} == FILES
    assert parent in (dest / "report.md").read_text()
    monkeypatch.chdir(tmp_path)  # runs/<experiment>/mlflow.db is found without a URI
    (tmp_path / "runs").mkdir()
    shutil.copytree(out, tmp_path / "runs" / "byname")
    assert lingo(["report", "byname", "--no-log"]) == 0
    assert (out / "report" / "report.md").is_file()  # output_dir logged by the sweep: its own folder


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nope"], "{tmp}/nope: no such sweep folder"),
    (["{tmp}"], "not a sweep folder (no sweep.json)"),
    (["no_such_experiment"], "unknown experiment 'no_such_experiment'"),
    (["no_such_experiment", "--tracking-uri", "sqlite:///{tmp}/empty.db"], "no MLflow store at"),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, monkeypatch, capsys, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert lingo(["report", *[a.format(tmp=tmp_path) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lingo report: error: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err
    assert not list(tmp_path.iterdir())  # nothing created (MLflow makes a store for any sqlite path it opens)


def test_unknown_experiment_in_a_store_names_the_known_ones(tmp_path: Path, empty_store: Path, gue_root: Path,
                                                            capsys) -> None:
    out, _, _ = _sweep(tmp_path, empty_store, gue_root, name="known")
    assert lingo(["report", "other", "--tracking-uri", default_tracking_uri(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'other'" in err and "known" in err and err.count("\n") == 1
