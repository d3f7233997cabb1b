# Benchmark and real-client targets (included by the Makefile: -include mk/*.mk).
#   make bench        the standard suite (about 5 minutes on 2 cores): load,
#                     flood, compare (mixed load, then the fair comparison:
#                     pinned, wrk, medians, CPU per request, open loop),
#                     propagation, limits (BENCH_LIMITS_WINDOW per case, the
#                     limit scaled); writes bench/results/<date>.md (+ .json, .svg)
#   make bench-wan    (root) propagation across a WAN: BENCH_WAN_EDGES edges in
#                     network namespaces at BENCH_WAN_DELAYS one way from the
#                     origin host, via NATS then gossip alone; writes
#                     bench/results/<date>-wan.md (+ .json)
#   make bench-deps   nginx and wrk from Debian's packages (for bench compare)
#   make test-client  the official openai npm client against a real edge
GO ?= go
BENCH_DURATION ?= 8s
BENCH_EDGES    ?= 16
BENCH_LIMITS_WINDOW ?= 10s
BENCH_WAN_EDGES  ?= 16
BENCH_WAN_DELAYS ?= 40ms,90ms,150ms
BENCH_WAN_ITERATIONS ?= 20
BENCH_WAN_MODE   ?= auto

.PHONY: bench bench-deps bench-wan test-client

bench-deps:
	@./scripts/bench-deps.sh

bench: bench-deps
	$(GO) build -o bin/ ./cmd/...
	timeout 600 ./bin/bench suite --dir bench/results --duration $(BENCH_DURATION) --edges $(BENCH_EDGES) --limits-window $(BENCH_LIMITS_WINDOW)

bench-wan:
	$(GO) build -o bin/ ./cmd/...
	timeout 900 nice -n 10 ./bin/bench wan --edges $(BENCH_WAN_EDGES) --delays $(BENCH_WAN_DELAYS) \
		--iterations $(BENCH_WAN_ITERATIONS) --mode $(BENCH_WAN_MODE) --out bench/results/$$(date -u +%F)-wan

test-client:
	./scripts/ci-client.sh
