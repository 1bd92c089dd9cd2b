# Targets are described in README.md. `make test` is what CI runs (.ci/run).

.DEFAULT_GOAL := build

# Stamped into `chorus version`.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# How long `make fuzz` runs each fuzz target.
FUZZTIME ?= 30s
# staticcheck 2026.2.2; bump deliberately, it can add findings.
STATICCHECK_VERSION := v0.8.2

.PHONY: build static run test test-short chaos bench fuzz bench-fsm lint tidy

build:
	go build -ldflags "-X main.version=$(VERSION)" -o bin/chorus ./cmd/chorus

# A statically linked Linux binary (no cgo, no libc, no loader) for the Docker
# image: the Dockerfile copies bin/chorus-linux-$(ARCH) and runs nothing else.
# ARCH is a GOARCH (amd64, arm64); STATIC_BIN moves the output.
ARCH ?= amd64
STATIC_BIN ?= bin/chorus-linux-$(ARCH)
static:
	CGO_ENABLED=0 GOOS=linux GOARCH=$(ARCH) go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(STATIC_BIN) ./cmd/chorus

# Three local nodes (HTTP 127.0.0.1:8081-8083, peers :9081-9083, data under ./data); Ctrl-C stops them.
run: build
	bin/chorus dev

# Every test, including a 30 s chaos run (testcluster/chaos TestChaosRun) and a quick
# run of every chorus bench scenario (testcluster/bench TestQuickRun).
test:
	go test -race -count=1 ./...

test-short:
	go test -short -count=1 ./...

# 60 s of chaos with every nemesis against three real nodes; output under chaos-runs/.
# CHAOS_FLAGS adds or overrides flags, e.g. CHAOS_FLAGS="--seed 42 --duration 10m".
CHAOS_FLAGS ?=
chaos: build
	bin/chorus chaos --duration 60s --nemesis all $(CHAOS_FLAGS)

# The standard scenarios of chorus bench (BENCHMARKS.md); output under bench-runs/.
# BENCH_FLAGS adds or overrides flags, e.g. BENCH_FLAGS="--scenarios steady,burst".
BENCH_FLAGS ?=
bench: build
	bin/chorus bench $(BENCH_FLAGS)

fuzz:
	go test ./fsm -run '^$$' -fuzz '^FuzzDecodeCommand$$' -fuzztime $(FUZZTIME)
	go test ./fsm -run '^$$' -fuzz '^FuzzApply$$' -fuzztime $(FUZZTIME)
	go test ./fsm -run '^$$' -fuzz '^FuzzParseReference$$' -fuzztime $(FUZZTIME)
	go test ./transport -run '^$$' -fuzz '^FuzzDecodeFrame$$' -fuzztime $(FUZZTIME)
	go test ./transport -run '^$$' -fuzz '^FuzzHTTPHandlers$$' -fuzztime $(FUZZTIME)

bench-fsm:
	go test ./fsm -run '^$$' -bench . -benchmem

lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt -l: these files need gofmt:" >&2; echo "$$out" >&2; exit 1; fi
	go vet ./...
	go run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

tidy:
	go mod tidy
	git diff --exit-code go.mod go.sum
