"""Tracking helpers on real MLflow stores: a sqlite file, and a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator import tracking
from orchestrator.execution_spec import default_tracking_uri


def _run_with_adapter(c, exp_id: str, parent: str, trial: str, tmp: Path) -> str:
    run_id = tracking.find_or_create_child(c, exp_id, parent, trial, run_name=trial)
    folder = tmp / trial / "adapter"
    folder.mkdir(parents=True)
    (folder / "lingo.json").write_text(json.dumps({"trial": trial}))
    tracking.log_artifacts(c, run_id, [(folder, "adapter")])
    return run_id


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty sqlite store, made once: MLflow's schema migrations take ~5 s per new file."""
    folder = tmp_path_factory.mktemp("empty_store")
    tracking.client(default_tracking_uri(folder)).search_experiments()  # creates the tables
    return folder / "mlflow.db"


def _store(tmp_path: Path, empty_store: Path):
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")  # each test still gets its own store
    uri = default_tracking_uri(tmp_path)
    assert uri.startswith("sqlite:////")  # absolute: every process resolves the same file
    c = tracking.client(uri)
    exp = tracking.ensure_experiment(c, "exp", tracking.default_artifact_location(tmp_path))
    return c, exp


def test_champion_moves_only_on_improvement(tmp_path: Path, empty_store: Path) -> None:
    c, exp = _store(tmp_path, empty_store)
    parent = tracking.start_parent_run(c, exp, "sweep")
    a = _run_with_adapter(c, exp, parent, "a", tmp_path)
    b = _run_with_adapter(c, exp, parent, "b", tmp_path)
    d = _run_with_adapter(c, exp, parent, "d", tmp_path)
    e = _run_with_adapter(c, exp, parent, "e", tmp_path)

    r1 = tracking.register_best(c, "tf/0", a, 0.40, tags={"method": "ars"})
    assert r1.name == "lingo-tf_0" and r1.champion and r1.previous_champion is None
    r2 = tracking.register_best(c, "tf/0", b, 0.30)  # worse: registered, alias stays
    assert not r2.champion and r2.previous_champion == r1.version
    r3 = tracking.register_best(c, "tf/0", d, 0.40)  # tie: the incumbent keeps it
    assert not r3.champion
    assert str(c.get_model_version_by_alias("lingo-tf_0", "champion").version) == r1.version
    r4 = tracking.register_best(c, "tf/0", e, 0.55)  # better: alias moves
    assert r4.champion
    champ = c.get_model_version_by_alias("lingo-tf_0", "champion")
    assert str(champ.version) == r4.version and champ.run_id == e
    assert "method" not in champ.tags and float(champ.tags["dev_mcc"]) == 0.55
    assert len(c.search_model_versions("name='lingo-tf_0'")) == 4

    # the registered source is the adapter folder itself; it downloads as such
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(artifact_uri=c.get_model_version_download_uri("lingo-tf_0", champ.version),
                                                dst_path=str(tmp_path / "dl"), tracking_uri=default_tracking_uri(tmp_path))
    assert '"e"' in (Path(local) / "lingo.json").read_text()


def test_chance_level_version_is_registered_but_never_champion(tmp_path: Path, empty_store: Path) -> None:
    """Dev MCC <= 0 is what a one-class predictor scores: a version, never the alias, unless asked."""
    c, exp = _store(tmp_path, empty_store)
    parent = tracking.start_parent_run(c, exp, "sweep")
    zero, neg, good, allowed = (_run_with_adapter(c, exp, parent, t, tmp_path) for t in ("z", "n", "g", "a"))

    r0 = tracking.register_best(c, "tf/0", zero, 0.0)
    assert (r0.champion, r0.at_chance, r0.previous_champion) == (False, True, None)
    assert tracking.champion_version(c, "lingo-tf_0") is None
    assert c.get_model_version("lingo-tf_0", r0.version).tags[tracking.CHANCE_TAG] == "true"
    r1 = tracking.register_best(c, "tf/0", neg, -0.2)  # worse than chance: no alias either
    assert not r1.champion and tracking.champion_version(c, "lingo-tf_0") is None
    r2 = tracking.register_best(c, "tf/0", good, 0.05)  # the first version above chance takes the alias
    assert r2.champion and not r2.at_chance and r2.previous_champion is None
    champ = c.get_model_version_by_alias("lingo-tf_0", tracking.CHAMPION)
    assert str(champ.version) == r2.version and tracking.CHANCE_TAG not in champ.tags
    assert len(c.search_model_versions("name='lingo-tf_0'")) == 3

    r3 = tracking.register_best(c, "EMP/H3", allowed, 0.0, allow_chance=True)  # the job opted in
    assert r3.champion and r3.at_chance
    assert str(c.get_model_version_by_alias("lingo-EMP_H3", tracking.CHAMPION).version) == r3.version


