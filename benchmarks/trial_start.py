"""How long a trial takes from its entry to its first optimizer step, and where those seconds go.

Runs a real one-trial `lingo tune` (a local Ray, Tune, Ray Train, DeepSpeed or the plain backend, MLflow in
sqlite) on a real shared task with a few steps, then reads the trial's start-up phases back from its MLflow
run (`startup/<phase>_s`, logged by the worker from lingo_core.startup.StartupClock marks):

    entry -> driver_ready (trial driver) -> worker_start (the worker group is up, its module imported)
          -> imports -> backend_built -> data -> tokenized -> model -> backend_ready -> first_step

warm: the de-quantised base weights are in the cache (built by this script before the sweep, outside the
timing), as for every trial after a machine's first. --cold: an empty cache folder (LINGO_CACHE_DIR, so the
machine's own cache is left alone): the trial de-quantises the GGUF itself, as the first trial on a machine.

  python benchmarks/trial_start.py                   # CPU, warm -> benchmarks/results/trial_start_cpu.json
  python benchmarks/trial_start.py --cold            # the same file gains runs.cold
  python benchmarks/trial_start.py --device cuda     # the GPU run -> benchmarks/results/trial_start.json

A warm and a cold run of one device written to the same --out sit side by side under `runs`; each run keeps
its own date, commit, command and load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from any folder

from benchmarks.provenance import git_commit, utc_now, write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TASK = "prom_core_tata"  # 70 bp: the shortest prompts of the shared tasks, so the steps add the least
STEPS = 2  # the first optimizer step is what is timed; a second shows the run goes on past it
TARGET_GPU_S = 15  # issue 8's goal for entry -> first optimizer step on a GPU machine
TUNE_TIMEOUT_S = 900  # a cold CPU trial takes about a minute; far beyond that something hangs


def job_yaml(name: str, model: str, device: str, deepspeed: bool, out_dir: Path) -> str:
    """The one-trial job: real task, few rows, no registry, no checkpoints (neither is start-up)."""
    gpus = 1 if device == "cuda" else 0  # the whole GPU: the trial is alone, nothing to share it with
    return f"""\
name: {name}
tasks: [{TASK}]
methods: [lora]
seeds: [0]
model: {json.dumps(model)}
output_dir: {json.dumps(str(out_dir))}
num_samples: 1
train:
  epochs: 1
  max_steps: {STEPS}
  batch_size: 8
  max_train_samples: 32
  max_eval_samples: 16
  eval_every: null
  log_every: 1
  save_checkpoints: false
scheduler: {{type: fifo, metric: dev_mcc, mode: max}}
resources: {{workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: {gpus}}}
deepspeed: {{enabled: {str(deepspeed).lower()}, zero_stage: 2}}
mlflow: {{register: false}}
ray: {{num_cpus: 2}}
"""


def read_startup(tracking_uri: str, out_dir: Path) -> dict[str, float]:
    """The `startup/<phase>_s` metrics of the sweep's one trial run, in the order the phases happened (that
    of the trial's result.json, which holds the same numbers: MLflow keeps no order)."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri)
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])
            if "startup/total_s" in r.data.metrics]
    # the run folder's result.json and its copies (the journal's snapshot, MLflow's artifact store)
    orders = {tuple(_startup_of(p)) for p in out_dir.rglob("result.json") if _startup_of(p)}
    if len(runs) != 1 or len(orders) != 1:
        raise RuntimeError(f"expected one trial: {len(runs)} MLflow run(s) with startup metrics in {tracking_uri}, "
                           f"{len(orders)} distinct startup_s in the result.json files under {out_dir}")
    order = list(orders.pop())
    logged = {k[len("startup/"):-len("_s")]: v for k, v in runs[0].data.metrics.items() if k.startswith("startup/")}
    if set(order) != set(logged):
        raise RuntimeError(f"MLflow has startup phases {sorted(logged)}, result.json {order}")
    return {phase: logged[phase] for phase in order}


