"""Render every current result file in benchmarks/results as a PNG plot beside its table in BENCHMARKS.md.

The one idea: a figure is a pure function of one JSON file, and it says which one. Each PNG carries the
file's name, its recorded commit and date in a footnote, and the file's SHA-256 in a PNG text chunk, so
`--check` can tell a stale plot from a fresh one without trusting file times (git does not keep them).

    benchmarks/results/<stem>.json --renderer chosen by file name--> benchmarks/results/plots/<stem>.png
                                                                     (footnote: source, commit, date)

  python benchmarks/render_plots.py            # (re)render every current result file
  python benchmarks/render_plots.py --check    # exit 1: a current JSON without a renderer or a fresh plot

Historical snapshots (`<stem>_<commit>.json`, `quality_gpu_partial_*`, `step_time_gpu_ds_nocontig`) keep
their numbers in the tables only and get no plot: `is_historical` is the rule. Nothing here runs a benchmark.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import sys
from pathlib import Path

import matplotlib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks.*` resolves from the repo root

matplotlib.use("Agg")  # files only; no display on the machines that render
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from benchmarks.plot_renderers import Data, Unplottable, renderer_for  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DPI = 100  # 800 x 450 px: readable on GitHub, a few tens of KB per file
SIZE = (8.0, 4.5)
HASH_KEY = "LingoSourceSHA256"  # PNG tEXt key holding the hash of the JSON the figure was drawn from
_SHA = r"[0-9a-f]{7,40}"
_COMMIT_SUFFIX = re.compile(rf"_{_SHA}$")
_HISTORICAL_GLOBS = ("quality_gpu_partial_*", "step_time_gpu_ds_nocontig")


def is_historical(stem: str) -> bool:
    """A snapshot kept for the record (a commit suffix, a partial run, a one-off variant): no plot."""
    return bool(_COMMIT_SUFFIX.search(stem)) or any(fnmatch.fnmatch(stem, g) for g in _HISTORICAL_GLOBS)


def current_results(results: Path) -> list[Path]:
    return sorted(p for p in results.glob("*.json") if not is_historical(p.stem))


def provenance(path: Path, data: Data) -> str:
    """The footnote: which file, at which commit(s), when. Says so where the file records neither."""
    commit = data.get("commit") if isinstance(data.get("commit"), str) else ""
    if re.fullmatch(_SHA, commit):
        where = f"commit {commit[:7]}"
    else:  # a sentence such as "rows carry their own commit (573ab11, ...)": its shas and the rows' own
        shas = set(re.findall(rf"\b{_SHA}\b", commit)) | {
            r["commit"] for r in data.get("rows") or [] if isinstance(r, dict) and isinstance(r.get("commit"), str)}
        short = sorted({c[:7] for c in shas})
        where = f"rows at commits {', '.join(short)}" if short else "commit not recorded in the file"
    date = data.get("date") or "date not recorded in the file"
    try:
        name = path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        name = path.name
    return f"source: {name} | {where} | {date}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def draw(path: Path) -> Figure:
    """The figure of one result file, footnote included; raises Unplottable (or KeyError on a malformed
    file). The caller closes it (`render` does)."""
    fn = renderer_for(path.stem)
    if fn is None:
        raise Unplottable(f"no renderer for {path.name}")
    data = json.loads(path.read_text())
    fig = plt.figure(figsize=SIZE)
    try:
        fn(data, fig)
    except BaseException:
        plt.close(fig)
        raise
    fig.text(0.005, 0.005, provenance(path, data), fontsize=7, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def render(path: Path, out: Path) -> Path:
    """Draw one result file to out/<stem>.png."""
    fig = draw(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        png = out / f"{path.stem}.png"
        # the hash lets --check find a plot drawn from an older version of the file (git keeps no mtimes)
        fig.savefig(png, dpi=DPI, metadata={HASH_KEY: sha256(path), "Source": path.name})
    finally:
        plt.close(fig)
    return png


def recorded_hash(png: Path) -> str | None:
    from PIL import Image  # Pillow comes with matplotlib; only --check reads PNG text chunks

    with Image.open(png) as im:
        return im.text.get(HASH_KEY)  # type: ignore[attr-defined]


def problems(results: Path, out: Path) -> list[str]:
    """What --check reports: every current result file needs a renderer and a plot drawn from its bytes."""
    found = []
    for path in current_results(results):
        png = out / f"{path.stem}.png"
        if renderer_for(path.stem) is None:
            found.append(f"{path.name}: no renderer (add one to RENDERERS, or mark it historical)")
        elif not png.is_file():
            found.append(f"{path.name}: no plot {png.name}")
        elif recorded_hash(png) != sha256(path):
            found.append(f"{path.name}: {png.name} is older than the JSON (drawn from other bytes)")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of result JSON files")
    p.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: <results>/plots)")
    p.add_argument("--check", action="store_true", help="render nothing; exit 1 listing missing or stale plots")
    args = p.parse_args(argv)
    out = args.out or args.results / "plots"
    if args.check:
        found = problems(args.results, out)
        for line in found:
            print(line, file=sys.stderr)
        print(f"{len(current_results(args.results))} current result files, {len(found)} problems")
        return 1 if found else 0
    failed = 0
    for path in current_results(args.results):
        try:
            png = render(path, out)
        except (Unplottable, KeyError, TypeError, ValueError) as e:
            failed += 1
            print(f"FAILED {path.name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        print(f"{path.name} -> {png} ({png.stat().st_size // 1024} KB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
