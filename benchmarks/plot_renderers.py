"""The renderers of benchmarks/render_plots.py: one function per kind of result file, each drawing the parsed
JSON on a fresh matplotlib figure, and `RENDERERS`, the file-name rule that picks one. A renderer raises
`Unplottable` when the file has nothing it can draw. Footnotes, hashes, files and `--check` are
render_plots.py's.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from collections.abc import Callable
from typing import Any

from matplotlib.figure import Figure

METHOD_ORDER = ("ars", "lora", "adalora", "full")  # the project's methods first, others after

Data = dict[str, Any]


class Unplottable(ValueError):
    """The file's structure has nothing this renderer can draw; the message says what was found."""


def _methods(names: object) -> list[str]:
    names = list(dict.fromkeys(names))  # type: ignore[call-overload]
    return [m for m in METHOD_ORDER if m in names] + sorted(m for m in names if m not in METHOD_ORDER)


def _num(value: object) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _rows(data: Data, *keys: str) -> list[dict]:
    for key in keys:
        if isinstance(data.get(key), list) and all(isinstance(r, dict) for r in data[key]) and data[key]:
            return data[key]
    raise Unplottable(f"no non-empty list of rows under {' / '.join(keys)}; top-level keys: {sorted(data)}")


def _key(rows: list[dict], candidates: tuple[str, ...], contains: tuple[str, ...] = ()) -> str:
    """The first candidate key (else the first key containing one of `contains`) that is numeric in a row."""
    present = list(dict.fromkeys(k for r in rows for k in r if _num(r[k]) is not None))
    found = next((k for k in candidates if k in present), None) or next(
        (k for k in present if any(c in k for c in contains)), None)
    if found:
        return found
    raise Unplottable(f"none of {candidates} (or a key with {contains}) in rows; numeric keys: {sorted(set(present))}")


# ---- renderers: one per file kind, each takes the parsed JSON and draws on a fresh figure -------------------

def _step_time(data: Data, fig: Figure) -> None:
    """Median step time per method and backend (p10-p90 bars); the floor and PEFT LoRA references as lines."""
    results = data.get("results") or {}
    if any(isinstance(v, dict) and ("median_ms" in v or "median_s" in v) for v in results.values()):
        backends = {"torch": results}  # the CPU file: one backend, flat
    else:
        backends = {b: rows for b, rows in results.items() if b not in ("references", "errors")}
    refs = results.get("references", {})
    unit = "ms" if any("median_ms" in r for rows in backends.values() for r in rows.values()) else "s"
    methods = _methods(m for rows in backends.values() for m in rows)
    if not methods:
        raise Unplottable(f"no method rows under results; keys: {sorted(results)}")
    ax = fig.subplots()
    label = {"torch": "plain PyTorch", "deepspeed": "DeepSpeed ZeRO-2"}
    width = 0.8 / len(backends)
    for i, (backend, rows) in enumerate(backends.items()):
        xs = [j + (i - (len(backends) - 1) / 2) * width for j, m in enumerate(methods) if m in rows]
        med, lo, hi = zip(*((r[f"median_{unit}"], r.get(f"p10_{unit}"), r.get(f"p90_{unit}"))
                            for r in (rows[m] for m in methods if m in rows)), strict=True)
        err = [[m - (q if q is not None else m) for m, q in zip(med, lo, strict=True)],
               [(q if q is not None else m) - m for m, q in zip(med, hi, strict=True)]]
        bars = ax.bar(xs, med, width, yerr=err, capsize=3, label=label.get(backend, backend))
        ax.bar_label(bars, fmt="%.1f" if unit == "ms" else "%.2f", padding=2, fontsize=8)
    # the references are measured under the plain backend only: dashed lines across the whole plot
    for name, style, text in (("floor", ":", "floor: frozen base fwd+bwd"), ("peft_lora", "--", "hand-written PEFT LoRA")):
        if name in refs:
            ax.axhline(refs[name][f"median_{unit}"], color="0.3", linestyle=style,
                       label=f"{text} ({refs[name][f'median_{unit}']:.1f} {unit}, plain)")
    ratios = [f"ars/lora {data[k]:.3f} {'ZeRO-2' if 'deepspeed' in k else 'plain'}"
              for k in ("ars_over_lora", "ars_over_lora_deepspeed") if _num(data.get(k)) is not None]
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel(f"median step time ({unit})")
    steps = f"{data.get('rounds', 1)} x {data['steps']}" if data.get("rounds") else str(data.get("steps", "?"))
    ax.set_title(f"Training step, {data.get('model', '?')} on {data.get('device_name', data.get('device', '?'))}, "
                 f"batch {data.get('batch_size', '?')} x {data.get('seq_len_tokens', '?')} tokens, "
                 f"median of {steps} steps" + (f"\n{'; '.join(ratios)}" if ratios else ""), fontsize=10)
    ax.set_ylim(0, 1.45 * max(r.get(f"p90_{unit}", r[f"median_{unit}"]) for rows in backends.values()
                              for r in rows.values()))  # headroom: the legend sits above the bars
    ax.legend(fontsize=8, loc="upper center", ncol=2)