def _startup_of(path: Path) -> dict:
    try:
        return json.loads(path.read_text()).get("startup_s") or {}
    except (ValueError, AttributeError):  # Tune's result.json under ray/ is JSON lines, not one object
        return {}


def prime_cache(model: str, env: dict[str, str]) -> float:
    """Build the dense-weight cache for `model` in a separate process (this one stays free of torch):
    what a machine's first trial leaves behind. Returns its seconds (about 0 when it was already built)."""
    t0 = time.time()
    code = ("import sys; from lingo_core.model_ref import resolve_model; from lingo_core.modeling import dense_ref; "
            "dense_ref(resolve_model(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, model], cwd=REPO, env=env, check=True)
    return time.time() - t0


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "ray", "deepspeed", "mlflow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def device_name(device: str, env: dict[str, str]) -> str:
    if device == "cuda":
        code = "import torch; print(torch.cuda.get_device_name(0))"
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()
    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
             if ln.startswith("model name")] if cpuinfo.is_file() else []
    return f"{names[0]} x {len(names)}" if names else platform.processor() or "cpu"


def run(args: argparse.Namespace) -> dict:
    mode = "cold" if args.cold else "warm"
    with tempfile.TemporaryDirectory(prefix="trial_start-") as tmp:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        if args.cold:
            env["LINGO_CACHE_DIR"] = str(Path(tmp) / "cache")  # empty: the trial de-quantises the GGUF
        prime_s = None if args.cold else prime_cache(args.model, env)
        job = Path(tmp) / "trial_start.yaml"
        job.write_text(job_yaml("trial_start", args.model, args.device, args.deepspeed, Path(tmp) / "runs"))
        load_before = os.getloadavg()
        t0 = time.time()
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "tune", str(job)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=TUNE_TIMEOUT_S)
        tune_s = time.time() - t0
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
            raise SystemExit(f"lingo tune failed with exit status {done.returncode}")
        phases = read_startup(f"sqlite:///{Path(tmp) / 'runs' / 'mlflow.db'}", Path(tmp) / "runs")
        return {
            "mode": mode,
            "deepspeed": args.deepspeed,
            "entry_to_first_step_s": phases["total"],
            "phases_s": phases,
            "lingo_tune_wall_s": tune_s,  # the whole command: Ray start, the trial, test pass, MLflow
            "cache_prime_s": prime_s,  # warm: building the cache before the sweep (outside the timing)
            "date": utc_now(),
            "commit": git_commit(),
            "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
            "command": " ".join(["python", "benchmarks/trial_start.py", *sys.argv[1:]]),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cold", action="store_true", help="start from an empty dense-weight cache")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--deepspeed", action=argparse.BooleanOptionalAction, default=True,
                   help="train under DeepSpeed ZeRO-2 (default, as jobs/default.yaml) or the plain backend")
    p.add_argument("--model", default="smollm2", help="a .gguf path, a model folder or the bundled alias")
    p.add_argument("--out", default=None, help="output JSON (default: benchmarks/results/trial_start.json on cuda, "
                                                "trial_start_cpu.json on cpu)")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS / ("trial_start.json" if args.device == "cuda" else "trial_start_cpu.json")
    env = dict(os.environ)
    result = run(args)
    report = json.loads(out.read_text()) if out.is_file() else {}
    if report.get("device") != args.device:
        report = {}  # another device's file: start it afresh rather than mixing machines
    report.update(target_gpu_s=TARGET_GPU_S, device=args.device, device_name=device_name(args.device, env), task=TASK, steps=STEPS,
                  model=args.model, versions=versions(),
                  date=result["date"], commit=result["commit"])  # of the latest run; each run keeps its own
    key = result["mode"] if args.deepspeed else f"{result['mode']}_no_deepspeed"
    report.setdefault("runs", {})[key] = result
    write_report(report, out)
    print(f"{key}: entry -> first optimizer step {result['entry_to_first_step_s']:.1f} s; "
          + ", ".join(f"{k} {v:.1f}" for k, v in result["phases_s"].items() if k != "total") + f"  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
