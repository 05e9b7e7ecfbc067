"""Sweep summary: the task x method table of test MCC, mean ± std over seeds.

Per (task, method, seed) the trial best under ``SELECTION`` (dev MCC) is kept: dev selects, by the same
rule as within a trial and in the registry; test is never used for selection. Then its test MCC is
averaged over seeds. Pure functions of a list of result dicts (``task``, ``method``, ``seed``,
``dev_mcc``, ``test_mcc``, anything else is ignored); the files are written to a temp name and renamed,
so a crash never leaves a half-written summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lingo_core.selection import SELECTION
from lingo_core.storage import atomic_file
from lingo_core.typed import is_finite_number

REQUIRED = ("task", "method", "seed")
COLUMNS = ("task", "method", "n_seeds", "test_mcc_mean", "test_mcc_std", "dev_mcc_mean")


def best_per_seed(results: Sequence[dict]) -> list[dict]:
    """The dev-best result of every (task, method, seed). Results without a finite test_mcc (failed,
    or stopped before the final test evaluation) cannot be reported and are skipped."""
    dev_key = SELECTION.dev_key
    best: dict[tuple, dict] = {}
    for i, r in enumerate(results):
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"result {i} lacks {', '.join(missing)}: {sorted(r)}")
        if not is_finite_number(r.get("test_mcc")) or not is_finite_number(r.get(dev_key)):
            continue
        key = (r["task"], r["method"], r["seed"])
        cur = best.get(key)
        if cur is None or SELECTION.better(r[dev_key], cur[dev_key]):  # ties: the first seen stays
            best[key] = r
    return [best[k] for k in sorted(best, key=lambda k: (str(k[0]), str(k[1]), str(k[2])))]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (n-1); std is NaN for one seed: a spread of one value is unknown, not zero."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summary_table(results: Sequence[dict]) -> list[dict]:
    """One row per (task, method) in first-seen order of tasks and methods: COLUMNS."""
    chosen = best_per_seed(results)
    tasks = list(dict.fromkeys(r["task"] for r in results))
    methods = list(dict.fromkeys(r["method"] for r in results))
    rows = []
    for task in tasks:
        for method in methods:
            picks = [r for r in chosen if r["task"] == task and r["method"] == method]
            if not picks:
                continue
            mean, std = _mean_std([float(r["test_mcc"]) for r in picks])
            rows.append({"task": task, "method": method, "n_seeds": len(picks), "test_mcc_mean": mean,
                         "test_mcc_std": std, "dev_mcc_mean": _mean_std([float(r[SELECTION.dev_key]) for r in picks])[0]})
    return rows


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    text = f"{row['test_mcc_mean']:.3f}"
    return text if math.isnan(row["test_mcc_std"]) else f"{text} ± {row['test_mcc_std']:.3f}"


def render_markdown(rows: Sequence[dict]) -> str:
    """Task x method Markdown table; the best mean of each task is bold."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["task"], r["method"]): r for r in rows}
    n = sorted({r["n_seeds"] for r in rows})
    lines = [
        "Test MCC of the dev-best trial per (task, method, seed); mean ± std over "
        f"{'/'.join(map(str, n)) or 0} seed(s).",
        "",
        "| task | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for task in tasks:
        best = max((by[(task, m)]["test_mcc_mean"] for m in methods if (task, m) in by), default=None)
        cells = []
        for m in methods:
            text = _cell(by.get((task, m)))
            cells.append(f"**{text}**" if (task, m) in by and by[(task, m)]["test_mcc_mean"] == best else text)
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if methods and tasks:
        means = []
        for m in methods:
            vals = [by[(t, m)]["test_mcc_mean"] for t in tasks if (t, m) in by]
            means.append(f"{sum(vals) / len(vals):.3f}" if len(vals) == len(tasks) else "-")
        lines.append("| *mean over tasks* | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(rows: Sequence[dict], path: Path) -> Path:
    """Grouped bars: tasks on x, one bar per method, error bars = std over seeds."""
    # matplotlib is heavy: imported only when the PNG is drawn (the table and Parquet need none of it)
    from lingo_core.plots import plt, save_png

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["task"], r["method"]): r for r in rows}
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(tasks) * max(len(methods), 1) * 0.5 + 2), 4.5))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i, t in enumerate(tasks) if (t, m) in by]
        ys = [by[(t, m)]["test_mcc_mean"] for t in tasks if (t, m) in by]
        err = [0.0 if math.isnan(by[(t, m)]["test_mcc_std"]) else by[(t, m)]["test_mcc_std"]
               for t in tasks if (t, m) in by]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=m)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("test MCC (dev-selected)")
    ax.set_title("Lingo: test MCC by task and method (mean ± std over seeds)")
    ax.legend(fontsize="small", ncols=min(len(methods), 6))
    return save_png(fig, path)


def render_not_finished(trials: Sequence[dict]) -> str:
    """The trials that are missing from the table and why (FAILED beyond retries, KILLED), so a
    failed trial is never silently absent from the summary."""
    if not trials:
        return ""
    lines = ["", "Trials that did not finish (not in the table above):", "",
             "| task | method | seed | status | MLflow run |", "|---|---|---|---|---|"]
    lines += [f"| {t['task']} | {t['method']} | {t['seed']} | {t['status']} | {t['run_id']} |" for t in trials]
    return "\n".join(lines) + "\n"


def write_summary(results: Sequence[dict], out_dir: str | Path, echo: bool = True,
                  not_finished: Sequence[dict] = ()) -> dict[str, Path]:
    """Write summary.md / summary.parquet / summary.png into out_dir; returns {"md", "parquet", "png"}.
    ``echo`` prints the Markdown table (what `lingo tune` shows at the end of a sweep); ``not_finished``
    (task, method, seed, status, run_id dicts) are listed below it."""
    rows = summary_table(results)
    if not rows:
        raise ValueError(f"no result with finite {SELECTION.dev_key} and test_mcc among {len(results)} trial result(s)")
    out = Path(out_dir)
    text = render_markdown(rows) + render_not_finished(not_finished)
    schema = pa.schema([("task", pa.string()), ("method", pa.string()), ("n_seeds", pa.int64()),
                        ("test_mcc_mean", pa.float64()), ("test_mcc_std", pa.float64()),
                        ("dev_mcc_mean", pa.float64())])
    table = pa.Table.from_pylist(rows, schema=schema)
    paths = {
        "md": atomic_file(out / "summary.md", lambda p: p.write_text(text)),
        "parquet": atomic_file(out / "summary.parquet", lambda p: pq.write_table(table, p)),
        "png": plot_summary(rows, out / "summary.png"),
    }
    if echo:
        print(text, end="")
    return paths
