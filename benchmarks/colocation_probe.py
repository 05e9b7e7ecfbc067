"""How much do co-located training processes gain on one GPU? Aggregate steps/s of N processes, each
training PEFT LoRA (r 8, all 7 projections) on a random-initialised SmolLM2-135M-shaped LLaMA classifier
(bf16 base, fp32 adapters, batch 32 x 64 tokens: the shape of a short GUE task), for N = 1 and N = k.
A 135M model at this size is launch-bound: one process leaves the GPU idle between small kernels, and
the question is whether other processes fill those gaps (time-slicing, or NVIDIA MPS when its daemon
runs). No weights or data are needed.

  python benchmarks/colocation_probe.py --procs 1,8 --seconds 15 --out benchmarks/results/colocation_gpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, pad_token_id=2,
               num_labels=2, tie_word_embeddings=True)


def _worker(seconds: float, start, queue) -> None:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(**SMOLLM2)).to("cuda", torch.bfloat16)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)
    ids = torch.randint(3, 49152, (32, 64), device="cuda")
    labels = torch.randint(0, 2, (32,), device="cuda")
    for _ in range(5):  # warm-up: allocator, cuBLAS handles
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    torch.cuda.synchronize()
    start.wait()  # every process starts timing together
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
        steps += 1
        if steps % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    queue.put(steps / (time.perf_counter() - t0))


def measure(n: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    start, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(seconds, start, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return {"procs": n, "steps_per_s_each": sorted(rates), "aggregate_steps_per_s": sum(rates)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", default="1,8", help="process counts to measure")
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per measurement")
    p.add_argument("--label", default="time-slicing", help="what the GPU sharing mode was (recorded)")
    p.add_argument("--out", default=None, help="JSON to write (rows are appended to an existing file)")
    args = p.parse_args()
    import torch

    rows = []
    for n in (int(x) for x in args.procs.split(",")):
        row = {"sharing": args.label, **measure(n, args.seconds)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        out = Path(args.out)
        report = json.loads(out.read_text()) if out.is_file() else {"rows": []}
        report.update(device=torch.cuda.get_device_name(0), torch=torch.__version__,
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      command="python benchmarks/colocation_probe.py " + " ".join(sys.argv[1:]))
        report["rows"] += rows
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
