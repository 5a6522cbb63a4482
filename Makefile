SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# Tool versions, pinned in one place. Tools are built from the Go module
# proxy into .bin/; nothing else is downloaded.
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
DEADCODE_VERSION           := v0.52.0
GOLANGCI_LINT_VERSION      := v2.15.0
GOVULNCHECK_VERSION        := v1.9.0
# The vulnerability database: golang.org/x/vulndb at a pinned commit, as the
# Go module proxy serves it, indexed locally, so govulncheck runs offline.
VULNDB_VERSION             := v0.0.0-20261105234957-e22db6528018

BIN     := $(CURDIR)/.bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# The commit and its date, for `telemesh version` and telemesh_build_info:
# the toolchain records them itself only outside Git worktrees.
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
DATE    ?= $(shell git log -1 --format=%cI 2>/dev/null)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
export PATH := $(BIN):$(PATH)
# Every module of the workspace: the production module and the modules that
# only carry heavy test dependencies. `go test ./...` stops at a module
# boundary, so each is tested on its own.
MODULES = $(shell go list -m -f '{{.Dir}}')
TEST_FLAGS ?= -race -count=1 -timeout 20m

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/buf-$(BUF_VERSION):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@touch $@

$(BIN)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@touch $@

$(BIN)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@touch $@

$(BIN)/deadcode-$(DEADCODE_VERSION):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) go install golang.org/x/tools/cmd/deadcode@$(DEADCODE_VERSION)
	@touch $@

TOOLS := $(BIN)/buf-$(BUF_VERSION) $(BIN)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION) $(BIN)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
$(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@touch $@

LINTERS := $(BIN)/deadcode-$(DEADCODE_VERSION) $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)

$(BIN)/govulncheck-$(GOVULNCHECK_VERSION):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) go install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)
	@touch $@

