# Two entry points: `make report` (the main job: the report of the shipped model) and
# `make test` (the test suite, the docs build and the tutorial notebooks). Both create .venv,
# install torch==2.13.0 first (the CPU wheel), then the project. `make demo` draws a gallery of
# quizzes; `make docs` builds the docs site into site/.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: report demo docs test lint install

$(BIN)/gridlens: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,tl,sae,docs]'
	touch $@

install: $(BIN)/gridlens

report: install
	$(BIN)/gridlens report

demo: install
	$(BIN)/gridlens world gallery --out gallery.png

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# tests/docs/ builds the docs site (mkdocs --strict), runs every python block of the docs and the
# tutorial notebooks (docs/tutorials/*.ipynb, in a fresh kernel with a time limit).
# The report and dashboard tests open pages in a real headless Chromium (Debian's chromium and
# chromium-driver; CI runs as root on a clean machine, so they are installed here if missing).
test: install
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		apt-get update -qq && apt-get install -y -qq chromium chromium-driver; fi
	$(BIN)/ruff check .
	GRIDLENS_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q --durations=15

lint: install
	$(BIN)/ruff check .
