"""Time one training step (forward + backward + optimizer + rank allocation) for ARS vs PEFT LoRA vs
PEFT AdaLoRA vs full fine-tuning, on the same model and the same batch of real GUE sequences.

  python benchmarks/step_time.py                      # SmolLM2-135M, bs 8, prom_300_all, CPU or GPU
  python benchmarks/step_time.py --steps 5 --warmup 1 --methods ars,lora

Writes benchmarks/results/step_time_<device>.json (median / p10 / p90 seconds per method).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from lingo_core.data.loading import load_split
from lingo_core.data.task import TaskRegistry
from lingo_core.modeling import load_classifier, load_tokenizer, resolve_model
from lingo_core.tokenization import LingoTokenizer, suggest_max_length
from lingo_core.train.backend import TorchBackend
from lingo_core.tuners.config import AdapterSettings
from lingo_core.tuners.methods import build_model

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_method(method: str, ref, num_labels: int, batch: dict, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    # init_r 8 / target_r 4: the default budget of a mid-size GUE task; lora_r 8 matches init_r
    settings = AdapterSettings(method=method, init_r=8, target_r=4)
    total = args.warmup + args.steps
    # tinit 0 / tfinal 0-ish: allocation work happens on every timed step (the worst case for ARS)
    if method in ("ars", "adalora"):
        settings = AdapterSettings(method=method, init_r=8, target_r=4, tinit=0, tfinal=1)
        total = max(total + 2, 4)
    model, ctrl = build_model(load_classifier(ref, num_labels), settings, total_steps=total + 10, seed=0)
    backend = TorchBackend(device, grad_accum=1, max_grad_norm=1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    module = backend.prepare(model, params, lr=1e-4, weight_decay=0.0, warmup_steps=0, total_steps=total + 10)
    module.train()
    batch = {k: v.to(device) for k, v in batch.items()}
    times = []
    for step in range(1, args.warmup + args.steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        with backend.autocast():
            loss = module(**batch).loss
        backend.backward(loss)
        if ctrl is not None:
            ctrl.observe(backend.full_grad)
        backend.step()
        if ctrl is not None:
            ctrl.allocate(step, backend.write_param_)
        _sync(device)
        if step > args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in model.parameters())
    del model, module, backend
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "median_s": statistics.median(times),
        "p10_s": times[int(0.1 * (len(times) - 1))],
        "p90_s": times[int(0.9 * (len(times) - 1))],
        "steps_timed": len(times),
        "trainable_params": n_train,
        "trainable_fraction": n_train / n_all,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="base LM (alias, folder, .gguf, hub id)")
    p.add_argument("--task", default="prom_300_all", help="GUE task whose training sequences form the batch")
    p.add_argument("--data-root", default=None, help="GUE folder (default: $LINGO_DATA_ROOT / ../shared)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (the training default)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per method (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, caches, autotune)")
    p.add_argument("--methods", default="ars,lora,adalora,full", help="comma-separated methods to time")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="output JSON (default: benchmarks/results/step_time_<device>.json)")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ref = resolve_model(args.model)
    spec = TaskRegistry.from_root(args.data_root).get(args.task)
    table = load_split(spec, "train").slice(0, args.batch_size)
    tok = LingoTokenizer(load_tokenizer(ref), mode="bbpe", max_length=suggest_max_length(spec.seq_len_bp, "bbpe"))
    batch = tok.collate(tok.encode_table(table, spec.description))

    import peft
    import transformers

    load_before = os.getloadavg()[0]  # other jobs on the box inflate CPU timings: record it
    results = {}
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        results[method] = time_method(method, ref, spec.num_labels, batch, args, device)
        print(f"{method:8s} median {results[method]['median_s'] * 1e3:8.1f} ms/step "
              f"(p10 {results[method]['p10_s'] * 1e3:.1f}, p90 {results[method]['p90_s'] * 1e3:.1f}; "
              f"{100 * results[method]['trainable_fraction']:.2f}% trainable)", flush=True)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = {
        "device": device.type,
        "device_name": dev_name,
        "threads": torch.get_num_threads(),
        "load_average_1m": [load_before, os.getloadavg()[0]],
        "model": args.model,
        "task": spec.name,
        "batch_size": args.batch_size,
        "seq_len_tokens": int(batch["input_ids"].shape[1]),
        "warmup": args.warmup,
        "steps": args.steps,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "results": results,
    }
    if "ars" in results and "adalora" in results:
        report["ars_over_adalora"] = results["ars"]["median_s"] / results["adalora"]["median_s"]
    if "ars" in results and "lora" in results:
        report["ars_over_lora"] = results["ars"]["median_s"] / results["lora"]["median_s"]
    out = Path(args.out) if args.out else RESULTS / f"step_time_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
