"""A durable local buffer between a trial and its MLflow run: every metric, param, tag, artifact and
status goes first into an append-only JSONL journal in the trial's output folder, and a background
thread sends it to MLflow. Training only ever writes a local file, so a tracking outage can neither
crash nor stall it; what the server missed is replayed when it answers again.

Guarantees (docs/reliability-orchestration.md):
  * durable: a record is fsynced to the journal before `RunJournal.metrics/params/...` return;
  * ordered: records reach MLflow in the order they were written (one cursor, `acked`);
  * idempotent: after a failed or interrupted send, metrics are compared with the server's history by
    (key, step, timestamp) before they are sent again; params/tags/artifacts/status overwrite themselves;
  * one history per trial across worker restarts: metrics are held back until a checkpoint covers
    their step (`commit`), and a restarted worker drops the unsent metrics of steps after the checkpoint
    it resumed from (`restart`), so the retry's values replace them instead of duplicating them.
Single writer: rank 0 of the live attempt, or the trial driver once the worker group has ended.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from orchestrator import tracking

JOURNAL_DIR = "tracking-journal"  # inside the trial's output folder (cfg.output_dir)
_LOG, _ACKED = "journal.jsonl", "acked"
# Server answers that retrying cannot fix (e.g. a param re-logged with another value): such a record is
# set aside in rejected.jsonl instead of blocking every record behind it.
_CLIENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE"}


def transient(e: BaseException) -> bool:
    """True for errors that mean "the server is unreachable or unwell; try again later"."""
    if isinstance(e, MlflowException):
        return e.error_code not in _CLIENT_ERRORS
    return isinstance(e, OSError)


def patient(fn, deadline_s: float = 600.0, delay_s: float = 1.0):
    """fn() retried with back-off while the server is unreachable (driver-side calls that need an answer,
    such as creating a run: MLflow assigns run ids). Training never calls this."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return fn()
        except Exception as e:
            if not transient(e) or time.monotonic() > end:
                raise
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 10.0)


