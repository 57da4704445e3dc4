# The benchmark (bench/): `make bench` prints the table and writes bench/results/latest.json
# (~3 min here: every case in 3 rounds alternating with the floor, medians shown);
# `make bench-memory` checks that the runner's RSS after 1e6 calls stays within
# 5 % of its RSS after the first 1e4 (~1.5 min, writes bench/results/memory.json).
# Knobs: BENCH_CALLS (measured calls per case), BENCH_CONNS (1,16,256), BENCH_SCENARIOS,
# BENCH_ROUNDS (3), BENCH_PIN (1: target and generators on separate CPUs),
# BENCH_NOISE (seconds spent first counting machine stalls, 2),
# BENCH_WORKERS (generator processes), BENCH_BASELINE (dirs holding another `sidecar` to A/B
# against), BENCH_MEMORY_CALLS; or pass flags: make bench BENCH_ARGS="--help".
.PHONY: bench bench-memory

bench: install
	$(PY) -m bench $(BENCH_ARGS)

bench-memory: install
	$(PY) -m bench --memory $(BENCH_ARGS)
