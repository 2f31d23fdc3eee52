# The two commands of the README: `make report` and `make test`.
# libtorch comes from PyPI's torch==2.13.0, installed by scripts/setup-torch into a venv
# cached outside the clone ($BACKPROP_PARITY_TORCH_VENV overrides where).

SHELL := /bin/bash
VENV ?= $(or $(BACKPROP_PARITY_TORCH_VENV),$(HOME)/.cache/backprop-parity/torch-2.13.0)
export BACKPROP_PARITY_TORCH_VENV := $(VENV)
# scripts/setup-torch writes .cargo/config.toml with libtorch's location (LIBTORCH), so
# cargo needs no environment of its own: plain `cargo test --features torch` builds the
# same way as these targets.
TORCH_ENV :=
CARGO ?= cargo

.PHONY: report test test-default test-torch setup-torch golden check mutants

## The default report on the default backends (engine, candle, libtorch) into reports/.
## burn (a default cargo feature) runs where it is named: --backends ...,burn.
report: setup-torch
	$(TORCH_ENV) $(CARGO) run --release --features torch --bin parity-report --

## The whole suite: default features (burn, no libtorch), then with libtorch.
test: setup-torch test-default test-torch

test-default:
	$(CARGO) test

test-torch: setup-torch
	$(TORCH_ENV) $(CARGO) test --features torch

setup-torch:
	@bash scripts/setup-torch >/dev/null

## Regenerates reference/*.json with real PyTorch (commit the result).
golden: setup-torch
	$(VENV)/bin/python reference/make_golden.py
	$(VENV)/bin/python reference/make_state_dict.py

## The CI gate: the quick parity suite against reference/baseline.json (engine, candle,
## libtorch and burn: the backends the baseline lists), with libtorch.
check: setup-torch
	$(TORCH_ENV) $(CARGO) run --release --features torch --bin parity-report -- check

## Every catalogued backprop fault switched on in turn: caught, and where.
mutants: setup-torch
	$(TORCH_ENV) $(CARGO) run --release --features torch --bin parity-report -- mutants
