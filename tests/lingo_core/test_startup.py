"""Start-up marks (lingo_core/startup.py): the clock's arithmetic, its trip through a config, and the marks
train() adds, on the tiny random LLaMA with real GUE rows."""

from __future__ import annotations

import json
import time

import pytest

from lingo_core.startup import TOTAL, StartupClock
from lingo_core.train import TrainConfig, TrainHooks, train

TRAIN_MARKS = ["data", "tokenized", "model", "backend_ready", "first_step"]


def test_phases_are_the_gaps_between_consecutive_marks() -> None:
    clock = StartupClock([("entry", 100.0), ("imports", 101.5), ("model", 104.0)])
    assert clock.phases() == {"imports": 1.5, "model": 2.5, TOTAL: 4.0}
    assert StartupClock([("entry", 100.0)]).phases() == {}  # one mark: no phase yet


def test_a_clock_continues_in_another_process_from_its_marks() -> None:
    """What the trial driver sends its worker: the marks as JSON-able pairs; the worker's clock goes on
    from them, so its phases start at the driver's entry."""
    driver = StartupClock()
    driver.mark("entry")
    sent = json.loads(json.dumps(driver.marks))  # lists, not tuples, after the trip
    worker = StartupClock(sent)
    worker.mark("worker_start")
    assert worker.marks[0] == driver.marks[0]
    assert list(worker.phases()) == ["worker_start", TOTAL]
    assert worker.phases()[TOTAL] == pytest.approx(worker.marks[1][1] - driver.marks[0][1])


@pytest.mark.parametrize("name", ["entry", TOTAL])
def test_a_mark_is_taken_once_and_total_is_reserved(name: str) -> None:
    clock = StartupClock([("entry", 1.0)])
    with pytest.raises(ValueError, match=repr(name)):
        clock.mark(name)


def test_train_marks_each_phase_up_to_its_first_optimizer_step(tiny_model_dir, gue_root, tmp_path) -> None:
    cfg = TrainConfig.from_dict(dict(task="prom_core_tata", data_root=str(gue_root), model=str(tiny_model_dir),
                                     epochs=1, max_train_samples=24, max_eval_samples=8, batch_size=8, log_every=1,
                                     output_dir=str(tmp_path / "run"), adapter={"method": "lora"}))
    logged_at: dict[int, float] = {}
    clock = StartupClock()
    clock.mark("entry")
    result = train(cfg, hooks=TrainHooks(on_log=lambda step, _: logged_at.setdefault(step, time.time())),
                   clock=clock)
    assert result.total_steps == 3
    marks = dict(clock.marks)
    assert [name for name, _ in clock.marks] == ["entry", *TRAIN_MARKS]
    # taken at the first step, not later: before that step's log and well before the last step's
    assert marks["first_step"] <= logged_at[1] < logged_at[3]
    assert list(result.startup_s) == [*TRAIN_MARKS, TOTAL]
    assert all(s >= 0 for s in result.startup_s.values())
    assert result.startup_s[TOTAL] == pytest.approx(sum(result.startup_s[m] for m in TRAIN_MARKS))
    assert result.to_dict()["startup_s"] == result.startup_s  # what result.json and the worker's metrics hold


def test_train_without_a_clock_records_no_startup(tiny_model_dir, gue_root, tmp_path) -> None:
    cfg = TrainConfig.from_dict(dict(task="prom_core_tata", data_root=str(gue_root), model=str(tiny_model_dir),
                                     epochs=1, max_train_samples=8, max_eval_samples=8, batch_size=8,
                                     output_dir=str(tmp_path / "run"), adapter={"method": "lora"}))
    assert train(cfg).startup_s == {}