def _quality(data: Data, fig: Figure) -> None:
    """Test MCC x100 per task and method (mean over seeds, std as bars), DNABERT-2's cited number beside."""
    # Function-local: quality_gpu imports the orchestrator (MLflow, torch). Importing it keeps one owner
    # of the cited numbers instead of a second copy here.
    from benchmarks.quality_gpu import DNABERT2_MCC

    rows = [r for r in _rows(data, "rows") if _num(r.get("test_mcc")) is not None]
    if not rows:
        raise Unplottable("no row with a test_mcc")
    methods = _methods(r["method"] for r in rows)
    seen = {r["task"] for r in rows}
    tasks = [t for t in DNABERT2_MCC if t in seen] + sorted(seen - set(DNABERT2_MCC))
    ax = fig.subplots()
    width = 0.8 / (len(methods) + 1)
    for i, m in enumerate(methods):
        vals = [[100 * r["test_mcc"] for r in rows if r["task"] == t and r["method"] == m] for t in tasks]
        ax.bar([j + (i - len(methods) / 2) * width for j in range(len(tasks))],
               [statistics.fmean(v) if v else 0 for v in vals], width,
               yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in vals], capsize=2,
               label=f"{m} (n={sum(len(v) for v in vals)})")
    cited = [(j, DNABERT2_MCC[t]) for j, t in enumerate(tasks) if t in DNABERT2_MCC]
    if cited:
        ax.bar([j + len(methods) / 2 * width for j, _ in cited], [v for _, v in cited], width, color="0.75",
               hatch="//", edgecolor="0.4", label="DNABERT-2 (cited from its paper, not measured)")
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, fontsize=8)
    ax.set_ylabel("test MCC x100 (mean ± std over seeds)")
    ax.set_title(f"Quality on GPU: {len(rows)} trials, dev-selected checkpoint"
                 + ("" if data.get("complete", True) else " (file marked incomplete)"), fontsize=10)
    ax.set_ylim(0, 1.3 * max(v for _, v in cited) if cited else None)
    ax.legend(fontsize=8, loc="upper center", ncol=3)


