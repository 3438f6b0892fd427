# vidledger: `make run` serves the embedded default; `make test` runs everything.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: install run test soak lint format bench clean chromium ffmpeg lock

# Exactly the locked set (requirements.lock, with hashes), then the project and
# its client (clients/python, vidledger-client)
# without dependencies: a fresh install gets the versions the tests passed with.
$(STAMP): pyproject.toml clients/python/pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e . -e clients/python
	touch $(STAMP)

# Update requirements.lock to the newest versions pyproject.toml allows (pip-tools,
# in a throwaway venv); then run `make test` and commit the lock with what it changed.
lock:
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet pip-tools
	.lock-venv/bin/pip-compile --quiet --upgrade --generate-hashes --strip-extras \
	    --allow-unsafe --no-emit-index-url --no-emit-find-links --extra dev \
	    -o requirements.lock pyproject.toml
	rm -rf .lock-venv

install: $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'  # the peer library, not locked: bench only
	touch $(BENCH_STAMP)

run: install
	$(BIN)/vidledger db upgrade
	$(BIN)/vidledger serve

test: install chromium ffmpeg
	$(BIN)/pytest

# The randomized history test (tests/integration/test_history.py) for as
# long as asked, on PostgreSQL: `make soak SECONDS=600`. It prints its counts.
SECONDS ?= 60
soak: install
	VIDLEDGER_HISTORY_SECONDS=$(SECONDS) $(BIN)/pytest -p no:cacheprovider -s \
	    tests/integration/test_history.py -k postgresql

# The browser tests drive Debian's Chromium (never a downloaded build). Install
# it when it is missing and apt-get is usable (root); otherwise those tests skip,
# or fail when CI is set.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	    if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	        echo "installing Debian's chromium for the browser tests"; \
	        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	    else \
	        echo "no /usr/bin/chromium and no apt-get as root: browser tests will skip"; \
	    fi; \
	fi

# The `command` generator's tests run Debian's ffmpeg; installed like Chromium.
ffmpeg:
	@if ! command -v ffmpeg >/dev/null 2>&1; then \
	    if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	        echo "installing Debian's ffmpeg for the command generator's tests"; \
	        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ffmpeg; \
	    else \
	        echo "no ffmpeg and no apt-get as root: the ffmpeg tests will skip"; \
	    fi; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict app clients/python/vidledger_client

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The HTTP benchmarks drive wrk: installed with apt-get when missing (as root).
bench: install $(BENCH_STAMP)
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq wrk; \
	  else echo "make bench needs wrk: install it (e.g. sudo apt-get install wrk)"; exit 1; fi; }
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
