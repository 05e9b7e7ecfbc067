"""Summary: dev-best selection per (task, method, seed), mean ± std over seeds, the three files."""

from __future__ import annotations

import math
import statistics

import pyarrow.parquet as pq
import pytest

from orchestrator.summary import best_per_seed, render_markdown, summary_table, write_summary

RESULTS = [
    # ars on tata: seed 0 has two trials; the dev-best (0.60) is kept although its test MCC is lower
    {"task": "prom_core_tata", "method": "ars", "seed": 0, "dev_mcc": 0.60, "test_mcc": 0.50, "trial_id": "a"},
    {"task": "prom_core_tata", "method": "ars", "seed": 0, "dev_mcc": 0.40, "test_mcc": 0.90, "trial_id": "b"},
    {"task": "prom_core_tata", "method": "ars", "seed": 1, "dev_mcc": 0.70, "test_mcc": 0.70},
    {"task": "prom_core_tata", "method": "ars", "seed": 2, "dev_mcc": 0.65, "test_mcc": 0.60},
    {"task": "prom_core_tata", "method": "lora", "seed": 0, "dev_mcc": 0.55, "test_mcc": 0.40},
    {"task": "prom_core_tata", "method": "lora", "seed": 1, "dev_mcc": 0.50, "test_mcc": 0.45},
    # stopped by ASHA before the test evaluation: cannot be reported, even with the best dev MCC
    {"task": "prom_core_tata", "method": "lora", "seed": 1, "dev_mcc": 0.99, "test_mcc": None},
    {"task": "tf/0", "method": "ars", "seed": 0, "dev_mcc": 0.30, "test_mcc": 0.25},
    {"task": "tf/0", "method": "lora", "seed": 0, "dev_mcc": 0.35, "test_mcc": float("nan")},
]


def test_dev_best_selection():
    chosen = best_per_seed(RESULTS)
    tata_ars_0 = [r for r in chosen if (r["task"], r["method"], r["seed"]) == ("prom_core_tata", "ars", 0)]
    assert [r["trial_id"] for r in tata_ars_0] == ["a"]
    assert len(chosen) == 6  # tf/0 lora has no finite test MCC
    # one rule (SELECTION: dev MCC, max, strict): on a tie the first-seen trial stays, as in the registry
    tie = [{**RESULTS[0], "trial_id": "x"}, {**RESULTS[0], "trial_id": "y"}, {**RESULTS[1], "trial_id": "z"}]
    assert [r["trial_id"] for r in best_per_seed(tie)] == ["x"]


def test_mean_std_over_seeds():
    rows = {(r["task"], r["method"]): r for r in summary_table(RESULTS)}
    ars = rows[("prom_core_tata", "ars")]
    assert ars["n_seeds"] == 3
    assert ars["test_mcc_mean"] == pytest.approx(statistics.mean([0.5, 0.7, 0.6]))
    assert ars["test_mcc_std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.6]))
    lora = rows[("prom_core_tata", "lora")]
    assert lora["test_mcc_mean"] == pytest.approx(0.425) and lora["n_seeds"] == 2
    one = rows[("tf/0", "ars")]
    assert one["n_seeds"] == 1 and math.isnan(one["test_mcc_std"])  # spread of one seed is unknown
    assert ("tf/0", "lora") not in rows


def test_markdown_marks_best_and_missing():
    text = render_markdown(summary_table(RESULTS))
    assert "| task | ars | lora |" in text
    assert "| prom_core_tata | **0.600 ± 0.100** | 0.425 ± 0.035 |" in text
    assert "| tf/0 | **0.250** | - |" in text


def test_write_summary_files(tmp_path, capsys):
    paths = write_summary(RESULTS, tmp_path / "out")
    assert set(paths) == {"md", "parquet", "png"}
    assert paths["md"].read_text().startswith("Test MCC of the dev-best")
    table = pq.read_table(paths["parquet"]).to_pylist()
    assert [(r["task"], r["method"]) for r in table] == [
        ("prom_core_tata", "ars"), ("prom_core_tata", "lora"), ("tf/0", "ars")]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "prom_core_tata" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.md", "summary.parquet", "summary.png"]


def test_bad_results_rejected(tmp_path):
    with pytest.raises(ValueError, match="lacks seed"):
        summary_table([{"task": "t", "method": "ars", "dev_mcc": 0.1, "test_mcc": 0.1}])
    with pytest.raises(ValueError, match="no result with finite"):
        write_summary([{"task": "t", "method": "ars", "seed": 0, "dev_mcc": 0.1}], tmp_path)
    assert not list(tmp_path.iterdir())
