# Gossip over a real network: two edges in separate Linux network
# namespaces, partitioned with `ip link set down` and healed.

.PHONY: test-netns

## test-netns: the partition test in network namespaces (root only; CI runs
## it). See scripts/netns-test.sh.
test-netns:
	./scripts/netns-test.sh