def test_sweep_registers_the_dev_best_trial_under_the_jobs_chance_setting(tmp_path: Path, empty_store: Path) -> None:
    from orchestrator.execution_spec import MlflowSpec
    from orchestrator.jobspec import JobSpec
    from orchestrator.sweep import register, registration_line

    c, exp = _store(tmp_path, empty_store)
    parent = tracking.start_parent_run(c, exp, "sweep")
    runs = [_run_with_adapter(c, exp, parent, t, tmp_path) for t in ("first", "tie", "worse", "killed")]
    trials = [{"task": "tf/0", "method": "lora", "seed": 0, "run_id": r, "status": status, "dev_mcc": dev,
               "test_mcc": 0.1, "base_model": {}}
              for r, status, dev in zip(runs, ["FINISHED"] * 3 + ["KILLED"], [0.0, 0.0, -0.3, 0.9], strict=True)]

    reg = register(c, JobSpec("t", ["tf/0"], ["lora"]), trials)["tf/0"]
    assert c.get_model_version(reg.name, reg.version).run_id == runs[0]  # dev-best, the first on a tie
    assert not reg.champion and reg.at_chance  # the default job keeps chance-level adapters from the alias
    assert "not champion, no better than chance" in registration_line(reg) and "no champion yet" in registration_line(reg)
    opted_in = JobSpec("t", ["tf/0"], ["lora"], mlflow=MlflowSpec(allow_chance_champion=True))
    assert register(c, opted_in, trials)["tf/0"].champion


def test_child_run_is_found_again_after_restart(tmp_path: Path, empty_store: Path) -> None:
    c, exp = _store(tmp_path, empty_store)
    parent = tracking.start_parent_run(c, exp, "sweep")
    first = tracking.find_or_create_child(c, exp, parent, "trial_1", run_name="x")
    tracking.log_metrics(c, first, {"dev_mcc": 0.1, "dev_auroc": None, "cm": [[1]]}, step=4)
    again = tracking.find_or_create_child(c, exp, parent, "trial_1", run_name="x")
    other = tracking.find_or_create_child(c, exp, parent, "trial_2", run_name="y")
    assert again == first and other != first
    assert [r.info.run_id for r in tracking.child_runs(c, exp, parent)].count(first) == 1
    assert set(c.get_run(first).data.metrics) == {"dev_mcc"}  # None and lists are not metrics
    tracking.log_params(c, first, {"adapter": {"lora_r": 4}, "lr": 1e-3})
    tracking.log_params(c, first, {"adapter": {"lora_r": 4}})  # same value again (resume): accepted
    assert c.get_run(first).data.params["adapter.lora_r"] == "4"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(exe), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "server.log").open("w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180  # a loaded 2-core CI machine took over 90 s once
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)  # the server forks gunicorn/uvicorn workers: end the group
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.integration  # a real `mlflow server` process
def test_registry_against_a_real_server(mlflow_server: str, tmp_path: Path) -> None:
    c = tracking.client(mlflow_server)
    assert not tracking.is_local_store(mlflow_server)
    exp = tracking.ensure_experiment(c, "server-exp", None)  # the server chooses artifact storage
    assert tracking.ensure_experiment(c, "server-exp", None) == exp
    parent = tracking.start_parent_run(c, exp, "sweep")
    a = _run_with_adapter(c, exp, parent, "a", tmp_path)
    b = _run_with_adapter(c, exp, parent, "b", tmp_path)
    tracking.log_metrics(c, a, {"best_dev_mcc": 0.5}, step=1)
    assert tracking.register_best(c, "EMP/H3", a, 0.5).champion
    assert not tracking.register_best(c, "EMP/H3", b, 0.2).champion
    champ = c.get_model_version_by_alias("lingo-EMP_H3", "champion")
    assert champ.run_id == a
    assert [f.path for f in c.list_artifacts(a, "adapter")] == ["adapter/lingo.json"]
