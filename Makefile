# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cnnlab-installed

.PHONY: install demo test test-proofs test-bf16 test-all test-notebooks lint bench docs test-docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# pip compiles a wheel's modules when it installs them, never an editable install's: compiled here,
	# so that where PYTHONDONTWRITEBYTECODE is set (CI, containers) no command recompiles cnnlab's
	# modules from source (0.1-0.15 s of every command; a module edited later is recompiled as usual)
	$(BIN)/python -m compileall -q src
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cnnlab demo

# Fast tier by default (slow tests are marked); `make test-all` runs everything.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

# The precision-sensitive tests again with bf16 inference forced: an AVX2 CPU (no native bf16) runs the
# bf16 path too, emulated; tolerances follow the precision in use (cnnlab.engine.devices.tolerance).
test-bf16: $(STAMP)
	CNNLAB_TEST_PRECISION=bf16 $(BIN)/python -m pytest -q -m "precision and not slow and not gpu"

# The slow tier's proofs that CI still runs (.ci/run; tests marked `proof`): segmentation, detection and video
# learning with their shuffled-label controls, detection and video trained on two processes as on one, and a
# detection run stopped by SIGTERM resuming bit-identically (about 4.5 minutes on 2 cores). The fast tier keeps
# classification's learning proof and every task's other checks.
test-proofs: $(STAMP)
	$(BIN)/python -m pytest -q -m "proof and not gpu"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

# The lecture's eight notebooks (notebooks/README.md), executed from scratch with nbmake: every cell must
# run and every assertion of the lecture's numbers hold, each notebook within 180 s (notebooks/conftest.py;
# --nbmake-timeout bounds each cell). The stored outputs are not rewritten. One thread per kernel: on a
# 2-core machine shared with other jobs, two threads made training 3-5x slower.
test-notebooks: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=180 \
		--durations=0 notebooks/

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs/hooks
	$(BIN)/ruff format --check src tests benchmarks docs/hooks
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml) into site/, offline. --strict: a broken link, a missing page or a
# docstring mkdocstrings cannot read fails the build. The command-line and configuration references,
# the notebooks (stored outputs, not executed) and the benchmark results are generated from the code
# by docs/hooks/cnnlab_site.py. `.venv/bin/mkdocs serve` previews it at http://127.0.0.1:8000.
# (No --quiet: in mkdocs 1.6 it hides the warnings from --strict too, and a broken link would pass.)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Every page of the built site in headless Chromium (Debian's chromium through Playwright): no console
# error, no failed or outside request, every image decoded. CNNLAB_SCREENSHOTS=DIR keeps a PNG of each.
test-docs: docs
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/check_docs_site.py

bench: $(STAMP)
	$(BIN)/cnnlab bench train

clean:
	rm -rf $(VENV) runs .pytest_cache site
