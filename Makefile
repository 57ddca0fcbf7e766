# Two entry points, both self-contained on a fresh machine (Rust toolchain + CPython >= 3.11):
#   make demo  -- set up, build the extension in release mode, run the main job
#   make test  -- set up, build, lint (rustfmt, clippy, ruff), then cargo test (workspace),
#                 pytest, and pytest in every environment of the support matrix (`make test-matrix`)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.deps-stamp

export JAX_PLATFORMS ?= cpu
export PYO3_PYTHON := $(abspath $(PY))

.PHONY: demo test build venv rust-test py-test test-matrix wheel lint bench bench-quick miri clean

demo: build
	$(PY) -m nlsq.demo

# The support matrix runs last: the Rust tests run once, the Python suite in each environment.
test: build lint rust-test py-test test-matrix

venv: $(STAMP)

# The virtualenv and maturin; the package's own dependencies (pyproject.toml,
# with the test/bench/dev extras) are installed by `maturin develop` below.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "maturin>=1.5,<2"
	touch $@

# cargo's incremental build makes this cheap when nothing changed.
build: $(STAMP)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --extras test,bench,dev

rust-test:
	cargo test --workspace --release
	# The drain's hand-written wake-up protocol (rust/ringlog/src/wake.rs) and the flush
	# gate (gate.rs) under loom's model checker; its own target dir keeps the normal build's cache.
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p nlsq-ringlog --release --lib -- wake gate
	# The CUDA staging ring's slot protocol (rust/xla_ffi/src/staging.rs), likewise.
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p nlsq-xla-ffi --release --lib staging

py-test:
	$(PY) -m pytest -q

# The support matrix (.ci/matrix.sh lists it): one abi3 wheel, built once, installed
# into .venv-matrix/<env> (git-ignored, reused), the Python tests run in each.
MATRIX_DIR ?= .venv-matrix
WHEEL_DIR  := $(MATRIX_DIR)/dist

wheel: $(STAMP)
	rm -rf $(WHEEL_DIR)
	$(VENV)/bin/maturin build --release --quiet -o $(WHEEL_DIR)

test-matrix: wheel
	MATRIX_DIR=$(MATRIX_DIR) bash .ci/matrix.sh "$$(ls $(WHEEL_DIR)/nlsq-*.whl)" $(MATRIX_ENVS)

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches

# The unsafe code and hand-written atomics of both Rust crates under Miri (needs a
# nightly toolchain with miri; not part of `make test`: CI has only stable). Tests
# shrink their sizes under cfg(miri); the few Miri cannot run say why they are ignored.
# Permissive provenance: the fake CUDA driver turns integer device addresses back
# into the host pointers they came from, as a real driver's mapped memory does.
miri:
	MIRIFLAGS="-Zmiri-permissive-provenance $(MIRIFLAGS)" \
	  cargo +nightly miri test -p nlsq-ringlog -p nlsq-xla-ffi

bench: build
	$(PY) benches/run.py

bench-quick: build
	$(PY) benches/run.py --quick

clean:
	cargo clean
	rm -rf $(VENV) $(MATRIX_DIR)
