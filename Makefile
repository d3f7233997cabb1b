# keymesh — make targets. `make run` starts the whole stack on embedded
# defaults; `make test` is what CI runs.
GO      ?= go
BIN     := bin
DATA    ?= ./data

.PHONY: default build test race vet fmt tidy run clean

default: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

## test: vet, then every test under the race detector.
test: vet
	$(GO) test -race -count=1 -timeout 15m ./...

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