def _lr_select(data: Data, fig: Figure) -> None:
    """Dev MCC against lr per method, a panel per task, a line style per rung (step budget)."""
    rows = [r for r in _rows(data, "rows") if _num(r.get("dev_mcc")) is not None]
    tasks = sorted({r["task"] for r in rows})
    methods = _methods(r["method"] for r in rows)
    rungs = sorted({r.get("total_steps", 0) for r in rows})
    axes = fig.subplots(1, len(tasks), sharey=True, squeeze=False)[0]
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    styles = ("-", "--", ":", "-.")
    for ax, task in zip(axes, tasks, strict=True):
        for m in methods:
            for k, rung in enumerate(rungs):
                pts = sorted((r["lr"], r["dev_mcc"]) for r in rows if r["task"] == task and r["method"] == m
                             and r.get("total_steps", 0) == rung and not r.get("variant"))
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", color=colors[m], linestyle=styles[k % 4],
                            label=f"{m}, {rung} steps")
            # a screen of method knobs at one lr (quality_gpu.py's "variant"): one marker per setting
            variants = sorted({r["variant"] for r in rows if r["method"] == m and r.get("variant")})
            for j, variant in enumerate(variants):
                pts = [(r["lr"], r["dev_mcc"]) for r in rows
                       if r["task"] == task and r["method"] == m and r.get("variant") == variant]
                label = ",".join(kv for kv in variant.split(",") if not kv.endswith("=None"))
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="xs^vD<>"[j % 7], color=colors[m], linestyle="none",
                            markersize=7, alpha=0.8, label=f"{m}, {label}")
        ax.set_xscale("log")
        ax.set_xlabel("lr")
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("dev MCC (best evaluation)")
    axes[-1].legend(fontsize=7, loc="best")
    chosen = ", ".join(f"{m} {v['lr']:g}" for m, v in (data.get("chosen_lr") or {}).items() if "lr" in v)
    fig.suptitle("Learning-rate selection (successive halving)" + (f"; chosen: {chosen}" if chosen else ""),
                 fontsize=10)


def _colocation(data: Data, fig: Figure) -> None:
    """Aggregate and per-process steps/s against the number of co-located processes."""
    rows = sorted(_rows(data, "rows"), key=lambda r: r["procs"])
    ax = fig.subplots()
    xs = range(len(rows))
    agg = ax.bar([x - 0.2 for x in xs], [r["aggregate_steps_per_s"] for r in rows], 0.4, label="all processes")
    each = ax.bar([x + 0.2 for x in xs], [statistics.fmean(r["steps_per_s_each"]) for r in rows], 0.4,
                  label="per process (mean)")
    ax.bar_label(agg, fmt="%.1f", fontsize=8)
    ax.bar_label(each, fmt="%.1f", fontsize=8)
    ax.set_xticks(list(xs), [f"{r['procs']} proc ({r.get('sharing', '?')})" for r in rows])
    ax.set_ylabel("training steps/s")
    one = next((r["aggregate_steps_per_s"] for r in rows if r["procs"] == 1), None)
    gain = f": {rows[-1]['aggregate_steps_per_s'] / one:.1f}x with {rows[-1]['procs']}" if one else ""
    ax.set_title(f"Co-located training processes on one {data.get('device', 'GPU')}{gain}", fontsize=10)
    ax.legend(fontsize=8)


