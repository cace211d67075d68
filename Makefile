# The two commands of the README: `make demo` and `make test`. Everything else here serves them.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles on install; its native build crashes on these VMs (AMX), so build it portable.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: demo test readme docs

$(VENV)/.demo: setup.py settings.ini
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[local,embed]"
	touch $@

$(VENV)/.dev: setup.py settings.ini
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev,local,embed]"
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(BIN)/datacreator demo --out out/demo

test: $(VENV)/.dev
	@n=$$(ls nbs/*.ipynb 2>/dev/null | wc -l); test "$$n" -gt 0 || { echo "no notebook found in nbs/: nothing to test"; exit 1; }; echo "notebooks: $$n"
	$(BIN)/nbdev_test --flags slow --n_workers 2
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

readme:
	$(BIN)/jupyter nbconvert --to markdown --stdout --log-level=ERROR nbs/index.ipynb > README.md

docs: $(VENV)/.dev
	$(BIN)/python .ci/docs.py _docs
