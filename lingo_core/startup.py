"""Where a trial's start-up seconds go: named wall-clock marks from the trial's entry to its first
optimizer step, across processes.

    trial driver            Ray Train worker                         train()
    entry, driver_ready --> worker_start, imports, backend_built --> data, tokenized, model,
                                                                     backend_ready, first_step

(the names are the callers': orchestrator/trial.py, orchestrator/worker.py, lingo_core/train/trainer.py)

A mark is `time.time()`, not a monotonic clock: the marks are taken in different processes (the Tune
trial driver, then a Ray Train worker) and `time.time()` is the one clock they share on one machine. A
worker on another machine reads its own clock, so the driver -> worker gap is as good as the two clocks'
agreement (NTP: milliseconds). The marks travel as a plain list of [name, seconds] pairs, so a clock
passes through a Ray config and comes back out unchanged.
"""

from __future__ import annotations

import time
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TOTAL = "total"  # the key of phases() holding first mark -> last mark


class StartupClock:
    """Marks in the order taken; `phases()` turns them into seconds spent reaching each mark."""

    def __init__(self, marks: list[tuple[str, float]] | list[list] | None = None) -> None:
        self._marks: list[tuple[str, float]] = [(str(n), float(t)) for n, t in (marks or [])]

    def mark(self, name: str, device: torch.device | None = None) -> None:
        """Record `name` now. On a CUDA `device` the queued kernels finish first, so a mark after a step
        counts that step's GPU work rather than only its launch."""
        if name == TOTAL or self.has(name):
            raise ValueError(f"mark {name!r}: already taken or reserved; marks name distinct phases")
        if device is not None and device.type == "cuda":
            import torch  # only a CUDA caller gets here, and it has torch loaded: the driver's clock stays light

            torch.cuda.synchronize(device)
        self._marks.append((name, time.time()))

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self._marks)

    @property
    def marks(self) -> list[tuple[str, float]]:
        """The raw marks (name, unix seconds): what to send to another process's StartupClock."""
        return list(self._marks)

    def phases(self) -> dict[str, float]:
        """Seconds from each mark's predecessor to it, keyed by the mark's name (the first mark is the
        origin and has no entry), plus `total`: first mark -> last mark. Empty with fewer than two marks."""
        if len(self._marks) < 2:
            return {}
        out = {name: t - prev for (_, prev), (name, t) in pairwise(self._marks)}
        out[TOTAL] = self._marks[-1][1] - self._marks[0][1]
        return out
