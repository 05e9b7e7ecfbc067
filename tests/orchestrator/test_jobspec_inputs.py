"""Job specs cannot run code or leak secrets (issue 10 items 5-6), and fuzzing the parser finds no
exception other than JobSpecError. The many single bad keys are in test_jobspec.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.jobspec import JobSpecError
from orchestrator.validate import load_job

BASE = "name: t\ntasks: [prom_core_tata]\nmethods: [lora]\ntrain: {epochs: 1, max_train_samples: 64}\n"
SECRET = "s3cr3t-token-value-7f1e"


@pytest.fixture(autouse=True)
def _data_root(gue_root, monkeypatch):
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))


@pytest.mark.parametrize("where", ["file", "override"])
@pytest.mark.parametrize("tag", ["!!python/object/apply:builtins.open", "!!python/object/new:builtins.open"])
def test_python_tags_are_refused_and_never_run(tmp_path, where, tag):
    marker = tmp_path / "RAN"
    call = f'{tag} ["{marker}", "w"]'
    path = tmp_path / "job.yaml"
    path.write_text(BASE + (f"output_dir: {call}\n" if where == "file" else ""))
    overrides = [f"output_dir={call}"] if where == "override" else []
    with pytest.raises(JobSpecError) as info:
        load_job(path, overrides)
    msg = str(info.value)
    assert "python tags are refused" in msg and "\n" not in msg
    assert msg.startswith(f"{path}:5:" if where == "file" else f"override 'output_dir={call}': output_dir:")
    assert not marker.exists()


@pytest.mark.parametrize("uri", [f"https://user:{SECRET}@mlflow.example.org", f"http://{SECRET}@10.0.0.5:5000"])
def test_credentials_in_tracking_uri_are_refused_without_echoing_them(tmp_path, uri):
    path = tmp_path / "job.yaml"
    path.write_text(BASE + f"mlflow: {{tracking_uri: '{uri}'}}\n")
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: mlflow.tracking_uri: contains credentials") and "MLFLOW_TRACKING_TOKEN" in msg
    assert SECRET not in msg


def test_tracking_token_from_the_environment_never_reaches_params(tmp_path, monkeypatch):
    """The parent run's params and job.json, and every trial's params, of a job run with a token set."""
    from orchestrator import tracking
    from orchestrator.jobspec import resolve_tasks
    from orchestrator.search import MethodSampler, cells, materialize_trial
    from orchestrator.sweep import _tracking

    for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "DATABRICKS_TOKEN"):
        monkeypatch.setenv(var, SECRET)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a real MLflow store without sqlite's migrations (s)
    path = tmp_path / "job.yaml"
    path.write_text(BASE + f"output_dir: {tmp_path / 'out'}\nmlflow: {{tracking_uri: 'file://{tmp_path / 'store'}'}}\n")
    job = load_job(path)
    (tmp_path / "out").mkdir()
    uri, _, parent = _tracking(job, resume=False)
    run = tracking.client(uri).get_run(parent)
    assert run.data.params and all(SECRET not in f"{k}={v}" for k, v in run.data.params.items())
    assert SECRET not in (tmp_path / "out" / "job.json").read_text()
    sampler = MethodSampler({m: job.method_space(m) for m in job.methods}, job.search_seed)
    for cell in cells(job, resolve_tasks(job)):  # what trial.py logs: the cell, its draws, the TrainConfig
        params = sampler({"cell": cell})
        cfg = materialize_trial(job, {"cell": cell, "params": params})
        assert SECRET not in json.dumps([cell, params, cfg.to_dict()], default=str)


# ---- fuzzing: random specs built from the real keys reach deep into validation, and only fail cleanly -----

_KEYS = ["name", "tasks", "methods", "seeds", "model", "tokenization", "num_samples", "train", "search",
         "budgets", "scheduler", "resources", "deepspeed", "mlflow", "ray", "epochs", "lr", "init_r",
         "target_r", "loguniform", "grid", "type", "zero_stage", "workers_per_trial", "tracking_uri", "all",
         "lora", "ars", "adapter.exploration", "prom_core_tata", "default", "max_train_samples"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(-1, 2), st.just(float("nan")),
                     st.sampled_from(["lora", "ars", "prom_core_tata", "tf/*", "asha", "derived", "1e-4", "", "x"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
                       max_leaves=12)
_TOP = ["seeds", "model", "tokenization", "num_samples", "search_seed", "max_concurrent_trials", "train",
        "search", "budgets", "scheduler", "resources", "deepspeed", "mlflow", "ray", "output_dir", "data_root"]
_SPEC = st.dictionaries(st.sampled_from(_TOP), _VALUES, max_size=6).map(
    lambda d: {"name": "t", "tasks": ["prom_core_tata"], "methods": ["lora"], **d})
_FUZZ = settings(max_examples=80, derandomize=True, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@_FUZZ
@given(spec=_SPEC, raw=st.binary(max_size=80), override=st.text(max_size=30))
def test_fuzz_job_spec_parser_raises_only_job_spec_error(tmp_path, spec, raw, override):
    path = tmp_path / "fuzz.yaml"
    for text, overrides in ((yaml.safe_dump(spec).encode(), []), (raw, []), (BASE.encode(), [override])):
        path.write_bytes(text)
        try:
            load_job(Path(path), overrides)
        except JobSpecError as e:
            assert "\n" not in str(e), str(e)
