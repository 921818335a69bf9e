# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs ccp, trains on an embedded data set, evaluates, exports
#   make test   creates .venv if needed, installs ccp with its test extras, runs ruff and the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_output

.PHONY: test demo install clean benchmarks baselines-venv

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadfile -q tests

demo: $(STAMP)
	$(PY) experiments/demo.py --output_dir=$(DEMO_DIR)

benchmarks: $(STAMP)
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/eval_scale.py

# Baselines of benchmarks/eval_scale.py (torch, faiss, pytorch-metric-learning) live in their
# own venv, never in ccp's dependencies.
BASELINES_VENV := benchmarks/.venv-baselines
baselines-venv:
	test -x $(BASELINES_VENV)/bin/python || $(PYTHON) -m venv $(BASELINES_VENV)
	$(BASELINES_VENV)/bin/python -m pip install --quiet torch faiss-cpu pytorch-metric-learning

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info
