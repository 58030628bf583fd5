# Quick start: `make demo` (whole pipeline on generated data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# the oldest versions of the dependencies that pyproject.toml allows, in their own venv
FLOOR_VENV ?= .venv-floor
FLOOR_PINS ?= torch==2.11.0 torchvision==0.26.0 numpy==1.24.2 pillow==10.0.0 pydicom==3.0.1 \
	pyyaml==6.0.1 tqdm==4.66.0 matplotlib==3.7.0 scikit-learn==1.3.0 safetensors==0.4.0 \
	onnx==1.17.0 onnxruntime==1.18.0 onnxscript==0.6.0

.PHONY: setup setup-floor test test-floor lint format demo clean

$(BIN)/s2mts2: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS) -e ".[dev]"  # one resolution: the pins hold
	touch $@

setup: $(BIN)/s2mts2

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: setup lint
	$(BIN)/python -m pytest -q

# the tests on the floor versions, less those that compile networks with TorchInductor
# (minutes on a cold cache; `make test` runs them on the pinned versions)
setup-floor:
	$(MAKE) setup VENV=$(FLOOR_VENV) TORCH_PINS="$(FLOOR_PINS)"

test-floor: setup-floor
	$(FLOOR_VENV)/bin/python -m pytest -q -m "not compiles"

demo: setup
	$(BIN)/s2mts2 demo --out runs/demo

clean:
	rm -rf runs .pytest_cache .ruff_cache $(FLOOR_VENV)
