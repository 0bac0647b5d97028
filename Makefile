# The two commands: `make demo` (set up, then run the demo end to end) and `make test`
# (set up, then run the whole test suite on two processes). Both create or reuse .venv/ and are quick the second time.
.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/telucodec demo

test: setup
	.venv/bin/python -m pytest -n 2 --dist loadgroup

bench: setup
	.venv/bin/python benchmarks/prep_bench.py

clean:
	rm -rf demo_out .pytest_cache
