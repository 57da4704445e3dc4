# apisix-sidecar: every entry point a developer or CI needs. Area-specific targets live in
# the *.mk fragments next to the code they drive.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LISTEN ?= unix:/tmp/runner.sock
STAMP := $(VENV)/.installed

.PHONY: install run test test-tools lint clean

# Area fragments add prerequisites (tools their tests need) to this target.
test-tools:

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/apisix-sidecar run --listen $(LISTEN) --log-format text

test: $(STAMP) test-tools
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check sidecar tests integration bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

include docker/docker.mk helm/helm.mk integration/integration.mk bench/bench.mk tests/soak/soak.mk