VULNDB := $(BIN)/vulndb-$(VULNDB_VERSION)
$(VULNDB):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) go install golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION)
	@src=$$(cd $(BIN) && GOWORK=off GOFLAGS= go mod download -json golang.org/x/vulndb@$(VULNDB_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
		rm -rf $@.tmp && $(BIN)/indexdb -vulns $$src/data/osv -out $@.tmp && mv $@.tmp $@

.PHONY: tools
tools: $(TOOLS) $(LINTERS) ## Build the pinned code generators, buf and the linters into .bin/

.PHONY: generate
generate: $(TOOLS) ## Regenerate gen/ from proto/
	rm -rf gen
	buf generate

.PHONY: check-generate
check-generate: generate ## Fail when gen/ is stale or proto/ is not buf-formatted
	@if [ -n "$$(git status --porcelain -- gen proto)" ]; then \
		echo "gen/ or proto/ differ from what is committed after 'make generate':"; \
		git status --porcelain -- gen proto; git diff --stat -- gen proto; \
		echo "run 'make generate' and commit the result"; exit 1; fi

# buf breaking compares proto/ with main's. The input is the repository
# holding main: in a clone that is .git, but in a worktree .git is a file
# pointing elsewhere and buf cannot read it, so git is asked where the
# repository's shared directory is; it names .git in a plain clone.
BREAKING_AGAINST ?= $(shell git rev-parse --path-format=absolute --git-common-dir 2>/dev/null || echo .git)\#branch=main

.PHONY: breaking
breaking: $(TOOLS) ## Fail when proto/ breaks what main's proto/ promised (wire and JSON names, package by package)
	buf breaking --against '$(BREAKING_AGAINST)'

.PHONY: lint
lint: $(TOOLS) $(LINTERS) ## buf lint, buf format check, gofmt, go vet, golangci-lint (.golangci.yml) and deadcode
	buf lint
	buf format --diff --exit-code
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@for m in $(MODULES); do (cd $$m && go vet ./...); done
	@# Two checkouts linting at once (make test beside make test) take
	@# turns on golangci-lint's lock instead of the second one failing.
	@for m in $(MODULES); do (cd $$m && golangci-lint run --allow-serial-runners --config $(CURDIR)/.golangci.yml ./...); done
	@$(MAKE) deadcode

# deadcode lists the functions that no main package and no test reaches.
# With -test, helpers that only tests use (internal/testdb, the fixtures)
# count as used; what is left is dead everywhere, so any line fails.
.PHONY: deadcode
deadcode: $(LINTERS) ## Fail on functions nothing calls, not even a test
	@out=$$(deadcode -test ./...); if [ -n "$$out" ]; then \
		echo "unreachable code (delete it, or call it):"; echo "$$out"; exit 1; fi

# Not part of make test: it reports the standard library's fixes too, and
# those come only with a newer Go than the machines have (README, "Other
# make targets").
.PHONY: vulncheck
vulncheck: $(BIN)/govulncheck-$(GOVULNCHECK_VERSION) $(VULNDB) ## govulncheck, offline, against golang.org/x/vulndb at VULNDB_VERSION
	govulncheck -db file://$(VULNDB) ./...

.PHONY: build
build: ## Build bin/telemesh
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/telemesh ./cmd/telemesh

# RUN_ARGS are telemesh up's flags; by default the demo fleet's simulator
# runs too, so telemetry flows from the first seconds.
RUN_ARGS ?= --simulate

.PHONY: run
run: services ## Run the whole mesh on this machine with a demo fleet publishing (telemesh up --simulate)
	go run ./cmd/telemesh up $(RUN_ARGS)

.PHONY: services
services: ## Make sure the Postgres the tests use is running
	@scripts/ensure-postgres.sh

# The viewer's browser tests (services/viewer/browsertest) drive headless
# Chromium: Debian's chromium package, installed here when missing.
.PHONY: browser
browser: ## Make sure headless Chromium is installed for the viewer's browser tests
	@if [ -n "$${TELEMESH_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the viewer's browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "chromium is missing: the viewer's browser tests need it. Install Debian's package:"; \
		echo "    sudo apt-get update && sudo apt-get install -y chromium"; \
		echo "or set TELEMESH_CHROMIUM to a Chromium or Chrome binary."; exit 1; \
	fi

.PHONY: test
test: services browser check-generate breaking lint fuzz ## Run every module's tests with the race detector against real Postgres and NATS
	@for m in $(MODULES); do echo "== go test $$m"; (cd $$m && go test $(TEST_FLAGS) ./...); done

# Each fuzz target runs for FUZZTIME from its seed corpus (f.Add and
# testdata/fuzz/<name>/); go fuzzes one target per invocation. A failing
# input is written to the package's testdata/fuzz/<name>/: commit it with
# the fix, so it stays in the seed corpus. Go 1.26's coordinator can end a
# clean run with a bare "context deadline exceeded" when a busy worker
# misses the -fuzztime deadline (go.dev/issue/75804, fixed in Go 1.27); a
# run that failed only that way, with no failing input and no failed
# subtest, is reported and not counted.
FUZZTIME ?= 10s
FUZZ_TARGETS := \
	FuzzSubject:./gateway \
	FuzzDecode:./services/validator \
	FuzzExtract:./services/validator \
	FuzzJSONPath:./services/validator \
	FuzzCheck:./services/validator \
	FuzzEvaluate:./services/deriver \
	FuzzApply:./services/deriver \
	FuzzJSONB:./internal/pg

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (10s) each
	@log=$$(mktemp); trap 'rm -f $$log' EXIT; \
	for t in $(FUZZ_TARGETS); do name=$${t%%:*}; pkg=$${t#*:}; \
		echo "== fuzz $$name $$pkg"; \
		if ! go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg 2>&1 | tee $$log; then \
			if grep -q '^    context deadline exceeded$$' $$log && ! grep -qE 'Failing input written|^ +--- FAIL' $$log; then \
				echo "== $$name: only Go's -fuzztime deadline race (go.dev/issue/75804); no failing input"; \
			else exit 1; fi; \
		fi; \
	done

.PHONY: test-short
test-short: services ## The quick set: go test -short, no race detector
	@for m in $(MODULES); do (cd $$m && go test -short -count=1 ./...); done

# `make test` runs the fault suite's short form; this is the long one. A
# fault passes when nothing is lost, duplicated, unexpected or unprocessed
# and, with FAULTS_TARGETS=enforce (the default), when the pipeline moves
# again within 5 s of the fault, the last message is processed within 10 s
# and no message waits more than 10 s; FAULTS_TARGETS=report only prints
# PASS or FAIL for the times.
FAULTS_TARGETS ?= enforce

.PHONY: test-faults
test-faults: services ## Fault suite, long form: stages killed, NATS (one server and a 3-node cluster) and Postgres (restart, failover) faults; recovery targets enforced; prints a table
	TELEMESH_FAULTS=long TELEMESH_FAULTS_TARGETS=$(FAULTS_TARGETS) go test -count=1 -v -timeout 120m -run '^TestFaults$$' ./test/faults/

# The soak: a paced stream of SOAK_RATE messages per second for
# SOAK_DURATION on a three-node NATS cluster and a Postgres primary with a
# synchronous standby, while a nemesis injects a random fault of the suite
# every 20-60 s (a stage or a NATS server killed, Postgres restarted or
# failed over, the pipeline paused, an organization parked, the KV bucket
# deleted). It prints its seed; SOAK_SEED=<seed> replays the nemesis's
# choices. At the end: the set check and a latency histogram. SOAK_RATE's
# default is about half of what one two-core machine sustains.
SOAK_DURATION ?= 30m
SOAK_RATE     ?= 2500
SOAK_SEED     ?=

.PHONY: soak
soak: services ## Randomized soak (not part of make test): SOAK_DURATION (30m) at SOAK_RATE (2500) msg/s under a random fault every 20-60 s; SOAK_SEED replays
	TELEMESH_SOAK_DURATION=$(SOAK_DURATION) TELEMESH_SOAK_RATE=$(SOAK_RATE) TELEMESH_SOAK_SEED=$(SOAK_SEED) \
		go test -count=1 -v -timeout 0 -run '^TestSoak$$' ./test/faults/

# BENCH_DATABASE_URL points the benchmarks at another Postgres server (say,
# a primary with a synchronous standby, to measure what replication costs);
# they create and drop their own databases there. Empty: the local server.
BENCH_DATABASE_URL ?=
BENCH_ENV := $(if $(BENCH_DATABASE_URL),TELEMESH_TEST_DATABASE_URL='$(BENCH_DATABASE_URL)')

# The pipeline benchmark (test/bench) runs last, so its table of every
# figure ends the output; TELEMESH_BENCH_MESSAGES,
# TELEMESH_BENCH_LATENCY_SECONDS, TELEMESH_BENCH_PREFILL and
# TELEMESH_BENCH_TRACE_PAIRS size it (README.md, "Benchmark").
.PHONY: bench
bench: services ## Benchmarks: the pipeline's table (throughput, CPU, WAL, latency, both shapes, memory, the Postgres-only ceiling), micro-benchmarks, trace on millions of rows (BENCH_DATABASE_URL: another server)
	go test -run '^$$' -bench . -benchmem ./services/... ./gateway/...
	$(BENCH_ENV) go test -run '^$$' -bench 'TraceLargeTables' -benchtime 300x -timeout 30m ./internal/ops/
	$(BENCH_ENV) go test -run '^$$' -bench '^BenchmarkPipeline$$' -benchtime 1x -timeout 180m ./test/bench/

.PHONY: image
image: ## Build the container image telemesh:$(VERSION) (one image for every stage; needs Docker)
	docker build -f deploy/Dockerfile --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) --build-arg DATE=$(DATE) -t telemesh:$(VERSION) .

.PHONY: clean
clean: ## Remove build outputs and tools
	rm -rf bin .bin
