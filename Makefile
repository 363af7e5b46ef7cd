# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST_ARGS ?=
# make chaos: how many approved changes, and any other arguments of tests/chaos/soak.py (e.g. --seed 7).
N ?= 300
CHAOS_ARGS ?=

# The same commands run under docker-compose.yml; keep them in step.
WORKER_CMD := celery -A isdown_admin worker --loglevel=INFO --queues=publish,default --concurrency=2 --prefetch-multiplier=1
BEAT_CMD := celery -A isdown_admin beat --loglevel=INFO --schedule=/tmp/isdown-admin-celerybeat-schedule

.PHONY: run test chaos install install-dev preflight migrate seed worker beat lint check-deploy compose-check clean

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

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

preflight: install
	$(PY) -m isdown_admin.preflight --create-db

migrate: preflight
	$(PY) manage.py migrate --noinput

seed: migrate
	$(PY) manage.py seed_demo

## make run: web, worker and beat in the foreground on http://127.0.0.1:8000, with demo data.
run: seed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start --procfile Procfile

worker: install
	$(BIN)/$(WORKER_CMD)

beat: install
	$(BIN)/$(BEAT_CMD)

## make test: the whole suite against the real PostgreSQL, Redis, a real Celery worker and Chromium.
## --create-db: a fresh test database every time, so rows a killed run left behind cannot fail this one.
test: install-dev
	$(PY) -m isdown_admin.preflight
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) -m pytest --create-db $(PYTEST_ARGS)

## make chaos: the chaos soak (N approved changes under faults, worker kills and a Redis restart), judged on the
## sandbox's own record. Outside make test (a small one runs there); its own database and Redis, never the shared ones.
chaos: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) -m tests.chaos.soak --n $(N) $(CHAOS_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check-deploy: install
	DEBUG=0 SECRET_KEY=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(64))') \
	  ALLOWED_HOSTS=status-admin.example.com CSRF_TRUSTED_ORIGINS=https://status-admin.example.com \
	  $(PY) manage.py check --deploy --fail-level WARNING

compose-check:
	docker-compose config -q

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
