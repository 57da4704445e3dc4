# The long runs of issue 8 (not part of `make test`): 1e6 fuzzed frames and 1e6 calls against the
# real runner. Bounded: each run fails rather than exceed SOAK_MAX_SECONDS (default 1800 s).
# Smaller runs: make soak SOAK_CALLS=1e5 SOAK_FUZZ_INPUTS=1e5
SOAK_CALLS ?= 1e6
SOAK_FUZZ_INPUTS ?= 1e6
SOAK_MAX_SECONDS ?= 1800

.PHONY: soak
soak: $(STAMP)
	SOAK_CALLS=$(SOAK_CALLS) SOAK_FUZZ_INPUTS=$(SOAK_FUZZ_INPUTS) SOAK_MAX_SECONDS=$(SOAK_MAX_SECONDS) \
	timeout $$(( $(SOAK_MAX_SECONDS) * 2 + 300 )) \
	$(PY) -m pytest tests/soak -o python_files='soak_*.py' -p no:cacheprovider -s -v $(PYTEST_ARGS)
