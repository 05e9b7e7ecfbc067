"""Many tasks per GPU: steady-state training samples/s of several tasks' LoRA adapters packed on one
frozen base (lingo_core.multitask) against the same tasks trained one after another.

  sequential  each task alone: MultiTaskLoRA with K = 1 and its own AdamW, warmup + steps steps
  project     reference: the project's own single-task LoRA step (PEFT + TorchBackend, step_time.py's
              time_project, synchronised per step) on a few tasks, to show K = 1 is no weak baseline
  packed      groups of G tasks; one step = one forward/backward over a mixed batch of batch_size rows
              per task (Routing.blocks) and one AdamW step per task (TaskOptimizers)

Tasks are sorted by prompt length and cut into groups of G in that order: a mixed batch pads to its
longest row, so tasks of similar length share a group. Every run trains on real train-split rows
(seeded, a new batch each step); batches are tokenised and put on the device before the clock starts.
Steady state: `steps` steps after `warmup` untimed ones, timed as one window with CUDA synchronised at
its two ends only; start-up (model load, tokenisation, model build, warm-up steps) is reported apart.
aggregate samples/s = samples in all timed windows / their summed time; speedup = packed / sequential
("speedup" is the best group size; every group size's figure is under "packed"). A failing group (CUDA
OOM at a large G) is recorded and the other group sizes still run.

  python benchmarks/packing.py --model /tmp/tiny --device cpu --steps 2 --warmup 1 --batch-size 4 --group-sizes 2
  python benchmarks/packing.py --model PATH.gguf --group-sizes 14,7,4 --steps 20 --warmup 5 --batch-size 32 \\
      --device cuda --out $OUT/packing_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from any folder

from benchmarks.provenance import git_commit, utc_now, write_report  # noqa: E402
from benchmarks.step_time import free_memory, sync_device, time_project  # noqa: E402
from lingo_core.data.loading import load_split  # noqa: E402
from lingo_core.data.task import TaskRegistry  # noqa: E402
from lingo_core.model_ref import resolve_model  # noqa: E402
from lingo_core.modeling import load_classifier, load_tokenizer  # noqa: E402
from lingo_core.multitask import MultiTaskLoRA  # noqa: E402
from lingo_core.routed_lora import Routing, TaskAdapter  # noqa: E402
from lingo_core.task_optimizers import TaskOptimizers  # noqa: E402
from lingo_core.tokenization import LingoTokenizer, suggest_max_length  # noqa: E402
from lingo_core.train.config import TrainConfig  # noqa: E402
from lingo_core.tuners.config import AdapterSettings  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SHARED_TASKS = ("prom_core_all,prom_core_notata,prom_core_tata,prom_300_all,prom_300_notata,prom_300_tata,"
                "tf/0,tf/1,tf/2,tf/3,tf/4,splice/reconstructed,EMP/H3,EMP/H4")  # issue 8's 14 shared tasks
REFERENCE_TASKS = "prom_core_all,prom_300_all,EMP/H3"  # short, middle, long prompts: enough to compare steps


# ---- data ----------------------------------------------------------------------------------------------
def load_task_rows(spec, tok_base, n_rows: int, seed: int) -> tuple[list[dict], LingoTokenizer]:
    """`n_rows` tokenised train rows of a task (a seeded permutation, wrapped when the split is smaller),
    prompts cut at the task's own suggested max_length as single-task training does."""
    table = load_split(spec, "train")
    order = np.random.default_rng(seed).permutation(table.num_rows)
    order = np.resize(order, n_rows)  # repeats the permutation when the split has fewer rows
    tok = LingoTokenizer(tok_base, mode="bbpe", max_length=suggest_max_length(spec.seq_len_bp, "bbpe"))
    return tok.encode_table(table.take(order), spec.description), tok


def step_batches(tok: LingoTokenizer, rows_per_task: list[list[dict]], steps: int, batch_size: int,
                 device: torch.device) -> list[dict[str, torch.Tensor]]:
    """One mixed batch per step on `device`: batch_size rows of each task, task blocks in order."""
    out = []
    for i in range(steps):
        rows = [row for rows in rows_per_task for row in rows[i * batch_size : (i + 1) * batch_size]]
        out.append({k: v.to(device) for k, v in tok.collate(rows).items()})
    return out


