"""`lingo submit JOB.yaml --address http://HEAD:8265 [key=value ...]`: hand a sweep to a Ray cluster.

The job spec is validated here first (when the data is reachable), so a typo fails in a second instead
of after an image pull. The repository is uploaded as the Ray Jobs ``working_dir`` and the entrypoint runs
``lingo tune`` on the head node, joined to the cluster (``ray.address=auto``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lingo_core.cliparse import ArgumentParser, fail, first_line
from orchestrator.env import job_env
from orchestrator.jobspec import JobSpecError, read_job_file

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the dashboard of a local `ray start --head`
# Never uploaded: the virtualenv and caches are machine-specific, runs/ holds results, .git is history.
EXCLUDES = [".venv", ".git", "runs", ".cache", ".device", ".stage", "**/__pycache__", "*.pyc", "*.egg-info",
            "benchmarks/results"]
# The entrypoint calls the CLI through Python so it needs no installed console script and always runs
# the uploaded code (cwd = working_dir comes first on sys.path).
CLI = "from orchestrator.cli import main; raise SystemExit(main())"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def runtime_env(uses_gpu: bool, extra_env: dict[str, str] | None = None,
                working_dir: Path = REPO_ROOT) -> dict:
    return {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": job_env(uses_gpu, extra_env)}


def build_entrypoint(job_rel: str, overrides: Sequence[str]) -> str:
    """Shell command Ray Jobs runs in the uploaded working_dir."""
    extra = list(overrides)
    if not any(o.startswith("ray.address=") for o in extra):
        extra.append("ray.address=auto")  # join the cluster the entrypoint runs on, never a private Ray
    return shlex.join(["python", "-c", CLI, "tune", job_rel, *extra])


def prepare(job_path: str | Path, overrides: Sequence[str], validate: bool = True,
            extra_env: dict[str, str] | None = None) -> tuple[str, dict]:
    """(entrypoint, runtime_env) for a job file inside the repository; JobSpecError for any problem of the
    file (outside the repository, unreadable, invalid), so the CLI reports them all alike."""
    path = Path(job_path).resolve()
    try:
        rel = path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        raise JobSpecError(str(job_path), "", f"the job file must lie inside the repository ({REPO_ROOT}), "
                           "which is what gets uploaded; copy it into jobs/") from None
    uses_gpu = True
    if validate:
        # validation builds TrainConfigs (torch + PEFT): imported here so `lingo submit --help` stays fast
        from orchestrator.validate import load_job

        job = load_job(path, list(overrides))  # JobSpecError names file + key path
        uses_gpu = job.resources.gpus_per_worker > 0
    else:
        raw = read_job_file(job_path)  # unvalidated, but still readable YAML (one-line JobSpecError if not)
        resources = raw.get("resources") if isinstance(raw, dict) else None
        gpus = (resources.get("gpus_per_worker") if isinstance(resources, dict) else 0) or 0
        uses_gpu = any(o.startswith("resources.gpus_per_worker=") and o.split("=", 1)[1] not in ("0", "0.0")
                       for o in overrides) or bool(gpus)
    return build_entrypoint(rel, overrides), runtime_env(uses_gpu, extra_env)


class ClusterError(RuntimeError):
    """The cluster cannot be reached, or refused a request (e.g. an unknown job id): one line for the user."""


def _token_auth_if_available() -> None:
    """Send the Ray auth token when there is one. Ray >= 2.52 turns token auth on for `ray start` whenever a
    token exists (~/.ray/auth_token, $RAY_AUTH_TOKEN[_PATH]), and `ray.init` follows the same rule, but the Job
    Submission SDK only sends the token when $RAY_AUTH_MODE=token: without this every request gets HTTP 401.
    An explicit $RAY_AUTH_MODE is respected."""
    try:  # local: Ray is heavy (`lingo submit --help` needs none of it); a private module, not in every Ray
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    # It logs "Token authentication is enabled ..." each time: noise on every `lingo jobs` call, and it
    # would make an error more than one line on stderr.
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        log.setLevel(level)


def connect(address: str):
    """A JobSubmissionClient for ``address`` (it checks the connection); ClusterError when nothing answers
    or the cluster refuses our credentials."""
    # Ray is heavy: imported when a cluster is contacted, not for `lingo submit --help` or a spec error
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    _token_auth_if_available()
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise ClusterError(f"the Ray dashboard at {address} refused the request ({first_line(e)}); set "
                           "RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head)") from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot reach the Ray dashboard at {address} ({first_line(e)}); start the "
                           "cluster (ray start --head) or pass --address http://HEAD:8265") from None


AGENT_WAIT_S = 120  # how long a submission waits for a freshly started head's job agent


def submit(address: str, entrypoint: str, env: dict, submission_id: str | None = None,
           metadata: dict[str, str] | None = None) -> str:
    client = connect(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=env, submission_id=submission_id,
                                     metadata=metadata or {})
        except RuntimeError as e:
            # A head that has just started answers HTTP 500 "No available agent" until its job agent is up
            # (seen at about 20 s on a loaded 2-core machine); anything else is a real error.
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def follow(address: str, job_id: str, out=sys.stdout, timeout_s: float | None = None) -> str:
    """Stream the job's logs until it ends; returns its final status name."""
    from ray.job_submission import JobSubmissionClient  # Ray is heavy: see connect

    client = JobSubmissionClient(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout_s))
    except asyncio.TimeoutError:
        pass
    deadline = time.monotonic() + 30  # the log stream can close a moment before the status flips
    status = str(client.get_job_status(job_id).value)
    while status not in TERMINAL and time.monotonic() < deadline and timeout_s is None:
        time.sleep(0.5)
        status = str(client.get_job_status(job_id).value)
    return status


def _env_pair(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="lingo submit", description=__doc__.splitlines()[0])
    p.add_argument("job", help="job spec YAML inside the repository, e.g. jobs/gue_all.yaml")
    p.add_argument("overrides", nargs="*", help="key=value job-spec overrides, e.g. train.epochs=2")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", DEFAULT_ADDRESS),
                   help="Ray dashboard URL of the cluster (default: $RAY_ADDRESS or %(default)s)")
    p.add_argument("--wait", action="store_true", help="stream the logs until the job ends; exit 1 unless it succeeds")
    p.add_argument("--env", action="append", type=_env_pair, default=[], metavar="KEY=VALUE",
                   help="extra environment variable for the driver and trials (repeatable)")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray picks raysubmit_...)")
    p.add_argument("--no-validate", action="store_true",
                   help="skip local validation (when the data only exists on the cluster)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # intermixed: overrides may follow flags (`JOB --wait train.epochs=2`), as in `lingo tune`
    args = build_parser().parse_intermixed_args(argv)
    try:
        entrypoint, env = prepare(args.job, args.overrides, validate=not args.no_validate, extra_env=dict(args.env))
    except JobSpecError as e:
        return fail("lingo submit", e)
    try:
        job_id = submit(args.address, entrypoint, env, args.submission_id, {"lingo_job": args.job})
    except ClusterError as e:
        return fail("lingo submit", e)
    print(f"submitted {job_id} to {args.address}\n"
          f"  follow:  lingo jobs logs --follow {job_id} --address {args.address}\n"
          f"  status:  lingo jobs status {job_id} --address {args.address}\n"
          f"  stop:    lingo jobs stop {job_id} --address {args.address}")
    if not args.wait:
        return 0
    status = follow(args.address, job_id)
    print(f"{job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
