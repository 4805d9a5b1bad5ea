# The README's two commands: `make demo` and `make test`.
# Both create .venv on first use: torch is installed first (the CPU build wherever pip finds one),
# then the project with torch pinned to the installed version, so no dependency can pull a
# different (multi-GB CUDA) torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: demo test lint venv clean-venv bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python train.py
	$(BIN)/python repair.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ipg_gnn tests train.py repair.py

clean-venv:
	rm -rf $(VENV)

# Capture benchmark; DATA_DIR must hold mnist/ (the 10,000-graph build reads full MNIST).
DATA_DIR ?= data
bench: $(STAMP)
	$(BIN)/python -m ipg_gnn.tools.bench capture --data-dir $(DATA_DIR)
