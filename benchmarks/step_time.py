"""Time one training step of every method on the same model and the same batch of real GUE sequences,
with two hand-written references measured in the same run:

  floor        frozen base, bf16 weights, forward + backward to the inputs (no adapter): the least any
               adapter method can cost
  peft_lora    what a user writes by hand with PEFT defaults: LoRA r 8, alpha 16, dropout 0.05 on all 7
               projections, bf16 base, fp32 adapters (PEFT's default upcast), torch.optim.AdamW defaults
  ars, lora, adalora, full
               the project's own step (`lingo_core.train.micro_step` + the rank controller), under the
               plain backend and under DeepSpeed ZeRO-2 (what sweeps use)

ars and adalora are timed while their ranks are being pruned and ARS resamples (tinit = the warm-up
steps, tfinal = 1, the resample period derived as in training): the costly phase, not the frozen one.

  python benchmarks/step_time.py                                   # CPU: bs 8, every method, plain backend
  python benchmarks/step_time.py --batch-size 32 --backends torch,deepspeed --rounds 3   # the GPU run
  python benchmarks/step_time.py --steps 5 --warmup 1 --methods ars,lora

Writes benchmarks/results/step_time_<device>.json: per backend and method the median / p10 / p90 ms,
peak memory and trainable parameters, each method's ratio to the floor, ars_over_lora and
lora_over_peft_lora.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from any folder

from benchmarks.provenance import git_commit, utc_now, write_report  # noqa: E402
from lingo_core.data.loading import load_split  # noqa: E402
from lingo_core.data.task import TaskRegistry  # noqa: E402
from lingo_core.method_names import RANK_METHODS  # noqa: E402
from lingo_core.model_ref import resolve_model  # noqa: E402
from lingo_core.modeling import DEFAULT_TARGET_MODULES, load_classifier, load_tokenizer  # noqa: E402
from lingo_core.tokenization import LingoTokenizer, suggest_max_length  # noqa: E402
from lingo_core.train import TorchBackend, micro_step  # noqa: E402
from lingo_core.tuners.config import AdapterSettings  # noqa: E402
from lingo_core.tuners.methods import build_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PROJECT_METHODS = ("ars", "lora", "adalora", "full")
REFERENCES = ("floor", "peft_lora")


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        sync_device(device)
        t0 = time.perf_counter()
        step()
        sync_device(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    out = _stats([1e3 * t for t in times])
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def _stats(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    return {"median_ms": statistics.median(ordered), "p10_ms": ordered[int(0.1 * (len(ordered) - 1))],
            "p90_ms": ordered[int(0.9 * (len(ordered) - 1))], "steps_timed": len(ordered), "times_ms": times_ms}


def _merge_rounds(rows: list[dict]) -> dict:
    """One row from several rounds of the same configuration: statistics over all timed steps, plus each
    round's median (a drifting machine shows as medians that move together across methods)."""
    out = {**rows[-1], **_stats([t for r in rows for t in r["times_ms"]])}
    out["round_medians_ms"] = [r["median_ms"] for r in rows]
    if "peak_mem_gb" in out:
        out["peak_mem_gb"] = max(r["peak_mem_gb"] for r in rows)
    return out


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- the project's step -------------------------------------------------------------------------------
def timing_settings(method: str, warmup: int) -> AdapterSettings:
    # init_r 8 -> target_r 4: a mid-size GUE task's budget; lora_r 8 = init_r (same parameter count)
    if method in RANK_METHODS:
        return AdapterSettings(method=method, init_r=8, target_r=4, tinit=warmup, tfinal=1)
    return AdapterSettings(method=method)


def _backend(name: str, device: torch.device, batch_size: int, ds_config: dict):
    if name == "torch":
        return TorchBackend(device, grad_accum=1, max_grad_norm=1.0)
    from orchestrator.deepspeed_backend import DeepSpeedBackend, DeepSpeedSettings

    return DeepSpeedBackend(DeepSpeedSettings(zero_stage=2, micro_batch_size=batch_size, grad_accum=1,
                                              config=ds_config))


