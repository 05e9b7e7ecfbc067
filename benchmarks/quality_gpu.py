"""The GPU quality proof of ARS, run with the orchestrator (Ray Tune -> Ray Train -> DeepSpeed -> MLflow).

Two phases, each a self-contained `lingo tune` sweep that fits in one 10-minute device call:

  select   jobs/lr_select_gpu.yaml: one lr grid for every method on re-split tasks, dev MCC decides.
           Writes the rows and the chosen lr per method (`"chosen_lr"`) to the results file.
  proof    jobs/quality_gpu.yaml with `search.<method>.lr=<chosen>` from the selection rows; any other
           `key=value` (tasks=[...], methods=[...], seeds=[...]) picks a group of trials. New rows are
           merged into the results file, replacing rows of the same (task, method, seed).

  python benchmarks/quality_gpu.py select --out benchmarks/results/lr_select_gpu.json
  python benchmarks/quality_gpu.py proof --lr-from benchmarks/results/lr_select_gpu.json \\
      --out benchmarks/results/quality_gpu.json seeds=[0] 'tasks=[tf/0,tf/1]'
  python benchmarks/quality_gpu.py collect --output-dir runs/quality_gpu --out ...  # rows of a cut-off sweep
  python benchmarks/quality_gpu.py table benchmarks/results/quality_gpu.json      # Markdown table

Rows: {"task", "method", "seed", "lr", "sampling" (ars), "dev_mcc", "test_mcc", "trainable_params", "best_step",
"total_steps", "wall_time_s"}; the file also records device, command, commit and date.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.provenance import git_commit, utc_now  # noqa: E402
from orchestrator import tracking  # noqa: E402
from orchestrator.sweep import STATE_FILE, run_sweep  # noqa: E402
from orchestrator.validate import load_job  # noqa: E402

ARS_KNOBS = ("exploration", "tinit", "tfinal", "orth_reg_weight", "hold_dropped_importance")
"""ARS settings a selection may put on a grid (`search.ars.adapter.<knob>`); each ars row records them as
its "variant", so rows of different grid points neither replace each other nor average together."""
JOBS = {"select": REPO / "jobs" / "lr_select_gpu.yaml", "proof": REPO / "jobs" / "quality_gpu.yaml"}
KEYS = {"select": ("task", "method", "seed", "lr", "sampling", "variant", "total_steps"),  # a row per grid point and rung
        "proof": ("task", "method", "seed")}  # a re-run trial (e.g. at a newly selected lr) replaces its row
# DNABERT-2's published test MCC (x100) on the 9 proof tasks, cited from its paper (Zhou et al. 2024,
# Table 2): not measured here.
DNABERT2_MCC = {"prom_core_all": 69.37, "prom_core_notata": 68.04, "prom_core_tata": 74.17,
                "prom_300_tata": 71.59, "tf/0": 71.99, "tf/1": 76.06, "tf/2": 66.52, "tf/3": 58.54,
                "tf/4": 77.43}


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def sweep_rows(tracking_uri: str, experiment_id: str, parent_run_id: str, dev_only: bool = False) -> list[dict]:
    """One row per finished trial of a sweep, read back from its MLflow store. `dev_only` (selection): a
    trial cut off after its last dev evaluation (e.g. by the call's time limit, during the test pass)
    counts too, with its best dev MCC from the metric history and no test MCC."""
    c = tracking.client(tracking_uri)
    rows = []
    for run in tracking.child_runs(c, experiment_id, parent_run_id):
        m, p, t = dict(run.data.metrics), run.data.params, run.data.tags
        if run.info.status != "FINISHED":
            history = c.get_metric_history(run.info.run_id, "dev_mcc") if dev_only else []
            budget = p.get("train.max_steps", "")
            if not history or not budget.isdigit() or max(h.step for h in history) < int(budget):
                continue  # not finished, or stopped before its last dev evaluation (or no step budget to tell)
            best = max(history, key=lambda h: (h.value, -h.step))
            m.update(best_dev_mcc=best.value, best_step=best.step, total_steps=max(h.step for h in history))
        rows.append({"task": t.get("task"), "method": t.get("method"), "seed": int(t.get("seed")),
                     "lr": float(p["train.lr"]),
                     "sampling": p.get("train.adapter.sampling") if t.get("method") == "ars" else None,
                     "variant": variant_of(p) if t.get("method") == "ars" else None,
                     "dev_mcc": m.get("best_dev_mcc"), "test_mcc": m.get("test_mcc"),
                     "trainable_params": int(m.get("trainable_params", 0)), "best_step": int(m.get("best_step", 0)),
                     "total_steps": int(m.get("total_steps", 0)), "wall_time_s": m.get("wall_time_s")})
    return rows


def variant_of(params: dict) -> str:
    """The ARS knobs of a trial as one string, "exploration=0.1,tinit=None,..." (MLflow params are strings)."""
    return ",".join(f"{k}={params.get(f'train.adapter.{k}')}" for k in ARS_KNOBS)


def variant_keys(variant: str | None) -> dict:
    """Job-spec keys of a variant string (knobs left at their default, "None", are not set)."""
    pairs = (kv.split("=", 1) for kv in (variant or "").split(",") if kv)
    return {f"adapter.{k}": yaml.safe_load(v) for k, v in pairs if v != "None"}  # "0.1", "60", "True"


def choose_lr(rows: list[dict]) -> dict[str, dict]:
    """Per method: the (lr, sampling, variant) with the highest mean dev MCC over the selection tasks (dev
    only), as job-spec keys: {"ars": {"lr": 0.001, "adapter.sampling": "importance"}, "lora": {"lr": ...}}.

    Successive halving: a method's longest screen (most optimizer steps) decides; shorter screens over
    the whole grid only chose which learning rates reached it. A short screen favours large learning
    rates, which can overshoot at the proof's budget."""
    longest: dict[str, int] = {}
    for r in rows:
        longest[r["method"]] = max(longest.get(r["method"], 0), int(r.get("total_steps") or 0))
    by: dict[tuple, list[float]] = {}
    for r in rows:
        if int(r.get("total_steps") or 0) != longest[r["method"]]:
            continue
        if r["dev_mcc"] is not None and math.isfinite(r["dev_mcc"]):
            by.setdefault((r["method"], r["lr"], r.get("sampling"), r.get("variant")), []).append(r["dev_mcc"])
    best: dict[str, tuple[tuple, float]] = {}
    # a tie goes to the first in this order, where a default (None) sorts before any explicit setting
    for key, values in sorted(by.items(), key=lambda kv: tuple("" if x is None else str(x) for x in kv[0])):
        mean = statistics.fmean(values)
        if key[0] not in best or mean > best[key[0]][1]:
            best[key[0]] = (key, mean)
    out = {}
    for method, ((_, lr, sampling, variant), _) in best.items():
        out[method] = {"lr": lr, **({"adapter.sampling": sampling} if sampling is not None else {}),
                       **variant_keys(variant)}
    return out


def merge(path: Path, rows: list[dict], extra: dict, key: tuple[str, ...]) -> dict:
    """Rows of `path` (if any) with `rows` replacing equal keys; written to a temp name, then renamed."""
    report = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    keyed = {tuple(r.get(k) for k in key): r for r in report["rows"]}
    keyed.update({tuple(r.get(k) for k in key): r for r in rows})
    report.update(extra)
    report["rows"] = sorted(keyed.values(), key=lambda r: tuple(str(r.get(k)) for k in key))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
    return report


def table(report: dict) -> str:
    """Markdown: test MCC x100 per task and method, mean ± std over seeds, DNABERT-2 (cited) beside."""
    rows = report["rows"]
    methods = [m for m in ("ars", "lora", "adalora", "full") if any(r["method"] == m for r in rows)]
    tasks = [t for t in DNABERT2_MCC if any(r["task"] == t for r in rows)]
    out = ["| task | " + " | ".join(methods) + " | DNABERT-2 (cited) |",
           "|---|" + "---|" * (len(methods) + 1)]
    cell: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        cell.setdefault((r["task"], r["method"]), []).append(100 * r["test_mcc"])
    for task in tasks:
        cells = []
        for m in methods:
            v = cell.get((task, m))
            sd = f" ± {statistics.stdev(v):.1f}" if v and len(v) > 1 else ""
            cells.append(f"{statistics.fmean(v):.1f}{sd} (n={len(v)})" if v else "-")
        out.append(f"| {task} | " + " | ".join(cells) + f" | {DNABERT2_MCC[task]:.2f} |")
    paired = [t for t in tasks if all((t, m) in cell for m in methods)]  # compare means on the same tasks only
    out.append(f"| **mean over the {len(paired)} task(s) every method finished** | " + " | ".join(
        f"{statistics.fmean(statistics.fmean(cell[(t, m)]) for t in paired):.1f}" if paired else "-"
        for m in methods) + " | " + (f"{statistics.fmean(DNABERT2_MCC[t] for t in paired):.2f}" if paired else "")
        + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("select", "proof", "collect", "table"))
    p.add_argument("overrides", nargs="*", help="key=value job-spec overrides (proof/select), or the results file (table)")
    p.add_argument("--out", default=None, help="results JSON (merged into when it exists)")
    p.add_argument("--lr-from", default=None, help="proof: the selection results whose chosen_lr to use")
    p.add_argument("--output-dir", default=None, help="sweep folder (default runs/<job name>)")
    args = p.parse_intermixed_args(argv)  # key=value overrides may come before or after the flags
    if args.phase == "table":
        print(table(json.loads(Path(args.overrides[0]).read_text())))
        return 0

    out = Path(args.out) if args.out else None
    if args.phase == "collect":  # a sweep cut off by its time limit: the trials that finished count
        sweep = Path(args.output_dir or "runs/quality_gpu")
        state = json.loads((sweep / STATE_FILE).read_text())
        name = json.loads((sweep / "job.json").read_text())["name"]
        phase = "select" if name == load_job(JOBS["select"]).name else "proof"
        rows = sweep_rows(state["tracking_uri"], state["experiment_id"], state["parent_run_id"],
                          dev_only=phase == "select")
        return _finish(phase, out or REPO / "benchmarks" / "results" / f"{sweep.name}.json", rows, argv, {})

    overrides = list(args.overrides)
    chosen = {}
    if args.phase == "proof" and args.lr_from:
        chosen = json.loads(Path(args.lr_from).read_text())["chosen_lr"]
        overrides = [f"search.{m}.{k}={v}" for m, kv in chosen.items() for k, v in kv.items()] + overrides
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    job = load_job(JOBS[args.phase], overrides)
    result = run_sweep(job)
    rows = sweep_rows(result.tracking_uri, result.experiment_id, result.parent_run_id,
                      dev_only=args.phase == "select")
    code = _finish(args.phase, out or REPO / "benchmarks" / "results" / f"{job.name}.json", rows, argv, chosen)
    return code if result.errors == 0 else 1


def _finish(phase: str, out: Path, rows: list[dict], argv: list[str], chosen: dict) -> int:
    extra = {"device": _device(), "commit": git_commit(), "job": str(JOBS[phase].relative_to(REPO)),
             "date": utc_now(),
             "command": " ".join(["python", "benchmarks/quality_gpu.py", *argv])}
    rows = [{**r, "commit": extra["commit"]} for r in rows]  # rows of earlier calls keep their own commit
    report = merge(out, rows, extra, KEYS[phase])
    if phase == "select":
        report = merge(out, [], {"chosen_lr": choose_lr(report["rows"])}, KEYS[phase])
        print("chosen lr (mean dev MCC over the selection tasks):", report["chosen_lr"])
    else:
        if chosen:
            report = merge(out, [], {"lr_from_selection": chosen}, KEYS[phase])
        print(table(report))
    print(f"{len(rows)} finished trial(s) this sweep; {len(report['rows'])} rows in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
