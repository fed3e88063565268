# Two commands on a fresh machine (Python 3.11 and make; everything else is installed here):
#   make quickstart   install everything into .venv, then train, quantize, compile and benchmark LeNet
#   make test         install everything into .venv, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
EDGEDL_DATA ?= $(abspath ../shared/data)

.PHONY: install quickstart test system-deps

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(VENV)/bin/edgedl quickstart

test: $(VENV)/.installed system-deps
	EDGEDL_DATA=$(EDGEDL_DATA) $(VENV)/bin/pytest

# Debian packages some tests use (cross compilers, a headless browser); installed only where missing.
system-deps:
	@sh scripts/system-deps.sh
