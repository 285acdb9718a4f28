# Two commands for a new user: `make demo` and `make test`. Both install what is missing first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# Served from local disk on the dev machines; elsewhere pip fetches the same pair from PyPI.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.i2x-installed

.PHONY: demo test install system-deps protos bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[server,test]'
	touch $(STAMP)

# kubectl (manifest rendering) and chromium (report rendering) come from Debian's packages.
system-deps:
	bash tests/setup/system-deps.sh

demo: install
	$(VENV)/bin/i2x demo

test: install system-deps
	$(PY) -m pytest

protos: install
	$(PY) -m i2x.v1.generate

bench: install
	$(PY) -m pip install -q -e '.[server,test,bench]'
	nice -n 10 $(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache test-output
