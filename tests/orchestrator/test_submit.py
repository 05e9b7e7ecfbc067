"""Ray Jobs submission. The integration test starts a real local Ray with its dashboard (in this test
process, so ray.shutdown() stops exactly that cluster and nobody else's), uploads the repository as the
working_dir and runs a trivial entrypoint that imports the uploaded code."""

from __future__ import annotations

import io
import shlex
import socket

import pytest

from orchestrator.jobspec import JobSpecError
from orchestrator.submit import CLI, REPO_ROOT, follow, main, prepare, submit


@pytest.fixture(autouse=True)
def _data_root(gue_root, monkeypatch):
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))


def test_prepare_builds_tune_entrypoint_and_env():
    entrypoint, env = prepare(REPO_ROOT / "jobs" / "default.yaml", ["train.epochs=2"])
    assert shlex.split(entrypoint) == ["python", "-c", CLI, "tune", "jobs/default.yaml", "train.epochs=2",
                                       "ray.address=auto"]
    assert env["working_dir"] == str(REPO_ROOT) and ".venv" in env["excludes"]
    assert env["env_vars"]["DS_ACCELERATOR"] == "cpu"  # default.yaml is a CPU job
    assert env["env_vars"]["MLFLOW_DISABLE_TELEMETRY"] == "true"
    _, gpu_env = prepare(REPO_ROOT / "jobs" / "gue_all.yaml", [])
    assert "DS_ACCELERATOR" not in gpu_env["env_vars"]  # GPU job: DeepSpeed picks CUDA itself


def test_invalid_job_is_rejected_before_submission(capsys):
    assert main(["jobs/default.yaml", "train.epoch=2", "--address", "http://127.0.0.1:9"]) == 2
    assert "train.epoch: unknown TrainConfig key" in capsys.readouterr().err


def test_job_outside_repo_rejected(tmp_path, capsys):
    job = tmp_path / "x.yaml"
    job.write_text("name: x\n")
    with pytest.raises(JobSpecError, match="inside the repository"):
        prepare(job, [])
    assert main([str(job), "--address", "http://127.0.0.1:9"]) == 2  # a user error: 2, like the others
    err = capsys.readouterr().err
    assert err == f"lingo submit: error: {job}: the job file must lie inside the repository ({REPO_ROOT}), " \
        "which is what gets uploaded; copy it into jobs/\n"


def test_missing_job_file_without_validation_is_one_line(capsys):
    assert main(["jobs/no_such_job.yaml", "--no-validate", "--address", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err == (
        "lingo submit: error: jobs/no_such_job.yaml: cannot read: No such file or directory; "
        "expected a job spec YAML file\n")


def test_overrides_may_follow_flags(capsys):
    # parsed (then rejected by validation) rather than refused by argparse as an unknown argument
    assert main(["jobs/default.yaml", "--address", "http://127.0.0.1:9", "train.epoch=2"]) == 2
    assert "override 'train.epoch=2'" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_head():
    import ray

    port = _free_port()
    ray.init(num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             log_to_driver=False, configure_logging=False)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()  # stops only the cluster this test started


@pytest.mark.integration
def test_submit_trivial_job_succeeds(ray_head):
    _, env = prepare(REPO_ROOT / "jobs" / "default.yaml", [])
    probe = ("import os, orchestrator.jobspec as j; "
             "print('lingo-ok', os.environ['DS_ACCELERATOR'], os.path.isfile('jobs/default.yaml'))")
    job_id = submit(ray_head, shlex.join(["python", "-c", probe]), env)
    out = io.StringIO()
    assert follow(ray_head, job_id, out=out) == "SUCCEEDED", out.getvalue()
    assert "lingo-ok cpu True" in out.getvalue()


def test_infra_yaml_parses():
    import yaml

    files = sorted((REPO_ROOT / "infra").rglob("*.yaml"))
    assert {f.name for f in files} >= {"raycluster.yaml", "rayjob.yaml", "k8s.yaml"}
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs and all("kind" in d and "apiVersion" in d for d in docs), f
    kinds = {d["kind"] for f in files for d in yaml.safe_load_all(f.read_text()) if d}
    assert {"RayCluster", "RayJob", "Deployment", "Service"} <= kinds
    rayjob = yaml.safe_load((REPO_ROOT / "infra/k8s/rayjob.yaml").read_text())
    assert "jobs/gue_all.yaml" in rayjob["spec"]["entrypoint"]
    assert (REPO_ROOT / "infra/docker/Dockerfile").read_text().count("--no-deps") >= 1
