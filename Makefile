# gsformat — `make demo` and `make test` are the two commands a fresh machine needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# a second venv with the plain package alone (no torch, no extras): tests/test_core_install.py
CORE_VENV := .venv-core
CORE_STAMP := $(CORE_VENV)/.installed-stamp
PACKAGE_FILES := $(shell find gsformat -name '*.py' -o -name '*.c' -o -name '*.h' -o -name '*.json')
DEMO_OUT ?= demo-out

.PHONY: install demo test test-fast bench clean

install: $(STAMP) $(CORE_STAMP)

# torch/torchvision pinned first: the pair these machines carry (DESIGN.md § Dependencies); an
# unpinned torch would pull a multi-GB build from the index.
$(STAMP): pyproject.toml setup.py gsformat/codecs/_lattice_native.c gsformat/codecs/_rans.c \
		gsformat/fitting/_tiles.c \
		gsformat/codecs/_rans.h
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[all,ray,dev]'
	touch $(STAMP)

# `pip install .` exactly as a user without extras runs it (rebuilt when the package changes)
$(CORE_STAMP): pyproject.toml setup.py $(PACKAGE_FILES)
	test -x $(CORE_VENV)/bin/python || $(PY) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install -q --upgrade pip
	$(CORE_VENV)/bin/python -m pip install -q .
	$(CORE_VENV)/bin/python -m pip install -q --force-reinstall --no-deps .
	touch $(CORE_STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py --out $(DEMO_OUT)

test: $(STAMP) $(CORE_STAMP)
	GSFORMAT_CORE_VENV=$(CORE_VENV) $(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

bench: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/python benchmarks/fit_bench.py | tee benchmarks/results/fit_bench.json
	$(BIN)/python benchmarks/loader_bench.py | tee benchmarks/results/loader_bench.json
	$(BIN)/python benchmarks/rd_bench.py --plot benchmarks/results/rd_curves.png | tee benchmarks/results/rd_bench.json

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info $(CORE_VENV)
