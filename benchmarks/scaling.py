"""Data-parallel scaling through the orchestrator's stack: Ray Train workers, DeepSpeed ZeRO, the project's
own step (`lingo_core.train.micro_step` + the rank controller), a random-initialised LLaMA-shaped model.

  weak scaling   a fixed micro-batch per GPU (32 by default); 1, 2 (, 4) workers; ars, lora and full.
                 efficiency(n) = samples/s with n workers / (n x samples/s with 1 worker)
  memory         --memory: the largest model size that trains with lora at batch 32 x 512 tokens on one
                 GPU, under ZeRO-2 and under ZeRO-3 with parameters and optimizer offloaded to CPU, with
                 peak memory and where it goes (frozen weights, trainable state, the rest = activations)

  python benchmarks/scaling.py --gpus 1,2 --methods ars,lora,full --size 1b      # a 2-GPU machine
  python benchmarks/scaling.py --memory --sizes 1b,3b,7b,13b --seq-len 512       # one GPU
  python benchmarks/scaling.py --device cpu --gpus 1,2 --size tiny --batch-size 2 --steps 2 --warmup 1  # smoke

Tokens are random ids (a throughput benchmark: the model is random too). Each configuration runs as its
own Ray Train fit, so one failing (an out-of-memory, say) is recorded and the others still run.
Writes benchmarks/results/scaling_<device>.json (device, versions, date, command, a row per run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from any folder

from benchmarks.provenance import git_commit, utc_now, write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SCALED_METHODS = ("ars", "lora", "full")  # the three: full is where gradient traffic is large
# LLaMA shapes: (hidden, intermediate, layers, heads, kv heads). SmolLM2's vocabulary (49,152) for all.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 128, 2, 4, 2),  # CPU smoke run: seconds
    "135m": (576, 1536, 30, 9, 3),  # SmolLM2-135M, the project's default model
    "1b": (2048, 5632, 22, 32, 4),  # TinyLlama-1.1B: the "1B-class" model
    "3b": (3200, 8640, 26, 32, 32),  # OpenLLaMA-3B
    "7b": (4096, 11008, 32, 32, 32),  # Llama-2-7B
    "13b": (5120, 13824, 40, 40, 40),  # Llama-2-13B
}
VOCAB = 49152


def llama_config(size: str) -> Any:
    from transformers import LlamaConfig

    hidden, inter, layers, heads, kv = SIZES[size]
    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                       pad_token_id=0, num_labels=2, tie_word_embeddings=True)


def worker_fn(cfg: dict) -> None:
    """One Ray Train worker: build, prepare through DeepSpeedBackend, time `steps` optimizer steps."""
    import torch.distributed as dist
    from transformers import LlamaForSequenceClassification

    from benchmarks.step_time import timing_settings
    from lingo_core.train import micro_step
    from lingo_core.tuners.methods import build_model
    from orchestrator.deepspeed_backend import DeepSpeedBackend, DeepSpeedSettings

    backend = DeepSpeedBackend(DeepSpeedSettings(
        zero_stage=cfg["zero_stage"], micro_batch_size=cfg["batch_size"], grad_accum=1,
        offload_optimizer=cfg["offload"], offload_param=cfg["offload"]))
    rank, world, device = backend.rank, backend.world_size, backend.device
    row: dict[str, Any] = {"rank0_device": str(device)}
    try:
        torch.manual_seed(0)  # the same random base on every rank, as a loaded checkpoint would be
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        # Created in its training dtype (a 13B model in fp32 would need 52 GB first). ZeRO-2 builds it on
        # the GPU (a 1B init on CPU takes tens of seconds); ZeRO-3 + offload on CPU, where deepspeed.initialize
        # partitions it (zero.Init would partition at construction, but PEFT cannot wrap partitioned layers).
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device if cfg["zero_stage"] < 3 else "cpu"):
                base = LlamaForSequenceClassification(llama_config(cfg["size"]))
        finally:
            torch.set_default_dtype(previous)
        total = cfg["warmup"] + cfg["steps"] + 2  # ranks are still being pruned in the last timed step
        model, controller = build_model(base, timing_settings(cfg["method"], cfg["warmup"]), total_steps=total,
                                        seed=0)
        params = [p for p in model.parameters() if p.requires_grad]
        row["trainable_params"] = sum(getattr(p, "ds_numel", p.numel()) for p in params)
        row["total_params"] = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        module = backend.prepare(model, params, lr=1e-4, weight_decay=0.0, warmup_steps=0, total_steps=total)
        if controller is not None:
            controller.bind(backend.shard_access(controller.params))
        module.train()
        gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data, as a sharded loader gives
        batch = {"input_ids": torch.randint(1, VOCAB, (cfg["batch_size"], cfg["seq_len"]), generator=gen),
                 "attention_mask": torch.ones(cfg["batch_size"], cfg["seq_len"], dtype=torch.long),
                 "labels": torch.randint(0, 2, (cfg["batch_size"],), generator=gen)}
        batch = {k: v.to(device) for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            row["static_gb"] = torch.cuda.memory_allocated(device) / 2**30  # weights + optimizer state
        elapsed = 0.0
        for i in range(cfg["warmup"] + cfg["steps"]):
            if i == cfg["warmup"]:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dist.barrier()  # every rank starts the timed window together
                t0 = time.perf_counter()
            micro_step(module, dict(batch), backend, controller)
            if controller is not None:
                controller.allocate(i + 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(elapsed.to(device) if device.type == "cuda" else elapsed, op=dist.ReduceOp.MAX)
        seconds = float(elapsed)
        row.update(world_size=world, seconds=seconds, step_ms=1e3 * seconds / cfg["steps"],
                   samples_per_s=world * cfg["batch_size"] * cfg["steps"] / seconds)
        if device.type == "cuda":
            row["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            row["activations_gb"] = row["peak_gb"] - row["static_gb"]
    except torch.OutOfMemoryError as e:  # the memory search's answer, not a crash
        row.update(oom=True, error=str(e).splitlines()[0])
    if rank == 0:  # a file, not ray.train.report: Train V2's Result carries no metrics without a checkpoint
        Path(cfg["row_file"]).write_text(json.dumps(row))


def run_config(cfg: dict, workers: int, use_gpu: bool, storage: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    name = f"{cfg['method']}-{cfg['size']}-z{cfg['zero_stage']}{'o' if cfg['offload'] else ''}-{workers}w"
    cfg = {**cfg, "row_file": str(Path(storage) / f"{name}.json")}  # one machine: the driver reads it back
    trainer = TorchTrainer(worker_fn, train_loop_config=cfg,
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                        resources_per_worker={"CPU": cfg["cpus_per_worker"]}),
                           run_config=RunConfig(name=name, storage_path=storage))
    t0 = time.perf_counter()
    try:
        trainer.fit()
        metrics = json.loads(Path(cfg["row_file"]).read_text())
    except Exception as e:  # noqa: BLE001 - recorded in the report; the next configuration still runs
        metrics = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    row = {"method": cfg["method"], "size": cfg["size"], "workers": workers, "zero_stage": cfg["zero_stage"],
           "offload": cfg["offload"], "batch_size_per_worker": cfg["batch_size"], "seq_len": cfg["seq_len"],
           "fit_wall_s": time.perf_counter() - t0, **metrics}
    print(json.dumps({k: v for k, v in row.items() if k != "error"}), row.get("error", ""), flush=True)
    return row


def efficiencies(rows: list[dict]) -> dict[str, dict[str, float]]:
    """{method: {"<n>": samples/s at n workers / (n x samples/s at 1 worker)}} over the scaling rows."""
    out: dict[str, dict[str, float]] = {}
    one = {r["method"]: r["samples_per_s"] for r in rows if r["workers"] == 1 and "samples_per_s" in r}
    for r in rows:
        if r["workers"] > 1 and "samples_per_s" in r and r["method"] in one:
            out.setdefault(r["method"], {})[str(r["workers"])] = r["samples_per_s"] / (r["workers"] * one[r["method"]])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", default="1,2", help="worker counts for weak scaling (one GPU each)")
    p.add_argument("--methods", default="ars,lora,full")
    p.add_argument("--size", default="1b", help=f"model shape for scaling: {', '.join(SIZES)}")
    p.add_argument("--memory", action="store_true", help="the largest-model search instead of scaling")
    p.add_argument("--sizes", default="1b,3b,7b,13b", help="--memory: shapes tried, smallest first")
    p.add_argument("--batch-size", type=int, default=32, help="micro-batch per worker (weak scaling)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (196 scaling, 512 memory)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, NCCL buckets)")
    p.add_argument("--cpus-per-worker", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="default benchmarks/results/scaling_<device>.json")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for name in [args.size, *args.sizes.split(",")]:
        if name not in SIZES:
            p.error(f"unknown model size {name!r}; expected one of {', '.join(SIZES)}")
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in SCALED_METHODS:
            p.error(f"--methods: unknown {m!r}; expected some of {', '.join(SCALED_METHODS)}")
    gpus = [int(n) for n in args.gpus.split(",") if n]
    if device == "cuda" and max(gpus) > torch.cuda.device_count() and not args.memory:
        p.error(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} GPU(s)")

    import deepspeed
    import ray
    import transformers

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    base = {"batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
            "cpus_per_worker": args.cpus_per_worker}
    rows: list[dict] = []
    ray.init(num_cpus=max(2, args.cpus_per_worker * max(gpus)), include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}})
    try:
        with tempfile.TemporaryDirectory(prefix="lingo-scaling-") as storage:
            if args.memory:
                for zero_stage, offload in ((2, False), (3, True)):
                    for size in args.sizes.split(","):  # smallest first; the first out-of-memory ends the series
                        cfg = {**base, "method": "lora", "size": size, "zero_stage": zero_stage, "offload": offload,
                               "seq_len": args.seq_len or 512}
                        rows.append(row := run_config(cfg, 1, device == "cuda", storage))
                        if row.get("oom") or "error" in row:
                            break
            else:
                for method in methods:
                    for n in gpus:
                        cfg = {**base, "method": method, "size": args.size, "zero_stage": 2, "offload": False,
                               "seq_len": args.seq_len or 196}
                        rows.append(run_config(cfg, n, device == "cuda", storage))
    finally:
        ray.shutdown()
    report = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "gpus_on_machine": torch.cuda.device_count(), "date": utc_now(), "commit": git_commit(),
        "torch": torch.__version__, "transformers": transformers.__version__, "deepspeed": deepspeed.__version__,
        "ray": ray.__version__, "python": platform.python_version(),
        "command": " ".join(["python", "benchmarks/scaling.py", *(argv if argv is not None else sys.argv[1:])]),
        "mode": "memory" if args.memory else "weak_scaling", "rows": rows,
    }
    if not args.memory:
        report["efficiency"] = efficiencies(rows)
        print("scaling efficiency:", report["efficiency"])
    out = Path(args.out) if args.out else RESULTS / f"scaling_{device}.json"
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
