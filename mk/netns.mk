# Gossip over a real network: two edges in separate Linux network
# namespaces, partitioned with `ip link set down` and healed.

.PHONY: test-netns

## test-netns: the partition test in network namespaces (root only; CI runs
## it). See scripts/netns-test.sh.
test-netns:
	./scripts/netns-test.sh

## test-netns also runs the WAN bench at small scale (3 edges, one 20 ms
## delay, its namespaces and relays; build tag netns: root only).
test-netns: test-wan-small

.PHONY: test-wan-small
test-wan-small:
	$(GO) test -race -count=1 -timeout 5m -tags netns -run TestWANBenchSmall ./cmd/bench/