class RunJournal:
    def __init__(self, folder: str | Path, tracking_uri: str, run_id: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.uri, self.run_id = tracking_uri, run_id
        self._lock = threading.Lock()  # the training thread appends while the flusher sends
        self._send_lock = threading.Lock()  # one sender at a time (flusher thread or a final drain)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._records: list[dict] = []  # unsent, in order
        self._seq = 0
        self._acked = -1
        self._committed = -math.inf  # metrics of steps <= this may be sent
        self._sent_max: dict[str, int] = {}  # metric key -> highest step MLflow has (acked)
        self._load()
        # A record may have reached the server just before the previous writer died or a send failed:
        # check the server's history once before sending metrics again.
        self._verify = any(r["kind"] == "metrics" for r in self._records)

    # ---- writing (training thread) --------------------------------------------------------------------
    def metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        # First write wins per (key, step): a retry re-logging a step MLflow already holds (no checkpoint
        # to resume from, or a reported checkpoint Ray lost) is dropped rather than duplicated.
        values = {k: v for k, v in tracking.scalar_metrics(metrics).items() if step > self._sent_max.get(k, -1)}
        if values:
            self._append({"kind": "metrics", "step": int(step), "ts": int(time.time() * 1000), "values": values})

    def params(self, params: Mapping[str, Any]) -> None:
        self._append({"kind": "params", "values": {k: str(v)[:tracking.PARAM_MAX]
                                                   for k, v in tracking.flatten(params).items()}})

    def tags(self, tags: Mapping[str, Any]) -> None:
        self._append({"kind": "tags", "values": {k: str(v)[:tracking.PARAM_MAX] for k, v in tags.items()}})

    def artifacts(self, pairs: Iterable[tuple[str | Path, str | None]]) -> None:
        """Snapshot each file/folder into the journal now (the trial may overwrite its files later)."""
        for local, sub in pairs:
            local = Path(local)
            if not local.exists():
                continue
            dest = self.folder / "artifacts" / f"{self._seq:07d}"
            shutil.rmtree(dest, ignore_errors=True)
            if local.is_dir():
                shutil.copytree(local, dest)
            else:
                dest.mkdir(parents=True)
                shutil.copy2(local, dest / local.name)
            self._append({"kind": "artifacts", "path": str(dest.relative_to(self.folder)), "sub": sub,
                          "file": None if local.is_dir() else local.name})

    def status(self, status: str) -> None:
        self.commit()  # the run is over: nothing after this can replace its metrics
        self._append({"kind": "status", "value": status})

    def commit(self, step: int | None = None) -> None:
        """A checkpoint now covers `step` (None: everything so far): its metrics may go to MLflow."""
        self._append({"kind": "commit", "step": math.inf if step is None else int(step)})
        self._wake.set()

    def restart(self, step: int) -> None:
        """A new attempt resumes from the checkpoint of `step` (0: from scratch): the previous attempt's
        unsent metrics after it are void, the new attempt logs those steps again."""
        self._append({"kind": "restart", "step": int(step)})

    def _append(self, rec: dict) -> None:
        with self._lock:
            rec = {"seq": self._seq, **rec}
            with (self.folder / _LOG).open("a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._seq += 1
            self._apply(rec)

    def _apply(self, rec: dict) -> None:
        """Fold one record into the in-memory state (also used when reading the journal back)."""
        kind = rec["kind"]
        if kind == "commit":
            self._committed = max(self._committed, rec["step"])
        elif kind == "restart":
            self._records = [r for r in self._records if r["kind"] != "metrics" or r["step"] <= rec["step"]]
            self._committed = min(self._committed, rec["step"])
        elif rec["seq"] > self._acked:
            self._records.append(rec)
        else:
            self._note_sent(rec)

    def _note_sent(self, rec: dict) -> None:
        if rec["kind"] == "metrics":
            for k in rec["values"]:
                self._sent_max[k] = max(self._sent_max.get(k, -1), rec["step"])

    def _load(self) -> None:
        acked = self.folder / _ACKED
        self._acked = int(acked.read_text()) if acked.is_file() else -1
        log = self.folder / _LOG
        if not log.is_file():
            return
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from a killed writer: fsync never finished
                break
            self._seq = rec["seq"] + 1
            self._apply(rec)

    # ---- sending --------------------------------------------------------------------------------------
    def pending(self) -> int:
        with self._lock:
            return len(self._records)

    def flush(self) -> bool:
        """Send every record that may go now, in order. True when nothing sendable is left; False when the
        server failed (the records stay; the next flush retries them)."""
        with self._send_lock:
            while True:
                with self._lock:
                    batch = self._next_batch()
                if not batch:
                    return True
                try:
                    self._send(batch)
                except Exception as e:
                    if transient(e):
                        self._verify = True  # the server may have stored part of it
                        return False
                    self._reject(batch, e)
                self._ack(batch)

    def _next_batch(self) -> list[dict]:
        """The longest run of pending records of one kind that fits one request (metrics: committed only)."""
        out: list[dict] = []
        n = 0
        for r in self._records:
            if r["kind"] == "metrics" and r["step"] > self._committed:
                break  # held until a checkpoint covers it; everything after it waits (order)
            if out and (r["kind"] != out[0]["kind"] or r["kind"] in ("artifacts", "status")):
                break
            size = len(r.get("values", ())) or 1
            if out and n + size > tracking.MAX_BATCH:
                break
            out.append(r)
            n += size
        return out

    def _send(self, batch: list[dict]) -> None:
        c = self._client or tracking.client(self.uri)
        self._client = c
        kind = batch[0]["kind"]
        if kind == "metrics":
            metrics = [Metric(k, v, r["ts"], r["step"]) for r in batch for k, v in r["values"].items()]
            if self._verify:
                metrics = self._not_on_server(c, metrics)
            for i in range(0, len(metrics), tracking.MAX_BATCH):
                c.log_batch(self.run_id, metrics=metrics[i:i + tracking.MAX_BATCH])
            self._verify = False
        elif kind == "params":
            items = [Param(k, v) for r in batch for k, v in r["values"].items()]
            for i in range(0, len(items), tracking.MAX_BATCH):
                c.log_batch(self.run_id, params=items[i:i + tracking.MAX_BATCH])
        elif kind == "tags":
            items = [RunTag(k, v) for r in batch for k, v in r["values"].items()]
            c.log_batch(self.run_id, tags=items)
        elif kind == "artifacts":
            (r,) = batch
            local = self.folder / r["path"]
            if r["file"] is None:
                c.log_artifacts(self.run_id, str(local), r["sub"])
            else:
                c.log_artifact(self.run_id, str(local / r["file"]), r["sub"])
        elif kind == "status":
            c.set_terminated(self.run_id, batch[0]["value"])

    def _not_on_server(self, c, metrics: list[Metric]) -> list[Metric]:
        seen = {(m.key, m.step, m.timestamp) for key in {m.key for m in metrics}
                for m in c.get_metric_history(self.run_id, key)}
        return [m for m in metrics if (m.key, m.step, m.timestamp) not in seen]

    def _reject(self, batch: list[dict], e: Exception) -> None:
        with (self.folder / "rejected.jsonl").open("a") as f:
            for r in batch:
                f.write(json.dumps({**r, "error": str(e)[:500]}) + "\n")

    def _ack(self, batch: list[dict]) -> None:
        seq = batch[-1]["seq"]
        with self._lock:
            for r in batch:
                self._note_sent(r)
            self._acked = seq
            self._records = [r for r in self._records if r["seq"] > seq]
            tmp = self.folder / f".{_ACKED}.tmp"
            tmp.write_text(str(seq))
            os.replace(tmp, self.folder / _ACKED)  # atomic: a crash leaves the old or the new cursor

    # ---- background / final ---------------------------------------------------------------------------
    def start(self, interval_s: float = 2.0) -> RunJournal:
        def loop() -> None:
            delay = interval_s
            while not self._stop.is_set():
                self._wake.wait(delay)
                self._wake.clear()
                try:
                    ok = self.flush()
                except Exception:  # never let tracking take the worker down; the journal keeps it all
                    ok = False
                delay = interval_s if ok else min(delay * 2, 15.0)  # back off while the server is down

        self._thread = threading.Thread(target=loop, name="lingo-journal", daemon=True)
        self._thread.start()
        return self

    def drain(self, timeout_s: float) -> bool:
        """Stop the background thread and try to send everything within timeout_s. True when the journal
        is empty; otherwise the rest stays on disk for the trial driver / next replay."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        end, delay = time.monotonic() + timeout_s, 0.5
        while True:
            if self.flush() and self.pending() == 0:
                return True
            if time.monotonic() + delay > end:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def journal_dir(trial_output_dir: str | Path) -> Path:
    return Path(trial_output_dir) / JOURNAL_DIR


def replay_all(root: str | Path, tracking_uri: str, timeout_s: float) -> int:
    """Send what any journal under `root` still holds (trial drivers that died before their drain).
    Returns how many records are still unsent."""
    left = 0
    for meta in _journals(Path(root)):
        run = json.loads(meta.read_text())
        j = RunJournal(meta.parent, tracking_uri, run["run_id"])
        if j.pending():
            j.commit()  # no attempt of this trial is alive any more: its metrics are final
            j.drain(timeout_s)
        left += j.pending()
    return left


def _journals(root: Path) -> list[Path]:
    """run.json of every journal under root, at any depth (search.py owns the layout). A walk that skips
    checkpoint folders: they are large, and temp folders in them may vanish mid-walk."""
    found = []
    for folder, dirs, _ in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("checkpoints", "ray", "mlruns", JOURNAL_DIR)]
        meta = Path(folder) / JOURNAL_DIR / "run.json"
        if meta.is_file():
            found.append(meta)
    return sorted(found)


def open_for_run(trial_output_dir: str | Path, tracking_uri: str, run_id: str) -> RunJournal:
    """The trial's journal; records which run it feeds, so a later replay needs nothing else."""
    folder = journal_dir(trial_output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"run_id": run_id}))
    return RunJournal(folder, tracking_uri, run_id)
