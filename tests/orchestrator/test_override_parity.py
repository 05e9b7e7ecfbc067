"""One override rule: the same key=value gives the same TrainConfig through `lingo train` (parse_train_args)
and through a job spec's `train:` block (`lingo tune JOB train.KEY=VALUE`), and the same bad value the same
error at the same key path. Both go through lingo_core.typed (parse_value, then build/coerce)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lingo_core.cli import parse_train_args
from orchestrator.jobspec import JobSpecError
from orchestrator.search import base_train_dict, train_config
from orchestrator.validate import JOB_OWNED, load_job

JOB = {"name": "parity", "tasks": ["prom_core_tata"], "methods": ["lora"], "train": {}}


@pytest.fixture(autouse=True)
def _data_root(gue_root, monkeypatch):
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(JOB, sort_keys=False))
    return path


def _comparable(d: dict) -> dict:
    """A TrainConfig dict without what the job sets from its top level (task, model, seed, method, ...)."""
    flat = {k: v for k, v in d.items() if k != "adapter"}
    flat.update({f"adapter.{k}": v for k, v in d["adapter"].items()})
    return {k: v for k, v in flat.items() if k not in JOB_OWNED}


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("max_steps=100", "max_steps", 100),  # int
        ("lr=1e-3", "lr", 1e-3),  # YAML 1.1 reads 1e-3 as a string; a float field takes it as a float
        ("weight_decay=0", "weight_decay", 0.0),  # an int where a float is due
        ("save_checkpoints=true", "save_checkpoints", True),  # bool
        ("eval_every=null", "eval_every", None),  # None
        ("max_grad_norm=", "max_grad_norm", None),  # nothing: None, as in lingo tune
        ("adapter.target_modules=[q_proj,v_proj]", "adapter.target_modules", ["q_proj", "v_proj"]),  # a list
        ("adapter.lora_r=16", "adapter.lora_r", 16),  # a nested adapter key
    ],
)
def test_same_override_same_train_config(job_file, override, key, expected):
    from_cli = _comparable(parse_train_args([override]).to_dict())
    job = load_job(job_file, [f"train.{override}"])
    from_job = _comparable(train_config(base_train_dict(job), "train").to_dict())
    assert from_cli[key] == expected and type(from_cli[key]) is type(expected)
    assert from_cli == from_job


@pytest.mark.parametrize(
    "override",
    [
        "max_steps=abc",
        "lr=fast",
        "save_checkpoints=1",  # YAML's 1 is an integer, never a boolean
        "max_steps=none",  # YAML's null is null (or nothing), not none
        "adapter.target_modules=q_proj,v_proj",  # the old comma form: both say to write [q_proj,v_proj]
        "adapter.lora_r=[4]",
    ],
)
def test_same_bad_override_same_error(job_file, override, capsys):
    key = override.partition("=")[0]
    with pytest.raises(JobSpecError) as info:
        load_job(job_file, [f"train.{override}"])
    assert info.value.path == f"train.{key}"
    with pytest.raises(SystemExit):
        parse_train_args([override])
    assert f"{key}: {info.value.problem}" in capsys.readouterr().err
