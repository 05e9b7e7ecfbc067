"""`lingo report SWEEP_DIR|EXPERIMENT`: one sweep as a folder of Markdown + PNG, also logged to its parent run.

    report.md            the task x method test-MCC table (summary.py), the registry state, the plots below
    mcc_by_method.png    per task, test MCC by method (summary.plot_summary)
    rank_allocation.png  ARS: ranks kept per layer by the dev-best ARS trial of each task
    budget.png           ARS: rank budget and active ranks over optimizer steps (same trials)
    dev_mcc.png          dev MCC over steps of the dev-best trial per (task, method, seed)

Everything is read from the MLflow store, the record that survives restarts: the trials (``sweep.collect_trials``),
the selection (``summary.best_per_seed``, i.e. ``SELECTION``), each ARS trial's ``result.json`` artifact (rank
pattern and per-step budget) and the registry (``tracking``). Nothing here re-decides what those own.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException

from lingo_core.cliparse import fail
from lingo_core.selection import SELECTION
from lingo_core.storage import atomic_dir
from orchestrator import tracking
from orchestrator.execution_spec import default_tracking_uri
from orchestrator.summary import best_per_seed, plot_summary, render_markdown, summary_table
from orchestrator.sweep import STATE_FILE, collect_trials

REPORT_DIR = "report"  # default output folder inside the sweep folder, and the parent run's artifact path
ARTIFACT_PATH = REPORT_DIR


class ReportError(ValueError):
    """Bad input (no such folder, no sweep in it, unknown experiment or run): one line for the user."""


@dataclass
class Sweep:
    name: str
    tracking_uri: str
    experiment_id: str
    experiment: str
    parent_run_id: str
    sweep_dir: Path | None  # the local sweep folder, when there is one (default home of the report)


# --------------------------------------------------------------------------------------- input


def _open_client(uri: str, what: str):
    if (db := tracking.missing_sqlite_store(uri)) is not None:
        raise ReportError(f"{what}: no MLflow store at {db}")
    return tracking.client(uri)


def _parent(c, run_id: str, what: str):
    try:
        run = c.get_run(run_id)
    except MlflowException:
        raise ReportError(f"{what}: no run {run_id} in the MLflow store") from None
    if tracking.SWEEP_TAG not in run.data.tags:
        raise ReportError(f"{what}: run {run_id} is not a sweep's parent run (no {tracking.SWEEP_TAG} tag)")
    return run


def from_sweep_dir(folder: Path) -> Sweep:
    """A `lingo tune` output folder: its sweep.json names the store, experiment and parent run."""
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise ReportError(f"{folder}: not a sweep folder (no {STATE_FILE}); expected the output folder of "
                          "`lingo tune`, e.g. runs/default, or an MLflow experiment name")
    try:
        state = json.loads(state_file.read_text())
        uri, run_id = state["tracking_uri"], state["parent_run_id"]
    except (ValueError, KeyError) as e:
        raise ReportError(f"{state_file}: unreadable sweep state ({e})") from None
    c = _open_client(uri, str(folder))
    run = _parent(c, run_id, str(folder))
    exp = c.get_experiment(run.info.experiment_id)
    return Sweep(run.data.tags[tracking.SWEEP_TAG], uri, exp.experiment_id, exp.name, run_id, folder.resolve())


def from_experiment(name: str, tracking_uri: str | None, run_id: str | None = None) -> Sweep:
    """An experiment in a store: the newest sweep in it (or ``run_id``). The store is the given URI, else
    $MLFLOW_TRACKING_URI, else runs/<name>/mlflow.db (where `lingo tune` puts a job's store)."""
    default_dir = Path("runs") / name
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        if not (default_dir / "mlflow.db").is_file():
            raise ReportError(f"unknown experiment {name!r}: no such sweep folder, no {default_dir / 'mlflow.db'}, "
                              "and no --tracking-uri or $MLFLOW_TRACKING_URI to look it up in")
        uri = default_tracking_uri(default_dir)
    c = _open_client(uri, f"experiment {name!r}")
    exp = c.get_experiment_by_name(name)
    if exp is None:
        known = sorted(e.name for e in c.search_experiments())
        raise ReportError(f"unknown experiment {name!r} in {uri}; experiments there: {', '.join(known) or 'none'}")
    if run_id is None:
        runs = c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=10_000)
        parents = [r for r in runs if tracking.SWEEP_TAG in r.data.tags and tracking.PARENT_TAG not in r.data.tags]
        if not parents:
            raise ReportError(f"experiment {name!r} in {uri} holds no sweep (no run tagged {tracking.SWEEP_TAG})")
        run = parents[0]
    else:
        run = _parent(c, run_id, f"experiment {name!r}")
    folder = Path(run.data.params.get("output_dir", default_dir))  # the job's output_dir, logged by the sweep
    local = folder if (folder / STATE_FILE).is_file() else None
    return Sweep(run.data.tags[tracking.SWEEP_TAG], uri, exp.experiment_id, exp.name, run.info.run_id,
                 local.resolve() if local else None)


