# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs ccp, trains on an embedded data set, evaluates, exports
#   make test   creates .venv if needed, installs ccp with its test extras, runs ruff and the tests
#   make test-fast   the numerical core and the units without the slow tests (< 1 minute)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_output

.PHONY: test test-fast test-numerical-onednn-off demo install clean benchmarks baselines-venv

# The numerical core: the math against float64 references and finite differences (ops, layers,
# losses, k-center, metrics, the reference's optimizer step, the fused BatchNorm).
NUMERICAL_TESTS := tests/ccp/test_ops.py tests/ccp/test_layers.py tests/ccp/test_losses.py \
	tests/ccp/test_losses_literature.py tests/ccp/test_losses_reference_extra.py \
	tests/ccp/test_losses_reference_switches.py tests/ccp/test_projection.py \
	tests/ccp/test_metrics.py tests/ccp/test_metrics_exact_knn.py \
	tests/ccp/test_toolbox_evaluation.py tests/ccp/test_reference_step.py \
	tests/ccp/test_fused_batchnorm.py
# The units: configuration and flags, samplers, folds, augmentation, small library pieces.
UNIT_TESTS := tests/experiments/test_config.py tests/experiments/test_run.py \
	tests/experiments/test_report.py tests/data_pipelines/test_samplers.py \
	tests/data_pipelines/test_folds.py tests/data_pipelines/test_augment.py \
	tests/data_pipelines/test_images.py tests/ccp/test_toolbox_optimizers.py \
	tests/experiments/test_pretraining.py tests/data_pipelines/test_annotation_faults.py \
	tests/ccp/test_keras_compat.py

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadfile -q --durations=12 tests

# The developer's loop: no subprocess, end-to-end or distribution test (pytest marker "slow").
# PYTEST_ARGS passes more options, e.g. make test-fast PYTEST_ARGS=--durations=20.
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist load -q -m "not slow" $(PYTEST_ARGS) $(NUMERICAL_TESTS) \
		$(UNIT_TESTS)

# The numerical core with TensorFlow's oneDNN kernels off (make test runs TensorFlow's default,
# on for x86 CPUs with AVX-512 / AMX): tolerances must hold for both kernel families.
test-numerical-onednn-off: $(STAMP)
	TF_ENABLE_ONEDNN_OPTS=0 $(PY) -m pytest -n 2 --dist loadfile -q $(NUMERICAL_TESTS)

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
