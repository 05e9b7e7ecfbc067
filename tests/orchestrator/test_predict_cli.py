"""Registered Lingo models as MLflow pyfunc models, served over HTTP, and `lingo predict`.

Real parts: a sqlite MLflow store, adapters trained a few steps by lingo_core on real GUE rows and
logged through the trial's own logging path (worker._log_result), registration through the sweep's
register(), `mlflow models serve` as a subprocess on 127.0.0.1, the real SmolLM2 for one pyfunc test.
One module fixture trains and registers; every test reads it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lingo_core.artifacts import load_adapter
from lingo_core.data import TaskRegistry, load_split
from orchestrator import tracking
from orchestrator.execution_spec import default_tracking_uri

TASKS = {"prom_core_tata": "ars", "tf/0": "lora"}  # two tasks, two PEFT types, one base


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_dir: Path, gue_root: Path) -> dict:
    """Two trained trials (their runs logged as a trial logs them) registered as `lingo-<task>` champions."""
    from lingo_core.run_folder import write_result
    from lingo_core.train import TrainConfig, train
    from orchestrator.execution_spec import MlflowSpec
    from orchestrator.jobspec import JobSpec
    from orchestrator.sweep import collect_trials, register
    from orchestrator.worker import WORKER_DRAIN_S, _log_result, _open_journal

    root = tmp_path_factory.mktemp("predict_store")
    uri = default_tracking_uri(root)
    c = tracking.client(uri)
    exp = tracking.ensure_experiment(c, "predict", tracking.default_artifact_location(root))
    parent = tracking.start_parent_run(c, exp, "sweep")
    for i, (task, method) in enumerate(TASKS.items()):
        run_id = tracking.find_or_create_child(c, exp, parent, f"t{i}", run_name=task,
                                               tags={"task": task, "method": method, "seed": "0"})
        cfg = TrainConfig.from_dict(dict(
            task=task, data_root=str(gue_root), model=str(tiny_model_dir), epochs=1, max_train_samples=32,
            max_eval_samples=16, batch_size=8, lr=5e-3, output_dir=str(root / f"trial{i}"),
            adapter={"method": method, "init_r": 4, "target_r": 2, "lora_r": 4}))
        result = train(cfg)
        logger = _open_journal(uri, run_id, Path(cfg.output_dir), resumed_step=0)  # as a worker logs: via the journal
        _log_result(logger, result, write_result(result, cfg.output_dir))  # the worker's rank 0 does both
        logger.status("FINISHED")
        logger.drain(WORKER_DRAIN_S)
        assert logger.drain(120), "the trial's journal did not reach the store"
    job = JobSpec("sweep", list(TASKS), ["ars", "lora"], data_root=str(gue_root),
                  mlflow=MlflowSpec(allow_chance_champion=True))  # a tiny random model may sit at chance
    regs = register(c, job, collect_trials(c, exp, parent))
    assert all(r.champion for r in regs.values())
    registry = TaskRegistry.from_root(gue_root)
    seqs = {t: load_split(registry.get(t), "test").slice(0, 6).column("sequence").to_pylist() for t in TASKS}
    return {"uri": uri, "root": root, "client": c, "exp": exp, "parent": parent, "regs": regs, "seqs": seqs,
            "adapters": {t: root / f"trial{i}" / "adapter" for i, t in enumerate(TASKS)}}


def _in_process(adapter: Path, seqs: list[str]) -> np.ndarray:
    """What the trained export gives when loaded the plain way (load_adapter) in this process."""
    model, tok, meta = load_adapter(adapter)
    batch = tok.collate([{"input_ids": tok.encode(s, meta["description"]).input_ids} for s in seqs])
    with torch.no_grad():
        return torch.softmax(model(**batch).logits, -1).numpy()


def _bare(adapter: Path, seqs: list[str]) -> np.ndarray:
    """The base the export was trained on, with a fresh head and no adapter."""
    from lingo_core.model_ref import resolve_model
    from lingo_core.modeling import load_classifier

    model, tok, meta = load_adapter(adapter)
    torch.manual_seed(1234)
    bare = load_classifier(resolve_model(meta["base_model"]["path"]), meta["num_labels"]).eval()
    batch = tok.collate([{"input_ids": tok.encode(s, meta["description"]).input_ids} for s in seqs])
    with torch.no_grad():
        return torch.softmax(bare(**batch).logits, -1).numpy()


def _probs(frame: pd.DataFrame, prefix: str = "") -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith(f"{prefix}prob_")]].to_numpy()


def test_champion_loads_as_pyfunc_and_matches_the_in_process_model(store: dict, gue_root: Path) -> None:
    import mlflow.pyfunc
    from peft import PeftModel

    from lingo_core.data.digest import task_digest
    from lingo_core.model_ref import resolve_model
    from lingo_core.modeling import load_classifier

    c, task = store["client"], "prom_core_tata"
    name = tracking.model_name(task)
    mv = c.get_model_version_by_alias(name, tracking.CHAMPION)
    assert mv.source.endswith(f"/{tracking.MODEL_ARTIFACT}")  # the version is the pyfunc model
    meta = json.loads((store["adapters"][task] / "lingo.json").read_text())
    assert mv.tags["base_model.sha256"] == meta["base_model"]["sha256"]
    assert mv.tags["data_digest"] == task_digest(TaskRegistry.from_root(gue_root).get(task))
    assert len(mv.tags["git_commit"].split("+")[0]) == 40

    os.environ["MLFLOW_TRACKING_URI"] = store["uri"]  # models:/ URIs resolve against this store
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    seqs = store["seqs"][task]
    out = model.predict(pd.DataFrame({"sequence": seqs, "id": [f"r{i}" for i in range(len(seqs))]}))
    assert list(out.columns) == ["id", "label", "label_name", "prob_non-promoter", "prob_promoter"]
    assert out["id"].tolist() == [f"r{i}" for i in range(len(seqs))]
    expected = _in_process(store["adapters"][task], seqs)
    np.testing.assert_allclose(_probs(out), expected, atol=1e-4)
    assert np.abs(_probs(out) - _bare(store["adapters"][task], seqs)).max() > 1e-3
    assert out["label"].tolist() == expected.argmax(1).tolist()
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["sequence", "id"] and not schema.inputs[1].required

    # inside the model: the export unchanged (plain PEFT loads it), pinned requirements, no pickle
    local = Path(c.download_artifacts(mv.run_id, tracking.MODEL_ARTIFACT, str(store["root"] / "dl")))
    from orchestrator.predict_cli import adapter_folder

    inner = adapter_folder(local)
    for f in store["adapters"][task].iterdir():
        assert (inner / f.name).read_bytes() == f.read_bytes()
    PeftModel.from_pretrained(load_classifier(resolve_model(meta["base_model"]["path"]), 2), str(inner))
    reqs = (local / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in reqs} >= {"mlflow", "torch", "transformers", "peft", "safetensors", "pandas"}
    assert not list(local.rglob("*.pkl")) and (local / "code" / "lingo_core" / "predict.py").is_file()


def _lingo(*args: str) -> tuple[int, str]:
    """`lingo ...` in this process (a subprocess would re-import torch: seconds per call)."""
    import contextlib
    import io

    from orchestrator.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, err.getvalue()


def _inputs(folder: Path, seqs: list[str]) -> dict[str, Path]:
    ids = [f"s{i}" for i in range(len(seqs))]
    fa = folder / "in.fa"
    fa.write_text("".join(f">{i} some text\n{s[:30]}\n{s[30:]}\n" for i, s in zip(ids, seqs, strict=True)))
    csv = folder / "in.csv.gz"
    pd.DataFrame({"id": ids, "sequence": [s.lower() for s in seqs]}).to_csv(csv, index=False)
    par = folder / "in.parquet"
    pq.write_table(pa.table({"sequence": seqs, "id": ids}), par)
    return {"fasta": fa, "csv": csv, "parquet": par}


def test_lingo_predict_on_fasta_csv_parquet_and_several_tasks_in_one_pass(store: dict, tmp_path: Path) -> None:
    seqs = store["seqs"]["prom_core_tata"] + store["seqs"]["tf/0"]
    files = _inputs(tmp_path, seqs)
    models = {t: f"models:/{tracking.model_name(t)}@champion" for t in TASKS}
    outs = {}
    for kind, path in files.items():
        out = tmp_path / f"{kind}.parquet"
        rc, err = _lingo("predict", "--model", models["prom_core_tata"], "--input", str(path), "--output", str(out),
                         "--tracking-uri", store["uri"], "--batch-size", "4")
        assert rc == 0, err
        outs[kind] = pd.read_parquet(out)
    first = outs["fasta"]
    assert list(first.columns) == ["id", "sequence", "prom_core_tata.label", "prom_core_tata.label_name",
                                   "prom_core_tata.prob_non-promoter", "prom_core_tata.prob_promoter"]
    assert first["id"].tolist() == [f"s{i}" for i in range(len(seqs))] and first["sequence"].tolist() == seqs
    for kind in ("csv", "parquet"):
        pd.testing.assert_frame_equal(outs[kind], first, atol=1e-6)
    np.testing.assert_allclose(_probs(first, "prom_core_tata."), _in_process(store["adapters"]["prom_core_tata"], seqs),
                               atol=1e-4)

    both = tmp_path / "both.parquet"
    rc, err = _lingo("predict", "--model", models["prom_core_tata"], "--model", models["tf/0"], "--input",
                     str(files["parquet"]), "--output", str(both), "--tracking-uri", store["uri"], "--no-progress")
    assert rc == 0, err
    rc, _ = _lingo("predict", "--model", models["tf/0"], "--input", str(files["csv"]), "--output",
                   str(tmp_path / "tf.parquet"), "--tracking-uri", store["uri"])
    assert rc == 0
    multi, tf_only = pd.read_parquet(both), pd.read_parquet(tmp_path / "tf.parquet")
    pd.testing.assert_frame_equal(multi[tf_only.columns], tf_only, atol=1e-6)
    pd.testing.assert_frame_equal(multi[first.columns], first, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def _register_copy(store: dict, task: str, edit, tmp: Path, legacy: bool = False) -> str:
    """A new version of `task` from an edited copy of its export (as a pyfunc model, or `legacy`: the
    bare adapter folder, as registered before pyfunc models existed); returns its models:/ URI."""
    from orchestrator.mlflow_model import log_pyfunc

    c = store["client"]
    folder = shutil.copytree(store["adapters"][task], tmp / "adapter")
    meta = json.loads((folder / "lingo.json").read_text())
    edit(meta)
    (folder / "lingo.json").write_text(json.dumps(meta))
    run_id = tracking.find_or_create_child(c, store["exp"], store["parent"], tmp.name, run_name=tmp.name)
    tracking.log_artifacts(c, run_id, [(folder, tracking.ADAPTER_ARTIFACT)])
    if not legacy:
        log_pyfunc(c, run_id, folder)
    reg = tracking.register_best(c, task, run_id, -1.0)  # below chance: never the champion
    return f"models:/{reg.name}/{reg.version}"


def test_lingo_predict_refuses_bad_input_with_one_line_and_writes_nothing(store: dict, tmp_path: Path,
                                                                          tiny_model_dir: Path) -> None:
    from lingo_core.model_identity import model_identity
    from lingo_core.model_ref import resolve_model
    from lingo_core.modeling import save_tiny_random_model

    good = f"models:/{tracking.model_name('prom_core_tata')}@champion"
    seqs = store["seqs"]["prom_core_tata"][:3]
    files = _inputs(tmp_path, seqs)
    bad_fa = tmp_path / "bad.fa"
    bad_fa.write_text(f">a\n{seqs[0]}\n>b\nACGT\nACGXT\n")
    wrong_sha = _register_copy(store, "prom_core_tata", lambda m: m["base_model"].update(sha256="0" * 64),
                               tmp_path / "wrongsha")
    other = save_tiny_random_model(tmp_path / "other-base", seed=1)  # same architecture, other weights
    other_base = _register_copy(store, "tf/0", lambda m: m["base_model"].update(model_identity(resolve_model(str(other)))),
                                tmp_path / "otherbase")
    cases = [
        ([good.replace("lingo-prom", "lingo-nope")], files["fasta"], r"no registered model 'lingo-nope_core_tata'"),
        ([good.replace("@champion", "@best")], files["fasta"], r"lingo-prom_core_tata has no alias 'best'"),
        ([good], bad_fa, rf"{bad_fa}:3: letter 'X' at position 8"),  # the record's header line, as for training data
        ([wrong_sha], files["csv"], r"base model mismatch: .*sha256 0{64}, but .* has sha256 [0-9a-f]{64}"),
        ([good, other_base], files["parquet"], r"models with different bases in one call: models:/lingo-prom_core_tata"),
        ([good, good], files["parquet"], r"two --model give task 'prom_core_tata'"),
    ]
    out = tmp_path / "out.parquet"
    for models, path, pattern in cases:
        args = [a for m in models for a in ("--model", m)]
        rc, err = _lingo("predict", *args, "--input", str(path), "--output", str(out), "--tracking-uri", store["uri"])
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("lingo predict: error: "), (models, err)
        assert re.search(pattern, lines[0]), (pattern, lines[0])
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    rc, err = _lingo("predict", "--model", good, "--input", str(files["fasta"]), "--output", str(out),
                     "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert rc == 2 and "no MLflow store at" in err and not (tmp_path / "none.db").exists()


def test_versions_from_before_pyfunc_models_still_predict(store: dict, tmp_path: Path) -> None:
    legacy = _register_copy(store, "tf/0", lambda m: None, tmp_path / "legacy", legacy=True)
    mv = store["client"].get_model_version(tracking.model_name("tf/0"), legacy.rsplit("/", 1)[1])
    assert mv.source.endswith("/adapter")  # what register_best wrote before this change
    seqs = store["seqs"]["tf/0"]
    files = _inputs(tmp_path, seqs)
    rc, err = _lingo("predict", "--model", legacy, "--input", str(files["fasta"]), "--output",
                     str(tmp_path / "o.parquet"), "--tracking-uri", store["uri"])
    assert rc == 0, err
    np.testing.assert_allclose(_probs(pd.read_parquet(tmp_path / "o.parquet"), "tf/0."),
                               _in_process(store["adapters"]["tf/0"], seqs), atol=1e-4)


def test_help_lists_predict_and_documents_every_option(capsys) -> None:
    from orchestrator.cli import main
    from orchestrator.predict_cli import parser

    assert main(["--help"]) == 0
    assert "lingo predict --model" in capsys.readouterr().out
    text = parser().format_help()
    for opt in ("--model", "--input", "--output", "--tracking-uri", "--base-model", "--batch-size", "--device", "--no-progress",
                "models:/lingo-<task>@<alias>", ".parquet", "Exit status 2"):
        assert opt in text
    with pytest.raises(SystemExit) as e:
        main(["predict", "--help"])
    assert e.value.code == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_served_champion_answers_http_invocations(store: dict, tmp_path: Path) -> None:
    task = "tf/0"
    port = _free_port()
    bindir = str(Path(sys.executable).parent)  # serve execs `uvicorn` by name: the venv's, as when activated
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
         f"models:/{tracking.model_name(task)}@champion", "--env-manager", "local", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180  # a loaded 2-core machine is slow to import torch + transformers
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow models serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        seqs = store["seqs"][task]
        body = json.dumps({"dataframe_split": {"columns": ["sequence"], "data": [[s] for s in seqs]}}).encode()
        req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # serve forks its workers: end the group
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    served = pd.DataFrame(answer["predictions"])
    np.testing.assert_allclose(_probs(served), _in_process(store["adapters"][task], seqs), atol=1e-4)


@pytest.mark.integration
def test_real_smollm2_pyfunc_matches_in_process(store: dict, smollm2_ref, tmp_path: Path) -> None:
    """The real base: a SmolLM2 LoRA export (B moved off its zero init, as training would) registered and
    loaded back through models:/ gives the in-memory model's probabilities, and not the bare base's."""
    import mlflow.pyfunc

    from lingo_core.artifacts import save_adapter
    from lingo_core.data.task import TaskSpec
    from lingo_core.model_identity import model_identity
    from lingo_core.modeling import load_classifier, load_tokenizer
    from lingo_core.tokenization import TEMPLATE, LingoTokenizer
    from lingo_core.tuners.config import AdapterSettings
    from lingo_core.tuners.methods import build_model
    from orchestrator.mlflow_model import log_pyfunc

    spec = TaskSpec(name="smol_check", path=tmp_path, num_labels=2, label_names=("no", "yes"), seq_len_bp=70,
                    description="promoter detection")
    torch.manual_seed(0)
    settings = AdapterSettings(method="lora", lora_r=2, target_modules=["q_proj", "v_proj"])
    model, _ = build_model(load_classifier(smollm2_ref, 2), settings, total_steps=1, seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.add_(0.05 * torch.randn_like(p))
    seqs = store["seqs"]["prom_core_tata"][:4]
    tok = LingoTokenizer(load_tokenizer(smollm2_ref), mode="bbpe", max_length=64)
    batch = tok.collate([{"input_ids": tok.encode(s, spec.description).input_ids} for s in seqs])
    model.eval()
    with torch.no_grad():
        in_memory = torch.softmax(model(**batch).logits, -1).numpy()
        with model.disable_adapter():  # the bare base with its initial head (PEFT keeps the original module)
            bare = torch.softmax(model(**batch).logits, -1).numpy()
    export = save_adapter(model, tmp_path / "adapter", task=spec, tokenizer_mode="bbpe", template=TEMPLATE,
                          base_identity=model_identity(smollm2_ref), metrics={}, method="lora", max_length=64)
    c = store["client"]
    run_id = tracking.find_or_create_child(c, store["exp"], store["parent"], "smol", run_name="smol")
    tracking.log_artifacts(c, run_id, [(export, tracking.ADAPTER_ARTIFACT)])
    log_pyfunc(c, run_id, export)
    reg = tracking.register_best(c, spec.name, run_id, 0.5)
    assert reg.champion
    os.environ["MLFLOW_TRACKING_URI"] = store["uri"]
    try:
        served = mlflow.pyfunc.load_model(f"models:/{reg.name}@champion").predict(pd.DataFrame({"sequence": seqs}))
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    np.testing.assert_allclose(_probs(served), in_memory, atol=1e-4)
    assert np.abs(_probs(served) - bare).max() > 1e-3
