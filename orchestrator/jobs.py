"""`lingo jobs list|status|logs|stop --address http://HEAD:8265`: the Ray Jobs of a cluster, beside `lingo submit`.

    list              every job the cluster knows: id, status, start, duration, the lingo job file, entrypoint
    status ID         one job's status, message, times and metadata (exit 0 whatever the status: it is a query)
    logs ID           its driver log so far; --follow streams it until the job ends (exit 1 unless SUCCEEDED)
    stop ID           ask the job to stop (Ray sends SIGTERM, then SIGKILL after a grace period)

Over Ray's Job Submission SDK (HTTP to the head's dashboard). An unreachable address or an unknown job id is
one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone

from lingo_core.cliparse import fail, first_line
from orchestrator.submit import DEFAULT_ADDRESS, TERMINAL, ClusterError, connect, follow


def _call(what: str, fn, attempts: int = 3):
    """The SDK raises RuntimeError("Request failed with status code 404: ...") for unknown ids, and
    requests' ConnectionError (an OSError) when a busy dashboard drops the connection: retried twice."""
    for attempt in range(attempts):
        try:
            return fn()
        except RuntimeError as e:
            text = first_line(e)
            if "404" in text or "does not exist" in text:
                raise ClusterError(f"{what}: no such job on this cluster (`lingo jobs list` shows them)") from None
            raise ClusterError(f"{what}: {text}") from None
        except OSError as e:
            if attempt == attempts - 1:
                raise ClusterError(f"{what}: the cluster stopped answering ({first_line(e)})") from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: int | None, end: int | None) -> str:
    if not start:
        return "-"
    seconds = int(((end or time.time() * 1000) - start) / 1000)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def list_jobs(client, out=sys.stdout) -> int:
    jobs = _call("list", client.list_jobs)
    jobs = sorted(jobs, key=lambda j: j.start_time or 0)
    rows = [("ID", "STATUS", "START (UTC)", "DURATION", "LINGO JOB", "ENTRYPOINT")]
    for j in jobs:
        rows.append((j.submission_id or j.job_id or "-", str(j.status.value), _when(j.start_time),
                     _duration(j.start_time, j.end_time), (j.metadata or {}).get("lingo_job", "-"),
                     _short(j.entrypoint, 60)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] + "\n")
    out.write(f"{len(jobs)} job(s)\n")
    return 0


def job_status(client, job_id: str, out=sys.stdout) -> int:
    j = _call(job_id, lambda: client.get_job_info(job_id))
    out.write(f"{job_id}: {j.status.value}\n")
    for key, value in (("message", j.message), ("start", _when(j.start_time)), ("end", _when(j.end_time)),
                       ("duration", _duration(j.start_time, j.end_time)), ("entrypoint", j.entrypoint),
                       ("metadata", j.metadata or None), ("driver exit code", j.driver_exit_code)):
        if value not in (None, "", "-"):
            out.write(f"  {key}: {value}\n")
    return 0


def job_logs(client, address: str, job_id: str, follow_logs: bool, out=sys.stdout) -> int:
    if not follow_logs:
        out.write(_call(job_id, lambda: client.get_job_logs(job_id)))
        return 0
    _call(job_id, lambda: client.get_job_info(job_id))  # an unknown id fails here, not inside the stream
    status = follow(address, job_id, out=out)
    out.write(f"{job_id}: {status}\n")
    return 0 if status == "SUCCEEDED" else 1


def stop_job(client, job_id: str, out=sys.stdout) -> int:
    status = str(_call(job_id, lambda: client.get_job_status(job_id)).value)
    if status in TERMINAL:
        out.write(f"{job_id}: already {status}; nothing to stop\n")
        return 0
    stopped = _call(job_id, lambda: client.stop_job(job_id))
    out.write(f"{job_id}: stop requested (was {status})\n" if stopped else f"{job_id}: had already ended\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    address = argparse.ArgumentParser(add_help=False)
    address.add_argument("--address", default=os.environ.get("RAY_ADDRESS", DEFAULT_ADDRESS),
                         help="Ray dashboard URL of the cluster (default: $RAY_ADDRESS or %(default)s)")
    p = argparse.ArgumentParser(prog="lingo jobs", description="The Ray Jobs of a cluster, over Ray's Job Submission SDK.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="commands:\n" + __doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,status,logs,stop}")
    sub.add_parser("list", parents=[address], help="every job of the cluster",
                   description="List every Ray job of the cluster, oldest first.")
    for name, text in (("status", "one job's status and details"), ("logs", "one job's driver log"),
                       ("stop", "ask one job to stop")):
        s = sub.add_parser(name, parents=[address], help=text, description=text[0].upper() + text[1:] + ".")
        s.add_argument("id", metavar="ID", help="submission id, as printed by `lingo submit` (raysubmit_...)")
        if name == "logs":
            s.add_argument("--follow", action="store_true",
                           help="stream the log until the job ends; exit 1 unless it SUCCEEDED")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = connect(args.address)
        if args.command == "list":
            return list_jobs(client)
        if args.command == "status":
            return job_status(client, args.id)
        if args.command == "logs":
            return job_logs(client, args.address, args.id, args.follow)
        return stop_job(client, args.id)
    except ClusterError as e:
        return fail("lingo jobs", e)


if __name__ == "__main__":
    raise SystemExit(main())
