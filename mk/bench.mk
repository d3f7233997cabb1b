# Benchmark and real-client targets (included by the Makefile: -include mk/*.mk).
#   make bench        the standard suite (well under 3 minutes on 2 cores): load,
#                     flood, compare (direct / keymesh / nginx), propagation,
#                     limits (BENCH_LIMITS_WINDOW per case, the limit scaled);
#                     writes bench/results/<date>.md (+ .json, .svg)
#   make bench-deps   nginx from Debian's packages (for bench compare)
#   make test-client  the official openai npm client against a real edge
GO ?= go
BENCH_DURATION ?= 8s
BENCH_EDGES    ?= 16
BENCH_LIMITS_WINDOW ?= 10s

.PHONY: bench bench-deps test-client

bench-deps:
	@./scripts/bench-deps.sh

bench: bench-deps
	$(GO) build -o bin/ ./cmd/...
	timeout 240 ./bin/bench suite --dir bench/results --duration $(BENCH_DURATION) --edges $(BENCH_EDGES) --limits-window $(BENCH_LIMITS_WINDOW)

test-client:
	./scripts/ci-client.sh