def _ars_variants(data: Data, fig: Figure) -> None:
    """Dev and test MCC per ARS variant (one seed)."""
    rows = _rows(data, "rows")
    ax = fig.subplots()
    ys = range(len(rows))
    for off, key in ((-0.2, "dev_mcc"), (0.2, "test_mcc")):
        bars = ax.barh([y + off for y in ys], [r.get(key) or 0 for r in rows], 0.4, label=key.replace("_", " "))
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_yticks(list(ys), [r["run"] for r in rows], fontsize=8)
    vals = [v for r in rows for k in ("dev_mcc", "test_mcc") if (v := _num(r.get(k))) is not None]
    ax.set_xlim(max(0.0, min(vals) - 0.05), min(1.0, max(vals) + 0.04))  # the spread is the point
    ax.set_xlabel("MCC")
    ax.set_title(f"ARS variants on {data.get('task', '?')}, {data.get('steps', '?')} steps, one seed", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def _mutations(data: Data, fig: Figure) -> None:
    """Each deliberate breakage: caught or not, how long the catching test took, and which test."""
    rows = _rows(data, "mutations")
    ax = fig.subplots()
    ys = range(len(rows))
    colors = ["tab:green" if r.get("caught") else "tab:red" for r in rows]
    ax.barh(list(ys), [r.get("seconds") or 0 for r in rows], color=colors)
    for y, r in zip(ys, rows, strict=True):
        test = (r.get("caught_by") or ["NOT CAUGHT"])[0].split("::")[-1]
        ax.text((r.get("seconds") or 0) + 0.5, y, test[:70], va="center", fontsize=6)
    ax.set_xlim(0, 2.0 * max(r.get("seconds") or 1 for r in rows))  # room for the test names
    ax.set_yticks(list(ys), [r["name"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds until the suite failed (beside the bar: the first test that caught it)")
    caught = sum(bool(r.get("caught")) for r in rows)
    ax.set_title(f"Deliberate breakages of the method: {caught} of {len(rows)} caught", fontsize=10)


def _trial_start(data: Data, fig: Figure) -> None:
    """Where a trial's start-up time goes (trial_start.py's `runs`: {run: {"phases_s": {phase: s}}}): a
    stacked bar of seconds per phase, one bar per run, the GPU goal as a line."""
    runs = data.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise Unplottable(f"no runs; top-level keys: {sorted(data)}")
    table = {name: {p: float(v) for p, v in r["phases_s"].items() if p != "total"} for name, r in runs.items()}
    phases = list(dict.fromkeys(p for v in table.values() for p in v))
    ax = fig.subplots()
    left = [0.0] * len(table)
    widest = max(sum(v.values()) for v in table.values())
    for i, p in enumerate(phases):
        widths = [v.get(p, 0.0) for v in table.values()]
        bars = ax.barh(list(table), widths, left=left, label=p, color=f"C{i % 10}")
        ax.bar_label(bars, labels=[f"{w:.1f}" if w >= 0.05 * widest else "" for w in widths],
                     label_type="center", fontsize=7)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    if _num(data.get("target_gpu_s")) is not None:
        ax.axvline(data["target_gpu_s"], color="0.3", linestyle="--", label=f"GPU goal {data['target_gpu_s']:g} s")
    ax.set_xlabel("seconds from the trial's entry")
    ax.set_title(f"Trial start-up by phase on {data.get('device_name', data.get('device'))}: "
                 + ", ".join(f"{k} {sum(v.values()):.1f} s" for k, v in table.items()), fontsize=9)
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.18))


def _packing(data: Data, fig: Figure) -> None:
    """packing.py: steady-state aggregate samples/s per group size (packed[G]["aggregate_samples_per_s"];
    an out-of-memory group size is marked), against the same tasks one after another."""
    packed = data.get("packed")
    seq = data.get("sequential", {})
    if not isinstance(packed, dict) or not isinstance(seq, dict) or "aggregate_samples_per_s" not in seq:
        raise Unplottable(f"no packed / sequential results; top-level keys: {sorted(data)}")
    labels, rates, failed = ["1 (sequential)"], [float(seq["aggregate_samples_per_s"])], []
    for g, r in sorted(packed.items(), key=lambda kv: int(kv[0])):
        if _num(r.get("aggregate_samples_per_s")) is None:
            failed.append(g)
            continue
        labels.append(g)
        rates.append(float(r["aggregate_samples_per_s"]))
    ax = fig.subplots()
    bars = ax.bar(labels, rates, color=["0.6"] + ["C0"] * (len(rates) - 1))
    ax.bar_label(bars, labels=[f"{v:.0f}" + (f" ({v / rates[0]:.2f}x)" if i else "") for i, v in enumerate(rates)],
                 fontsize=8)
    ax.set_xlabel("tasks per packed group (G)" + (f"; G={', '.join(failed)}: out of memory" if failed else ""))
    ax.set_ylabel("steady-state training samples/s, all tasks")
    ax.set_title(f"{len(data.get('tasks', []))} tasks' LoRA adapters on one frozen base, "
                 f"{data.get('device_name', data.get('device'))}", fontsize=10)


def _group_train(data: Data, fig: Figure) -> None:
    """group_train.py: wall seconds of the same tasks trained one after another and as one group (left),
    each task's test MCC both ways (right)."""
    rows = _rows(data, "rows")
    if _num(data.get("sequential_s")) is None or _num(data.get("group_s")) is None:
        raise Unplottable(f"no sequential_s / group_s; top-level keys: {sorted(data)}")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1, 2)})
    walls = [float(data["sequential_s"]), float(data["group_s"])]
    bars = left.bar(["one after another", "one group"], walls, color=["0.6", "C0"])
    left.bar_label(bars, labels=[f"{walls[0]:.0f} s", f"{walls[1]:.0f} s ({walls[0] / walls[1]:.2f}x)"], fontsize=8)
    left.set_ylabel("wall seconds, start-up to last export")
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for k, (mode, color) in enumerate((("sequential", "0.6"), ("group", "C0"))):
        mcc = {r["task"]: _num(r.get("test_mcc")) for r in rows if r["mode"] == mode}
        right.bar([i + 0.4 * k - 0.2 for i in range(len(tasks))], [mcc.get(t) or 0.0 for t in tasks], 0.4,
                  color=color, label=mode)
    right.set_xticks(range(len(tasks)), tasks, fontsize=8)
    right.set_ylabel("test MCC")
    right.legend(fontsize=8)
    fig.suptitle(f"{len(tasks)} tasks, {data.get('max_steps', '?')} steps each, "
                 f"{data.get('device_name', data.get('device'))}", fontsize=10)


