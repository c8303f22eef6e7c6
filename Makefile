# `make demo` and `make test` set everything up themselves (a local .venv, CPU torch 2.13.0 so that
# nothing pulls CUDA wheels) and then run. Re-running only reinstalls when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.focuslib-installed
KERNEL := $(VENV)/share/jupyter/kernels/focuslib/kernel.json
TORCH  ?= torch==2.13.0
EXTRAS ?= test,eval,notebooks
JOBS   ?= 2

.PHONY: demo test install clean figures miniature miniature-report test-browser

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP) $(KERNEL)

demo: $(STAMP)
	$(VENV)/bin/focus demo --out figures/demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) tests

# `make test-browser`: the explorer (notebooks/00_explore.ipynb) used in headless Chromium through JupyterLab
# (tests/browser/; `make test` skips it). Installs Debian's chromium + chromium-driver (apt-get) and selenium
# (pyproject extra "browser") when missing; screenshots go to figures/browser/ (git-ignored). ~1.5 min.
test-browser: $(STAMP) $(KERNEL)
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }
	@$(PY) -c "import selenium" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check "selenium>=4"
	FOCUS_BROWSER=1 timeout 420 $(PY) -m pytest -q -p no:xdist -p no:cacheprovider tests/browser

# `make miniature`: generate the synthetic world and train the miniature LLaVA-1.5 on this CPU (~1.5 h on 2 cores,
# resumable: re-run after an interruption) and measure it ($(MINI_RUN)/report). RECIPE=attempt-3 is the shipped
# one, with VARIANT=run-17 (the shipped run: a 192 px tower, decisions D44; run-10 was the default before it;
# VARIANT= gives the Recipe3 defaults, run 5; attempt-1|2: benchmarks/results_miniature.md). C_THREADS=1 trains
# stage C on one torch thread (faster on 2 cores; run 18, not the shipped run 17, was trained so). It is copied to
# MINI_OUT only when every gate passes; the shipped model missed its last gate and was shipped by comparing reports
# (decisions D37). Exit 3: a gate missed. DEVICE=cuda trains and measures on a GPU node (same code; a lent device
# machine: benchmarks/miniature_gpu.sh).
RECIPE ?= attempt-3
VARIANT ?= $(if $(filter attempt-3,$(RECIPE)),run-17)
C_THREADS ?=
DEVICE ?=
MINI_RUN ?= .cache/miniature-run-$(RECIPE)$(if $(VARIANT),-$(VARIANT))
MINI_OUT ?= data/models/miniature-llava-1.5
miniature: $(STAMP)
	$(PY) -m focuslib.offline.miniature --recipe $(RECIPE) $(if $(VARIANT),--variant $(VARIANT)) $(if $(C_THREADS),--c-threads $(C_THREADS)) $(if $(DEVICE),--device $(DEVICE)) --out $(MINI_RUN) --ship $(MINI_OUT); rc=$$?; \
	  test -d $(MINI_RUN)/final && $(PY) -m focuslib.offline.miniature_report --model $(MINI_RUN)/final --out $(MINI_RUN)/report $(if $(DEVICE),--device $(DEVICE)); \
	  exit $$rc

miniature-report: $(STAMP)
	$(PY) -m focuslib.offline.miniature_report --model $(MINI_OUT)

clean:
	rm -rf $(VENV) .cache build *.egg-info

# `make figures`: all six notebooks (notebooks/*.ipynb) with papermill on MODEL (GPU node), outputs in figures/,
# resumable results in results/. In the conda env: `make figures PY=python MODEL=...`.
# `make figures SMOKE=1`: the embedded default (cli.embedded_default: the shipped miniature, else the random-weight tiny model), synthetic benchmarks, CPU, a few minutes -> figures/smoke/.
MODEL  ?= llava-hf/llava-1.5-7b-hf
DEVICE ?=
DTYPE  ?=
LIMIT  ?=
DATA   ?=
SMOKE  ?=
$(KERNEL): $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name focuslib --display-name "Python (focuslib)"

figures: $(if $(filter $(VENV)/bin/python,$(PY)),$(KERNEL))
	$(PY) -m focuslib.report $(if $(SMOKE),--smoke,--model "$(MODEL)") $(if $(DEVICE),--device $(DEVICE)) \
		$(if $(DTYPE),--dtype $(DTYPE)) $(if $(LIMIT),--limit $(LIMIT)) $(if $(DATA),--data $(DATA))
