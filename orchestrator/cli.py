"""The `lingo` console script.

  lingo data report [...]                       rows, balance and token lengths of the GUE tasks
  lingo train [...]                             one task, one method, one process (no Ray)
  lingo tune JOB.yaml [key=value ...] [--resume] [--address ADDR] [--dry-run]
  lingo submit JOB.yaml [key=value ...] --address http://HEAD:8265
  lingo predict --model models:/lingo-TASK@champion [--model ...] --input SEQS --output PREDS.parquet
  lingo jobs list|status ID|logs ID [--follow]|stop ID --address http://HEAD:8265
  lingo report SWEEP_DIR|EXPERIMENT [--out DIR]  Markdown + PNG report of a sweep (also logged to MLflow)

Every command takes --help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lingo_core.cliparse import ArgumentParser, fail

USAGE = __doc__.split("\n\n", 1)[1]


def tune_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="lingo tune", description="Run a multi-task tuning sweep on Ray.")
    p.add_argument("job", help="job spec YAML, e.g. jobs/default.yaml")
    p.add_argument("overrides", nargs="*", help="key=value job-spec overrides, e.g. train.epochs=2 seeds=[0,1]")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this job")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (auto, ray://host:10001) instead of starting a local Ray")
    p.add_argument("--dry-run", action="store_true", help="validate and list the trials; start nothing")
    return p


def tune_main(argv: Sequence[str]) -> int:
    # intermixed: `JOB --dry-run train.epochs=2` is as natural as `JOB train.epochs=2 --dry-run`
    args = tune_parser().parse_intermixed_args(list(argv))
    # after parsing, so `lingo tune --help` stays fast: validation loads torch + PEFT, the sweep Ray + MLflow
    from orchestrator.jobspec import JobSpecError, resolve_tasks
    from orchestrator.validate import load_job

    try:
        job = load_job(args.job, args.overrides)  # every spec problem surfaces here, before Ray starts
    except JobSpecError as e:
        return fail("lingo tune", e)
    if args.dry_run:
        from orchestrator.search import describe_trials, format_trials

        rows = describe_trials(job, resolve_tasks(job))
        print(format_trials(rows))
        print(f"{len(rows)} trial(s); output {job.output_dir}; MLflow {job.tracking_uri}")
        return 0
    from orchestrator.sweep import SweepError, run_sweep

    try:
        result = run_sweep(job, resume=args.resume, address=args.address)
    except SweepError as e:
        return fail("lingo tune", e)
    if result.interrupted:
        return 130  # the shell's code for "ended by SIGINT"
    return 1 if result.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage:\n{USAGE}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    # each command's module only when it runs: they pull torch, Ray or MLflow, and `lingo --help` needs none
    if command == "tune":
        return tune_main(rest)
    if command == "train":
        from lingo_core.cli import train_main

        return train_main(rest)
    if command == "submit":
        from orchestrator.submit import main as submit_main

        return submit_main(rest)
    if command == "predict":
        from orchestrator.predict_cli import main as predict_main

        return predict_main(rest)
    if command == "jobs":
        from orchestrator.jobs import main as jobs_main

        return jobs_main(rest)
    if command == "report":
        from orchestrator.report import main as report_main

        return report_main(rest)
    if command == "data":
        if not rest or rest[0] != "report":
            print("usage: lingo data report [--help | options]", file=sys.stderr)
            return 2
        from lingo_core.data.report import main as report_main

        return report_main(rest[1:])
    commands = [line.split()[1] for line in USAGE.splitlines() if line.strip().startswith("lingo ")]
    return fail("lingo", f"unknown command {command!r}; expected one of {', '.join(commands)} (see lingo --help)")


if __name__ == "__main__":
    sys.exit(main())
