# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST_ARGS ?=
# make's targets are for development: DEBUG on (the sandbox, demo data). Production images and check-deploy set 0.
export DEBUG ?= 1
# Two database roles: the app runs as isdown_app (on the audit table it may only SELECT and INSERT), migrations
# run as the owner. DATABASE_ADMIN_URL (a role that may create roles and databases) is used by preflight only,
# to create both roles and the database on a development machine. One knob gives a checkout (or a parallel run)
# a database of its own: make test DB_NAME=isdown_admin_2
DB_NAME ?= isdown_admin
export DATABASE_URL ?= postgres://isdown_app@127.0.0.1:5432/$(DB_NAME)
export DATABASE_OWNER_URL ?= postgres://isdown_owner@127.0.0.1:5432/$(DB_NAME)
export DATABASE_ADMIN_URL ?= postgres://root@127.0.0.1:5432/postgres
# make chaos: how many approved changes, and any other arguments of tests/chaos/soak.py (e.g. --seed 7).
N ?= 300
CHAOS_ARGS ?=

# The same commands run under docker-compose.yml; keep them in step.
WORKER_CMD := celery -A isdown_admin worker --loglevel=INFO --queues=publish,default --concurrency=2 --prefetch-multiplier=1
BEAT_CMD := celery -A isdown_admin beat --loglevel=INFO --schedule=var/celerybeat-schedule

.PHONY: bench run test fuzz chaos install install-dev preflight migrate seed worker beat lint check-deploy compose-check clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "isdown-admin needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.installed

# Test-only browser tools (axe-core, run inside the browser tests): package.json pins them.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

preflight: install
	$(PY) -m isdown_admin.preflight --create-db

migrate: preflight
	DATABASE_URL="$(DATABASE_OWNER_URL)" $(PY) manage.py migrate --noinput

seed: migrate
	$(PY) manage.py seed_demo

# The development key that signs audit checkpoints (var/ is gitignored; production brings its own, see README).
var/audit-signing-key.pem: | $(VENV)/.installed
	$(PY) -m isdown_admin.signing new-key $@

## make run: web, worker and beat in the foreground on http://127.0.0.1:8000, with demo data.
run: seed var/audit-signing-key.pem
	@mkdir -p var
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start --procfile Procfile

worker: install
	$(BIN)/$(WORKER_CMD)

beat: install
	@mkdir -p var
	$(BIN)/$(BEAT_CMD)

## make test: the whole suite against the real PostgreSQL, Redis, a real Celery worker and Chromium.
## --create-db: a fresh test database every time, so rows a killed run left behind cannot fail this one.
test: install-dev node_modules/.installed
	$(PY) -m isdown_admin.preflight --create-db
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) -m pytest --create-db $(PYTEST_ARGS)

## make fuzz: the property-based fuzz of every URL pattern, form and sandbox endpoint, as every persona, at full
## size: FUZZ_EXAMPLES inputs per URL pattern (the admin's 86 count as 20), > 10,000 in all; make test runs 30 per
## pattern. It prints the inputs tried, the responses by status class and the 500s, and fails below FUZZ_MIN_INPUTS.
FUZZ_EXAMPLES ?= 220
FUZZ_MIN_INPUTS ?= 10000
fuzz: install-dev
	$(PY) -m isdown_admin.preflight --create-db
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_MIN_INPUTS=$(FUZZ_MIN_INPUTS) PATH="$(CURDIR)/$(BIN):$$PATH" \
	  $(PY) -m pytest --create-db tests/fuzz $(PYTEST_ARGS)

## make chaos: the chaos soak (N approved changes under faults, worker kills and a Redis restart), judged on the
## sandbox's own record. Outside make test (a small one runs there); its own database and Redis, never the shared ones.
chaos: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) -m tests.chaos.soak --n $(N) $(CHAOS_ARGS)

## make bench: the benchmarks of issue 13 at the sizes it names, each figure beside its baseline from the same run
## and the ratio; one table of every goal at the end. Each bench uses a database of its own (DB_NAME + _pubbench,
## _pagesbench, _verifybench). Smaller or larger: make bench BENCH_PUBLISHING_ARGS="--n 100" BENCH_PAGES_ARGS="--events 200000"
BENCH_PUBLISHING_ARGS ?=
BENCH_PAGES_ARGS ?=
BENCH_VERIFY_ARGS ?=
bench: install-dev
	$(PY) -m isdown_admin.preflight --create-db
	@mkdir -p var/bench
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) tests/bench/bench_publishing.py --json var/bench/p1.json $(BENCH_PUBLISHING_ARGS)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) tests/bench/bench_audit_pagination.py --fresh --json var/bench/p2.json $(BENCH_PAGES_ARGS)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) tests/bench/bench_audit_verify.py --json var/bench/p3-verify.json $(BENCH_VERIFY_ARGS)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) tests/bench/bench_audit_export.py --json var/bench/p3-export.json $(BENCH_EXPORT_ARGS)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) tests/bench/bench_audit_append.py $(BENCH_APPEND_ARGS)
	$(PY) tests/bench/report.py var/bench/p1.json var/bench/p2.json var/bench/p3-verify.json var/bench/p3-export.json

## make lint: style (ruff), the import contracts (.importlinter) and the types (mypy.ini). Fast: CI runs it first.
## The django-stubs plugin loads the settings, so it runs with make's development environment (DEBUG=1 above).
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

## make check-deploy: Django's production checklist and this app's (incidents/checks.py, the database role
## included), with the documented production environment (deploy/production.env.example), a random SECRET_KEY and
## the local database; fails on any warning.
check-deploy: migrate
	set -a && . deploy/production.env.example && set +a && \
	  SECRET_KEY=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(64))') DATABASE_URL="$(DATABASE_URL)" \
	  AUDIT_SIGNING_KEY=$$($(PY) -m isdown_admin.signing new-key) \
	  $(PY) manage.py check --deploy --database default --fail-level WARNING

## make compose-check: both compose files are valid (the production one against the documented environment).
compose-check:
	docker-compose config -q
	@if [ -e deploy/production.env ]; then docker-compose -f deploy/compose.production.yml config -q; \
	else cp deploy/production.env.example deploy/production.env; \
	  docker-compose -f deploy/compose.production.yml config -q; status=$$?; rm -f deploy/production.env; exit $$status; fi

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
