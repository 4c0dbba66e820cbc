# Every target does its own set-up (scripts/setup.sh is idempotent and fast on a second run).
PY := .venv/bin/python
ARGS ?=

.PHONY: setup run test test-fast bench stack stop clean lint cluster cluster-stop console

setup:
	@bash scripts/setup.sh

run: setup  ## the job on the embedded default (mini-cluster + local broker + Redis) with demo traffic
	@$(PY) -m devtools.run_local $(ARGS)

test: setup  ## the whole suite: pure, mini-cluster and real-stack tests
	@$(PY) -m pytest -q $(ARGS)

test-fast: setup  ## pure tests only (no JVM, no broker)
	@$(PY) -m pytest -q -m "not minicluster and not stack" $(ARGS)

bench: setup  ## throughput (1M alerts) and latency of the whole job on the local stack (not a test)
	@$(PY) -m devtools.bench all $(ARGS)

stack: setup  ## broker + Redis in the background on 19092 / 16379
	@$(PY) -m devtools.localstack up

cluster: setup  ## local standalone Flink cluster + broker + Redis, job submitted with `flink run -py`
	@$(PY) -m devtools.localstack status | grep -q kafka || $(PY) -m devtools.localstack up
	@$(PY) -m devtools.cluster up
	@$(PY) -m devtools.cluster submit -- --bootstrap-servers 127.0.0.1:19092 $(ARGS)

cluster-stop:  ## stop the cluster's jobs with a savepoint, then the cluster, broker and Redis
	@$(PY) -m devtools.cluster stop-job || true
	@$(PY) -m devtools.cluster down
	@$(PY) -m devtools.localstack down

CONSOLE_ACCOUNTS ?= .run/console/moderators.toml
console: setup  ## the review console on the local stack, http://127.0.0.1:8090 (secrets from the environment)
	@$(PY) -m devtools.localstack status | grep -q kafka || $(PY) -m devtools.localstack up
	@test -f $(CONSOLE_ACCOUNTS) || { echo "console: no moderators yet: mkdir -p $(dir $(CONSOLE_ACCOUNTS)) && $(PY) -m console add-moderator --accounts $(CONSOLE_ACCOUNTS) --id m-1"; exit 2; }
	@$(PY) -m console --accounts $(CONSOLE_ACCOUNTS) $(ARGS)

stop:  ## stop what `make stack` or an interrupted run left behind
	@if [ -x $(PY) ] && [ -d .run/cluster/pids ]; then $(PY) -m devtools.cluster down; fi
	@if [ -x $(PY) ]; then $(PY) -m devtools.localstack down; fi

lint: setup
	@.venv/bin/ruff check . 2>/dev/null || echo "ruff is in the dev extra: .venv/bin/pip install -e '.[dev]'"

clean: stop  ## remove venv, caches, jars, broker data and checkpoints
	rm -rf .venv .cache .run *.egg-info .pytest_cache
