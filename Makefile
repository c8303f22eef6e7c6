# `make demo` and `make test` set everything up themselves (a local .venv, CPU torch 2.13.0 so that
# nothing pulls CUDA wheels) and then run. Re-running only reinstalls when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.focuslib-installed
TORCH  ?= torch==2.13.0
EXTRAS ?= test,eval,notebooks
JOBS   ?= 2

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/focus demo --out figures/demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) tests

clean:
	rm -rf $(VENV) .cache build *.egg-info
