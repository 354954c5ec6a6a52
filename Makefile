# The workbook's two set-up commands are `make lab` and `make test`; both build everything they need.
# Each target below creates .venv with the machine's python3 when it is missing, installs torch==2.13.0
# first (a CPU wheel; an unpinned torch would pull a multi-GB CUDA build), then labkit with its dev
# extras, then fetches the offline assets. A stamp keyed on the dependency files' contents makes a second
# run install nothing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8888
LAB_ARGS ?=
PYTEST_ARGS ?=
RELEASE_ARGS ?=
GRADE_ARGS ?=
BENCH_ARGS ?=
DEMO_ARGS ?=
# JupyterLab refuses to run as root unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
DEPS_HASH := $(shell cat pyproject.toml environment.yml | sha256sum | cut -c1-16)
STAMP  := $(VENV)/.installed-$(DEPS_HASH)
TORCH  := torch==2.13.0
RELEASE_NB := $(patsubst solutions/%,notebooks/%,$(wildcard solutions/lab0.1/*.ipynb))

.PHONY: lab test venv assets sandbox release grade demo bench lint clean help

help:
	@echo "make lab      JupyterLab on notebooks/ (HOST=$(HOST) PORT=$(PORT))"
	@echo "make test     the whole test suite (what CI runs)"
	@echo "make release  regenerate notebooks/ (student release) from solutions/"
	@echo "make grade    autograde the submissions in autograder/submitted/ (GRADE_ARGS='-j 4 --quick', DB_URL=...)"
	@echo "make sandbox  install bubblewrap, the sandbox of the grading kernels (Debian: apt-get)"
	@echo "make demo     SmolLM2 on CPU: 8 prompts batched, against HF generate"
	@echo "make bench    the benchmark scripts in bench/"
	@echo "make lint     ruff"
	@echo "make clean    remove .venv and build leftovers (not the asset cache)"

$(STAMP): pyproject.toml environment.yml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

assets: $(STAMP)
	$(PY) -m labkit.assets fetch

lab: assets
	$(VENV)/bin/jupyter lab --no-browser --ip=$(HOST) --port=$(PORT) $(ROOT_FLAG) \
		--ServerApp.root_dir=notebooks $(LAB_ARGS)

test: assets sandbox
	$(VENV)/bin/pytest $(PYTEST_ARGS)

release: $(STAMP)
	$(PY) -m autograder.release $(RELEASE_ARGS)

# The grading kernels run inside bubblewrap (autograder/sandbox.py). Best effort: where it cannot be
# installed (not Debian, not root), grading still runs, with resource limits and a loud warning.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1)) || \
	    echo "warning: could not install bubblewrap; grading runs with resource limits only"; \
	  else echo "warning: bubblewrap (bwrap) missing: install it (Debian: sudo apt-get install bubblewrap)"; fi; }

DB_URL ?=
grade: assets sandbox
	$(PY) -m autograder.grade $(if $(DB_URL),--db-url $(DB_URL),) $(GRADE_ARGS)

demo: assets
	$(PY) -m labkit.demo $(DEMO_ARGS)

bench: assets
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f $(BENCH_ARGS) || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check labkit tests bench autograder

clean:
	rm -rf $(VENV) build *.egg-info labkit.egg-info .pytest_cache .ruff_cache .hypothesis
