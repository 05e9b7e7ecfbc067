"""Break the adaptive-rank method on purpose, one way at a time, and check that the test suite notices.

Each mutation replaces one exact snippet of the code with a wrong version, in a throw-away copy of the
working tree, then runs the tests that should catch it. A mutation that leaves those tests green is a
hole in the suite. The list is the issue's breakage list (drop zeroes the stored value, regrow is
inert, importance ignores gradients, global RNG, bf16 over the fp32 master, patterns that differ
between runs or ranks, resume without the controller's state).

  .venv/bin/python scripts/check_mutations.py                  # all, writes benchmarks/results/mutations_cpu.json
  .venv/bin/python scripts/check_mutations.py drop_zeroes_lambda
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTROLLER = "lingo_core/tuners/ars/model.py"
SAMPLER = "lingo_core/tuners/ars/sampler.py"
LAYER = "lingo_core/tuners/ars/layer.py"
DEEPSPEED_BACKEND = "orchestrator/deepspeed_backend.py"
T_CONTROLLER = "tests/lingo_core/tuners/test_ars_controller.py"
T_SAMPLER = "tests/lingo_core/tuners/test_ars_sampler.py"
T_TRAINER = "tests/lingo_core/train/test_trainer.py"
T_WORKER = "tests/orchestrator/test_worker.py"
T_SAVE = "tests/lingo_core/tuners/test_tuners_save.py"
T_LAYER = "tests/lingo_core/tuners/test_ars_layer.py"
T_ARTIFACTS = "tests/lingo_core/test_artifacts.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation("drop_zeroes_lambda", "a drop or prune writes 0 into the stored Λ (the old in-place masking)",
             CONTROLLER,
             "        torch.mul(active, self.scale, out=self.gate)  # cast",
             "        with torch.no_grad():\n"
             "            self.singular_values[~active] = 0.0\n"
             "        torch.mul(active, self.scale, out=self.gate)  # cast",
             (T_CONTROLLER,)),
    Mutation("lambda_without_gradient", "the pooled Λ reaches the layers detached: singular values never train",
             CONTROLLER,
             "        scaled = self.singular_values * self.gate.view(-1, 1)",
             "        scaled = self.singular_values.detach() * self.gate.view(-1, 1)",
             (T_CONTROLLER,)),
    Mutation("lora_e_stale", "each lora_E holds its own copy of Λ: the saved adapter misses the trained values",
             LAYER,
             "        e.data = pooled.data[offset : offset + r]",
             "        e.data = pooled.data[offset : offset + r].clone()",
             (T_SAVE, T_ARTIFACTS)),
    Mutation("lora_e_untied_after_move", "bind does not point lora_E back at the pooled Λ after the model moved",
             CONTROLLER,
             "        tie_singular_values(e, self.layers, self.adapter_name)  # the model has moved since construction",
             "        pass",
             (T_LAYER,)),
    Mutation("regrow_inert", "reintroduced triplets are counted but stay switched off in the forward pass",
             CONTROLLER,
             "        active = (self.kept & ~self.dropped) | self.reintroduced\n        torch.mul",
             "        active = self.kept & ~self.dropped\n        torch.mul",
             (T_CONTROLLER,)),
    Mutation("importance_ignores_reintroduced", "only kept triplets are scored: a reintroduced one never earns its place",
             CONTROLLER,
             "            scores = self.importance.scores()\n            budget = s.budget(step)",
             "            scores = self.importance.scores() * self.kept\n            budget = s.budget(step)",
             (T_CONTROLLER,)),
    Mutation("importance_before_step", "importance reads the weights before the optimizer step (the old order)",
             "lingo_core/tuners/ars/importance.py",
             "        self._captured = True",
             "        self._captured = True\n"
             "        self._before = [v.to(self.device, torch.float32).clone() for v in self.access.values()]",
             (T_CONTROLLER,)),
    Mutation("global_rng", "exploration draws come from the global RNG",
             SAMPLER,
             "torch.rand(keep.numel(), generator=self.generator, dtype=torch.float64)",
             "torch.rand(keep.numel(), dtype=torch.float64)",
             (T_SAMPLER, T_CONTROLLER)),
    Mutation("unseeded_generator", "the private generator is seeded from entropy: runs differ",
             SAMPLER,
             "        self.generator.manual_seed(int(seed))",
             "        self.generator.seed()",
             (T_SAMPLER, T_CONTROLLER)),
    Mutation("rank_dependent_seed", "each data-parallel rank seeds its own sampler: ranks disagree",
             SAMPLER,
             "        self.generator.manual_seed(int(seed))",
             "        import torch.distributed as dist\n"
             "        self.generator.manual_seed(int(seed) + (dist.get_rank() if dist.is_initialized() else 0))",
             (T_WORKER,)),
    Mutation("bf16_over_master", "the dev-selected weights are read from the bf16 module copy, then written over the fp32 master",
             DEEPSPEED_BACKEND,
             "(p.data if master is None else master)",
             "p.data",
             (T_WORKER,)),
    Mutation("exploration_until_final", "exploration stays in force up to the final selection (no settling period)",
             CONTROLLER,
             "            elif s.settles(step):",
             "            elif False:",
             (T_CONTROLLER,)),
    Mutation("resume_without_controller", "resume restores the weights but not the controller's state",
             CONTROLLER,
             "        self._ensure_bound()\n        self.step = int(state[\"step\"])",
             "        return\n        self._ensure_bound()\n        self.step = int(state[\"step\"])",
             (T_CONTROLLER, T_TRAINER)),
]

# The importance_before_step mutation needs its captured values used; patch update() as well.
_EXTRA = {
    "importance_before_step": ("lingo_core/tuners/ars/importance.py",
                               "        values = [v.to(self.device, torch.float32) for v in self.access.values()]",
                               "        values = self._before"),
}


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def _patch(root: Path, file: str, old: str, new: str) -> None:
    path = root / file
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{file}: the snippet to mutate occurs {text.count(old)} times (expected 1):\n{old}")
    path.write_text(text.replace(old, new))


def run(m: Mutation) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"mut-{m.name}-") as tmp:
        root = Path(tmp)
        _copy_tree(root)
        _patch(root, m.file, m.old, m.new)
        if m.name in _EXTRA:
            _patch(root, *_EXTRA[m.name])
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *m.tests],
                              cwd=root, capture_output=True, text=True)
        failed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    caught = proc.returncode == 1 and bool(failed)
    print(f"{'caught' if caught else 'MISSED'}  {m.name:32s} {failed[0] if failed else proc.stdout[-300:]}",
          flush=True)
    return {"name": m.name, "what": m.what, "caught": caught, "caught_by": failed,
            "exit_code": proc.returncode, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not argv or m.name in argv]
    rows = [run(m) for m in chosen]
    if not argv:
        out = REPO / "benchmarks" / "results" / "mutations_cpu.json"
        report = {"device": "cpu", "command": "python scripts/check_mutations.py",
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True).stdout.strip(),
                  "mutations": rows}
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out)
    return 0 if all(r["caught"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