def time_project(method: str, backend_name: str, base: torch.nn.Module, batch: dict, args,
                 device: torch.device) -> dict:
    total = args.warmup + args.steps + 2  # the last timed step is still before the final selection
    torch.manual_seed(0)
    model, controller = build_model(copy.deepcopy(base), timing_settings(method, args.warmup),
                                    total_steps=total, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    n_train, n_all = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    backend = _backend(backend_name, device, args.batch_size, json.loads(args.ds_config))
    module = backend.prepare(model, params, lr=1e-4, weight_decay=0.0, warmup_steps=0, total_steps=total)
    if controller is not None:
        controller.bind(backend.shard_access(controller.params))
    module.train()
    on_device = {k: v.to(backend.device) for k, v in batch.items()}
    state = {"step": 0}

    def step() -> None:
        _, boundary = micro_step(module, dict(on_device), backend, controller)
        assert boundary
        state["step"] += 1
        if controller is not None:
            controller.allocate(state["step"])

    out = _timed(step, device, args.warmup, args.steps)
    if controller is not None:
        history = controller.history()[args.warmup:]
        out["budget_first_last_timed"] = [history[0]["budget"], history[-1]["budget"]]
        out["resampled_steps_timed"] = sum(1 for h in history if h["regrown"] or h["dropped"])
        assert not controller.final, "timed steps reached the frozen phase"
    out.update(trainable_params=n_train, trainable_fraction=n_train / n_all)
    return out  # the model, backend and controller go with this frame; the caller frees the memory


# ---- hand-written references ---------------------------------------------------------------------------
def time_reference(name: str, base: torch.nn.Module, batch: dict, args, device: torch.device) -> dict:
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = copy.deepcopy(base).to(device=device, dtype=dtype)
    on_device = {k: v.to(device) for k, v in batch.items()}
    if name == "floor":
        model.requires_grad_(False)
        embed = model.get_input_embeddings()
        embed.register_forward_hook(lambda m, i, o: o.requires_grad_())  # backward runs through every layer

        def step() -> None:
            model(**on_device).loss.backward()
        n_train = 0
    else:
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05,
                            target_modules=DEFAULT_TARGET_MODULES[model.config.model_type])
        model = get_peft_model(model, config)  # PEFT upcasts the adapter weights to fp32 by default
        optimizer = torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)

        def step() -> None:
            model(**on_device).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.train()
    out = _timed(step, device, args.warmup, args.steps)
    out["trainable_params"] = n_train
    return out


