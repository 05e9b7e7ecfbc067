"""The tracking journal (orchestrator/journal.py) on a real sqlite MLflow store: what reaches MLflow
when, across a simulated crash, a restart from a checkpoint and an unreachable server."""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from orchestrator import journal, tracking
from orchestrator.execution_spec import default_tracking_uri


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("journal_store")
    uri = default_tracking_uri(folder)
    c = tracking.client(uri)
    exp = tracking.ensure_experiment(c, "journal", tracking.default_artifact_location(folder))
    return uri, c, exp


def _run(store) -> str:
    uri, c, exp = store
    return c.create_run(exp).info.run_id


def _steps(c, run_id: str, key: str) -> Counter:
    return Counter(m.step for m in c.get_metric_history(run_id, key))


def test_restart_replaces_the_uncommitted_tail(store, tmp_path: Path) -> None:
    uri, c, _ = store
    rid = _run(store)
    j = journal.open_for_run(tmp_path, uri, rid)
    j.restart(0)  # what every attempt writes first: a no-op on a fresh journal
    j.params({"train": {"lr": 0.1}})
    for step in (1, 2):
        j.metrics({"loss": 1.0 / step}, step)
    j.commit(2)  # the checkpoint of step 2 is reported
    j.metrics({"loss": 99.0}, 3)  # logged by the attempt that then dies
    assert j.flush()
    assert _steps(c, rid, "loss") == {1: 1, 2: 1}  # step 3 waits for a checkpoint that covers it
    assert c.get_run(rid).data.params["train.lr"] == "0.1"

    # the worker was SIGKILLed; its retry opens the same journal and resumes from the step-2 checkpoint
    retry = journal.open_for_run(tmp_path, uri, rid)
    retry.restart(2)
    retry.params({"train": {"lr": 0.1}})  # re-logged on every attempt: same value, accepted
    retry.metrics({"loss": 0.3}, 3)
    retry.metrics({"loss": 0.25}, 4)
    retry.commit(4)
    retry.status("FINISHED")
    assert retry.drain(5)
    hist = {m.step: m.value for m in c.get_metric_history(rid, "loss")}
    assert _steps(c, rid, "loss") == {1: 1, 2: 1, 3: 1, 4: 1} and hist[3] == 0.3  # the retry's value, once
    assert c.get_run(rid).info.status == "FINISHED"


def test_replay_after_a_crash_between_send_and_cursor_is_idempotent(tmp_path: Path, monkeypatch) -> None:
    # A file store: SQL stores already ignore an exact duplicate row, a file store appends it (as other
    # backends may), so only the journal's own check can keep the history single here.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    c = tracking.client(uri)
    rid = c.create_run(tracking.ensure_experiment(c, "journal", None)).info.run_id
    j = journal.open_for_run(tmp_path, uri, rid)
    for step in (1, 2, 3):
        j.metrics({"loss": float(step), "lr": 0.1}, step)
    j.commit()
    assert j.flush()
    # the process died after MLflow stored the batch but before the cursor moved: rewind the cursor
    (journal.journal_dir(tmp_path) / "acked").write_text("-1")
    again = journal.open_for_run(tmp_path, uri, rid)
    assert again.pending() == 3
    assert again.flush() and again.pending() == 0
    assert _steps(c, rid, "loss") == {1: 1, 2: 1, 3: 1} and _steps(c, rid, "lr") == {1: 1, 2: 1, 3: 1}


def test_first_write_wins_when_a_retry_starts_over(store, tmp_path: Path) -> None:
    """No checkpoint to resume from (or one Ray lost): the retry logs steps MLflow already has."""
    uri, c, _ = store
    rid = _run(store)
    j = journal.open_for_run(tmp_path, uri, rid)
    j.metrics({"dev_mcc": 0.1}, 2)
    j.commit(2)
    assert j.flush()
    retry = journal.open_for_run(tmp_path, uri, rid)
    retry.restart(0)
    retry.metrics({"dev_mcc": 0.2, "resumed_from_step": 0}, 2)
    retry.metrics({"dev_mcc": 0.3}, 4)
    retry.commit()
    assert retry.flush()
    assert {m.step: m.value for m in c.get_metric_history(rid, "dev_mcc")} == {2: 0.1, 4: 0.3}
    assert _steps(c, rid, "resumed_from_step") == {2: 1}


def test_an_unreachable_server_never_blocks_the_writer(store, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri, c, _ = store
    rid = _run(store)
    with socket.socket() as s:  # a port nobody listens on: connection refused, as for a stopped server
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    j = journal.open_for_run(tmp_path, dead, rid).start(interval_s=0.05)
    art = tmp_path / "adapter"
    art.mkdir()
    (art / "lingo.json").write_text("{}")
    t0 = time.perf_counter()
    for step in range(1, 51):
        j.metrics({"loss": float(step)}, step)
    j.artifacts([(art, "adapter")])
    j.status("FINISHED")
    assert time.perf_counter() - t0 < 2.0  # local appends only, while the flusher keeps failing
    assert not j.drain(1.0) and j.pending() == 52
    (art / "lingo.json").write_text('{"changed": true}')  # the journal sends its own snapshot
    # the server is back (here: the same store reached directly); the journal replays everything
    back = journal.RunJournal(journal.journal_dir(tmp_path), uri, rid)
    assert back.drain(10)
    assert _steps(c, rid, "loss") == {s: 1 for s in range(1, 51)}
    assert c.get_run(rid).info.status == "FINISHED"
    assert [a.path for a in c.list_artifacts(rid, "adapter")] == ["adapter/lingo.json"]