def _scaling(data: Data, fig: Figure) -> None:
    """Throughput against workers/GPUs, a line per method or backend, with ideal linear scaling dashed."""
    rows = _rows(data, "rows", "groups", "runs")
    x = _key(rows, ("gpus", "workers", "num_workers", "world_size", "procs"), ("gpu", "worker"))
    y = _key(rows, ("aggregate_samples_per_s", "samples_per_s", "steps_per_s", "throughput"), ("_per_s",))
    series = next((k for k in ("method", "backend", "label") if any(k in r for r in rows)), None)
    ax = fig.subplots()
    for i, name in enumerate(dict.fromkeys(str(r.get(series, "")) if series else "" for r in rows)):
        pts = sorted((r[x], r[y]) for r in rows if (not series or str(r.get(series, "")) == name)
                     and _num(r.get(x)) is not None and _num(r.get(y)) is not None)
        if not pts:
            continue
        ax.plot(*zip(*pts, strict=True), marker="o", color=f"C{i}", label=name or y)
        ax.plot([p[0] for p in pts], [pts[0][1] * p[0] / pts[0][0] for p in pts], color=f"C{i}", linestyle=":",
                alpha=0.6, label=f"{name + ', ' if name else ''}linear from {pts[0][0]:g}")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_per_s", "/s").replace("_", " "))
    ax.set_title(f"Scaling on {data.get('device', data.get('device_name', 'GPU'))}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


# file-name glob -> renderer; the first match wins (historical snapshots are excluded before this is read)
RENDERERS: tuple[tuple[str, Callable[[Data, Figure], None]], ...] = (
    ("step_time_gpu", _step_time), ("step_time_cpu", _step_time), ("quality_gpu", _quality),
    ("lr_select*_gpu", _lr_select), ("colocation_gpu", _colocation), ("ars_variants_gpu", _ars_variants),
    ("mutations_cpu", _mutations), ("trial_start*", _trial_start), ("packing_gpu", _packing),
    ("scaling_gpu", _scaling), ("group_train_*", _group_train),
)


def renderer_for(stem: str) -> Callable[[Data, Figure], None] | None:
    return next((fn for glob, fn in RENDERERS if fnmatch.fnmatch(stem, glob)), None)
