# The same commands locally and in CI. `make demo` and `make test` install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= --quiet --disable-pip-version-check
DEMO_DIR ?= runs/demo
TRAIN_DEMO_DIR ?= runs/train-demo

.PHONY: install server sandbox browser demo demo-rubric demo-ladder demo-cot train-demo test test-fast check format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml changes. The first build of llama-cpp-python takes
# about 8 minutes on 2 cores; pip caches the wheel afterwards. The train extra pins the CPU
# build of torch (about 1.2 GB with transformers, trl, peft, datasets, pyarrow); the ladder
# extra holds the 1.5B model's weights (22 packages, 1.1 GB); the ray extra (Ray Core for
# executor=ray) adds about 245 MB and installed in 31 s (measured 2026-12-02).
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e '.[local,ladder,dev,train,ray]'
	touch $@

# Upstream llama.cpp's llama-server for the embedded backend, built from the llama-cpp-python
# sdist once per llama-cpp-python version into ~/.cache/autodata/llama-server/<version>/
# (a second run does nothing). A failed build does not stop the install: llm=local then falls
# back to llama-cpp-python's server (one request at a time) with a warning.
server: $(VENV)/.installed
	-$(PY) -m inner.llm.build_server --jobs 2

# Debian's bubblewrap: every line of harness code runs sealed in it (inner/sandbox/process.py).
sandbox:
	@command -v bwrap >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap)

install: $(VENV)/.installed server sandbox

# Agentic Self-Instruct on 2 short documents of the shipped cs corpus with the embedded model,
# with the embedded profile (conf/experiment/embedded_exact.yaml: the verifiable path, the gate
# unchanged). `make demo-rubric` runs the rubric path with the baseline harness instead.
demo: install
	$(VENV)/bin/autodata-generate '+experiment=[generate_demo,embedded_exact]' hydra.run.dir=$(DEMO_DIR)

demo-rubric: install
	$(VENV)/bin/autodata-generate +experiment=generate_demo hydra.run.dir=$(DEMO_DIR)-rubric

# The model ladder (conf/experiment/ladder.yaml): the same documents and harness, the weak
# solver Qwen2.5-Coder-0.5B closed-book, the strong solver Qwen2.5-Coder-1.5B open-book, one
# llama-server each (the ladder extra's weights).
demo-ladder: install
	$(VENV)/bin/autodata-generate '+experiment=[generate_demo,ladder]' hydra.run.dir=$(DEMO_DIR)-ladder

# The CoT Self-Instruct baseline on the same documents, same solvers and gate.
demo-cot: install
	$(VENV)/bin/autodata-generate '+experiment=[generate_demo,embedded_exact]' method=cot_self_instruct hydra.run.dir=$(DEMO_DIR)-cot

# GRPO on the embedded model, CPU only: export the shipped demo runs (hand-written examples,
# train/demo/), train a LoRA for 4 steps with the judge on llm=local, then compare the base and
# the trained model (mean@2, best@2, truncation) in-domain (cs test split) and out of domain
# (legal). Rerunning resumes from the checkpoints and replays the judge from its cache.
train-demo: install
	$(VENV)/bin/autodata-export-dataset train/demo/source/cs --out $(TRAIN_DEMO_DIR)/dataset-cs --test-fraction 0.34 --overwrite
	$(VENV)/bin/autodata-export-dataset train/demo/source/legal --out $(TRAIN_DEMO_DIR)/dataset-legal --test-fraction 0 --overwrite
	$(VENV)/bin/autodata-train +experiment=train_demo data.dataset=$(TRAIN_DEMO_DIR)/dataset-cs hydra.run.dir=$(TRAIN_DEMO_DIR)/train
	$(VENV)/bin/autodata-eval models=[embedded,$(TRAIN_DEMO_DIR)/train/final] labels=[base,grpo] k=2 \
		max_completion_length=96 'sets=[{name: in_domain_cs, dataset: $(TRAIN_DEMO_DIR)/dataset-cs, split: test}, {name: ood_legal, dataset: $(TRAIN_DEMO_DIR)/dataset-legal, split: all}]' \
		llm.roles.judge.max_tokens=120 hydra.run.dir=$(TRAIN_DEMO_DIR)/eval

# Debian's Chromium for the lineage-page browser test (root, as on CI machines).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The whole suite, the slow embedded-model test and the browser test included.
test: install browser
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

# vulture: dead code at high confidence; vulture_whitelist.py names what a signature requires.
check: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/vulture inner meta train analysis harnesses tests vulture_whitelist.py --min-confidence 80

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) experiments/bench/inner_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
