"""Packed training end to end: `train_group` over K tasks against `train()` over the same tasks one after
another, with everything a trial does (data, tokenisation, model load, dev evaluation, one test pass,
export). packing.py measures the steady-state step alone; this measures what a sweep's trial costs.

  sequential  train(cfg) per task, one after another (each loads the base and builds its PEFT model)
  group       train_group(cfgs): one base, one mixed batch per step, each task its own optimizer,
              schedule, dev selection and export

Same configs in both: lora r 4 / alpha 16, lr 1e-3, batch 32, max_steps (and at most 3 epochs), a dev
evaluation every eval_every steps and one test pass on max_eval_samples rows. wall_s includes start-up;
samples/s = optimizer steps x batch size, summed over tasks, / wall_s; speedup = sequential wall / group
wall (the base's weight cache is warmed first, untimed). Both runs write each task's dev and test MCC, so the two paths can be compared on quality too.

  python benchmarks/group_train.py --model /tmp/tiny --device cpu --max-steps 2 --eval-rows 16 --tasks prom_core_tata,tf/0
  python benchmarks/group_train.py --model PATH.gguf --device cuda --out $OUT/group_train_gpu.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from any folder

from benchmarks.provenance import git_commit, utc_now, write_report  # noqa: E402
from lingo_core.train import TorchBackend, TrainConfig, train  # noqa: E402
from lingo_core.train.group import train_group  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# three short-prompt shared tasks with published splits, 70-101 bp: one group pads little
DEFAULT_TASKS = "prom_core_all,prom_core_notata,tf/0"


def _config(args: argparse.Namespace, task: str, out: Path) -> TrainConfig:
    return TrainConfig(task=task, model=args.model, epochs=3, max_steps=args.max_steps, batch_size=args.batch_size,
                       lr=1e-3, eval_every=args.eval_every, log_every=args.max_steps,
                       max_eval_samples=args.eval_rows, output_dir=str(out / task.replace("/", "_")),
                       adapter={"method": "lora", "lora_r": 4})


def _row(task: str, mode: str, result: object) -> dict:
    if isinstance(result, BaseException):
        return {"task": task, "mode": mode, "error": f"{type(result).__name__}: {result}"}
    return {"task": task, "mode": mode, "dev_mcc": result.dev_metrics.get("mcc"),
            "test_mcc": result.test_metrics.get("mcc"), "total_steps": result.total_steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tasks", default=DEFAULT_TASKS)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--max-steps", type=int, default=40)  # a short run: the timing, not the MCC, is the point
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-rows", type=int, default=256)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    command = " ".join(["python", "benchmarks/group_train.py", *(sys.argv[1:] if argv is None else argv)])
    tasks = [t for t in args.tasks.split(",") if t]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # untimed: the first load de-quantises a GGUF into the machine's cache (once per machine), which
    # would otherwise be charged to the first sequential task only
    from lingo_core.model_ref import resolve_model
    from lingo_core.modeling import load_classifier

    load_classifier(resolve_model(args.model), 2)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for task in tasks:  # sequential: each task as `lingo train` would run it
            cfg = _config(args, task, Path(tmp) / "sequential")
            try:
                rows.append(_row(task, "sequential", train(cfg, backend=TorchBackend(device))))
            except Exception as e:  # noqa: BLE001 - recorded; the group run still happens
                rows.append(_row(task, "sequential", e))
        sequential_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = train_group([_config(args, t, Path(tmp) / "group") for t in tasks], device=device)
        group_s = time.perf_counter() - t0
    rows += [_row(t, "group", r) for t, r in zip(tasks, results, strict=True)]

    def samples(mode: str) -> int:
        return sum(r.get("total_steps", 0) for r in rows if r["mode"] == mode) * args.batch_size

    import peft
    import transformers

    report = {
        "speedup": sequential_s / group_s,
        "sequential_s": sequential_s, "group_s": group_s,
        "sequential_samples_per_s": samples("sequential") / sequential_s,
        "group_samples_per_s": samples("group") / group_s,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "date": utc_now(), "commit": git_commit(), "command": command,
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "python": platform.python_version(), "model": args.model, "tasks": tasks, "max_steps": args.max_steps,
        "batch_size": args.batch_size, "eval_every": args.eval_every, "eval_rows": args.eval_rows,
        "rows": rows,
    }
    print(f"sequential {sequential_s:.1f} s, group {group_s:.1f} s: speedup {report['speedup']:.2f}")
    write_report(report, Path(args.out) if args.out else RESULTS / f"group_train_{device.type}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
