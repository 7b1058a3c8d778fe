# The two set-up commands of the README: `make demo` and `make test` build .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.lrgate-installed
BIN := $(VENV)/bin
CURVES := lrgate/example_curves

.PHONY: demo suggest-demo test lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision first, pinned to the builds this project's machines hold (README: Set-up).
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lrgate run configs/demo.yaml

suggest-demo: $(STAMP)
	$(BIN)/lrgate suggest $(CURVES)/digits_adam_bs64_unfrozen.csv --unfrozen --plot runs/suggest-demo/gate2.png

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
