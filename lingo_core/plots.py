"""PNG plots for runs: final rank heat map (layer x module) and confusion matrix. Agg backend only."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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
    return _save(fig, path)


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
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """PNG to a temp name, then rename: a crash never leaves a half-written plot under the real name."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
