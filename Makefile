# keymesh — make targets. `make run` starts the whole stack on embedded
# defaults; `make test` is what CI runs.
GO      ?= go
BIN     := bin
DATA    ?= ./data

# What --version prints (internal/buildinfo): git describe of the checkout,
# its commit and whether it had uncommitted changes. Without git (or outside
# a checkout) they are empty, no -X is passed, and the binaries fall back to
# what the go command recorded. `make build VERSION=v1.2.3` overrides.
BUILDINFO := github.com/keymesh/keymesh/internal/buildinfo
ifndef VERSION
VERSION := $(shell git describe --always --dirty 2>/dev/null)
endif
ifndef COMMIT
COMMIT  := $(shell git rev-parse --short=7 HEAD 2>/dev/null)
endif
LDFLAGS ?= $(strip $(if $(VERSION),-X $(BUILDINFO).Version=$(VERSION)) $(if $(COMMIT),-X $(BUILDINFO).Commit=$(COMMIT)) \
	$(if $(findstring -dirty,$(VERSION)),-X $(BUILDINFO).Modified=true))

.PHONY: default build test test-deps fuzz race vet fmt tidy run clean

default: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

## test: vet, then every test under the race detector. The PostgreSQL store
## tests use $KEYMESH_TEST_POSTGRES_URL or start their own throwaway cluster,
## the nginx bench test its own nginx (test-deps installs the Debian
## postgresql, nginx and wrk packages when root and missing).
test: vet test-deps
	$(GO) test -race -count=1 -timeout 15m ./...

## test-deps: what the tests need besides Go (quiet when already there).
test-deps:
	@./scripts/pgtest.sh
	@./scripts/nginxtest.sh
	@./scripts/wrk.sh

## fuzz: every fuzz target briefly (FUZZTIME each), seeds from testdata.
FUZZTIME ?= 10s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./apikey
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./apikey
	$(GO) test -run '^$$' -fuzz '^FuzzCredential$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzParseBody$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzInspectBody$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzNormalisePath$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzPromptFields$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzRequestTarget$$' -fuzztime $(FUZZTIME) ./e2e
	$(GO) test -run '^$$' -fuzz '^FuzzAuditString$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzAskUsage$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzMeterScan$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzMaxTokens$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzBodyFast$$' -fuzztime $(FUZZTIME) ./proxy

race: test

vet:
	$(GO) vet ./...

## fmt: gofmt every file; tidy: go mod tidy.
fmt:
	gofmt -w $$(git ls-files '*.go')

tidy:
	$(GO) mod tidy

## run: origin (embedded NATS + SQLite under ./data), a mock inference
## server, a demo deployment and one edge on 127.0.0.1:8080. Ctrl-C stops all.
run: build
	DATA=$(DATA) BIN=$(BIN) ./scripts/run.sh

clean:
	rm -rf $(BIN)

# Targets of the deployment and benchmark tooling live beside this file.
-include mk/*.mk
