"""`lingo train` end to end on the tiny model, and its argument errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lingo_core.cli import parse_train_args, train_main

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_flags_overrides_and_nesting():
    cfg = parse_train_args(["--task", "tf/0", "--method", "lora", "--max-train-samples", "512",
                            "--adapter.target_r", "4", "lr=3e-4", "adapter.target_modules=[q_proj,v_proj]",
                            "max_steps=null", "--save-checkpoints", "true"])
    assert (cfg.task, cfg.adapter.method, cfg.max_train_samples, cfg.adapter.target_r) == ("tf/0", "lora", 512, 4)
    assert cfg.lr == 3e-4 and cfg.adapter.target_modules == ["q_proj", "v_proj"] and cfg.max_steps is None
    assert cfg.save_checkpoints is True


def test_config_file_then_flags_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 5\nlr: 0.001\nadapter:\n  method: adalora\n  init_r: 6\n")
    cfg = parse_train_args(["--config", str(f), "--lr", "0.002", "epochs=7"])
    assert (cfg.epochs, cfg.lr, cfg.adapter.method, cfg.adapter.init_r) == (7, 0.002, "adalora", 6)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--lr", "abc"], "lr: expected a float, got 'abc'"),
        (["adapter.target_modules=q_proj,v_proj"], "write a YAML list: [q_proj,v_proj]"),  # the old comma form
        (["max_steps=none"], "max_steps: expected an integer or null, got 'none'"),  # YAML's null is null
        (["adapter.rank=4"], "unknown key 'adapter.rank'"),
        (["--epochs", "0"], "TrainConfig.epochs=0"),
        (["--method", "dora"], "AdapterSettings.method"),
        (["lr"], "expected key=value"),
    ],
)
def test_bad_arguments_give_one_clear_error(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        parse_train_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_module_entry_point_reports_errors():
    proc = subprocess.run([sys.executable, "-m", "lingo_core", "train", "--batch-size", "x"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "batch_size: expected an integer, got 'x'" in proc.stderr


def test_train_main_end_to_end(tiny_model_dir, gue_root, tmp_path, capsys):
    out = tmp_path / "run"
    rc = train_main(["--task", "prom_core_tata", "--data-root", str(gue_root), "--model", str(tiny_model_dir),
                     "--method", "ars", "--epochs", "1", "--max-train-samples", "32", "--max-eval-samples", "16",
                     "--output-dir", str(out), "adapter.init_r=4", "adapter.target_r=2"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("prom_core_tata [ars] dev_mcc=") and "test_mcc=" in line
    # The one run-folder layout (lingo_core/run_folder.py), the same a trial's MLflow run holds
    metrics = json.loads((out / "result.json").read_text())
    assert metrics["num_test_evals"] == 1 and metrics["config"]["adapter"]["target_r"] == 2
    assert len(json.loads((out / "test_predictions.json").read_text())["labels"]) == 16
    for name in ("plots/rank_heatmap.png", "plots/confusion_matrix.png", "adapter/lingo.json",
                 "adapter/adapter_config.json"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize(
    ("make_argv", "needle"),
    [
        (lambda root, tmp: ["--task", "no_such_task", "--data-root", str(root)], "unknown task 'no_such_task'"),
        (lambda root, tmp: ["--task", "prom_core_tata", "--data-root", str(tmp / "absent")], "is not a folder"),
        (lambda root, tmp: ["--task", "prom_core_tata", "--data-root", str(root), "--model", str(tmp / "no-model")],
         "does not exist"),
    ],
    ids=["unknown_task", "missing_data_root", "missing_model"],
)
def test_bad_inputs_to_train_exit_2_and_write_nothing(make_argv, needle, gue_root, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train_main([*make_argv(gue_root, tmp_path), "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and "Traceback" not in err
    assert not out.exists()  # the run folder is made only once the inputs are known to be good


@pytest.mark.parametrize(
    ("text", "needle"),
    [("lr: [1\n", "cfg.yaml:2: not valid YAML"),
     ('lr: !!python/object/apply:os.system ["touch PWNED"]\n', "cfg.yaml:1: not valid YAML")],
    ids=["broken_yaml", "python_tag"],
)
def test_bad_config_file_is_one_line_and_runs_nothing(text, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(text)
    with pytest.raises(SystemExit) as e:
        parse_train_args(["--task", "prom_core_tata", "--config", str(tmp_path / "cfg.yaml")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()
