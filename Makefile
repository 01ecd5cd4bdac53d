# The two commands of the README, and the linters. Everything else lives in scripts/.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: run test lint

## make run: set up (venv, migrations, demo admin and token) and serve on http://127.0.0.1:8000
run:
	bash scripts/run.sh

## make test [ARGS="-k name"]: the test suite (scripts/test.sh)
test:
	bash scripts/test.sh $(ARGS)

## make lint: ruff (lint and format check) and mypy
lint:
	source scripts/bootstrap.sh && ensure_venv server,dev
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy approvals mcpbridge
