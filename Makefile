# The two commands. Both are idempotent: set-up is skipped when .venv is current.
#   make run   - set up, then run the main job (a multi-task sweep on embedded defaults)
#   make test  - set up, then run the whole test suite
.PHONY: run test setup lint

run: setup
	.venv/bin/lingo tune jobs/default.yaml

test: setup
	.venv/bin/ruff check lingo_core orchestrator tests benchmarks
	.venv/bin/python -m pytest -p no:cacheprovider -ra --durations=20  # the slowest 20: where CI time goes

setup:
	bash scripts/setup.sh

lint:
	.venv/bin/ruff check lingo_core orchestrator tests benchmarks
