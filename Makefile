# The README's quick start: `make demo` and `make test`, each sets up .venv first (cheap when up to date).
.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh
demo: setup
	.venv/bin/python scripts/demo.py
test: setup
	.venv/bin/python -m pytest -q
bench: setup
	.venv/bin/python bench/raster.py
