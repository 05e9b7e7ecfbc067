"""`lingo data report`: per-task rows, label balance, sequence and token lengths.

Writes ``report.md``, ``report.json`` and ``token_lengths.png`` (one histogram panel per task, BBPE
and one-hot token lengths) to ``--out`` and prints an aligned table. BBPE lengths come from a
fixed-seed sample per task (tokenizing every sequence of 22 tasks would take minutes on 2 cores);
one-hot lengths are exact (template tokens + one token per base).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lingo_core.cliparse import ArgumentParser, fail
from lingo_core.data.errors import DataError
from lingo_core.data.loading import load_split, train_test_overlap
from lingo_core.data.task import SPLITS, TaskRegistry, TaskSpec, UnknownTaskError
from lingo_core.storage import atomic_file

DEFAULT_OUT = Path("runs/data-report")  # beside other run outputs, ignored by git
DEFAULT_SAMPLE = 2000  # enough for a stable p95, small enough to tokenize 22 tasks in seconds


@dataclass
class TaskStats:
    """Report row for one task."""

    name: str
    description: str
    label_names: tuple[str, ...]
    rows: dict[str, int]
    label_counts: dict[str, list[int]]
    """Split -> rows per label id."""
    bp: dict[str, int]
    """min / median / max sequence length over all splits."""
    test_in_train: int
    """Test sequences that also occur in train."""
    bbpe: dict[str, float]
    """median / p95 / max BBPE prompt tokens over the sample, plus n (sample size)."""
    onehot: dict[str, float]
    """median / p95 / max one-hot prompt tokens over all rows."""
    bbpe_sample: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    onehot_all: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("bbpe_sample")
        d.pop("onehot_all")
        return d


@dataclass
class Report:
    meta: dict
    tasks: list[TaskStats]

    def to_json(self) -> dict:
        return {"meta": self.meta, "tasks": [t.to_json() for t in self.tasks]}


def _length_functions(tokenizer) -> tuple[Callable[[list[str], str], np.ndarray], Callable[[str], int]]:
    """(BBPE prompt lengths of sequences, one-hot template overhead), both through LingoTokenizer so
    the report counts exactly the tokens training sees."""
    # torch + transformers (through tokenization) only once a report is built, not for `--help`
    from lingo_core.tokenization import LingoTokenizer

    bbpe = LingoTokenizer(tokenizer, mode="bbpe", max_length=None)  # None: measure, never cut
    onehot = LingoTokenizer(tokenizer, mode="onehot", max_length=None)

    def bbpe_lengths(seqs: list[str], description: str) -> np.ndarray:
        # encode_table tokenizes the DNA of all rows in one fast-tokenizer batch call
        rows = bbpe.encode_table(pa.table({"sequence": pa.array(seqs, pa.string())}), description)
        return np.fromiter((len(r["input_ids"]) for r in rows), np.int64, len(rows))

    def onehot_overhead(description: str) -> int:
        return len(onehot.encode("ACGT", description).input_ids) - 4  # one token per base

    return bbpe_lengths, onehot_overhead


def _summary(x: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(x)), "p95": float(np.percentile(x, 95)), "max": int(x.max())}


def task_stats(
    task: TaskSpec,
    bbpe_lengths: Callable[[list[str], str], np.ndarray],
    onehot_overhead: Callable[[str], int],
    sample_size: int = DEFAULT_SAMPLE,
    seed: int = 0,
) -> TaskStats:
    tables = {s: load_split(task, s) for s in SPLITS}
    seqs = pa.chunked_array([c for t in tables.values() for c in t.column("sequence").chunks], pa.string())
    lengths = pc.utf8_length(seqs).to_numpy()
    rng = np.random.default_rng(seed)  # own generator: the sample must not depend on global RNG state
    idx = np.sort(rng.choice(len(seqs), size=min(sample_size, len(seqs)), replace=False))
    sample = seqs.take(pa.array(idx)).to_pylist()
    bb = bbpe_lengths(sample, task.description)
    oh = lengths.astype(np.int64) + onehot_overhead(task.description)
    counts = {
        s: np.bincount(t.column("label").to_numpy(), minlength=task.num_labels).tolist()
        for s, t in tables.items()
    }
    return TaskStats(
        name=task.name,
        description=task.description,
        label_names=task.label_names,
        rows={s: t.num_rows for s, t in tables.items()},
        label_counts=counts,
        bp={"min": int(lengths.min()), "median": int(np.median(lengths)), "max": int(lengths.max())},
        test_in_train=train_test_overlap(tables),
        bbpe={**_summary(bb), "n": int(len(bb))},
        onehot=_summary(oh),
        bbpe_sample=bb,
        onehot_all=oh,
    )


def build_report(
    root: str | Path | None = None,
    tasks: Sequence[str] = ("all",),
    model: str = "smollm2",
    sample_size: int = DEFAULT_SAMPLE,
    seed: int = 0,
    tokenizer=None,
) -> Report:
    """Statistics for the selected tasks; ``tokenizer`` skips loading ``model``'s (tests reuse one)."""
    if sample_size < 1:
        raise ValueError(f"sample_size={sample_size}; expected at least 1 sequence per task")
    t0 = time.perf_counter()
    registry = TaskRegistry.from_root(root)
    selected = registry.select(list(tasks))
    if tokenizer is None:
        # transformers is heavy: imported only when no tokenizer was handed in (tests pass one)
        from lingo_core.model_ref import resolve_model
        from lingo_core.modeling import load_tokenizer

        tokenizer = load_tokenizer(resolve_model(model))
    bbpe_lengths, onehot_overhead = _length_functions(tokenizer)
    stats = [task_stats(t, bbpe_lengths, onehot_overhead, sample_size, seed) for t in selected]
    meta = {
        "root": str(registry.root),
        "model": model,
        "bbpe_sample": sample_size,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return Report(meta, stats)


def _balance(counts: list[int]) -> str:
    total = sum(counts) or 1
    return "/".join(f"{round(100 * c / total)}" for c in counts)


def _triple(d: dict) -> str:
    keys = ("median", "p95", "max") if "p95" in d else ("min", "median", "max")
    return "/".join(f"{round(d[k], 1):g}" for k in keys)


HEADERS = ("task", "train", "dev", "test", "train labels %", "test∩train", "bp min/med/max")


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    n = report.meta["bbpe_sample"]
    headers = [*HEADERS, f"BBPE tok med/p95/max (≤{n} sampled)", "one-hot tok med/p95/max (all)"]
    rows = [[t.name, *(str(t.rows[s]) for s in SPLITS), _balance(t.label_counts["train"]),
             str(t.test_in_train), _triple(t.bp), _triple(t.bbpe), _triple(t.onehot)] for t in report.tasks]
    return headers, rows


def format_table(report: Report) -> str:
    """Aligned plain-text table (numbers right-aligned)."""
    headers, rows = table_rows(report)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def format_markdown(report: Report) -> str:
    headers, rows = table_rows(report)
    m = report.meta
    lines = [
        "# Lingo data report",
        "",
        f"Data root `{m['root']}`, tokenizer of `{m['model']}` through `LingoTokenizer`. "
        f"BBPE token lengths from a fixed-seed (seed {m['seed']}) sample of up to {m['bbpe_sample']} "
        "sequences per task over all splits; one-hot lengths are exact (template tokens + 1 per base). "
        "Lengths count the whole prompt.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "![token lengths](token_lengths.png)",
        "",
    ]
    return "\n".join(lines)


def plot_histograms(report: Report, path: Path) -> None:
    # matplotlib is heavy: imported only when the histogram PNG is written, not for the table or --help
    from lingo_core.plots import plt, save_png

    n = len(report.tasks)
    ncols = min(6, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.1 * nrows), squeeze=False)
    for ax, t in zip(axes.flat, report.tasks, strict=False):  # spare panels stay blank
        lo = int(min(t.bbpe_sample.min(), t.onehot_all.min()))
        hi = int(max(t.bbpe_sample.max(), t.onehot_all.max()))
        bins = np.linspace(lo - 0.5, hi + 0.5, 41)
        # density: the BBPE sample and the full one-hot set have different row counts
        ax.hist(t.bbpe_sample, bins=bins, density=True, alpha=0.7, label="BBPE (sample)")
        ax.hist(t.onehot_all, bins=bins, density=True, alpha=0.7, label="one-hot")
        ax.set_title(t.name, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("prompt tokens", fontsize=8)
    save_png(fig, path, dpi=100)


def write_report(report: Report, out: str | Path = DEFAULT_OUT) -> dict[str, Path]:
    """report.md, report.json and token_lengths.png under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "png": out / "token_lengths.png"}
    atomic_file(paths["md"], lambda p: p.write_text(format_markdown(report)))
    atomic_file(paths["json"], lambda p: p.write_text(json.dumps(report.to_json(), indent=1)))
    plot_histograms(report, paths["png"])
    return paths


REPORT_FILES = ("report.md", "report.json", "token_lengths.png")


def check_out_dir(out: Path) -> None:
    """ValueError unless ``out`` is, or can be made as, a writable folder: checked before the minutes of
    work, not at the end. An existing folder is fine: its three report files are replaced (atomically)."""
    what = f"expected a folder for {', '.join(REPORT_FILES)}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder; {what}")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())  # "/" always exists
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, so the folder cannot be made; {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {existing} is not writable; {what}")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="lingo data report", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--root", type=Path, default=None, help="data root (default: $LINGO_DATA_ROOT or ../shared/data/gue)"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--model", default="smollm2", help="model whose tokenizer is measured (default: smollm2)")
    p.add_argument(
        "--tasks", nargs="+", default=["all"], help="names or globs, e.g. 'EMP/*' tf/0 (default: all)"
    )
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="sequences per task for BBPE lengths")
    p.add_argument("--seed", type=int, default=0, help="seed of the BBPE sample")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_out_dir(args.out)
        report = build_report(args.root, args.tasks, args.model, args.sample, args.seed)
    except (DataError, UnknownTaskError, FileNotFoundError, ValueError) as exc:
        return fail("lingo data report", exc)
    try:
        paths = write_report(report, args.out)
    except OSError as exc:  # e.g. a full disk; each file is written atomically, so none is left half-written
        return fail("lingo data report", f"cannot write the report to {args.out}: {exc}")
    print(f"BBPE: fixed-seed sample of up to {args.sample} sequences per task; one-hot: exact")
    print(format_table(report))
    print(f"\nwrote {paths['md']}, {paths['json']}, {paths['png']} ({report.meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
