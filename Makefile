# deepcens: set-up, demo and tests. Every step is idempotent.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deepcens-installed
DEMO_CONFIG ?= configs/demo/synthetic_cell_nucleus.yaml
PYTEST_ARGS ?=

.PHONY: install demo test bench clean-venv

install: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt setup.py pyproject.toml scripts/install_detectron2.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip==25.2"
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	bash scripts/install_detectron2.sh $(PY)
	$(PY) -m pip install -q --no-deps resnest==0.0.5
	$(PY) -m pip install -q --no-deps timm==1.0.31
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import deepcens, detectron2, resnest.torch; print('deepcens ready')"
	@touch $(STAMP)

# The main job on the embedded synthetic data (no EVICAN2 needed).
demo: install
	$(PY) tools/train_net.py --config-file $(DEMO_CONFIG)

# The test suite (what CI runs).
test: install
	bash scripts/run_tests.sh $(PY) $(PYTEST_ARGS)

bench: install
	$(PY) tools/benchmark.py --device cpu

clean-venv:
	rm -rf $(VENV)