# ---- report ---------------------------------------------------------------------------------------------
def _ratios(report: dict) -> None:
    refs = report["results"].get("references", {})
    floor = refs.get("floor", {}).get("median_ms")
    for backend, rows in report["results"].items():
        if backend in ("references", "errors"):
            continue
        for row in rows.values():
            if floor:
                row["over_floor"] = row["median_ms"] / floor
        suffix = "" if backend == "torch" else f"_{backend}"
        if "ars" in rows and "lora" in rows:
            report[f"ars_over_lora{suffix}"] = rows["ars"]["median_ms"] / rows["lora"]["median_ms"]
            # ars and lora run back to back in every round: a round's ratio sees one state of a shared host
            report.setdefault("round_ratios", {})[f"ars_over_lora{suffix}"] = [
                a / b for a, b in zip(rows["ars"]["round_medians_ms"], rows["lora"]["round_medians_ms"], strict=False)]
        if "ars" in rows and "adalora" in rows:
            report[f"ars_over_adalora{suffix}"] = rows["ars"]["median_ms"] / rows["adalora"]["median_ms"]
        if "lora" in rows and "peft_lora" in refs:
            report[f"lora_over_peft_lora{suffix}"] = rows["lora"]["median_ms"] / refs["peft_lora"]["median_ms"]
    if floor and "peft_lora" in refs:
        refs["peft_lora"]["over_floor"] = refs["peft_lora"]["median_ms"] / floor


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="base LM (alias, folder, .gguf, hub id)")
    p.add_argument("--task", default="prom_300_all", help="GUE task whose training sequences form the batch")
    p.add_argument("--data-root", default=None, help="GUE folder (default: $LINGO_DATA_ROOT / ../shared)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (32 for the GPU figures)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per method (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, caches, autotune)")
    p.add_argument("--methods", default="ars,lora,adalora,full", help="project methods to time")
    p.add_argument("--references", default="floor,peft_lora", help="hand-written references ('' for none)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every configuration this many times, interleaved (a shared host drifts)")
    p.add_argument("--backends", default="torch", help="torch and/or deepspeed (ZeRO-2, one rank)")
    p.add_argument("--ds-config", default="{}", help="JSON merged into the DeepSpeed config (variants to compare)")
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

    base = load_classifier(ref, spec.num_labels)  # once: GGUF de-quantisation takes ~15 s; each method copies it
    load_before = os.getloadavg()[0]  # other jobs on the box inflate CPU timings: record it
    references = [r for r in args.references.split(",") if r]
    backends = [b for b in args.backends.split(",") if b]
    methods = [m for m in args.methods.split(",") if m]
    for name in references:
        if name not in REFERENCES:
            p.error(f"--references: unknown {name!r}; expected some of {', '.join(REFERENCES)}")
    for backend in backends:
        if backend not in ("torch", "deepspeed"):
            p.error(f"--backends: unknown {backend!r}; expected torch and/or deepspeed")
    for method in methods:
        if method not in PROJECT_METHODS:
            p.error(f"--methods: unknown {method!r}; expected some of {', '.join(PROJECT_METHODS)}")
    if args.rounds < 1:
        p.error(f"--rounds: expected >= 1, got {args.rounds}")
    rounds: dict[tuple[str, str], list[dict]] = {}
    errors: dict[str, str] = {}
    for i in range(args.rounds):  # round-robin: every configuration sees the machine in each of its states
        for name in references:
            rounds.setdefault(("references", name), []).append(row := time_reference(name, base, batch, args, device))
            free_memory(device)
            print(f"[{i}] {'reference':9s} {name:9s} {row['median_ms']:8.1f} ms/step", flush=True)
        for backend in backends:
            for method in methods:
                if f"{backend}/{method}" in errors:
                    continue
                try:  # one failing configuration must not cost the others (a GPU run is expensive)
                    row = time_project(method, backend, base, batch, args, device)
                except Exception as e:  # noqa: BLE001 - recorded in the report and printed
                    errors[f"{backend}/{method}"] = f"{type(e).__name__}: {e}"
                    print(f"{backend:9s} {method:9s} FAILED: {type(e).__name__}: {e}", flush=True)
                    continue
                finally:
                    free_memory(device)
                rounds.setdefault((backend, method), []).append(row)
                print(f"[{i}] {backend:9s} {method:9s} {row['median_ms']:8.1f} ms/step (p10 {row['p10_ms']:.1f}, "
                      f"p90 {row['p90_ms']:.1f}; {100 * row['trainable_fraction']:.2f}% trainable)", flush=True)
    results: dict[str, dict] = {}
    for (group, name), rows in rounds.items():
        results.setdefault(group, {})[name] = _merge_rounds(rows)
    if errors:
        results["errors"] = errors
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = {
        "device": device.type,
        "device_name": dev_name,
        "date": utc_now(),
        "commit": git_commit(),
        "threads": torch.get_num_threads(),
        "load_average_1m": [load_before, os.getloadavg()[0]],
        "model": args.model,
        "task": spec.name,
        "batch_size": args.batch_size,
        "seq_len_tokens": int(batch["input_ids"].shape[1]),
        "warmup": args.warmup,
        "steps": args.steps,
        "rounds": args.rounds,
        "ds_config": json.loads(args.ds_config),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "command": " ".join(["python", "benchmarks/step_time.py", *(argv if argv is not None else sys.argv[1:])]),
        "results": results,
    }
    _ratios(report)
    for key in sorted(k for k in report if "_over_" in k):
        print(f"{key}: {report[key]:.3f}")
    for key, ratios in report.get("round_ratios", {}).items():
        print(f"{key} per round: {', '.join(f'{r:.3f}' for r in ratios)}")
    out = Path(args.out) if args.out else RESULTS / f"step_time_{device.type}.json"
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
