# prunewise: `make run` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
RUN_DIR ?= runs/default
# make run's settings, chosen from measurements (bench/README.md, "make run"): smaller steps
# (eq. 4 with alpha = beta = 0.3), two fine-tune epochs per step, distillation from the baseline.
RUN_ARGS ?= --alpha 0.3 --beta 0.3 --finetune-epochs 2 --distill baseline --max-iterations 6

.PHONY: run test venv data lint docs format bench-deps clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Fashion-MNIST from Debian's package when it is missing and apt is usable; otherwise say how to get it.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -f $(FMNIST_DIR)/train-images-idx3-ubyte ]; then \
		echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST not found in $(FMNIST_DIR): install Debian's dataset-fashion-mnist" \
		     "(sudo apt-get install dataset-fashion-mnist) or pass --data-dir DIR holding the IDX files."; \
	fi

# The main job: `prunewise run` on the default (VGG-13-BN at width 0.25, Fashion-MNIST).
# A folder that already holds a run is resumed (a finished one only gets its report rebuilt).
run: venv data
	@if [ -f $(RUN_DIR)/config.json ]; then \
		$(BIN)/prunewise run --resume $(RUN_DIR); \
	else \
		$(BIN)/prunewise run --out $(RUN_DIR) $(RUN_ARGS); \
	fi

# The tests run in one process per core (pytest-xdist), each computing on one thread.
test: venv data lint docs
	$(BIN)/python -m pytest -q -n auto

# The documentation site (guides and the API reference from the docstrings); a warning fails it.
docs: venv
	$(BIN)/mkdocs build --strict -q -d site

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench-deps: venv
	$(BIN)/pip install -q -r requirements-bench.txt

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
