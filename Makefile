.PHONY: test demo lint typecheck bench schemas run

test:
	./scripts/test

demo:
	./scripts/demo

lint:
	.venv/bin/ruff check service tests

typecheck:
	.venv/bin/mypy

bench:
	.venv/bin/jobservice --log-format text bench --jobs 20000 --tenants 10

schemas:
	.venv/bin/jobservice schemas

run:
	.venv/bin/jobservice run
