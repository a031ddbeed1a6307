# Plenum: `make demo` runs the main job, `make test` runs every test.
# Both set up what they need on a fresh machine (Rust toolchain and Python 3.11 assumed).

SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
# The chart's checkers (helm-python-sdk, kubernetes-validate, yamllint, checkov) in their own venv.
CHART_VENV := .venv-chart
CHART_STAMP := $(CHART_VENV)/.requirements-installed
# libgomp's default spin-waiting makes libtorch 10-25x slower on small VMs.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup venv libtorch models build test test-rust test-e2e test-grpcurl test-smoke-checks test-python test-chart chaos lint demo bench clean

setup: venv libtorch models

venv: $(STAMP)

$(STAMP): python/requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r python/requirements.txt
	touch $@

# Generates the git-ignored .cargo/config.toml that points tch at the venv's libtorch.
libtorch: venv
	VENV=$(VENV) scripts/setup-libtorch.sh

models: venv
	VENV=$(VENV) scripts/provision-models.sh

# `make test` builds every target, so the binaries come out of the same build as the tests:
# building --bins alone resolves some dependencies' features without the dev-dependencies'
# (tokio, image) and recompiled most of the workspace a second time (~8 minutes in CI).
BUILD_TARGETS := --bins

build: setup
	cargo build --release --workspace $(BUILD_TARGETS)

test: BUILD_TARGETS := --all-targets
test: setup test-rust test-e2e test-grpcurl test-smoke-checks test-python test-chart chaos

# Release profile, like every other step: the tests share one build of the dependencies
# and the workspace with the binaries (a separate debug build added ~10 minutes to CI).
test-rust:
	cargo test --release --workspace --all-targets

# The whole pipeline on the real models over 30 generated pages: recall and exact tags
# against the generator's ground truth. Release binaries: in debug it takes many minutes.
test-e2e: build
	cargo test --release --workspace --test end_to_end -- --ignored --nocapture

test-grpcurl: build
	GRPCURL=$(VENV)/bin/grpcurl scripts/grpcurl-check.sh

# deploy/smoke.sh's checks against fake output (the smoke test itself needs Docker).
test-smoke-checks:
	deploy/smoke-checks-test.sh

test-python: build
	$(PYTHON) -m unittest discover -s tests/python -v

$(CHART_STAMP): python/requirements-chart.txt
	test -x $(CHART_VENV)/bin/python || python3 -m venv $(CHART_VENV)
	$(CHART_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r python/requirements-chart.txt
	touch $@

# The Helm chart rendered in several variants and checked offline (tests/helm/test_chart.py);
# the release binaries' --help says which flags exist.
test-chart: build $(CHART_STAMP)
	PLENUM_BIN=target/release $(CHART_VENV)/bin/python -m unittest discover -s tests/helm -v

# Faults under load against the release binaries (tests/chaos/chaos.py, a few minutes):
# kills, a stopped OCR, a connection flood, 10x overload, bad input. RELIABILITY.md quotes it.
chaos: build
	mkdir -p chaos-out
	$(PYTHON) tests/chaos/chaos.py --table chaos-out/reliability.md

# Release profile, like the build: clippy then reuses its build scripts (torch-sys's C++)
# and proc macros, about a minute after `make test` instead of ten.
lint: setup
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings

demo: build
	scripts/demo.sh

# Every benchmark behind BENCHMARKS.md (minutes); `make bench BENCH="broker gateway"` runs some.
bench: build
	scripts/bench.sh $(BENCH)

clean:
	cargo clean
	rm -rf $(VENV) models/ocr/generated models/detector/*.pt2 models/detector/*.aoti.toml
