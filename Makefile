# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install leanattn into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.leanattn-installed
# CPU wheels for machines without a GPU; triton 3.8 because 3.6 + numpy>=2.4 breaks the interpreter.
TORCH_PIN  ?= torch==2.13.0
TRITON_PIN ?= triton==3.8.0

.PHONY: demo test install bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_PIN)" "$(TRITON_PIN)"
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m leanattn demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal --timeout 900 tests

bench: $(STAMP)
	$(PY) -m leanattn bench decode

clean:
	rm -rf $(VENV) demo_out .pytest_cache
