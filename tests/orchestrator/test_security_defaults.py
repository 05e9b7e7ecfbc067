"""Security defaults that are properties of the source (issue 10 item 6), checked over the code itself so a
regression fails CI: nothing unpickles, nothing evaluates text, no remote model code, servers listen on
127.0.0.1 unless told otherwise. Behaviour is tested elsewhere (test_adapter_inputs: a pickle payload is
never run; test_jobspec_inputs: python tags never run, tokens never logged)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CODE = sorted(p for d in ("lingo_core", "orchestrator", "scripts", "benchmarks") for p in (REPO / d).rglob("*.py"))

FORBIDDEN = {
    "pickle loading": re.compile(r"\b(c?pickle|cloudpickle|joblib|dill)\.loads?\("),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only=True)"),
    "eval / exec of text": re.compile(r"(?<![\w.])(eval|exec)\("),
    "unsafe YAML loader": re.compile(r"yaml\.(unsafe_load|full_load)\(|Loader=yaml\.(Unsafe|Full)?Loader\b"),
    "remote model code": re.compile(r"trust_remote_code\s*=\s*True"),
    "dynamic imports from text": re.compile(r"importlib\.import_module\(|__import__\("),
    "listening on every interface": re.compile(r"[\"']0\.0\.0\.0[\"']"),
}


@pytest.mark.parametrize("rule", list(FORBIDDEN))
def test_source_has_no(rule):
    pattern = FORBIDDEN[rule]
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in CODE
            for i, line in enumerate(p.read_text().splitlines(), start=1)
            if pattern.search(line) and not line.lstrip().startswith("#")]
    assert not hits, f"{rule}:\n" + "\n".join(hits)


def test_the_rules_match_what_they_forbid():
    # guards the regexes themselves: each must fire on the construct it names
    samples = {"pickle loading": "pickle.load(f)", "torch.load without weights_only=True": "torch.load(p)",
               "eval / exec of text": "x = eval(s)", "unsafe YAML loader": "yaml.load(t, Loader=yaml.Loader)",
               "remote model code": "from_pretrained(p, trust_remote_code=True)",
               "dynamic imports from text": "importlib.import_module(name)",
               "listening on every interface": 'host="0.0.0.0"'}
    assert all(FORBIDDEN[k].search(v) for k, v in samples.items())
    assert not FORBIDDEN["torch.load without weights_only=True"].search("torch.load(p, weights_only=True)")
    assert not FORBIDDEN["eval / exec of text"].search("model.eval()")


def test_mlflow_server_recipe_listens_on_localhost_unless_told():
    script = (REPO / "infra" / "mlflow" / "serve.sh").read_text()
    assert "HOST=${MLFLOW_HOST:-127.0.0.1}" in script and '--host "$HOST"' in script
