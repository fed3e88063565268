# Two commands on a fresh machine (Python 3.11 and make; everything else is installed here):
#   make quickstart   install everything into .venv, then train, quantize, compile and benchmark LeNet
#   make test         install everything into .venv, then run the test suite
# Each says what it will install and roughly how long it takes before it starts.
VENV ?= .venv
PY := $(VENV)/bin/python
EDGEDL_DATA ?= $(abspath ../shared/data)

.PHONY: install quickstart test system-deps plan-install plan-test

$(VENV)/.installed: pyproject.toml
	@echo "installing: a virtual environment in $(VENV) with edgedl, TensorFlow, Apache TVM, Vela, TFLite Micro and ONNX Runtime (about 3 GB, a few minutes)"
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

quickstart: plan-install $(VENV)/.installed
	@echo "quick start: trains LeNet, quantizes it, compiles it with LiteRT and TVM and benchmarks both (a few minutes); writes edgedl-quickstart/"
	$(VENV)/bin/edgedl quickstart

test: plan-test $(VENV)/.installed system-deps
	EDGEDL_DATA=$(EDGEDL_DATA) $(VENV)/bin/pytest

# What `make test` is about to do, before it does any of it.
plan-test: plan-install
	@sh scripts/system-deps.sh --plan
	@echo "then: the test suite, about 15 minutes on two cores (data sets from $(EDGEDL_DATA); the tests that need them skip without)"

plan-install:
	@[ -f $(VENV)/.installed ] && [ ! pyproject.toml -nt $(VENV)/.installed ] || \
		echo "first: $(VENV) with edgedl and its toolchains (about 3 GB download, a few minutes; once)"

# Debian packages some tests use (cross compilers, a headless browser); installed only where missing.
system-deps:
	@sh scripts/system-deps.sh
