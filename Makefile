# The workbook's two set-up commands are `make lab` and `make test`; both build everything they need.
# lab.mk holds the set-up (.venv, assets) and `make lab`; the student bundle's Makefile includes it too.

include lab.mk

.DEFAULT_GOAL := help
PYTEST_ARGS ?=
RELEASE_ARGS ?=
GRADE_ARGS ?=
BENCH_ARGS ?=
DEMO_ARGS ?=
BUNDLE_ARGS ?=
RELEASE_NB := $(patsubst solutions/%,notebooks/%,$(wildcard solutions/lab0.1/*.ipynb))

.PHONY: lab test venv assets sandbox release grade demo bench lint clean help

help:
	@echo "make lab      JupyterLab on your working copy $(WORKSPACE)/, seeded from notebooks/ (HOST=$(HOST) PORT=$(PORT))"
	@echo "make test     the whole test suite (what CI runs)"
	@echo "make release  regenerate notebooks/ (student release) from solutions/"
	@echo "make grade    autograde the submissions in autograder/submitted/ (GRADE_ARGS='-j 4 --quick', DB_URL=...)"
	@echo "make sandbox  install bubblewrap, the sandbox of the grading kernels (Debian: apt-get)"
	@echo "make demo     SmolLM2 on CPU: 8 prompts batched, against HF generate"
	@echo "make bench    the benchmark scripts in bench/"
	@echo "make lint     ruff"
	@echo "make formgrader     nbgrader's formgrader for this course (JupyterLab at /formgrader)"
	@echo "make lab-solutions  JupyterLab on solutions/ (the instructor's notebooks)"
	@echo "make student-bundle dist/*.tar.gz: release, labkit, environment, student README and Makefile"
	@echo "make clean    remove .venv and build leftovers (not the asset cache)"

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

.PHONY: student-bundle formgrader lab-solutions browser-deps

student-bundle: $(STAMP)
	$(PY) -m autograder.bundle $(BUNDLE_ARGS)

# nbgrader's formgrader reads nbgrader_config.py from the server's working directory, hence the cd;
# the server's root is the course root (nbgrader needs the course inside it).
formgrader: assets
	cd autograder && $(abspath $(VENV))/bin/jupyter lab --no-browser --ip=$(HOST) --port=$(PORT) $(ROOT_FLAG) \
		--ServerApp.root_dir=$(CURDIR) --ServerApp.default_url=/formgrader $(LAB_ARGS)

lab-solutions: assets
	$(JUPYTER_LAB) --ServerApp.root_dir=solutions $(LAB_ARGS)

# Headless Chromium, its WebDriver and a Japanese font from Debian, for tests/test_browser.py (apt-get, as root).
BROWSER_PKGS := chromium chromium-driver fonts-ipafont-gothic
browser-deps:
	@dpkg -s $(BROWSER_PKGS) >/dev/null 2>&1 || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BROWSER_PKGS); }

lint: $(STAMP)
	$(VENV)/bin/ruff check labkit tests bench autograder

clean:
	rm -rf $(VENV) build dist *.egg-info labkit.egg-info .pytest_cache .ruff_cache .hypothesis
