# The two set-up commands of the README: `make demo` and `make test` build .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.lrgate-installed
BIN := $(VENV)/bin
CURVES := lrgate/example_curves

.PHONY: demo test lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision first, pinned to the builds this project's machines hold (README: Set-up).
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	@echo "== gate 1: frozen model, one lr (real lr_find curve of a tiny transfer Learner)"
	$(BIN)/lrgate suggest $(CURVES)/digits_adam_bs64_frozen.csv --frozen --plot runs/demo/gate1-frozen.png
	@echo
	@echo "== gate 2: unfrozen model, a discriminative slice"
	$(BIN)/lrgate suggest $(CURVES)/digits_adam_bs64_unfrozen.csv --unfrozen --plot runs/demo/gate2-unfrozen.png --json

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
