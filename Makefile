# Development shortcuts. `make test` and `make demo` are the README's two commands; the others
# use the .venv that scripts/setup.sh creates (`make setup`: services, .venv, database).
VENV := .venv/bin
BENCH_ARGS ?=

.PHONY: setup test demo lint typecheck bench schemas run

setup:
	./scripts/setup.sh

test:
	./scripts/test

demo:
	./scripts/demo

# Lint and type check need only the tools: set-up runs when .venv lacks them.
$(VENV)/ruff $(VENV)/mypy:
	./scripts/setup.sh

lint: $(VENV)/ruff
	$(VENV)/ruff check service tests scripts

typecheck: $(VENV)/mypy
	$(VENV)/mypy

# These run the installed package: set-up first reinstalls it when the sources changed.
# `make bench`: every scenario at the sizes of the issue's targets table (docs/benchmarks.md),
# 8–10 minutes on 2 cores; BENCH_ARGS adds flags to each (e.g. --json).
BENCH := $(VENV)/jobservice --log-format text bench $(BENCH_ARGS)
bench: setup
	$(BENCH) --scenario throughput --jobs 20000 --tenants 10
	$(BENCH) --scenario throughput --jobs 20000 --tenants 10 --instances 2
	$(BENCH) --scenario latency
	$(BENCH) --scenario idle
	$(BENCH) --scenario flood
	$(BENCH) --scenario progress
	$(BENCH) --scenario scale
	$(BENCH) --scenario memory

# Regenerates schemas/ from the message models (`jobservice schemas --check` finds drift).
schemas: setup
	$(VENV)/jobservice schemas

run: setup
	$(VENV)/jobservice run