def resolve(target: str, tracking_uri: str | None = None, run_id: str | None = None) -> Sweep:
    path = Path(target)
    if path.is_dir():
        return from_sweep_dir(path)
    if path.exists() or os.sep in target or target.startswith("."):
        raise ReportError(f"{target}: no such sweep folder")
    return from_experiment(target, tracking_uri, run_id)


# --------------------------------------------------------------------------------------- data


def _result_json(c, run_id: str, tmp: Path) -> dict:
    """The trial's result.json artifact ({} when it has none, e.g. a trial killed before its end)."""
    try:
        local = c.download_artifacts(run_id, tracking.RESULT_ARTIFACT, str(tmp))
    except (MlflowException, OSError):
        return {}
    return json.loads(Path(local).read_text())


def _label(t: dict) -> str:
    return f"{t['method']}/seed{t['seed']}"


def registry_rows(c, tasks: Sequence[str], sweep_runs: set[str]) -> list[dict]:
    """Per task: how many versions `lingo-<task>` has, which of them this sweep registered, the champion."""
    rows = []
    for task in tasks:
        name = tracking.model_name(task)
        versions = sorted(c.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        champ = tracking.champion_version(c, name) if versions else None
        row = {"task": task, "model": name, "versions": len(versions),
               "this_sweep": [str(v.version) for v in versions if v.run_id in sweep_runs],
               "champion": None, "method": None, "dev_mcc": None, "test_mcc": None}
        if champ is not None:
            test = champ.tags.get("test_mcc")
            if test is None and champ.run_id:
                test = c.get_run(champ.run_id).data.metrics.get("test_mcc")
            row.update(champion=str(champ.version), method=champ.tags.get("method"),
                       dev_mcc=tracking.version_dev_mcc(c, champ), test_mcc=None if test is None else float(test))
        rows.append(row)
    return rows


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_registry(rows: Sequence[dict]) -> str:
    lines = ["| task | registered model | versions | this sweep | champion | method | dev MCC | test MCC |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        champ = f"v{r['champion']}" if r["champion"] else "none"
        mine = ", ".join(f"v{v}" for v in r["this_sweep"]) or "-"
        lines.append(f"| {r['task']} | {r['model']} | {r['versions']} | {mine} | {champ} | {r['method'] or '-'} | "
                     f"{_num(r['dev_mcc'])} | {_num(r['test_mcc'])} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- output


def build(sweep: Sweep, folder: Path) -> list[str]:
    """Write every report file into ``folder`` (empty); returns their names."""
    # matplotlib (through lingo_core.plots) is heavy: only when a report is drawn, not for `--help`
    from lingo_core.plots import curve_panels_png, rank_by_layer_png

    c = tracking.client(sweep.tracking_uri)
    # MLflow lists runs newest first; list tasks by name and methods in the job's order instead
    order = (c.get_run(sweep.parent_run_id).data.tags.get(tracking.METHODS_TAG) or "").split(",")
    trials = sorted(collect_trials(c, sweep.experiment_id, sweep.parent_run_id),
                    key=lambda t: (str(t["task"]), order.index(t["method"]) if t["method"] in order else len(order),
                                   str(t["method"]), str(t["seed"])))
    finished = [t for t in trials if t["status"] == "FINISHED"]
    rows = summary_table(finished)
    picks = best_per_seed(finished)  # dev-best per (task, method, seed): SELECTION, as in the summary
    tasks = list(dict.fromkeys(t["task"] for t in trials))
    states = {s: sum(t["status"] == s for t in trials) for s in dict.fromkeys(t["status"] for t in trials)}
    md = [f"# Sweep report: {sweep.name}", "",
          f"Parent run `{sweep.parent_run_id}` of experiment `{sweep.experiment}` in `{sweep.tracking_uri}`. "
          f"{len(trials)} trial(s): " + (", ".join(f"{n} {s}" for s, n in states.items()) or "none") + ".", "",
          "## Test MCC by task and method", ""]
    names = []
    if rows:
        plot_summary(rows, folder / "mcc_by_method.png")
        names.append("mcc_by_method.png")
        md += [render_markdown(rows), "![test MCC by task and method](mcc_by_method.png)", ""]
    else:
        md += [f"No finished trial with a finite {SELECTION.dev_key} and test_mcc yet.", ""]
    md += ["## Model registry", "", render_registry(registry_rows(c, tasks, {t["run_id"] for t in trials}))]

    # ARS: the dev-best ARS trial of each task (over seeds), by the same rule
    patterns, budgets = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            ars = [t for t in picks if t["task"] == task and t["method"] == "ars"]
            if not ars:
                continue
            best = SELECTION.best(ars, lambda t: t[SELECTION.dev_key])
            result = _result_json(c, best["run_id"], Path(tmp) / best["run_id"])
            label = f"{task} ({_label(best)})"
            if result.get("rank_pattern"):
                patterns[label] = result["rank_pattern"]
            history = result.get("budget_history") or []
            if history:
                budgets[label] = {"budget": [(h["step"], h["budget"]) for h in history],
                                  "active ranks": [(h["step"], h["active_ranks"]) for h in history]}
    md += ["## ARS rank allocation per layer", ""]
    if patterns:
        rank_by_layer_png(patterns, folder / "rank_allocation.png",
                          title="ARS: ranks kept per layer (dev-best ARS trial of each task)")
        names.append("rank_allocation.png")
        md += ["![ranks kept per layer](rank_allocation.png)", ""]
    else:
        md += ["No finished ARS trial with a rank pattern.", ""]
    md += ["## ARS rank budget over steps", ""]
    if budgets:
        curve_panels_png(budgets, folder / "budget.png", "ranks (all adapted matrices)",
                         "ARS: budget (cubic schedule) and active ranks (sampled)", styles={"active": "--"})
        names.append("budget.png")
        md += ["![budget over steps](budget.png)", ""]
    else:
        md += ["No finished ARS trial with a budget history.", ""]

    curves: dict[str, dict] = {}
    for t in picks:
        history = c.get_metric_history(t["run_id"], SELECTION.dev_key)
        if history:
            curves.setdefault(t["task"], {})[_label(t)] = [(m.step, m.value) for m in history]
    md += ["## Dev MCC during training", ""]
    if curves:
        curve_panels_png(curves, folder / "dev_mcc.png", SELECTION.dev_key,
                         "dev MCC over steps (dev-best trial per task, method, seed)")
        names.append("dev_mcc.png")
        md += ["![dev MCC curves](dev_mcc.png)", ""]
    else:
        md += ["No dev evaluations logged yet.", ""]
    (folder / "report.md").write_text("\n".join(md))
    return ["report.md", *names]


def write_report(sweep: Sweep, out: Path, log: bool = True) -> list[Path]:
    """Build into a temp folder beside ``out``, then swap it in (storage.atomic_dir): a reader (or a crash)
    never sees a half-written report, and a failed build leaves the previous one whole. Then the files are
    logged to the parent run under report/."""
    out = out.resolve()
    with atomic_dir(out, "report folder") as tmp:
        names = build(sweep, tmp)
    paths = [out / n for n in names]
    if log:
        tracking.log_artifacts(tracking.client(sweep.tracking_uri), sweep.parent_run_id,
                               [(p, ARTIFACT_PATH) for p in paths])
    return paths


def default_out(sweep: Sweep) -> Path:
    return (sweep.sweep_dir or Path("runs") / sweep.name) / REPORT_DIR


# --------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lingo report", description="A sweep as Markdown + PNG plots, also logged to its MLflow parent run.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="files:\n" + __doc__.split("\n\n")[1])
    p.add_argument("target", metavar="SWEEP_DIR|EXPERIMENT",
                   help="a `lingo tune` output folder (e.g. runs/default) or an MLflow experiment name")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: SWEEP_DIR/report)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store of EXPERIMENT (default: $MLFLOW_TRACKING_URI, else runs/EXPERIMENT/mlflow.db)")
    p.add_argument("--run-id", default=None, help="parent run of the sweep in EXPERIMENT (default: the newest)")
    p.add_argument("--no-log", action="store_true", help="write the folder only; log nothing to the parent run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep = resolve(args.target, args.tracking_uri, args.run_id)
    except ReportError as e:
        return fail("lingo report", e)
    paths = write_report(sweep, args.out or default_out(sweep), log=not args.no_log)
    print(f"report of sweep {sweep.name} (parent run {sweep.parent_run_id}): {paths[0].parent}")
    for p in paths:
        print(f"  {p.name}")
    if not args.no_log:
        print(f"logged to the parent run under {ARTIFACT_PATH}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
