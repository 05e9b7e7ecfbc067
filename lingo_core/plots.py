"""PNG plots for runs: final rank heat map (layer x module) and confusion matrix; the sweep report's plots;
`save_png`, how every PNG is written. Agg backend only: importing this module selects it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lingo_core.storage import atomic_file  # noqa: E402

_LAYER = re.compile(r"\.(?:layers|h|layer|blocks)\.(\d+)\.")
_SKIP = {"lora_E", "lora_A", "lora_B", "default", "weight", "base_layer"}


def rank_grid(rank_pattern: dict[str, Sequence[bool]]) -> tuple[np.ndarray, list[int], list[str]]:
    """(grid[layer, module] = active rank, layer ids, module names) from PEFT-style rank_pattern keys
    like 'model.layers.3.self_attn.q_proj.lora_E.default'. Missing cells are NaN."""
    cells: dict[tuple[int, str], int] = {}
    for key, mask in rank_pattern.items():
        m = _LAYER.search(key)
        layer = int(m.group(1)) if m else -1
        parts = [p for p in key.split(".") if p not in _SKIP and not p.isdigit()]
        module = parts[-1] if parts else key
        cells[(layer, module)] = int(sum(bool(x) for x in mask))
    layers = sorted({k[0] for k in cells})
    modules = sorted({k[1] for k in cells})
    grid = np.full((len(layers), len(modules)), np.nan)
    for (layer, module), r in cells.items():
        grid[layers.index(layer), modules.index(module)] = r
    return grid, layers, modules


def rank_heatmap(rank_pattern: dict[str, Sequence[bool]], path: str | Path, title: str = "final rank") -> Path:
    """Heat map of the final rank of every adapted matrix, annotated with the rank."""
    if not rank_pattern:
        raise ValueError("rank_heatmap: empty rank_pattern (only ars/adalora runs have one)")
    grid, layers, modules = rank_grid(rank_pattern)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(modules), 1.0 + 0.35 * len(layers)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [str(v) for v in layers])
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    ax.set_title(title)
    hi = np.nanmax(grid) if np.isfinite(grid).any() else 0
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                color = "black" if grid[i, j] > 0.6 * hi else "white"
                ax.text(j, i, f"{int(grid[i, j])}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, label="rank")
    return save_png(fig, path)


def confusion_matrix_png(cm: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path,
                         title: str = "confusion matrix (test)") -> Path:
    """Counts with row-normalised colour (recall per true class), rows = true, columns = predicted."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion_matrix_png: cm shape {cm.shape} does not match {len(labels)} labels")
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(2.0 + 0.8 * n, 1.6 + 0.8 * n))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if frac[i, j] > 0.5 else "black")
    return save_png(fig, path)


def save_png(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """The PNG through atomic_file (a crash never leaves a half-written plot under the real name); closes
    the figure. Every PNG of the project (run plots, sweep summary and report, data report) is saved here."""
    fig.tight_layout()
    try:
        return atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------- sweep report plots
# Inputs are plain data (the orchestrator reads them from MLflow), so these stay free of MLflow and Ray.

Series = Sequence[tuple[float, float]]  # (step, value) points of one line


def rank_by_layer_png(patterns: Mapping[str, Mapping[str, Sequence[bool]]], path: str | Path,
                      title: str = "ARS: kept ranks per layer") -> Path:
    """Grouped bars: layers on x, one bar per label (e.g. a task's dev-best ARS trial); height = ranks kept
    in that layer, summed over its adapted modules (``rank_grid``)."""
    if not patterns:
        raise ValueError("rank_by_layer_png: no rank pattern to plot")
    per_label = {}
    for label, pattern in patterns.items():
        grid, layers, _ = rank_grid(pattern)
        per_label[label] = dict(zip(layers, np.nansum(grid, axis=1).tolist(), strict=True))
    layers = sorted({layer for totals in per_label.values() for layer in totals})
    width = 0.8 / len(per_label)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(layers) * max(1, len(per_label) / 2) + 2), 4.0))
    for j, (label, totals) in enumerate(per_label.items()):
        xs = [i + (j - (len(per_label) - 1) / 2) * width for i in range(len(layers))]
        ax.bar(xs, [totals.get(layer, 0.0) for layer in layers], width, label=label)
    ax.set_xticks(range(len(layers)), [str(v) for v in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("kept rank (sum over modules)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return save_png(fig, path)


def curve_panels_png(panels: Mapping[str, Mapping[str, Series]], path: str | Path, ylabel: str,
                     title: str, styles: Mapping[str, str] | None = None) -> Path:
    """One panel per key of ``panels`` (e.g. a task), one line per label inside it (e.g. method/seed);
    ``styles`` maps a label substring to a matplotlib line style (budget solid, active ranks dashed)."""
    if not panels:
        raise ValueError("curve_panels_png: no series to plot")
    n = len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, lines) in zip(axes.flat, panels.items(), strict=False):
        for label, points in lines.items():
            if not points:
                continue
            xs, ys = zip(*sorted(points), strict=True)
            style = next((s for key, s in (styles or {}).items() if key in label), "-")
            ax.plot(xs, ys, style, marker="o" if len(xs) < 12 else None, markersize=3, label=label)
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save_png(fig, path)