# ---- one training run: K tasks (K = 1: a task alone) -----------------------------------------------------
def train_run(base: torch.nn.Module, specs: list, batches: list[dict], args, device: torch.device) -> dict:
    """Build a MultiTaskLoRA over a copy of `base` for `specs`, train warmup + steps steps, time the last."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = args.warmup + args.steps
    t0 = time.perf_counter()
    torch.manual_seed(0)
    tasks = [TaskAdapter(s.name, s.num_labels, r=args.rank, alpha=args.alpha) for s in specs]
    model = MultiTaskLoRA(copy.deepcopy(base), tasks, dropout=args.dropout).place(device).train()
    opt = TaskOptimizers(model, total_steps=total, lr=args.lr, warmup_steps=args.warmup_steps)
    sync_device(device)
    build_s = time.perf_counter() - t0
    routing = Routing.blocks(args.batch_size)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and torch.cuda.is_bf16_supported()
                else contextlib.nullcontext())  # as TorchBackend: bf16 autocast on GPU, fp32 on CPU
    losses = []
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        if i == args.warmup:
            sync_device(device)
            timed_from = time.perf_counter()
        with autocast:
            logits = model(batch["input_ids"], batch["attention_mask"], routing)
        task_loss = model.task_losses(logits, batch["labels"], routing)
        task_loss.sum().backward()
        opt.step()
        losses.append(task_loss.detach())  # kept on device: reading it back would sync every step
    sync_device(device)
    end = time.perf_counter()
    loss = torch.stack(losses).float().cpu()  # [steps, K]
    window = end - timed_from
    names = [s.name for s in specs]
    cells = sum(int(b["input_ids"].numel()) for b in batches[args.warmup:])
    real = sum(int(b["attention_mask"].sum()) for b in batches[args.warmup:])
    out = {
        "tasks": names,
        "window_s": window,
        "samples": args.steps * args.batch_size * len(specs),
        "samples_per_s": args.steps * args.batch_size * len(specs) / window,
        "step_ms": 1e3 * window / args.steps,
        "build_s": build_s,
        "warmup_s": timed_from - start,
        "mean_width_tokens": statistics.mean(int(b["input_ids"].shape[1]) for b in batches),
        "pad_fraction": 1 - real / cells,
        "trainable_params": sum(model.num_trainable(k) for k in range(len(specs))),
        "loss_first": dict(zip(names, loss[0].tolist(), strict=True)),
        "loss_last": dict(zip(names, loss[-1].tolist(), strict=True)),
    }
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def guarded(fn, *a) -> dict:
    """Run one configuration; an exception (CUDA OOM at a large group) becomes the row's "error" so the
    other configurations still run. Memory is freed after the frames of the failure are gone."""
    try:
        row = fn(*a)
    except Exception as e:  # noqa: BLE001 - recorded in the report and printed
        row = {"error": f"{type(e).__name__}: {str(e)[:400]}", "oom": isinstance(e, torch.OutOfMemoryError)}
    free_memory(a[-1])
    return row


# ---- report -----------------------------------------------------------------------------------------------
def _mean_losses(runs: list[dict]) -> dict:
    first = [v for r in runs for v in r["loss_first"].values()]
    last = [v for r in runs for v in r["loss_last"].values()]
    return {"mean_task_loss_first_step": statistics.mean(first), "mean_task_loss_last_step": statistics.mean(last)}


def _aggregate(runs: list[dict]) -> dict:
    samples, window = sum(r["samples"] for r in runs), sum(r["window_s"] for r in runs)
    return {"aggregate_samples_per_s": samples / window, "samples": samples, "window_s": window,
            "startup_s": sum(r["build_s"] + r["warmup_s"] for r in runs), **_mean_losses(runs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="base LM (alias, folder, .gguf, hub id)")
    p.add_argument("--tasks", default=SHARED_TASKS, help="comma-separated GUE tasks (default: issue 8's 14)")
    p.add_argument("--data-root", default=None, help="GUE folder (default: $LINGO_DATA_ROOT / ../shared)")
    p.add_argument("--group-sizes", default="14,7,4", help="tasks per packed group, each size timed apart")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (steady state)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, cuBLAS, caches)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per task per step (32: the GPU figures)")
    p.add_argument("--rank", type=int, default=TaskAdapter.r, help="LoRA rank of every task")
    p.add_argument("--alpha", type=float, default=TaskAdapter.alpha, help="LoRA alpha of every task")
    p.add_argument("--dropout", type=float, default=AdapterSettings.lora_dropout, help="LoRA dropout of every task")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="AdamW lr of every task")
    p.add_argument("--reference-tasks", default=REFERENCE_TASKS, help="tasks timed with the project's step ('' none)")
    p.add_argument("--reference-steps", type=int, default=3,
                   help="timed steps of the project's step per task (after min(warmup, 2)); few: it is a reference")
    p.add_argument("--seed", type=int, default=0, help="row sampling seed")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="output JSON (default: benchmarks/results/packing_<device>.json)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1, --warmup >= 0")
    try:  # errors before work: a bad adapter setting would otherwise fail every run after the model load
        TaskAdapter("-", 2, r=args.rank, alpha=args.alpha)
    except ValueError as e:
        p.error(f"--rank/--alpha: {e}")
    if not 0 <= args.dropout < 1:
        p.error(f"--dropout: expected a value in [0, 1), got {args.dropout}")
    args.warmup_steps = TrainConfig(task="-").warmup_steps(args.warmup + args.steps)  # the project's rule
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    command = " ".join(["python", "benchmarks/packing.py", *(argv if argv is not None else sys.argv[1:])])

    registry = TaskRegistry.from_root(args.data_root)
    specs = [registry.get(name) for name in args.tasks.split(",") if name]
    group_sizes = [int(g) for g in args.group_sizes.split(",") if g]
    if any(g < 1 for g in group_sizes):
        p.error(f"--group-sizes: expected positive sizes, got {args.group_sizes}")
    reference = [registry.get(name).name for name in args.reference_tasks.split(",") if name]
    reference = [name for name in reference if name in {s.name for s in specs}]  # only tasks whose rows are loaded

    startup: dict[str, float] = {}
    t = time.perf_counter()
    ref = resolve_model(args.model)
    tok_base = load_tokenizer(ref)
    bases: dict[int, torch.nn.Module] = {}
    for n in sorted({s.num_labels for s in specs}):  # the head's class count matters only to the reference
        bases[n] = load_classifier(ref, n)
    startup["model_load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    n_rows = (args.warmup + args.steps) * args.batch_size
    rows, tok = {}, None
    for i, spec in enumerate(specs):
        rows[spec.name], tok = load_task_rows(spec, tok_base, n_rows, args.seed + i)
    startup["data_s"] = time.perf_counter() - t
    length = {s.name: statistics.mean(len(r["input_ids"]) for r in rows[s.name]) for s in specs}

    t = time.perf_counter()
    total = args.warmup + args.steps
    seq_batches = {s.name: step_batches(tok, [rows[s.name]], total, args.batch_size, device) for s in specs}
    by_length = sorted(specs, key=lambda s: length[s.name])  # stable: registry order among equal lengths
    groups = {g: [by_length[i : i + g] for i in range(0, len(by_length), g)] for g in group_sizes}
    startup["batch_build_s"] = time.perf_counter() - t
    base = bases[min(bases)]  # MultiTaskLoRA drops the classifier's own head: any class count serves
    load_before = os.getloadavg()[0]

    report_seq, report_ref, report_packed = {}, {}, {}
    for spec in specs:
        row = guarded(train_run, base, [spec], seq_batches[spec.name], args, device)
        report_seq[spec.name] = row
        print(f"sequential {spec.name:22s} " + (row.get("error") or
              f"{row['samples_per_s']:8.1f} samples/s  {row['step_ms']:7.1f} ms/step"), flush=True)

    ref_args = types.SimpleNamespace(warmup=min(args.warmup, 2), steps=args.reference_steps,
                                     batch_size=args.batch_size, ds_config="{}")
    for name in reference if args.reference_steps > 0 else []:
        spec = registry.get(name)
        batch = {k: v.cpu() for k, v in seq_batches[name][0].items()}
        row = guarded(time_project, "lora", "torch", bases[spec.num_labels], batch, ref_args, device)
        if "error" not in row:
            row = {"median_ms": row["median_ms"], "samples_per_s": 1e3 * args.batch_size / row["median_ms"],
                   "trainable_params": row["trainable_params"], **({"peak_mem_gb": row["peak_mem_gb"]}
                                                                   if "peak_mem_gb" in row else {})}
            if "samples_per_s" in report_seq.get(name, {}):
                row["k1_routed_over_project"] = report_seq[name]["samples_per_s"] / row["samples_per_s"]
        report_ref[name] = row
        print(f"project    {name:22s} " + (row.get("error") or f"{row['samples_per_s']:8.1f} samples/s"), flush=True)

    seq_ok = all("error" not in r for r in report_seq.values())
    sequential = {"per_task": report_seq, **(_aggregate(list(report_seq.values())) if seq_ok else {})}
    for g, chunks in groups.items():
        runs, error = [], None
        # Largest padded batch first: if anything runs out of memory it is that one, and the rest is skipped.
        for chunk in sorted(chunks, key=lambda c: -len(c) * max(length[s.name] for s in c)):
            batches = step_batches(tok, [rows[s.name] for s in chunk], total, args.batch_size, device)
            row = guarded(train_run, base, chunk, batches, args, device)
            # what was asked of the device, also when it failed: rows per step and the widest step
            row.update(tasks=[s.name for s in chunk], rows_per_step=len(chunk) * args.batch_size,
                       max_width_tokens=max(int(b["input_ids"].shape[1]) for b in batches))
            del batches
            free_memory(device)
            runs.append(row)
            print(f"packed G={g:<3d} {'+'.join(s.name for s in chunk)[:60]:60s} " + (row.get("error") or
                  f"{row['samples_per_s']:8.1f} samples/s  {row['step_ms']:7.1f} ms/step"), flush=True)
            if "error" in row:
                error = row["error"]
                break
        entry = {"groups": runs}
        if error is None:
            entry.update(_aggregate(runs))
            if seq_ok:
                entry["speedup"] = entry["aggregate_samples_per_s"] / sequential["aggregate_samples_per_s"]
        else:
            entry["error"] = error
        report_packed[str(g)] = entry

    import peft
    import transformers

    speedups = {g: e["speedup"] for g, e in report_packed.items() if "speedup" in e}
    best = max(speedups, key=speedups.get) if speedups else None
    report = {
        "speedup": speedups[best] if best else None,
        "speedup_group_size": int(best) if best else None,
        "speedups": speedups,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "date": utc_now(),
        "commit": git_commit(),
        "command": command,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_average_1m": [load_before, os.getloadavg()[0]],
        "model": args.model,
        "tasks": [s.name for s in specs],
        "mean_prompt_tokens": length,
        "batch_size_per_task": args.batch_size,
        "warmup": args.warmup,
        "steps": args.steps,
        "adapter": {"rank": args.rank, "alpha": args.alpha, "dropout": args.dropout, "lr": args.lr,
                    "lr_warmup_steps": args.warmup_steps, "optimizer": "AdamW per task, clip 1.0 per task"},
        "grouping": "tasks sorted by mean prompt length, cut into consecutive groups of G",
        "startup": startup,
        "sequential": sequential,
        "project_lora_reference": report_ref,
        "packed": report_packed,
    }
    for g, e in report_packed.items():
        print(f"G={g}: " + (e.get("error") or f"{e['aggregate_samples_per_s']:.1f} samples/s, speedup "
                            f"{e.get('speedup', float('nan')):.2f}"))
    out = Path(args.out) if args.out else RESULTS / f"packing_{device.type}.json"
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
