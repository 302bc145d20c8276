# Two commands do all set-up on a fresh machine: `make demo` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= digits
DEMO_ARGS ?=
# on a real dataset (e.g. CIFAR-10) the demo trains on a class-balanced 5,000-image pool with crop 4 + flip
CIFAR_DEMO := data.labels=5000 data.augment.padding=4 data.augment.flip=true

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,ray,slurm,tensorboard,mlflow]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/r18lab train recipes/demo.yaml --out runs/demo-$(notdir $(basename $(basename $(DATA)))) data.source=$(DATA) $(if $(filter digits,$(DATA)),,$(CIFAR_DEMO)) $(DEMO_ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=10

bench: $(VENV)/.installed
	$(VENV)/bin/r18lab bench

.PHONY: install demo test bench
