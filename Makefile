# Entry points for people and CI. `make demo` and `make test` work on a fresh Debian 12
# machine as root: both install what is missing first (scripts/bootstrap, idempotent).
#
#   make demo     bootstrap, build, run the demo
#   make test     bootstrap, build, run the unit and end-to-end tests (ctest; all but "large")
#   make test-large  the tests too big for every run (a >4 GiB zip64 file)
#   make bench    run the benchmarks under bench/ (ratios against same-run ceilings)
#   make fuzz     build the libFuzzer targets with clang and run each briefly
#   make format   clang-format the sources
#
# Variables: BUILD (build folder, default build), JOBS (parallel jobs, default: cores),
# WERROR (ON turns warnings into errors; default ON when $CI is set), BUILD_TYPE.

BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BUILD_TYPE ?= RelWithDebInfo
WERROR ?= $(if $(CI),ON,OFF)
FUZZ_SECONDS ?= 30

.PHONY: all bootstrap configure build test test-large demo bench fuzz format clean

all: build

bootstrap:
	@scripts/bootstrap

configure: bootstrap
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DFEDCLI_WERROR=$(WERROR) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600 -LE large

test-large: build
	@cd $(BUILD) && ctest --output-on-failure -L large

demo: configure
	@cmake --build $(BUILD) -j $(JOBS) --target fedcli
	@scripts/demo $(BUILD)/cli/fedcli

bench: build
	@$(BUILD)/bench/bench_npz
	@$(BUILD)/bench/bench_aggregate
	@$(BUILD)/bench/bench_federation

fuzz: bootstrap
	@FUZZ_SECONDS=$(FUZZ_SECONDS) JOBS=$(JOBS) scripts/fuzz

format:
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format -i

clean:
	rm -rf $(BUILD) build-fuzz
