# The two set-up commands of the README: `make demo` and `make test` build .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.lrgate-installed
BIN := $(VENV)/bin
CURVES := lrgate/example_curves

.PHONY: demo suggest-demo test lint browser

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

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# Debian's chromium and chromium-driver for the browser test (a browser download, as playwright does, fails offline).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
