# Benchmark and real-client targets (included by the Makefile: -include mk/*.mk).
#   make bench        the standard suite (about 5 minutes on 2 cores): load,
#                     flood, compare (mixed load, then the fair comparison:
#                     pinned, wrk, medians, CPU per request, open loop),
#                     propagation, limits (BENCH_LIMITS_WINDOW per case, the
#                     limit scaled); writes bench/results/<date>.md (+ .json, .svg)
#   make bench-deps   nginx and wrk from Debian's packages (for bench compare)
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
	timeout 600 ./bin/bench suite --dir bench/results --duration $(BENCH_DURATION) --edges $(BENCH_EDGES) --limits-window $(BENCH_LIMITS_WINDOW)

test-client:
	./scripts/ci-client.sh
