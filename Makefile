# Two entry points: `make report` (the main job: the report of the shipped model) and
# `make test` (the test suite, the docs build and the tutorial notebooks). Both create .venv,
# install torch==2.13.0 first (the CPU wheel), then the project. `make demo` draws a gallery of
# quizzes; `make docs` builds the docs site into site/.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver

.PHONY: report demo docs test test-fast lint install

$(BIN)/gridlens: pyproject.toml
	@echo "make install: creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "make install: installing torch 2.13.0 (the CPU wheel, about 200 MB; a few minutes)"
	$(BIN)/python -m pip install -q torch==2.13.0
	@echo "make install: installing gridlens (editable) with its dev, tl, sae and docs extras"
	$(BIN)/python -m pip install -q -e '.[dev,tl,sae,docs]'
	touch $@
	@echo "make install: done; the command is $(BIN)/gridlens"

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
# chromium-driver). As root (CI, a clean machine) they are installed if missing and required;
# a user who is not root and lacks them gets a one-line note and those tests are skipped.
test: install
	@require=1; \
	if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "make test: installing chromium and chromium-driver for the browser tests"; \
			apt-get update -qq && apt-get install -y -qq chromium chromium-driver || exit 1; \
		else \
			require=; \
			echo "make test: no chromium/chromedriver and not root: browser tests skipped (apt-get install chromium chromium-driver runs them)"; \
		fi; \
	fi; \
	$(BIN)/ruff check . && \
	GRIDLENS_REQUIRE_BROWSER=$$require $(BIN)/python -m pytest -q --durations=15

# The development subset (a couple of minutes): every test not marked slow.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

lint: install
	$(BIN)/ruff check .
