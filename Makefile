# The two commands a fresh machine needs:
#   make demo      # venv + install + Fashion-MNIST, then train -> evaluate -> report -> export on configs/demo.yaml
#   make test      # venv + install, then the fast test selection (not marked slow; about 5 minutes on 2 cores)
# and for CI and contributors:
#   make test-all  # every test (PML parity in .venv-pml too), then the documentation site built with --strict
#                  # (.ci/run calls this)
#   make docs      # the documentation site (site/), --strict: a broken link or a missing reference fails
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OUT ?= runs/demo

.PHONY: demo test test-all docs venv data bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# tensorflow-cpu (required before 0.3) and tensorflow share one package folder: keep only tensorflow.
	$(PY) -m pip uninstall -q -y tensorflow-cpu 2>/dev/null || true
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# pytorch-metric-learning in an environment of its own, for the parity tests (tests/test_pml_parity.py) and the PML
# column of benchmarks/retrieval_metrics.py (its AccuracyCalculator needs faiss): torch 2.13.0
# is pinned because pip finds its CPU build on this machine's disk (a bare `torch` would fetch a CUDA build).
PML_VENV ?= .venv-pml
$(PML_VENV)/.installed:
	test -x $(PML_VENV)/bin/python || $(PYTHON) -m venv $(PML_VENV)
	$(PML_VENV)/bin/python -m pip install -q torch==2.13.0 pytorch-metric-learning==2.9.0 'faiss-cpu>=1.8,<2'
	touch $@

# Debian's dataset-fashion-mnist package; skipped (with a message) where apt-get cannot run.
data:
	@if [ -f $(FMNIST) ] || [ -f $$HOME/.keras/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; \
	else \
	  echo "Fashion-MNIST is missing and apt-get is not usable here: run 'sudo apt-get install dataset-fashion-mnist'"; \
	fi

demo: venv data
	$(VENV)/bin/reprlearn train configs/demo.yaml --out $(DEMO_OUT)
	$(VENV)/bin/reprlearn export $(DEMO_OUT) --out $(DEMO_OUT)/serving --name demo

# Two workers (most tests wait on TensorFlow start-up or a subprocess, so two share the two cores well), each
# taking whole files, so a module's trained runs are made once.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile

test: venv data
	$(PYTEST) -m "not slow"

test-all: venv data $(PML_VENV)/.installed
	$(PYTEST)
	$(MAKE) docs

docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d site

bench: venv data
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/retrieval_metrics.py

clean:
	rm -rf $(VENV) $(PML_VENV) runs site *.egg-info
