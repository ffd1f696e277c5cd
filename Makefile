# imgcls: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch and torchvision are pinned to the builds this project is developed and measured with.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast docs bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e ".[all,test]"  # every extra: the tests cover every feature
	touch $@

demo: $(VENV)/.installed
	bash scripts/demo.sh

# Everything, as CI runs it (.ci/run): real Fashion-MNIST, torchrun, SIGKILLed runs, a browser.
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# While working: the suite without the tests marked slow (about 2.5 minutes on 2 cores).
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

# docs/configuration.md is written from imgcls/config.py (tests/test_docs.py checks it is current),
# and the outputs README.md and docs/ show under their commands from running those commands on
# small stand-ins (tests/test_docs_run.py runs them and checks the outputs keep their shape).
docs: $(VENV)/.installed
	$(BIN)/python -m imgcls.config_docs > docs/configuration.md
	IMGCLS_WRITE_DOC_OUTPUTS=1 $(BIN)/python -m pytest -q tests/test_docs_run.py -k document_commands

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run_all.py

lint: $(VENV)/.installed
	$(BIN)/ruff check imgcls tests benchmarks
	$(BIN)/ruff format --check imgcls tests benchmarks

format: $(VENV)/.installed
	$(BIN)/ruff format imgcls tests benchmarks
	$(BIN)/ruff check --fix imgcls tests benchmarks

clean:
	rm -rf $(VENV) runs data .pytest_cache
