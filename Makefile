# The two commands. Both are idempotent: set-up is skipped when .venv is current.
#   make run   - set up, then run the main job (a multi-task sweep on embedded defaults)
#   make test  - set up, then run the whole test suite
# For the inner loop: make test-unit - ruff + the tests that start no Ray, DeepSpeed ranks, mlflow server or
# real SmolLM2 (pytest -m "not integration"; markers in pyproject.toml)
.PHONY: run test test-unit setup lint

# The main job: jobs/main_gpu.yaml with a CUDA GPU, else jobs/default.yaml (scripts/main_job.sh decides;
# `&&`: a failing check stops here instead of running `lingo tune` without a job)
run: setup
	job=$$(bash scripts/main_job.sh) && .venv/bin/lingo tune $$job

# --durations=20: the 20 slowest tests close the log, so CI time can be traced to its tests
test: setup
	.venv/bin/ruff check lingo_core orchestrator tests benchmarks
	.venv/bin/python -m pytest -p no:cacheprovider -ra --durations=20

test-unit: setup
	.venv/bin/ruff check lingo_core orchestrator tests benchmarks
	.venv/bin/python -m pytest -p no:cacheprovider -ra --durations=20 -m "not integration"

setup:
	bash scripts/setup.sh

lint:
	.venv/bin/ruff check lingo_core orchestrator tests benchmarks
