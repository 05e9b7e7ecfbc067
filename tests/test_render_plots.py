"""benchmarks/render_plots.py and its renderers (benchmarks/plot_renderers.py): every current result file
becomes a real PNG that names its source, and `--check` fails on a result file without a renderer,
without a plot, or with a plot of older bytes.

Renders the committed files (no benchmark runs) into a tmp folder, plus synthetic files for the kinds other
benchmark will write (scaling), whose exact keys are not fixed yet.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from benchmarks import render_plots as rp
from benchmarks.plot_renderers import Unplottable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 10_000  # the real plots are 20-70 KB
# Share of non-white pixels: empty axes with only ticks and the footnote have 0.026, the sparsest real
# plot here (lr_select's lines) 0.10. A renderer that draws nothing falls below.
MIN_INK = 0.06
CURRENT = rp.current_results(rp.RESULTS)


def assert_real_png(png: Path, source: Path) -> None:
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{png.name} is not a PNG"
    assert len(data) > MIN_PNG_BYTES, f"{png.name} is {len(data)} bytes: a near-empty figure"
    with Image.open(png) as im:
        hist = im.convert("L").histogram()
    ink = sum(hist[:250]) / sum(hist)
    assert ink > MIN_INK, f"{png.name}: {ink:.3f} of its pixels are drawn: an empty plot"
    assert rp.recorded_hash(png) == rp.sha256(source), f"{png.name} does not carry its JSON's hash"


def test_committed_results_include_the_known_kinds() -> None:
    # guards the parametrization below against silently rendering nothing
    stems = {p.stem for p in CURRENT}
    assert {"step_time_gpu", "step_time_cpu", "quality_gpu", "lr_select_gpu", "mutations_cpu"} <= stems
    assert not stems & {"step_time_gpu_fdfa5f6", "quality_gpu_partial_bba3ce2", "step_time_gpu_ds_nocontig"}


@pytest.mark.parametrize("source", CURRENT, ids=[p.stem for p in CURRENT])
def test_every_current_result_file_renders_a_real_png(source: Path, tmp_path: Path) -> None:
    png = rp.render(source, tmp_path)
    assert png == tmp_path / f"{source.stem}.png"
    assert_real_png(png, source)


def _step_medians(d: dict) -> list[float]:
    res = d["results"]
    if all("median_s" in r for r in res.values()):  # the CPU file: one backend, seconds
        return [r["median_s"] for r in res.values()]
    return [r["median_ms"] for rows in res.values() for r in rows.values()]


def _quality_means(d: dict) -> list[float]:
    from benchmarks.quality_gpu import DNABERT2_MCC

    cells: dict[tuple[str, str], list[float]] = {}
    for r in d["rows"]:
        cells.setdefault((r["task"], r["method"]), []).append(100 * r["test_mcc"])
    return [statistics.fmean(v) for v in cells.values()] + [DNABERT2_MCC[t] for t, _ in cells]


# What each current plot must show: the file's own numbers, as bar lengths or line points.
SHOWN = {
    "step_time_gpu": _step_medians,
    "step_time_cpu": _step_medians,
    "quality_gpu": _quality_means,
    "lr_select_gpu": lambda d: [r["dev_mcc"] for r in d["rows"]],
    "lr_select_emp_gpu": lambda d: [r["dev_mcc"] for r in d["rows"]],
    "colocation_gpu": lambda d: [v for r in d["rows"] for v in
                                 (r["aggregate_steps_per_s"], statistics.fmean(r["steps_per_s_each"]))],
    "ars_variants_gpu": lambda d: [r[k] for r in d["rows"] for k in ("dev_mcc", "test_mcc")],
    "mutations_cpu": lambda d: [r["seconds"] for r in d["mutations"]],
    "trial_start": lambda d: [v for r in d["runs"].values() for p, v in r["phases_s"].items() if p != "total"],
    "trial_start_cpu": lambda d: [v for r in d["runs"].values() for p, v in r["phases_s"].items() if p != "total"],
    "group_train_gpu": lambda d: [d["sequential_s"], d["group_s"]] + [
        r["test_mcc"] for r in d["rows"] if r.get("test_mcc")],
    "packing_gpu": lambda d: [d["sequential"]["aggregate_samples_per_s"]] + [
        r["aggregate_samples_per_s"] for r in d["packed"].values() if "aggregate_samples_per_s" in r],
}


def drawn_numbers(fig) -> set[float]:
    out: set[float] = set()
    for ax in fig.axes:
        for patch in ax.patches:  # bars: heights (vertical) and widths (horizontal)
            out |= {round(patch.get_height(), 6), round(patch.get_width(), 6)}
        for line in ax.lines:
            out |= {round(float(v), 6) for v in [*line.get_xdata(), *line.get_ydata()]}
    return out


@pytest.mark.parametrize("source", CURRENT, ids=[p.stem for p in CURRENT])
def test_every_current_plot_shows_the_numbers_of_its_file(source: Path) -> None:
    assert source.stem in SHOWN, f"{source.name}: say here which of its numbers the plot must show"
    fig = rp.draw(source)
    try:
        drawn = drawn_numbers(fig)
    finally:
        plt.close(fig)
    expected = SHOWN[source.stem](json.loads(source.read_text()))
    missing = [v for v in expected if round(v, 6) not in drawn]
    assert expected and not missing, f"{source.name}: not drawn: {missing}"


def test_main_renders_current_files_and_skips_snapshots(tmp_path: Path) -> None:
    assert rp.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(p.stem for p in CURRENT)


@pytest.mark.parametrize(("stem", "historical"), [
    ("step_time_gpu_573ab11", True), ("step_time_gpu_bba3ce2", True), ("quality_gpu_partial_bba3ce2", True),
    ("step_time_gpu_ds_nocontig", True), ("trial_start_6d3331e0", True),
    ("step_time_gpu", False), ("mutations_cpu", False), ("trial_start_gpu", False), ("packing_gpu", False),
])
def test_historical_rule(stem: str, historical: bool) -> None:
    assert rp.is_historical(stem) is historical


def test_footnote_names_file_commit_and_date() -> None:
    data = json.loads((rp.RESULTS / "step_time_gpu.json").read_text())
    note = rp.provenance(rp.RESULTS / "step_time_gpu.json", data)
    assert note == f"source: benchmarks/results/step_time_gpu.json | commit {data['commit']} | {data['date']}"
    # a file whose rows carry their own commits: every one of them is named, once
    note = rp.provenance(Path("q.json"), {"commit": "rows carry their own commit (573ab11 or fdfa5f6)",
                                          "rows": [{"commit": "fdfa5f6"}, {"commit": "6d3331e"}]})
    assert "rows at commits 573ab11, 6d3331e, fdfa5f6 |" in note
    assert rp.provenance(Path("c.json"), {}).endswith("commit not recorded in the file | date not recorded in the file")


@pytest.fixture()
def rendered(tmp_path: Path) -> tuple[Path, Path]:
    """Two current result files and a snapshot, copied, with freshly rendered plots: --check passes on it.
    (Two, not all: the check's logic is per file, and every file is rendered above already.)"""
    results = tmp_path / "results"
    results.mkdir()
    for name in ("step_time_cpu.json", "colocation_gpu.json", "step_time_gpu_573ab11.json"):
        shutil.copy(rp.RESULTS / name, results / name)
    assert rp.main(["--results", str(results)]) == 0
    return results, results / "plots"


def test_check_passes_then_fails_on_an_unknown_result_file(rendered, capsys) -> None:
    results, _ = rendered
    assert rp.main(["--results", str(results), "--check"]) == 0
    (results / "new_thing_gpu.json").write_text(json.dumps({"rows": [{"x": 1}]}))
    assert rp.main(["--results", str(results), "--check"]) == 1
    assert "new_thing_gpu.json: no renderer" in capsys.readouterr().err


def test_check_fails_on_a_missing_or_stale_plot(rendered, capsys) -> None:
    results, plots = rendered
    (plots / "colocation_gpu.png").unlink()
    source = results / "step_time_cpu.json"
    source.write_text(source.read_text() + "\n")  # new bytes, same numbers: the plot is still stale
    assert rp.main(["--results", str(results), "--check"]) == 1
    err = capsys.readouterr().err
    assert "colocation_gpu.json: no plot colocation_gpu.png" in err
    assert "step_time_cpu.json: step_time_cpu.png is older than the JSON" in err
    assert "573ab11" not in err  # a snapshot needs no plot


def test_committed_plots_are_current() -> None:
    # a result file added or re-measured without `python benchmarks/render_plots.py` fails here
    assert rp.problems(rp.RESULTS, rp.RESULTS / "plots") == []


# (file name, contents, numbers the plot must show): the shapes these renderers accept for files to come
FUTURE = [
    ("scaling_gpu.json", {"rows": [{"gpus": n, "samples_per_s": 300.0 * n ** (0.9 if b == "torch" else 0.8),
                                    "backend": b} for n in (1, 2, 4) for b in ("torch", "deepspeed")]},
     [300.0, 300.0 * 4 ** 0.9, 300.0 * 4 ** 0.8, 1200.0]),
]


@pytest.mark.parametrize(("name", "contents", "shown"), FUTURE, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FUTURE)])
def test_renderers_for_files_still_to_come(name: str, contents: dict, shown: list[float], tmp_path: Path) -> None:
    source = tmp_path / name
    source.write_text(json.dumps(contents))
    fig = rp.draw(source)
    try:
        drawn = drawn_numbers(fig)
    finally:
        plt.close(fig)
    assert not [v for v in shown if round(v, 6) not in drawn], drawn
    assert_real_png(rp.render(source, tmp_path / "plots"), source)


def test_a_file_without_the_expected_rows_says_what_it_found(tmp_path: Path) -> None:
    source = tmp_path / "packing_gpu.json"
    source.write_text(json.dumps({"results": {"k": 1}}))
    with pytest.raises(Unplottable, match="top-level keys: \\['results'\\]"):
        rp.render(source, tmp_path)


def test_benchmarks_md_shows_every_current_plot() -> None:
    doc = (rp.REPO / "BENCHMARKS.md").read_text()
    links = set(re.findall(r"!\[[^\]]*\]\((benchmarks/results/plots/[^)]+\.png)\)", doc))
    assert links == {f"benchmarks/results/plots/{p.stem}.png" for p in CURRENT}
    assert all((rp.REPO / link).is_file() for link in links)
