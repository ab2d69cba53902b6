# `make run` and `make test` work from a fresh clone with nothing but python3: both start an embedded PostgreSQL
# and Redis when no server is given (and, for the browser tests, install Debian's chromium when it is missing).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
PRISM := tests/prism/node_modules/.bin/prism

.PHONY: install run test lint typecheck pytest browser prism faults bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	CLOSER_ENV=$${CLOSER_ENV:-development} $(BIN)/closer dev

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

browser:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

prism: $(PRISM)

$(PRISM): tests/prism/package.json
	cd tests/prism && npm install --no-audit --no-fund --loglevel=error
	touch $(PRISM)

pytest: $(STAMP) browser prism
	$(BIN)/pytest

test: lint typecheck pytest

# `make faults FAULTS_ARGS="--size 1000 --scenario kill9"`; `--real-time` waits out the recovery timers.
faults: $(STAMP) prism
	$(BIN)/python -m bench.faults $(FAULTS_ARGS)

bench: $(STAMP) prism
	$(BIN)/pytest -m bench tests/bench
	$(BIN)/python -m bench.dispatch
	$(BIN)/python -m bench.webhooks

clean:
	rm -rf $(VENV) test-artifacts tests/prism/node_modules
