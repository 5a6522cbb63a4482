SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# Tool versions, pinned in one place. Tools are built from the Go module
# proxy into .bin/; nothing else is downloaded.
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0

BIN     := $(CURDIR)/.bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
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

TOOLS := $(BIN)/buf-$(BUF_VERSION) $(BIN)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION) $(BIN)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)

.PHONY: tools
tools: $(TOOLS) ## Build the pinned code generators and buf into .bin/

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

.PHONY: lint
lint: $(TOOLS) ## buf lint, buf format check, gofmt and go vet
	buf lint
	buf format --diff --exit-code
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@for m in $(MODULES); do (cd $$m && go vet ./...); done

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

.PHONY: test
test: services check-generate lint ## Run every module's tests with the race detector against real Postgres and NATS
	@for m in $(MODULES); do echo "== go test $$m"; (cd $$m && go test $(TEST_FLAGS) ./...); done

.PHONY: test-short
test-short: services ## The quick set: go test -short, no race detector
	@for m in $(MODULES); do (cd $$m && go test -short -count=1 ./...); done

.PHONY: bench
bench: services ## Benchmarks: pipeline throughput, latency and CPU per message, the Postgres-only ceiling, trace on millions of rows
	go test -run '^$$' -bench 'Pipeline' -benchtime 1x -timeout 60m ./internal/app/
	go test -run '^$$' -bench 'TraceLargeTables' -benchtime 300x -timeout 30m ./internal/ops/
	go test -run '^$$' -bench . -benchmem ./services/... ./gateway/...

.PHONY: image
image: ## Build the container image telemesh:$(VERSION) (one image for every stage; needs Docker)
	docker build -f deploy/Dockerfile --build-arg VERSION=$(VERSION) -t telemesh:$(VERSION) .

.PHONY: clean
clean: ## Remove build outputs and tools
	rm -rf bin .bin
