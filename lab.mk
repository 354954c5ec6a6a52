# Set-up and `make lab`, shared by the workbook's Makefile and the student bundle's (make student-bundle).
#
# `make lab` creates .venv with the machine's python3 when it is missing, installs torch==2.13.0 first
# (a CPU wheel; an unpinned torch would pull a multi-GB CUDA build), then labkit with its dev extras, then
# fetches the offline assets. A stamp keyed on the dependency files' contents makes a second run install
# nothing. JupyterLab serves the student's working copy $(WORKSPACE)/ (ignored by git), never the release
# notebooks/ itself: the first run copies the release there, later runs only add new chapters.

PYTHON    ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
HOST      ?= 127.0.0.1
PORT      ?= 8888
LAB_ARGS  ?=
WORKSPACE ?= workspace
# JupyterLab refuses to run as root unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# sha256sum on Linux, shasum on macOS
DEPS_HASH := $(shell cat pyproject.toml environment.yml | { sha256sum 2>/dev/null || shasum -a 256; } | cut -c1-16)
STAMP     := $(VENV)/.installed-$(DEPS_HASH)
TORCH     := torch==2.13.0
JUPYTER_LAB = $(VENV)/bin/jupyter lab --no-browser --ip=$(HOST) --port=$(PORT) $(ROOT_FLAG)

.PHONY: lab venv assets workspace

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

workspace: $(STAMP)
	@$(PY) -m labkit.workspace --release notebooks --workspace $(WORKSPACE)

lab: assets workspace
	$(JUPYTER_LAB) --ServerApp.root_dir=$(WORKSPACE) $(LAB_ARGS)
