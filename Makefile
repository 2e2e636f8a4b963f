# Two entry points, as the README says: `make sample` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE := issues/027-2022-04-01

.PHONY: sample test lint chromium clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,postgresql]'  # dev brings the screenshots extra (Playwright) for the tests
	touch $@

# Build the sample issue and "send" it to the sample list as .eml files in outbox/: no account, no network.
sample: $(VENV)/.installed
	$(BIN)/newsletter build $(SAMPLE)
	$(BIN)/newsletter send $(SAMPLE) --list sample --outbox outbox

# The tests drive Debian's Chromium and lay out Korean and emoji: install Chromium and the Noto CJK and
# colour emoji fonts when missing (needs root or sudo).
chromium:
	@{ command -v chromium >/dev/null && fc-list :lang=ko | grep -q . && fc-list | grep -qi 'color emoji'; } || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    chromium fonts-noto-cjk fonts-noto-color-emoji; }

lint: $(VENV)/.installed
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/mypy

test: $(VENV)/.installed chromium lint
	$(BIN)/pytest

clean:
	rm -rf build outbox .pytest_cache .mypy_cache .ruff_cache
