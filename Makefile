# Real-Time Services console: developer entry points.
#   make run    bootstrap everything, migrate, seed, then start web + workers + beat + gateway
#   make test   bootstrap (with Chromium) and run the test suite (the fault suite included)
#   make faults the fault suite alone, with its table of figures
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY          := .venv/bin/python
PORT        ?= 8000
PYTEST_ARGS ?=

.PHONY: help run test faults bootstrap images status clean distclean lint

help: ## show this help
	@echo "Real-Time Services console"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo
	@echo "  variables: PORT=$(PORT) (web port of make run), PYTEST_ARGS='...' (passed to pytest)"

bootstrap: ## install and start everything needed (venv, PostgreSQL, Redis, Docker, images)
	scripts/bootstrap.sh all

images: ## build the base image and the demo model images if missing or outdated
	scripts/bootstrap.sh docker images

status: ## show what is installed and running, change nothing
	@scripts/bootstrap.sh status

run: ## bootstrap, migrate, seed the demo data, then run web + workers + beat + gateway (Ctrl-C stops all)
	scripts/bootstrap.sh all
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	PORT=$(PORT) $(PY) manage.py seed_demo
	@mkdir -p .run
	@# The web's and the workers' Prometheus metrics: a fresh directory each run.
	@rm -rf .run/metrics && mkdir -p .run/metrics
	PORT=$(PORT) exec .venv/bin/honcho start -f Procfile -p $(PORT)

test: ## bootstrap (with Chromium) and run the tests; PYTEST_ARGS='-k foo' narrows them
	scripts/bootstrap.sh test
	$(PY) manage.py collectstatic --noinput -v0
	.venv/bin/pytest $(PYTEST_ARGS)

faults: ## the fault suite alone (it is part of make test too): breaks each part of the stack, prints the table
	scripts/bootstrap.sh all
	.venv/bin/pytest -m faults -p no:cacheprovider $(PYTEST_ARGS)

lint: ## syntax and type checks: shell scripts, Python byte-compile, ruff, mypy, Django system checks
	bash -n scripts/bootstrap.sh
	bash -n scripts/engine-firewall.sh
	bash -n .ci/run
	@if command -v shellcheck >/dev/null; then shellcheck -S warning scripts/bootstrap.sh .ci/run; fi
	$(PY) -m compileall -q common console services pools access api gateway metering tests examples bench
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
# The django-stubs plugin imports the settings, which want a SECRET_KEY; a type check needs no real one.
	SECRET_KEY="$${SECRET_KEY:-type-check-only}" .venv/bin/mypy common console services pools access api gateway metering
	$(PY) manage.py check

clean: ## remove .run and every container labelled rts.console (the console's model instances)
	@if docker info >/dev/null 2>&1; then \
		ids="$$(docker ps -aq --filter label=rts.console)"; \
		if [ -n "$$ids" ]; then echo "==> removing $$(echo $$ids | wc -w) rts.console container(s)"; docker rm -f $$ids >/dev/null; fi; \
	else echo "==> Docker engine not answering: no containers removed"; fi
	rm -rf .run

distclean: clean ## clean, and also remove .venv and staticfiles
	rm -rf .venv staticfiles
