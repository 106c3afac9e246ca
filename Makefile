# The same commands locally and in CI. `make demo` and `make test` install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= --quiet --disable-pip-version-check
DEMO_DIR ?= runs/demo

.PHONY: install server sandbox browser demo demo-cot test test-fast check format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml changes. The first build of llama-cpp-python takes
# about 8 minutes on 2 cores; pip caches the wheel afterwards.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e '.[local,dev]'
	touch $@

# Upstream llama.cpp's llama-server for the embedded backend, built from the llama-cpp-python
# sdist once per llama-cpp-python version into ~/.cache/autodata/llama-server/<version>/
# (a second run does nothing). A failed build does not stop the install: llm=local then falls
# back to llama-cpp-python's server (one request at a time) with a warning.
server: $(VENV)/.installed
	-$(PY) -m inner.llm.build_server --jobs 2

# Debian's bubblewrap: every line of harness code runs sealed in it (inner/sandbox.py).
sandbox:
	@command -v bwrap >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap)

install: $(VENV)/.installed server sandbox

# Agentic Self-Instruct on 2 short documents of the shipped cs corpus with the embedded model.
demo: install
	$(VENV)/bin/autodata-generate +experiment=generate_demo hydra.run.dir=$(DEMO_DIR)

# The CoT Self-Instruct baseline on the same documents, same solvers and gate.
demo-cot: install
	$(VENV)/bin/autodata-generate +experiment=generate_demo method=cot_self_instruct hydra.run.dir=$(DEMO_DIR)-cot

# Debian's Chromium for the lineage-page browser test (root, as on CI machines).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The whole suite, the slow embedded-model test and the browser test included.
test: install browser
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

check: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) experiments/bench/inner_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
