#!/usr/bin/env bash
# Prints the job `make run` runs: jobs/main_gpu.yaml when this machine's torch sees a CUDA GPU, else
# jobs/default.yaml (the CPU smoke job). README, "make run", says what each job is and how long it takes.
# LINGO_PYTHON: the interpreter whose torch decides (default: the repo's .venv, the one `make run` uses).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${LINGO_PYTHON:-$root/.venv/bin/python}"
# torch, not nvidia-smi: it is what the trials will use, and a container may have CUDA without the tool.
# About 2 s of import, next to minutes of sweep. A failing interpreter prints nothing: make stops there.
if "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)'; then
    echo jobs/main_gpu.yaml
elif [ $? -eq 3 ]; then
    echo jobs/default.yaml
else
    echo "main_job.sh: $python cannot import torch; run make setup" >&2
    exit 1
fi
